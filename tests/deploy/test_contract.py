"""The chart's contract with the programs it runs: commands, flags and MESHSEC_* environment.

A renamed flag or env var in controller/ or agent/ would otherwise be ignored silently by the pods.
Every MESHSEC_* name the chart sets must be read by the product code, or be listed in PENDING — the
settings the chart already passes and the controller/agent authors have been asked to implement.
"""

from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import REPO, Obj, container, env, find

# Set by the chart, not read yet by the programs (requested from their owners; see docs/kubernetes.md).
PENDING = {
    "controller": {
        "MESHSEC_HEALTH_LISTEN",  # HTTP /healthz /readyz /metrics
        "MESHSEC_POD_IP",
    },
    "agent": {
        "MESHSEC_HEALTH_LISTEN",  # HTTP /healthz (loop alive) /readyz (enrolled and synced)
        "MESHSEC_POD_NAME",
        "MESHSEC_POD_NAMESPACE",
    },
}
SOURCES = {"controller": REPO / "controller", "agent": REPO / "agent"}


def _read_names(component: str) -> set[str]:
    names: set[str] = set()
    for path in SOURCES[component].rglob("*.py"):
        names |= set(re.findall(r"MESHSEC_[A-Z0-9_]+", path.read_text()))
    return names


def _chart_env(objs: list[Obj], component: str) -> dict[str, Obj]:
    if component == "controller":
        spec = find(objs, "Deployment", "meshsec-controller")["spec"]["template"]["spec"]
        return env(container(spec, "controller")) | env(container(spec, "init", init=True))
    spec = find(objs, "DaemonSet", "meshsec-agent")["spec"]["template"]["spec"]
    return env(container(spec, "agent"))


@pytest.mark.parametrize("component", ["controller", "agent"])
def test_every_env_var_is_read_or_pending(default_objs: list[Obj], component: str) -> None:
    read = _read_names(component)
    unknown = set(_chart_env(default_objs, component)) - read - PENDING[component]
    assert not unknown, f"the chart sets {sorted(unknown)} but {component}/ never reads them"


def test_controller_parses_the_chart_command_line(
    default_objs: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshsec.controller.main import build_parser

    spec = find(default_objs, "Deployment", "meshsec-controller")["spec"]["template"]["spec"]
    c = container(spec, "controller")
    for name, e in env(c).items():
        monkeypatch.setenv(name, e.get("value", "from-downward-api"))
    args = build_parser().parse_args(c["args"])
    assert args.command == "serve"
    assert args.listen == "0.0.0.0:7443"
    assert args.enroll_listen == "0.0.0.0:7444"
    assert args.etcd.startswith("https://meshsec-etcd-0.")
    assert args.socket == "" and args.enroll_socket == ""
    assert str(args.state_dir) == "/var/lib/meshsec/controller"
    init = container(spec, "init", init=True)
    assert build_parser().parse_args(init["args"]).command == "init"


def test_agent_parses_the_chart_command_line(
    default_objs: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshsec.agent.main import build_parser

    spec = find(default_objs, "DaemonSet", "meshsec-agent")["spec"]["template"]["spec"]
    c = container(spec, "agent")
    for name, e in env(c).items():
        monkeypatch.setenv(name, e.get("value", f"downward-{name}"))
    args = build_parser().parse_args(c.get("args", []))
    assert args.controller == "meshsec-controller.meshsec.svc:7443"
    assert args.enroll_address == "meshsec-controller.meshsec.svc:7444"
    assert args.node == "downward-MESHSEC_NODE"
    assert args.token == "downward-MESHSEC_TOKEN"
    assert str(args.state_dir) == "/var/lib/meshsec/agent"
