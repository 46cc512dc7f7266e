"""Several peers behind NATs connect to one agent that knows none of their addresses.

The hub's NodeConfig declares two peers behind_nat with no endpoints.  Their IKE_SA_INITs come from
NAT addresses no configuration names, so the hub cannot pick a peer by address: it answers with the
union of what both allow and picks the peer by IDi at IKE_AUTH (meshsec.agent.ike.peerselect, the
runtime's _roaming_config).  Before this, a second roaming peer made the hub refuse both.

- test_two_natted_spokes_reach_the_hub_at_once: the hub in its namespace and two spokes, each behind
  its own NAT router namespace (MASQUERADE with port remapping; both spokes even share one private
  address), start at the same time and authenticate with certificates; the hub binds each IKE SA to
  the right peer (status shows each peer at its own NAT's address and remapped port) and ping goes
  through both tunnels both ways.
- test_charon_with_psk_and_an_agent_with_a_certificate_both_roaming: the same with strongSwan's
  charon as one spoke (PSK, sending IDr) and our agent as the other (certificate): one deferred
  config serves both kinds of credentials, and a real IKEv2 implementation gets its SA.
- test_runtime_binds_sessions_only_once_resolved: the runtime's own responder callbacks driven by
  engine initiators in-process: no Session exists for either SA before IKE_AUTH, then each is bound
  to the peer its identity names (not to the one whose IKE_SA_INIT came first), and the deferred
  config is built once per desired state, not per IKE_SA_INIT.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from meshsec.agent.ike.responder import IkeResponder
from meshsec.agent.ike.session import IkeSession
from meshsec.agent.runtime import mapping
from meshsec.agent.runtime.host import AgentRuntime

from tests.agent.runtime.harness import PSK, AgentProc, TestCa, node, peer
from tests.support.netns import Namespace, Topology
from tests.support.strongswan import Charon, psk_tunnel_conf

pytestmark = pytest.mark.system

HUB_NET, HUB_IN = "198.19.0.0/24", "198.19.0.1"
SPOKES = {  # name: (hub address it talks to, its NAT's outside address, NAT port range, site, site host)
    "s1": ("198.18.0.1", "198.18.0.2", (31000, 32000), "198.19.1.0/24", "198.19.1.1"),
    "s2": ("198.18.2.1", "198.18.2.2", (33000, 34000), "198.19.2.0/24", "198.19.2.1"),
}
INSIDE, GATEWAY = "198.18.1.2", "198.18.1.1"  # each spoke's private address and its NAT's inside one


@pytest.fixture
def lab() -> Iterator[tuple[Topology, str]]:
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-roam-", ignore_cleanup_errors=True) as d,
        Topology("rp") as topo,
    ):
        yield topo, d


def _build(topo: Topology) -> tuple[Namespace, dict[str, Namespace]]:
    """hub <-> nat1 <-> s1 and hub <-> nat2 <-> s2; each NAT remaps source ports into its range."""
    hub = topo.add("hub")
    hub.ip("addr", "add", f"{HUB_IN}/32", "dev", "lo")
    spokes: dict[str, Namespace] = {}
    for i, (name, (hub_ip, nat_ip, (lo, hi), _, site_ip)) in enumerate(SPOKES.items(), 1):
        nat, sp = topo.add(f"nat{i}"), topo.add(name)
        nat_out, _ = topo.link(nat, hub, [f"{nat_ip}/24"], [f"{hub_ip}/24"])
        topo.link(sp, nat, [f"{INSIDE}/24"], [f"{GATEWAY}/24"])
        sp.ip("route", "add", "default", "via", GATEWAY)
        sp.ip("addr", "add", f"{site_ip}/32", "dev", "lo")
        nat.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        nat.run(
            "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", nat_out, "-p", "udp",
            "-j", "MASQUERADE", "--to-ports", f"{lo}-{hi}",
        )  # fmt: skip
        spokes[name] = sp
    return hub, spokes


def _ping(ns: Namespace, dst: str, *agents: AgentProc) -> None:
    r = ns.run("ping", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False)
    assert r.returncode == 0, "\n".join(
        [r.stdout + r.stderr, *(f"{g.status()}\n{g.log_tail()}" for g in agents)]
    )


def test_two_natted_spokes_reach_the_hub_at_once(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    hub_ns, spoke_ns = _build(topo)
    ca = TestCa()
    for name in ("hub", *SPOKES):
        ca.install(f"{workdir}/{name}", f"{name}.meshsec")
    hub_peers = [
        peer(
            n, endpoint=None, local_ts=[HUB_NET], remote_ts=[s[3]], initiate=False, behind_nat=True, psk=None
        )
        for n, s in SPOKES.items()
    ]
    hub = AgentProc(hub_ns, workdir, "hub", node("hub", hub_peers, trusted_ca_pem=ca.pem)).start()
    spokes = {
        n: AgentProc(
            spoke_ns[n],
            workdir,
            n,
            node(
                n,
                [peer("hub", endpoint=s[0], local_ts=[s[3]], remote_ts=[HUB_NET], psk=None)],
                trusted_ca_pem=ca.pem,
                behind_nat=True,
            ),
        )
        for n, s in SPOKES.items()
    }
    errors: list[BaseException] = []

    def start(agent: AgentProc) -> None:
        try:
            agent.start()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(a,)) for a in spokes.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    for name, (_, nat_ip, (lo, hi), _, site_ip) in SPOKES.items():
        st = hub.wait_up(name, timeout=15)
        host, port = st["remoteEndpoint"].rsplit(":", 1)
        assert host == nat_ip and lo <= int(port) <= hi, (name, st)  # bound to the right peer
        assert st["natDetected"] is True
        assert spokes[name].wait_up("hub")["natDetected"] is True
        _ping(hub_ns, site_ip, hub, spokes[name])
        _ping(spoke_ns[name], HUB_IN, hub, spokes[name])
    established = [p["peer"] for p in hub.status()["peers"] if p["ikeState"] == "IKE_SA_STATE_ESTABLISHED"]
    assert sorted(established) == sorted(SPOKES), hub.status()
    log = hub.log_tail(100_000)
    assert "matches no configured peer" not in log and "AUTHENTICATION_FAILED" not in log, log


def test_charon_with_psk_and_an_agent_with_a_certificate_both_roaming(lab: tuple[Topology, str]) -> None:
    """Mixed credentials and a real strongSwan: s1 is charon (PSK, sends IDr = the hub's ID), s2 our
    agent (certificate); both behind their NATs, both unknown by address to the hub."""
    topo, workdir = lab
    hub_ns, spoke_ns = _build(topo)
    ca = TestCa()
    for name in ("hub", "s2"):
        ca.install(f"{workdir}/{name}", f"{name}.meshsec")
    s1, s2 = SPOKES["s1"], SPOKES["s2"]
    hub_peers = [
        peer("s1", endpoint=None, local_ts=[HUB_NET], remote_ts=[s1[3]], initiate=False, behind_nat=True,
             external=True),
        peer("s2", endpoint=None, local_ts=[HUB_NET], remote_ts=[s2[3]], initiate=False, behind_nat=True,
             psk=None),
    ]  # fmt: skip
    hub = AgentProc(hub_ns, workdir, "hub", node("hub", hub_peers, trusted_ca_pem=ca.pem)).start()
    charon = Charon(
        spoke_ns["s1"],
        f"{workdir}/charon",
        psk_tunnel_conf(
            local_addr=INSIDE,
            remote_addr=s1[0],
            local_id="s1.meshsec",
            remote_id="hub.meshsec",
            local_ts=s1[3],
            remote_ts=HUB_NET,
            psk=PSK.decode(),
        ),
    ).start()
    charon.load()
    agent = AgentProc(
        spoke_ns["s2"],
        workdir,
        "s2",
        node(
            "s2",
            [peer("hub", endpoint=s2[0], local_ts=[s2[3]], remote_ts=[HUB_NET], psk=None)],
            trusted_ca_pem=ca.pem,
            behind_nat=True,
        ),
    ).start()
    try:
        charon.initiate("net", "lab")
    except Exception as exc:
        raise AssertionError(f"{exc}\n{hub.log_tail()}") from None
    for name, (_, nat_ip, (lo, hi), _, site_ip) in SPOKES.items():
        st = hub.wait_up(name, timeout=15)
        host, port = st["remoteEndpoint"].rsplit(":", 1)
        assert host == nat_ip and lo <= int(port) <= hi, (name, st)
        _ping(hub_ns, site_ip, hub, agent)
        _ping(spoke_ns[name], HUB_IN, hub, agent)
    assert "INSTALLED" in charon.list_sas(), charon.log_tail()
    sent = [ln for ln in charon.log_tail(100_000).splitlines() if "generating IKE_AUTH request" in ln]
    assert sent and " IDr " in sent[0], sent  # the hub resolved with IDr present, and matched it


# ---------------------------------------------------------------------------- the runtime's binding


def _spoke_config(name: str, psk: bytes) -> Any:
    site = SPOKES[name][3]
    p = peer("hub", endpoint="198.18.0.1", local_ts=[site], remote_ts=[HUB_NET], psk=psk)
    return mapping.ike_config(
        p, node(name, [p]).local, local_addr=(INSIDE, 500), remote_addr=("198.18.0.1", 500)
    )


def test_runtime_binds_sessions_only_once_resolved() -> None:
    now = 1000.0
    psks = {"s1": b"s1-shared-secret-0123456789", "s2": b"s2-shared-secret-0123456789"}
    rt = AgentRuntime(clock=lambda: now)
    rt.desired = node(
        "hub",
        [
            peer(
                n,
                endpoint=None,
                local_ts=[HUB_NET],
                remote_ts=[s[3]],
                initiate=False,
                behind_nat=True,
                psk=psks[n],
            )
            for n, s in SPOKES.items()
        ],
        listen=["198.18.0.1"],
    )
    responder = IkeResponder(rt._config_for, now)
    # s2's IKE_SA_INIT comes first, from the same NAT address as s1's (ports differ)
    spokes = {
        port: (n, IkeSession(_spoke_config(n, psks[n]), now)) for port, n in ((40000, "s2"), (40002, "s1"))
    }

    def deliver(to_responder_only: bool = False) -> None:
        for _ in range(20):
            moved = False
            for port, (_, s) in spokes.items():
                for raw, dst in s.datagrams_to_send(now):
                    moved = True
                    src_port = port if s.local_port == 500 else port + 1
                    responder.receive(raw, ("198.18.0.2", src_port), now, local_port=dst[1])
            if to_responder_only:
                return
            for raw, dst, lport in responder.datagrams_to_send(now):
                moved = True
                base = dst[1] - dst[1] % 2
                s = spokes[base][1]
                s.receive(raw, ("198.18.0.1", lport), now, local_port=500 if dst[1] == base else 4500)
            while (item := responder.next_event()) is not None:
                rt._session(item[0])  # what _on_event does first
            if not moved:
                return

    for _, s in spokes.values():
        s.initiate(now)
    deliver(to_responder_only=True)  # both IKE_SA_INITs in, nothing answered yet
    assert len(responder.sessions) == 2
    first_cfg = responder.sessions[0].config
    assert first_cfg.resolve is not None and responder.sessions[1].config is first_cfg  # built once
    assert all(rt._session(s) is None for s in responder.sessions)  # no peer before IKE_AUTH
    assert not rt._sessions
    deliver()
    assert all(s.established for _, s in spokes.values()), [s.state for _, s in spokes.values()]
    bound = {rt._sessions[id(s)].peer: s for s in responder.sessions}
    assert sorted(bound) == ["s1", "s2"]
    for name, s in bound.items():
        assert s.peer_id == (2, f"{name}.meshsec".encode())
        assert s.config.psk == psks[name]
    assert not rt._pending_cfg  # every resolved config was bound and taken out
