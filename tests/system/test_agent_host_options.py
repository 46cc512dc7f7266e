"""meshsec-agent's host settings on the wire: two agents in namespaces, started as a DaemonSet starts
them (no --reconciler: the runtime is the default) but with a TUN clone device at another path, another
TUN name, IKE on 1500 and NAT-T on 14500 instead of 500/4500, and their node IPs to listen on.

Proves that the flags reach the runtime end to end: the TUN interface carries the given name and was
made through the given clone device, the sockets are bound on the node IPs at the given ports and on
nothing else, the IKE SA comes up without the false "NAT detected" that mismatched ports would cause
(the engine sees 500/4500, the wire 1500/14500: agent/runtime/ports.py), ESP-in-UDP arrives on 14500
and never on 500/4500, and a ping crosses the tunnel.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.runtime.harness import wait
from tests.controller import harness as h
from tests.support.etcd import EtcdCluster, free_port
from tests.support.netns import Namespace, Topology

pytestmark = pytest.mark.system

IKE, NATT, TUN = 1500, 14500, "mshost0"


def _run(coro, timeout: float = 15):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def lab() -> Iterator[tuple[Topology, Path, EtcdCluster]]:
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-hostopts-", ignore_cleanup_errors=True) as d,
        EtcdCluster(1) as etcd,
        Topology("ho") as topo,
    ):
        yield topo, Path(d), etcd


def _agent(ns: Namespace, node: str, ip: str, state: Path, work: Path, address: str) -> Path:
    d = work / "devices" / node
    d.mkdir(parents=True)
    tun_device = d / "tun"  # a clone device somewhere else than /dev/net/tun, as a pod may mount it
    os.mknod(tun_device, 0o600 | 0o020000, os.makedev(10, 200))
    extra = [
        "--metrics-listen", "",
        "--tun-device", str(tun_device),
        "--ike-port", str(IKE),
        "--natt-port", str(NATT),
        "--node-ip", ip,
    ]  # fmt: skip
    return h.runtime_agent_in(ns, node, state, work, address, tun=TUN, extra=extra)


def _udp_in(ns: Namespace) -> tuple[int, int]:
    """Packets counted by the two INPUT rules _count_udp added: (to NATT, to 500 or 4500)."""
    out = ns.run("iptables", "-nvxL", "INPUT").stdout
    counts = [int(line.split()[0]) for line in out.splitlines() if "dpt" in line or "dports" in line]
    return counts[0], counts[1]


def _count_udp(ns: Namespace) -> None:
    ns.run("iptables", "-A", "INPUT", "-p", "udp", "--dport", str(NATT))
    ns.run("iptables", "-A", "INPUT", "-p", "udp", "-m", "multiport", "--dports", "500,4500")


def test_agents_on_other_ports_and_tun_bring_a_tunnel_up(lab: tuple[Topology, Path, EtcdCluster]) -> None:
    topo, work, etcd = lab
    state = work / "ctl"
    _run(h.init_state(state, etcd.endpoints))
    ctl = h.controller_proc(state, etcd.endpoints, "r1", free_port(), free_port())
    try:
        ctl.wait_log("serving on")
        address = ctl.popen.args[ctl.popen.args.index("--listen") + 1]  # type: ignore[union-attr]
        _run(h.apply(address, state, h.mesh_yaml({"node-a": 1, "node-b": 2})))
        a, b = topo.add("a"), topo.add("b")
        topo.link(a, b, ["198.18.0.1/24"], ["198.18.0.2/24"])
        a.ip("addr", "add", "198.19.1.1/32", "dev", "lo")
        b.ip("addr", "add", "198.19.2.1/32", "dev", "lo")
        _count_udp(b)
        log_a = _agent(a, "node-a", "198.18.0.1", state, work, address)
        log_b = _agent(b, "node-b", "198.18.0.2", state, work, address)

        def up(log: Path) -> bool:
            return "installed (in" in log.read_text(errors="replace")

        try:
            wait(lambda: up(log_a) and up(log_b), 20, "child SAs on both agents")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_a.read_text()[-3000:]}\n{log_b.read_text()[-3000:]}") from None
        text_a, text_b = log_a.read_text(), log_b.read_text()
        for text in (text_a, text_b):
            assert f"TUN {TUN} up" in text and f"port {IKE}, NAT-T port {NATT}" in text, text[-2000:]
            assert "NAT detected" not in text and "Traceback" not in text, text[-3000:]
        assert re.search(r"initiating IKE to 198\.18\.0\.\d:500\b", text_a + text_b)  # the engine's view

        for ns, ip in ((a, "198.18.0.1"), (b, "198.18.0.2")):
            assert f"{TUN}:" in ns.ip("-o", "link", "show", TUN).stdout
            bound = {line.split()[3] for line in ns.run("ss", "-Huan").stdout.splitlines()}
            assert bound == {f"{ip}:{IKE}", f"{ip}:{NATT}"}, bound  # node IP only, given ports only

        before = _udp_in(b)
        r = a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", "198.19.2.1", check=False)
        assert r.returncode == 0, r.stdout + text_a[-3000:]
        natt, rfc = _udp_in(b)
        assert natt - before[0] >= 3  # the echo requests came as ESP-in-UDP to 14500
        assert rfc == 0  # nothing ever went to 500 or 4500
    finally:
        ctl.kill()
