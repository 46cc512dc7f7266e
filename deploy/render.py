#!/usr/bin/env python3
"""Render, lint and validate the meshsec Helm chart without a `helm` binary.

Owns the toolchain for deploy/: `template` (what `helm template` prints), `lint` (`helm lint --strict`),
`validate` (kubernetes-validate --strict, a missing schema is an error), `kustomize-base` (regenerates
deploy/kustomize/base/meshsec.yaml from the chart) and `install` (`helm install`, used by
deploy/test-cluster.sh).  Only `install` talks to a cluster: the one its --kubeconfig names.

No `helm` binary is packaged in Debian, PyPI or npm, but PyPI's `helm-python-sdk` wraps Helm's own Go
SDK (v4) in a shared library, so rendering and linting run the real Helm engine, not a reimplementation.

Exit codes: 0 ok, 1 lint/validation/render failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import kubernetes_validate.utils
import yaml

DEPLOY = Path(__file__).resolve().parent
CHART = DEPLOY / "helm" / "meshsec"
KUSTOMIZE_BASE = DEPLOY / "kustomize" / "base" / "meshsec.yaml"
RELEASE = "meshsec"
NAMESPACE = "meshsec"
KUBE_VERSIONS = ("1.30.0", "1.37.0")

# Helm's install order (pkg/release/util/kind_sorter.go), so output reads like `helm template`.
_INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding",
    "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService",
]  # fmt: skip


# kubernetes-validate re-reads and re-parses its multi-megabyte _definitions.json for every object;
# the files are read-only package data, so parse each one once per process.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=64)(
    kubernetes_validate.utils.schema_contents
)


class RenderError(Exception):
    """The chart failed to render, lint or validate; the message says which object and why."""


def load_values(files: Iterable[Path] = (), sets: Iterable[str] = ()) -> dict[str, Any]:
    """Merge values files then --set expressions, later ones winning (helm's -f/--set order)."""
    merged: dict[str, Any] = {}
    for f in files:
        _deep_merge(merged, yaml.safe_load(Path(f).read_text()) or {})
    for expr in sets:
        _deep_merge(merged, helm.parse_set_string(expr))
    return merged


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value)
        else:
            dst[key] = value


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """The chart's objects for these values, in Helm's install order (NOTES.txt excluded).

    Values are checked against values.schema.json first, as `helm install` does.
    """
    try:
        with helm.Chart.load(str(chart)) as c:
            try:
                c.validate_schema(c.merge_values(values or {}))
            except helm.HelmError as exc:
                raise RenderError(f"values do not match {chart.name}/values.schema.json: {exc}") from None
            manifests = c.render(values or {}, name=release, namespace=namespace, is_install=True)
    except helm.HelmError as exc:
        raise RenderError(f"chart {chart.name}: {exc}") from None
    docs: list[tuple[str, dict[str, Any]]] = []
    for path, text in manifests.items():
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return sort_objects(doc for _, doc in docs)


def install(
    kubeconfig: Path, values: dict[str, Any] | None, *, release: str, namespace: str
) -> tuple[str, str]:
    """`helm install` into an existing namespace, rendered with the server's API versions.

    Returns the release status line and the manifest Helm applied.
    """
    try:
        with helm.Config(kubeconfig_path=str(kubeconfig), namespace=namespace) as cfg:
            rel = cfg.install(str(CHART), release, values or {}, namespace=namespace, timeout=120)
    except helm.HelmError as exc:
        raise RenderError(f"helm install {release} into {namespace}: {exc}") from None
    status = f"{rel.get('name', release)} revision {rel.get('revision')} {rel.get('status', '')}".strip()
    return status, str(rel.get("manifest", ""))


def sort_objects(objs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(o: dict[str, Any]) -> tuple[int, str, str]:
        kind = o.get("kind", "")
        rank = _INSTALL_ORDER.index(kind) if kind in _INSTALL_ORDER else len(_INSTALL_ORDER)
        return rank, kind, o.get("metadata", {}).get("name", "")

    return sorted(objs, key=key)


def to_yaml(objs: Sequence[dict[str, Any]]) -> str:
    """One multi-document stream, stable key order, as committed in deploy/kustomize/base."""
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=True, default_flow_style=False) for o in objs)


def lint(
    values: dict[str, Any] | None = None, kube_version: str = KUBE_VERSIONS[-1], chart: Path = CHART
) -> list[str]:
    """`helm lint --strict`: each warning or error as a line (info such as "icon is recommended" is
    not one); empty means clean."""
    report = helm.lint(str(chart), values or {}, strict=True, kube_version=f"v{kube_version}")
    problems = [
        f"{m.get('path', '')}: {m.get('error', '')}"
        for m in report.get("messages", [])
        if int(m.get("severity", 0)) >= 2
    ]
    return problems + [str(e) for e in report.get("errors") or []]


def validate(objs: Iterable[dict[str, Any]], kube_version: str) -> list[str]:
    """kubernetes-validate --strict against one Kubernetes version; a missing schema is a failure."""
    errors = []
    for o in objs:
        name = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(o, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            errors.append(f"{kube_version} {name}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{kube_version} {name}: schema not found: {exc}")
    return errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy/render.py", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["template", "lint", "validate", "kustomize-base", "install"])
    p.add_argument("--kubeconfig", type=Path, help="install: the cluster to install into")
    p.add_argument("-f", "--values", action="append", type=Path, default=[], help="values file")
    p.add_argument("--set", action="append", default=[], help="helm --set expression")
    p.add_argument("--release", default=RELEASE)
    p.add_argument("-n", "--namespace", default=NAMESPACE)
    p.add_argument("-k", "--kube-version", action="append", help="for lint/validate (default 1.30, 1.37)")
    p.add_argument("-o", "--output", type=Path, help="template: write here; install: the applied manifest")
    p.add_argument("files", nargs="*", type=Path, help="validate: YAML streams instead of the chart")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    versions = args.kube_version or list(KUBE_VERSIONS)
    try:
        values = load_values(args.values, args.set)
        if args.command == "lint":
            problems = [p for v in versions for p in lint(values, v)]
            for line in problems:
                print(f"lint: {line}", file=sys.stderr)
            return 1 if problems else 0
        if args.command == "validate":
            if args.files:
                objs = [d for f in args.files for d in yaml.safe_load_all(f.read_text()) if d]
            else:
                objs = render(values, release=args.release, namespace=args.namespace)
            errors = [e for v in versions for e in validate(objs, v)]
            for line in errors:
                print(f"invalid: {line}", file=sys.stderr)
            return 1 if errors else 0
        if args.command == "kustomize-base":
            KUSTOMIZE_BASE.write_text(_BASE_HEADER + to_yaml(render({})))
            return 0
        if args.command == "install":
            if not args.kubeconfig:
                print("render: install needs --kubeconfig", file=sys.stderr)
                return 2
            status, manifest = install(
                args.kubeconfig, values, release=args.release, namespace=args.namespace
            )
            if args.output:
                args.output.write_text(manifest)
            print(status)
            return 0
        text = to_yaml(render(values, release=args.release, namespace=args.namespace))
        if args.output:
            args.output.write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    except (RenderError, helm.HelmError, OSError, yaml.YAMLError) as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 1


_BASE_HEADER = (
    "# GENERATED by `python deploy/render.py kustomize-base` from deploy/helm/meshsec with its default\n"
    "# values (release meshsec, namespace meshsec).  Do not edit: change the chart and regenerate;\n"
    "# tests/deploy fail when this file is stale.\n"
)

if __name__ == "__main__":
    sys.exit(main())
