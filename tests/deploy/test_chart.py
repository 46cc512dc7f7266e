"""The chart as a whole: helm lint --strict, its values schema, Kubernetes 1.30/1.37 schemas, overlays.

Rendering and linting use Helm's own Go engine (helm-python-sdk); validation uses kubernetes-validate
--strict with its offline schemas, and a kind it has no schema for is a failure, not a pass.  The
kustomize overlays must render to exactly what the chart renders with the overlay's values.yaml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, KUBE_VERSIONS, OVERLAYS, Obj, kustomize, render

VARIANTS: dict[str, dict] = {
    "defaults": {},
    "external-etcd": {"etcd": {"mode": "external", "external": {"endpoints": ["https://e.invalid:2379"]}}},
    "no-tls": {"etcd": {"tls": {"enabled": False}}},
    "no-agent": {"agent": {"enabled": False}},
    "minimal": {
        "controller": {"replicas": 1, "podDisruptionBudget": {"enabled": False}, "runInit": False},
        "agent": {"announcePodCIDR": False, "downwardHostIPs": True, "bootstrapToken": {"value": "t"}},
        "etcd": {"statefulset": {"replicas": 1, "podDisruptionBudget": {"enabled": False}}},
    },
}


def _key(o: Obj) -> tuple[str, str]:
    return o["kind"], o["metadata"]["name"]


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_helm_lint_strict_is_clean(kube: str) -> None:
    assert render.lint({}, kube) == []


def test_helm_lint_strict_catches_a_broken_chart(tmp_path: Path) -> None:
    chart = tmp_path / "meshsec"
    shutil.copytree(render.CHART, chart)
    pdb = chart / "templates" / "controller" / "pdb.yaml"
    pdb.write_text(pdb.read_text().replace("{{- end }}\n", "", 1))  # unbalanced action
    problems = render.lint({}, KUBE_VERSIONS[0], chart=chart)
    assert problems and any("pdb.yaml" in p for p in problems), problems


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_variant_validates_strictly(name: str, kube: str) -> None:
    objs = render.render(VARIANTS[name])
    assert len(objs) >= 4
    assert render.validate(objs, kube) == []
    assert render.lint(VARIANTS[name], kube) == []


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_validation_is_not_vacuous(default_objs: list[Obj], kube: str) -> None:
    def deployment() -> Obj:
        return yaml.safe_load(yaml.safe_dump(next(o for o in default_objs if o["kind"] == "Deployment")))

    typo, wrong_type = deployment(), deployment()
    typo["spec"]["template"]["spec"]["containers"][0]["portz"] = []  # unknown field: strict rejects
    wrong_type["spec"]["replicas"] = "three"
    errors = render.validate([typo, wrong_type], kube)
    assert len(errors) == 2, errors
    assert "portz" in errors[0] and "three" in errors[1]
    unknown = {"apiVersion": "meshsec.io/v1", "kind": "Mesh", "metadata": {"name": "m"}}
    assert "schema not found" in render.validate([unknown], kube)[0]


@pytest.mark.parametrize(
    "values",
    [
        {"etcd": {"statefulset": {"replicas": 2}}},  # even member count: no majority gain
        {"etcd": {"mode": "external"}},  # external without endpoints
        {"etcd": {"mode": "external", "external": {"endpoints": ["etcd:2379"]}}},  # no scheme
        {"agent": {"caHash": "not-hex"}},
        {"agent": {"tunDevice": "net/tun"}},
        {"agent": {"tunName": "a-name-longer-than-15"}},
        {"agent": {"reconciler": "recording"}},  # neither a built-in name nor module:factory
        {"controller": {"antiAffinity": "sometimes"}},
        {"controller": {"grpcPort": 70000}},
        {"controller": {"replicaz": 3}},  # typo: additionalProperties is false everywhere
        {"agent": {"bootstrapToken": {"existingSecret": "", "value": ""}}},
    ],
)
def test_values_schema_rejects_bad_values(values: dict) -> None:
    with pytest.raises(render.RenderError, match=r"values\.schema\.json"):
        render.render(values)


def test_values_files_and_set_merge_like_helm(tmp_path: Path) -> None:
    f = tmp_path / "v.yaml"
    f.write_text("controller:\n  replicas: 5\n  logLevel: debug\n")
    values = render.load_values([f], ["controller.replicas=4"])
    assert values == {"controller": {"replicas": 4, "logLevel": "debug"}}


def test_cli_template_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.yaml"
    assert render.main(["template", "--set", "controller.replicas=2", "-o", str(out)]) == 0
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    assert next(d for d in docs if d["kind"] == "Deployment")["spec"]["replicas"] == 2
    assert render.main(["validate", str(out)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: []}\n")
    assert render.main(["validate", str(bad)]) == 1
    assert "portz" in capsys.readouterr().err
    assert render.main(["template", "--set", "etcd.statefulset.replicas=4"]) == 1


def test_kustomize_base_is_the_fresh_chart_output() -> None:
    committed = (DEPLOY / "kustomize" / "base" / "meshsec.yaml").read_text()
    fresh = render._BASE_HEADER + render.to_yaml(render.render({}))
    assert committed == fresh, "run: python deploy/render.py kustomize-base"


def test_overlays_exist() -> None:
    assert OVERLAYS == ["external-etcd", "production", "single-node"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_equals_chart_with_its_values(overlay: str) -> None:
    d = DEPLOY / "kustomize" / "overlays" / overlay
    built = kustomize(d)
    ns = [o for o in built if o["kind"] == "Namespace"]
    assert [o["metadata"]["name"] for o in ns] == ["meshsec"]
    got = {_key(o): o for o in built if o["kind"] != "Namespace"}
    want = {_key(o): o for o in render.render(render.load_values([d / "values.yaml"]))}
    assert sorted(got) == sorted(want)
    for k, o in want.items():
        assert got[k] == o, f"{overlay}: {k} differs from the chart with values.yaml"


@pytest.mark.parametrize("overlay", [*OVERLAYS, "../base"])
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_overlay_validates_strictly(overlay: str, kube: str) -> None:
    built = kustomize(DEPLOY / "kustomize" / "overlays" / overlay)
    assert render.validate(built, kube) == []
