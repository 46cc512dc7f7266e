"""Fixtures for the deployment tests: the chart rendered by Helm's own engine (deploy/render.py).

Owns loading deploy/render.py (a script, not a package) and small lookups over rendered objects.
Nothing here talks to a cluster.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "kustomize" / "overlays").iterdir() if p.is_dir())
KUBE_VERSIONS = ("1.30.0", "1.37.0")

Obj = dict[str, Any]


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meshsec_deploy_render", DEPLOY / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


render = _load_render()


@pytest.fixture(scope="session")
def default_objs() -> list[Obj]:
    return render.render({})


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def kinds(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def container(pod_spec: Obj, name: str, init: bool = False) -> Obj:
    items = pod_spec["initContainers" if init else "containers"]
    hits = [c for c in items if c["name"] == name]
    assert len(hits) == 1, f"expected one container {name}"
    return hits[0]


def env(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def kustomize(overlay_dir: Path) -> list[Obj]:
    """`kubectl kustomize` (kustomize v5 built into kubectl); a missing kubectl fails the test."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with built-in kustomize) is required: see docs/kubernetes.md, CI needs"
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay_dir)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]
