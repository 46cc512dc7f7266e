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
# Empty: every variable the chart sets is read.
PENDING: dict[str, set[str]] = {"controller": set(), "agent": set()}
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
    assert args.reconciler == "runtime"


def test_the_chart_agent_runs_the_runtime_with_its_host_settings(
    default_objs: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the DaemonSet's env builds: the IKE/ESP runtime (not record-and-report), with the chart's
    TUN device and name, ports, and the node IPs from the Downward API."""
    from meshsec.agent.host_options import make_reconciler
    from meshsec.agent.main import build_parser, host_settings
    from meshsec.agent.runtime.host import AgentRuntime

    spec = find(default_objs, "DaemonSet", "meshsec-agent")["spec"]["template"]["spec"]
    c = container(spec, "agent")
    downward = {"MESHSEC_NODE_IP": "198.18.0.7", "MESHSEC_NODE_IPS": "198.18.0.7,fd00:18::7"}
    for name, e in env(c).items():
        monkeypatch.setenv(name, e.get("value", downward.get(name, f"downward-{name}")))
    args = build_parser().parse_args(c.get("args", []))
    made = make_reconciler(args.reconciler, host_settings(args))
    assert isinstance(made, AgentRuntime)
    o = made.opts
    assert (o.tun_device, o.tun_name, o.ike_port, o.natt_port) == ("/dev/net/tun", "meshsec0", 500, 4500)
    assert o.listen == ("198.18.0.7", "fd00:18::7")
    assert str(o.state_dir) == "/var/lib/meshsec/agent"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["tun"] == o.tun_device  # the device the runtime opens is the one mounted
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert (ports["ike"], ports["nat-t"]) == (o.ike_port, o.natt_port)
