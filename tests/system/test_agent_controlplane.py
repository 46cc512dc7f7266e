"""The whole chain with real parts: etcd, the controller, and two `meshsec-agent` processes in namespaces
whose reconciler is the agent runtime (meshsec.agent.runtime.host:reconciler).

Proves that what the controller compiles is what the runtime needs: each agent enrolls (token + pinned
CA hash, over the controller's unix sockets, as agents in namespaces must), receives its NodeConfig
over Sync, and the two bring up an IKE SA authenticated with the certificates the controller's CA
issued (the default profile's auth), install ESP and routes, and pass a ping between the nodes'
subnets; removing a node from the mesh makes its peer DELETE the SA and drop the route.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.runtime.harness import wait
from tests.controller import harness as h
from tests.support.etcd import EtcdCluster, free_port
from tests.support.netns import Namespace, Topology

pytestmark = pytest.mark.system


def _run(coro, timeout: float = 15):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def lab() -> Iterator[tuple[Topology, Path, EtcdCluster]]:
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-e2e-", ignore_cleanup_errors=True) as d,
        EtcdCluster(1) as etcd,
        Topology("cp") as topo,
    ):
        yield topo, Path(d), etcd


def _agent(ns: Namespace, node: str, state: Path, work: Path, address: str) -> Path:
    return h.runtime_agent_in(ns, node, state, work, address, tun="mscp0")


def test_controller_to_runtime_certificate_tunnel(lab: tuple[Topology, Path, EtcdCluster]) -> None:
    topo, work, etcd = lab
    state = work / "ctl"
    _run(h.init_state(state, etcd.endpoints))
    ctl = h.controller_proc(state, etcd.endpoints, "r1", free_port(), free_port())
    try:
        ctl.wait_log("serving on")
        address = ctl.popen.args[ctl.popen.args.index("--listen") + 1]  # type: ignore[union-attr]
        # node-c never runs: it keeps the mesh valid (>= 2 members) once node-b leaves
        _run(h.apply(address, state, h.mesh_yaml({"node-a": 1, "node-b": 2, "node-c": 3})))
        a, b = topo.add("a"), topo.add("b")
        topo.link(a, b, ["198.18.0.1/24"], ["198.18.0.2/24"])
        a.ip("addr", "add", "198.19.1.1/32", "dev", "lo")
        b.ip("addr", "add", "198.19.2.1/32", "dev", "lo")
        log_a = _agent(a, "node-a", state, work, address)
        log_b = _agent(b, "node-b", state, work, address)

        def up(log: Path) -> bool:
            return "installed (in" in log.read_text(errors="replace")

        try:
            wait(lambda: up(log_a) and up(log_b), 20, "child SAs on both agents")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_a.read_text()[-3000:]}\n{log_b.read_text()[-3000:]}") from None
        text = log_a.read_text()
        assert "enrolled as 'node-a'" in text and "Traceback" not in text
        r = a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", "198.19.2.1", check=False)
        assert r.returncode == 0, r.stdout + log_a.read_text()[-3000:]

        _run(h.apply(address, state, h.mesh_yaml({"node-a": 1, "node-c": 3})))  # node-b leaves
        wait(lambda: "deleting IKE SA (peer removed" in log_a.read_text(), 10, "node-a to delete its SA")
        wait(lambda: "deleted by peer" in log_b.read_text(), 5, "node-b to get the DELETE")
        wait(
            lambda: "198.19.2.0/24" not in a.run("ip", "route", "show", "table", "all").stdout,
            5,
            "route gone",
        )
    finally:
        ctl.kill()
