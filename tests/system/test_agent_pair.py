"""Two of our agents, each started from a static NodeConfig file in its own namespace: IKE, ESP, routes.

Proves the whole agent path without a controller: PeerConfig -> IKE SA (PSK, or certificates made
here), Child SA -> ESP SAs installed in the data plane, remote subnets routed into the TUN; ping and
an iperf3 TCP transfer in tunnel mode (subnet to subnet, IPv4 and IPv6) and transport mode (host to
host); Child and IKE SA rekeys from either side under a 100 pps ping lose nothing; a second child is
created on the same IKE SA; SIGTERM sends DELETE so the peer drops its SA at once (not by DPD); DPD
notices a peer that vanished; an agent killed with SIGKILL (initiator or responder) has its tunnel
back within seconds of its restart; SIGHUP re-reads the file: changed ESP proposals replace the SA
make-before-break with zero loss, a removed peer gets DELETE and loses its route, a returning one is
back; a byte lifetime (ESP soft limit) rekeys under TCP load; a wrong PSK or disjoint proposals are
reported in both agents' status with the failed check; an agent behind a port-remapping NAT joins
and carries traffic both ways.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from meshsec.api.v1 import config_pb2, spec_pb2

from tests.agent.runtime.harness import AgentProc, TestCa, node, peer, wait
from tests.support.netns import Namespace, Topology
from tests.support.traffic import iperf_tcp

pytestmark = pytest.mark.system

A_UL, B_UL = "198.18.0.1", "198.18.0.2"
A_NET, B_NET = "198.19.1.0/24", "198.19.2.0/24"
A_IN, B_IN = "198.19.1.1", "198.19.2.1"


@pytest.fixture
def lab() -> Iterator[tuple[Topology, str]]:
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-agent-", ignore_cleanup_errors=True) as d,
        Topology("ag") as topo,
    ):
        yield topo, d


def _hosts(topo: Topology) -> tuple[Namespace, Namespace]:
    a, b = topo.add("a"), topo.add("b")
    topo.link(a, b, [f"{A_UL}/24"], [f"{B_UL}/24"])
    for ns, addr in ((a, A_IN), (b, B_IN)):  # each host's address in its site subnet (no dummy module)
        ns.ip("addr", "add", f"{addr}/32", "dev", "lo")
    return a, b


def _tunnel_pair(
    topo: Topology, workdir: str, *, certs: bool = False, **kw: object
) -> tuple[Namespace, Namespace, AgentProc, AgentProc]:
    a, b = _hosts(topo)
    ca_pem = ""
    psk_kw: dict[str, object] = {}
    if certs:
        ca = TestCa()
        ca_pem = ca.pem
        ca.install(f"{workdir}/a", "a.meshsec")
        ca.install(f"{workdir}/b", "b.meshsec")
        psk_kw = {"psk": None}
    cfg_a = node(
        "a",
        [peer("b", endpoint=B_UL, local_ts=[A_NET], remote_ts=[B_NET], initiate=True, **psk_kw, **kw)],  # type: ignore[arg-type]
        trusted_ca_pem=ca_pem,
    )
    cfg_b = node(
        "b",
        [peer("a", endpoint=A_UL, local_ts=[B_NET], remote_ts=[A_NET], initiate=False, **psk_kw, **kw)],  # type: ignore[arg-type]
        trusted_ca_pem=ca_pem,
    )
    ag_b = AgentProc(b, workdir, "b", cfg_b).start()
    ag_a = AgentProc(a, workdir, "a", cfg_a).start()
    return a, b, ag_a, ag_b


def _iperf(client: Namespace, server: Namespace, dst: str, nbytes: str = "20M") -> int:
    return iperf_tcp(client, server, dst, nbytes)


def _ping(ns: Namespace, dst: str, count: int = 3, *agents: AgentProc) -> None:
    r = ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", dst, check=False)
    assert r.returncode == 0, "\n".join(
        [r.stdout + r.stderr, *(f"{g.status()}\n{g.log_tail()}" for g in agents)]
    )


@pytest.mark.parametrize("auth", ["psk", "cert"])
def test_tunnel_mode_ping_and_tcp(lab: tuple[Topology, str], auth: str) -> None:
    topo, workdir = lab
    a, b, ag_a, ag_b = _tunnel_pair(topo, workdir, certs=auth == "cert")
    st = ag_a.wait_up("b")
    ag_b.wait_up("a")
    assert st["children"][0]["transform"] == "aes128gcm16"
    _ping(a, B_IN)
    _ping(b, A_IN)
    assert _iperf(a, b, B_IN) >= 20_000_000

    def through_esp() -> bool:  # the status file is rewritten every 0.25 s
        c = ag_a.children("b")[0]["counters"]
        return int(c["packetsOut"]) > 1000 and int(c["packetsIn"]) > 100

    wait(through_esp, 3.0, "ESP counters")


def test_transport_mode_host_to_host(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    a, b = _hosts(topo)
    cfg_a = node(
        "a", [peer("b", endpoint=B_UL, local_ts=[f"{A_UL}/32"], remote_ts=[f"{B_UL}/32"], mode="transport")]
    )
    cfg_b = node(
        "b",
        [
            peer(
                "a",
                endpoint=A_UL,
                local_ts=[f"{B_UL}/32"],
                remote_ts=[f"{A_UL}/32"],
                mode="transport",
                initiate=False,
            )
        ],
    )
    ag_b = AgentProc(b, workdir, "b", cfg_b).start()
    ag_a = AgentProc(a, workdir, "a", cfg_a).start()
    st = ag_a.wait_up("b")
    assert st["children"][0]["mode"] == "MODE_TRANSPORT"
    _ping(a, B_UL)
    assert _iperf(a, b, B_UL) >= 20_000_000
    wait(lambda: int(ag_b.children("a")[0]["counters"]["packetsIn"]) > 1000, 3.0, "ESP counters")


def test_rekeys_under_100pps_ping_lose_nothing(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    a, _b, ag_a, ag_b = _tunnel_pair(topo, workdir)
    ag_a.wait_up("b")
    ag_b.wait_up("a")
    ping = a.popen(["ping", "-c", "600", "-i", "0.01", "-W", "1", B_IN], stdout=subprocess.PIPE, text=True)
    spi0 = ag_a.children("b")[0]["spiIn"]
    for agent, sig in (
        (ag_a, signal.SIGUSR1),
        (ag_b, signal.SIGUSR1),
        (ag_a, signal.SIGUSR2),
        (ag_b, signal.SIGUSR2),
    ):
        time.sleep(1.0)
        agent.signal(sig)
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out[-500:]
    assert ag_a.children("b")[0]["spiIn"] != spi0, ag_a.log_tail() + ag_b.log_tail()
    assert int(ag_a.peer_status("b").get("rekeys", 0)) >= 4


def test_sigterm_deletes_sa_at_peer(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    _a, _b, ag_a, ag_b = _tunnel_pair(topo, workdir)
    ag_b.wait_up("a")
    assert ag_a.stop() == 0, ag_a.log_tail()
    wait(lambda: ag_b.peer_status("a").get("ikeState") != "IKE_SA_STATE_ESTABLISHED", 3.0, "DELETE at peer")
    assert "deleted by peer" in ag_b.peer_status("a").get("lastError", "")


def test_dpd_notices_vanished_peer(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    _a, _b, ag_a, ag_b = _tunnel_pair(topo, workdir, dpd=1, dpd_timeout=4)
    ag_a.wait_up("b")
    wait(lambda: int(ag_a.peer_status("b").get("dpdRttUs", 0)) > 0, 5.0, "a DPD round trip")
    ag_b.proc.kill()  # type: ignore[union-attr]  # vanishes without DELETE
    wait(lambda: "dead" in ag_a.peer_status("b").get("lastError", ""), 12.0, "DPD to declare b dead")


@pytest.mark.parametrize("victim", ["initiator", "responder"])
def test_sigkilled_agent_restarts_and_tunnel_is_back(lab: tuple[Topology, str], victim: str) -> None:
    """After SIGKILL (no DELETE, stale policy rule left behind) a restarted agent has its SA back in
    seconds, whether it initiates or responds: a restarted responder reaches out once by itself."""
    topo, workdir = lab
    a, _b, ag_a, ag_b = _tunnel_pair(topo, workdir)
    ag_a.wait_up("b")
    ag_b.wait_up("a")
    dead, other, other_peer = (ag_a, ag_b, "a") if victim == "initiator" else (ag_b, ag_a, "b")
    old_spi = other.children(other_peer)[0]["spiIn"]
    assert dead.proc is not None
    dead.proc.kill()
    dead.proc.wait(timeout=5)
    t0 = time.monotonic()
    dead.start()
    dead.wait_up("b" if dead is ag_a else "a", timeout=10)
    wait(
        lambda: other.children(other_peer) and other.children(other_peer)[0]["spiIn"] != old_spi, 10, "new SA"
    )
    assert time.monotonic() - t0 < 5.0 + 3.0  # agent start-up included
    _ping(a, B_IN)
    ests = [p for p in other.status()["peers"] if p["ikeState"] == "IKE_SA_STATE_ESTABLISHED"]
    assert len(ests) == 1


def test_reconfigure_by_file_crypto_change_removal_and_return(lab: tuple[Topology, str]) -> None:
    """SIGHUP re-reads the NodeConfig: changed ESP proposals replace the SA make-before-break under a
    100 pps ping; a removed peer gets DELETE (and its route goes); putting it back brings the SA back."""
    topo, workdir = lab
    a, _b, ag_a, ag_b = _tunnel_pair(topo, workdir)
    ag_a.wait_up("b")
    ag_b.wait_up("a")

    def configs(esp: str) -> tuple[object, object]:
        pa = peer("b", endpoint=B_UL, local_ts=[A_NET], remote_ts=[B_NET], esp_proposals=[esp])
        pb = peer(
            "a", endpoint=A_UL, local_ts=[B_NET], remote_ts=[A_NET], esp_proposals=[esp], initiate=False
        )
        return node("a", [pa]), node("b", [pb])

    ping = a.popen(["ping", "-c", "400", "-i", "0.01", "-W", "1", B_IN], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    cfg_a, cfg_b = configs("chacha20poly1305")
    ag_b.write_config(cfg_b)  # type: ignore[arg-type]
    ag_b.signal(signal.SIGHUP)
    time.sleep(0.3)
    ag_a.write_config(cfg_a)  # type: ignore[arg-type]
    ag_a.signal(signal.SIGHUP)
    wait(lambda: [c["transform"] for c in ag_a.children("b")] == ["chacha20poly1305"], 10, "the new SA")
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out[-400:] + ag_a.log_tail() + ag_b.log_tail()
    wait(lambda: [c["transform"] for c in ag_b.children("a")] == ["chacha20poly1305"], 5, "old SA gone at b")

    ag_a.write_config(node("a", []))
    ag_a.signal(signal.SIGHUP)
    wait(lambda: ag_a.status().get("peers") is None, 5, "a's status without b")
    wait(lambda: ag_b.peer_status("a").get("ikeState") != "IKE_SA_STATE_ESTABLISHED", 5, "DELETE at b")
    wait(
        lambda: "198.19.2.0/24" not in a.run("ip", "route", "show", "table", "all").stdout, 5, "route removed"
    )
    assert a.run("ping", "-c", "1", "-W", "1", B_IN, check=False).returncode != 0

    ag_a.write_config(cfg_a)  # type: ignore[arg-type]
    ag_a.signal(signal.SIGHUP)
    ag_a.wait_up("b")
    _ping(a, B_IN, 3, ag_a, ag_b)


def test_two_children_on_one_ike_sa(lab: tuple[Topology, str]) -> None:
    """The first child comes with IKE_AUTH, the second from CREATE_CHILD_SA started by the plan."""
    topo, workdir = lab
    a, b = _hosts(topo)
    a.ip("addr", "add", "198.19.3.1/32", "dev", "lo")
    b.ip("addr", "add", "198.19.4.1/32", "dev", "lo")

    def two(p: config_pb2.PeerConfig, local: str, remote: str) -> config_pb2.PeerConfig:
        p.children.add(name="lan2", mode=spec_pb2.MODE_TUNNEL, local_ts=[local], remote_ts=[remote])
        p.children[1].esp_proposals.append("aes128gcm16")
        return p

    pa = two(peer("b", endpoint=B_UL, local_ts=[A_NET], remote_ts=[B_NET]), "198.19.3.0/24", "198.19.4.0/24")
    pb = two(
        peer("a", endpoint=A_UL, local_ts=[B_NET], remote_ts=[A_NET], initiate=False),
        "198.19.4.0/24",
        "198.19.3.0/24",
    )
    ag_b = AgentProc(b, workdir, "b", node("b", [pb])).start()
    ag_a = AgentProc(a, workdir, "a", node("a", [pa])).start()
    st = ag_a.wait_up("b", children=2)
    assert sorted(c["name"] for c in st["children"]) == ["lan2", "net"]
    ag_b.wait_up("a", children=2)
    _ping(a, B_IN)
    _ping(a, "198.19.4.1")
    _ping(b, "198.19.3.1")


def test_ipv6_underlay_and_overlay(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    a, b = topo.add("a"), topo.add("b")
    topo.link(a, b, ["fd00:18::1/64"], ["fd00:18::2/64"])
    a.ip("-6", "addr", "add", "fd00:19:1::1/128", "dev", "lo")
    b.ip("-6", "addr", "add", "fd00:19:2::1/128", "dev", "lo")
    cfg_a = node(
        "a",
        [peer("b", endpoint="[fd00:18::2]:500", local_ts=["fd00:19:1::/64"], remote_ts=["fd00:19:2::/64"])],
    )
    cfg_b = node(
        "b",
        [
            peer(
                "a",
                endpoint="fd00:18::1",
                local_ts=["fd00:19:2::/64"],
                remote_ts=["fd00:19:1::/64"],
                initiate=False,
            )
        ],
    )
    ag_b = AgentProc(b, workdir, "b", cfg_b).start()
    ag_a = AgentProc(a, workdir, "a", cfg_a).start()
    st = ag_a.wait_up("b")
    ag_b.wait_up("a")
    assert st["remoteEndpoint"].startswith("fd00:18::2")
    _ping(a, "fd00:19:2::1")
    _ping(b, "fd00:19:1::1")
    assert _iperf(a, b, "fd00:19:2::1") >= 20_000_000


@pytest.mark.parametrize(
    ("tweak", "initiator_error", "responder_error"),
    [
        ("psk", "AUTHENTICATION_FAILED", "AUTHENTICATION_FAILED"),
        ("proposal", "NO_PROPOSAL_CHOSEN", "NO_PROPOSAL_CHOSEN"),
    ],
)
def test_misconfiguration_is_reported_on_both_sides(
    lab: tuple[Topology, str], tweak: str, initiator_error: str, responder_error: str
) -> None:
    """A wrong PSK or disjoint IKE proposals: no SA, and each agent's status names the failed check."""
    topo, workdir = lab
    a, b = _hosts(topo)
    kw_b: dict[str, object] = (
        {"psk": b"another-psk-0123456789abcdef"}
        if tweak == "psk"
        else {"ike_proposals": ["aes256-sha256-modp2048"]}
    )
    cfg_a = node("a", [peer("b", endpoint=B_UL, local_ts=[A_NET], remote_ts=[B_NET])])
    cfg_b = node("b", [peer("a", endpoint=A_UL, local_ts=[B_NET], remote_ts=[A_NET], initiate=False, **kw_b)])  # type: ignore[arg-type]
    ag_b = AgentProc(b, workdir, "b", cfg_b).start()
    ag_a = AgentProc(a, workdir, "a", cfg_a).start()
    wait(lambda: initiator_error in ag_a.peer_status("b").get("lastError", ""), 10, f"{initiator_error} at a")
    wait(lambda: responder_error in ag_b.peer_status("a").get("lastError", ""), 10, f"{responder_error} at b")
    assert ag_a.peer_status("b")["ikeState"] in ("IKE_SA_STATE_FAILED", "IKE_SA_STATE_CONNECTING")
    assert not ag_a.children("b") and not ag_b.children("a")


def test_byte_lifetime_rekeys_under_tcp_load(lab: tuple[Topology, str]) -> None:
    """A child's rekey_bytes is an ESP soft limit: crossing it rekeys the SA while TCP keeps going
    (limits are polled once a second, so a fast transfer crosses several thresholds per rekey)."""
    topo, workdir = lab
    a, b, ag_a, ag_b = _tunnel_pair(topo, workdir, child_rekey_bytes=4_000_000)
    ag_a.wait_up("b")
    ag_b.wait_up("a")
    spi0 = ag_a.children("b")[0]["spiIn"]
    assert _iperf(a, b, B_IN) >= 20_000_000  # 20 MiB through a 4 MB soft limit
    wait(lambda: ag_a.children("b") and ag_a.children("b")[0]["spiIn"] != spi0, 5, "a byte-triggered rekey")
    assert int(ag_a.peer_status("b").get("rekeys", 0)) >= 1
    _ping(b, A_IN)


def test_agent_behind_nat_joins(lab: tuple[Topology, str]) -> None:
    """a sits behind a MASQUERADE NAT with port remapping; b only knows it as behind_nat (no endpoint)
    and learns where it is from IKE; ESP flows both ways through the NAT."""
    topo, workdir = lab
    a, nat, b = topo.add("a"), topo.add("nat"), topo.add("b")
    nat_out, _ = topo.link(nat, b, ["198.18.0.1/24"], [f"{B_UL}/24"])
    topo.link(a, nat, ["198.18.1.2/24"], ["198.18.1.1/24"])
    a.ip("route", "add", "default", "via", "198.18.1.1")
    nat.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    nat.run(
        "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", nat_out, "-p", "udp",
        "-j", "MASQUERADE", "--to-ports", "31000-32000",
    )  # fmt: skip
    a.ip("addr", "add", f"{A_IN}/32", "dev", "lo")
    b.ip("addr", "add", f"{B_IN}/32", "dev", "lo")
    cfg_a = node("a", [peer("b", endpoint=B_UL, local_ts=[A_NET], remote_ts=[B_NET])], behind_nat=True)
    cfg_b = node(
        "b",
        [peer("a", endpoint=None, local_ts=[B_NET], remote_ts=[A_NET], initiate=False, behind_nat=True)],
    )
    ag_b = AgentProc(b, workdir, "b", cfg_b).start()
    ag_a = AgentProc(a, workdir, "a", cfg_a).start()
    assert ag_a.wait_up("b")["natDetected"] is True
    st = ag_b.wait_up("a")
    host, port = st["remoteEndpoint"].rsplit(":", 1)
    assert host == "198.18.0.1" and 31000 <= int(port) <= 32000, st
    _ping(b, A_IN)
    _ping(a, B_IN)
    assert _iperf(b, a, A_IN) >= 20_000_000
