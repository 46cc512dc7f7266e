"""Data-plane faults on a fleet: SIGKILL + restart, rekeys under load, a node behind NAT, SIGTERM DELETE.

Issue #6's fault tests that concern the tunnels themselves, each on its own fleet from
tests/system/fleet.py: a 3-member etcd cluster on loopback, 2 controller replicas (agents spread over
both, reaching them over unix sockets) and 4 or 5 `meshsec-agent` processes running the runtime
reconciler, each in its own namespace on one underlay bridge; node i has subnet 198.19.i.0/24 with
198.19.i.1 on its loopback, so a ping between those addresses goes through the pair's tunnel.

Timings and SA identities come from the agents' own log lines (asctime in ms, SPIs), so the status
report interval (1 s) does not blur what is asserted; the controller's GetStatus (what `meshctl
status` shows) is checked where a reported field is the point: NAT detected, the endpoint a peer sees,
the reason a peer gives for a lost SA, no stale SA left.  The log lines read are the runtime's
"peer P: child C installed (in X, out Y" / "rekeyed (in X -> Y)" / "peer P: deleted by peer" and the
IKE engine's "IKE <SPIi_SPIr>: rekeyed, now ..." / "the peer restarted (INITIAL_CONTACT)": change
them together with the patterns below.  Owns only this module; builds nothing of its own but the NAT
router namespace (removed with the fleet's topology).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc, status_pb2

from tests.controller import harness as h
from tests.support.netns import Namespace
from tests.system.fleet import Agent, Fleet, Member, wait_until

pytestmark = pytest.mark.system

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
START_MARK = re.compile(r"^==== fleet: start #(\d+) at ([\d.]+)$", re.M)
INSTALLED = r"peer (\S+): child (\S+) installed \(in ([0-9a-f]{8}), out ([0-9a-f]{8})"
CHILD_REKEYED = r"peer (\S+): child (\S+) rekeyed \(in ([0-9a-f]{8}) -> ([0-9a-f]{8})\)"
IKE_REKEYED = r"IKE ([0-9a-f]+_[0-9a-f]+): rekeyed, now ([0-9a-f]+_[0-9a-f]+)"
FAST_PROFILE = """\
profiles:
  - name: fast
    ike: {rekey: 8s, life: 12s, jitter: 1s}
    esp: {rekey: 3s, life: 5s, jitter: 1s}
"""
NAT_UPLINK = "198.18.0.100"  # the router's address on the fleet's underlay
NAT_PORTS = (31000, 32000)  # MASQUERADE remaps source ports into this range
IKE_XCHG = "0>>22&0x3C@26>>24"  # iptables u32: the IKE header's exchange type (UDP payload octet 18)


# ---------------------------------------------------------------------------------------- log reading
def current_run(agent: Agent) -> tuple[float, str]:
    """(time.time() right before the last start, the log of that run) — the fleet marks each start."""
    text = agent.log()
    marks = list(START_MARK.finditer(text))
    assert marks, f"no start marker in {agent.log_path}"
    return float(marks[-1].group(2)), text[marks[-1].end() :]


def log_events(text: str, pattern: str) -> list[tuple[float, re.Match[str]]]:
    """(wall time, match) of every log line whose message matches `pattern`."""
    out = []
    for line in text.splitlines():
        stamp = LOG_TIME.match(line)
        m = re.search(pattern, line) if stamp else None
        if stamp and m:
            when = datetime.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((when, m))
    return out


def installs(text: str, peer: str) -> list[tuple[float, str, str]]:
    """(log time, SPI in, SPI out) of every Child SA installed with `peer` in this log text."""
    return [(t, m.group(3), m.group(4)) for t, m in log_events(text, INSTALLED) if m.group(1) == peer]


def logs(fleet: Fleet, *names: str) -> str:
    return "\n".join(f"--- {n} ---\n{fleet.agents[n].log()[-3000:]}" for n in names)


# ---------------------------------------------------------------------------------------- status
def reported(fleet: Fleet) -> dict[str, status_pb2.NodeStatus]:
    """Every node's last NodeStatus as the controller has it (what `meshctl status` shows)."""

    async def get() -> admin_pb2.GetStatusResponse:
        async with h.admin_channel(fleet.live_controller().admin, fleet.state) as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            return await stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)

    resp = asyncio.run(get())
    return {n.node: n for n in resp.nodes}


def peer_status(st: dict[str, status_pb2.NodeStatus], node: str, peer: str) -> status_pb2.PeerStatus | None:
    return next((p for p in st[node].peers if p.peer == peer), None) if node in st else None


def wait_reported(fleet: Fleet, check: Callable[[dict[str, status_pb2.NodeStatus]], bool], what: str) -> None:
    """Poll GetStatus until `check` holds (agents report every second); the last status on failure."""
    last: dict[str, status_pb2.NodeStatus] = {}

    def ok() -> bool:
        nonlocal last
        last = reported(fleet)
        return check(last)

    try:
        wait_until(ok, 5.0, what, interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{list(last.values())}") from None


# ---------------------------------------------------------------------------------------- the tests
def test_sigkilled_agent_restarted_has_every_tunnel_back_within_5s(fleet: Fleet) -> None:
    """SIGKILL leaves every peer holding SAs of the dead run.  The restarted agent (from its cached
    desired state) initiates at once to the peers it initiates to, and after its boot-contact delay to
    the one that normally initiates to it, each time with INITIAL_CONTACT, which makes the peer drop
    the stale SAs.  Timed from the new process's start to the last Child SA installed at both ends."""
    victim = "node-2"  # responder towards node-1, initiator towards node-3 and node-4
    peers = [n for n in fleet.members if n != victim]
    stale = {p: installs(fleet.agents[p].log(), victim)[-1][1] for p in peers}  # their inbound SPIs
    fleet.kill_agent(victim, signal.SIGKILL)
    for p in peers:  # no DELETE went out: each peer still holds its SA with the dead run
        assert victim in (fleet.agents[p].peers_up() or set()), logs(fleet, p)
    fleet.start_agent(victim)

    def both_ends() -> dict[str, float] | None:
        t0, mine = current_run(fleet.agents[victim])
        done = {}
        for p in peers:
            ours = installs(mine, p)
            if not ours:
                return None
            t_ours, spi_in, spi_out = ours[-1]
            theirs = [t for t, i, o in installs(fleet.agents[p].log(), victim) if (i, o) == (spi_out, spi_in)]
            if not theirs:
                return None
            done[p] = round(max(t_ours, theirs[-1]) - t0, 3)
        return done

    try:
        back: dict[str, float] = wait_until(both_ends, 15.0, "the restarted agent's SAs at both ends")  # type: ignore[assignment]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(fleet, victim, *peers)}") from None
    print(f"\nSIGKILL + restart: SAs installed at both ends, seconds after process start: {back}")
    assert max(back.values()) < 5.0, back
    for p in peers:  # each stale SA went by INITIAL_CONTACT; traffic flows both ways
        assert "the peer restarted (INITIAL_CONTACT)" in fleet.agents[p].log(), logs(fleet, p)
        for src, dst in ((victim, p), (p, victim)):
            r = fleet.ping(src, dst, 2)
            assert r.lost == 0, f"{src} -> {dst}: {r.output}\n{logs(fleet, src, dst)}"

    def one_fresh_sa(st: dict[str, status_pb2.NodeStatus]) -> bool:
        for p in peers:
            ps = peer_status(st, p, victim)
            if ps is None or ps.ike_state != status_pb2.IKE_SA_STATE_ESTABLISHED:
                return False
            spis = [f"{c.spi_in:08x}" for c in ps.children]
            if len(spis) != 1 or stale[p] in spis:
                return False
        return True

    wait_reported(fleet, one_fresh_sa, "peers reporting one fresh SA with the restarted node, none stale")


def test_rekeys_every_few_seconds_under_iperf3_lose_no_ping(make_fleet: Callable[..., Fleet]) -> None:
    """A profile with ESP rekeys every ~3 s and IKE rekeys every ~8 s: while iperf3 pushes TCP between
    two nodes' subnets, a 100 pps ping between the same subnets loses nothing (make-before-break),
    and the rekeys did happen on that pair during the stream (counted in both agents' logs)."""
    fleet = make_fleet(4, spec_extra=FAST_PROFILE, policy_extra=["profile: fast"])
    a, b = "node-1", "node-3"
    ma, mb = fleet.members[a], fleet.members[b]
    na, nb = fleet.agents[a].ns, fleet.agents[b].ns
    seconds = 12
    srv = nb.popen(
        ["iperf3", "-s", "-1", "-B", mb.overlay], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_until(lambda: ":5201" in nb.run("ss", "-ltn", check=False).stdout, 5, "iperf3 server")
    t0 = time.time()
    client = na.popen(
        ["iperf3", "-c", mb.overlay, "-B", ma.overlay, "-t", str(seconds), "-b", "100M", "-J"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pinger = na.popen(  # -D: a lost probe can be placed in time, against the agents' rekey log lines
        ["ping", "-n", "-D", "-I", ma.overlay, "-i", "0.01", "-c", str(seconds * 100), "-W", "1", mb.overlay],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pings, _ = pinger.communicate(timeout=seconds + 30)
    out, err = client.communicate(timeout=seconds + 15)
    t1 = time.time()
    srv.wait(timeout=5)
    assert client.returncode == 0, out[-2000:] + err
    sent = int(json.loads(out)["end"]["sum_sent"]["bytes"])
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", pings)
    assert summary, pings[-2000:]

    def during(name: str, pattern: str) -> list[re.Match[str]]:
        return [m for t, m in log_events(fleet.agents[name].log(), pattern) if t0 <= t <= t1]

    child_a = [m for m in during(a, CHILD_REKEYED) if m.group(1) == b]
    child_b = [m for m in during(b, CHILD_REKEYED) if m.group(1) == a]
    # an IKE SA's name (SPIi_SPIr) is the same at both ends: the a-b SA is the one both logs name
    ike = {m.group(1) for m in during(a, IKE_REKEYED)} & {m.group(1) for m in during(b, IKE_REKEYED)}
    print(
        f"\n{seconds}s iperf3 {sent / 1e6:.0f} MB, ping {summary.group(2)}/{summary.group(1)}; {a}-{b}: "
        f"child rekeys {len(child_a)} (seen at {b}: {len(child_b)}), IKE rekeys {len(ike)}"
    )
    lost = _lost_probes(pings, seconds * 100)
    assert summary.group(1) == summary.group(2) == str(seconds * 100), (
        f"{lost}\n{summary.group(0)}\n{_drops(fleet, a, b)}\n{logs(fleet, a, b)}"
    )
    assert len(child_a) >= 3 and len(child_b) >= 3, logs(fleet, a, b)
    assert len(ike) >= 1, logs(fleet, a, b)
    assert sent > seconds * 5_000_000  # the stream ran throughout, at ~100 Mbit/s
    for name in fleet.agents:
        assert "Traceback" not in fleet.agents[name].log(), logs(fleet, name)


def _lost_probes(ping_output: str, count: int) -> str:
    """Which probes never got a reply, each with the time of the last reply before it (ping -D), to
    set against the agents' rekey log lines."""
    replies = {
        int(m.group(2)): float(m.group(1))
        for m in re.finditer(r"^\[([\d.]+)\].*icmp_seq=(\d+) ", ping_output, re.M)
    }
    lost = [q for q in range(1, count + 1) if q not in replies]
    where = []
    for q in lost[:10]:
        before = max((t for k, t in replies.items() if k < q), default=0.0)
        stamp = datetime.datetime.fromtimestamp(before).strftime("%H:%M:%S,%f")[:-3]
        where.append(f"seq {q} (last reply before it at {stamp})")
    return f"lost probes: {len(lost)}: " + ", ".join(where)


def _drops(fleet: Fleet, *names: str) -> str:
    """Each agent's non-zero drop counters (meshsec_agent_drops_total by direction and reason)."""
    out = []
    for n in names:
        m = fleet.agents[n].metrics()
        drops = {
            dict(k[1]).get("reason", "?"): v
            for k, v in m.items()
            if k[0].startswith("meshsec_agent_drops") and v
        }
        out.append(f"{n} drops: {drops}")
    return "; ".join(out)


def _forward_counts(router: Namespace) -> dict[str, int]:
    """Packets counted by the router's FORWARD accounting rules, keyed by their comment."""
    out = router.run("iptables", "-L", "FORWARD", "-v", "-x", "-n").stdout
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\s+\d+\s.*/\* (\S+) \*/", out, re.M)}


def _nat_router(fleet: Fleet, inner: Namespace) -> Namespace:
    """A router on the underlay (NAT_UPLINK) with `inner` behind it on 198.18.5.0/24: UDP leaving is
    MASQUERADEd into NAT_PORTS; FORWARD rules only count: NAT-T each way, IKE on port 500 by exchange
    type (IKE_SA_INIT = 34, or any later one), raw ESP."""
    assert fleet.switch is not None
    router = fleet.topo.add("nat")
    sw_if, uplink = fleet.topo.link(fleet.switch, router, [], [f"{NAT_UPLINK}/24"])
    fleet.switch.ip("link", "set", sw_if, "master", "br0")
    fleet.topo.link(router, inner, ["198.18.5.1/24"], ["198.18.5.2/24"])
    inner.ip("route", "add", "default", "via", "198.18.5.1")
    router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    router.run(
        "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", uplink, "-p", "udp",
        "-j", "MASQUERADE", "--to-ports", f"{NAT_PORTS[0]}-{NAT_PORTS[1]}",
    )  # fmt: skip
    for comment, match in (
        ("natt-out", ["-o", uplink, "-p", "udp", "--dport", "4500"]),
        ("natt-in", ["-i", uplink, "-p", "udp", "--sport", "4500"]),
        ("ike-init", ["-o", uplink, "-p", "udp", "--dport", "500", "-m", "u32", "--u32", f"{IKE_XCHG}=34"]),
        (
            "ike-other",
            ["-o", uplink, "-p", "udp", "--dport", "500", "-m", "u32", "--u32", f"{IKE_XCHG}=35:255"],
        ),
        ("raw-esp", ["-p", "esp"]),
    ):
        router.run("iptables", "-A", "FORWARD", *match, "-m", "comment", "--comment", comment)
    return router


def test_node_behind_nat_joins_and_carries_traffic_both_ways(fleet: Fleet) -> None:
    """node-5 sits behind a router doing MASQUERADE with port remapping and is declared behindNat
    without endpoints.  It joins the running fleet: it initiates to every peer, detects the NAT,
    floats to 4500, and all its ESP crosses the NAT as UDP (to the peers' port 4500, back to the
    remapped port the peers learnt from IKE); pings go both ways through every one of its tunnels."""
    name = "node-5"
    others = list(fleet.members)
    fleet.members[name] = Member(name, 5, endpoints=[], behind_nat=True)
    inner = fleet.new_host(name, attach=False)
    router = _nat_router(fleet, inner)
    agent = fleet.start_agent(name)
    wait_until(lambda: "connected to controller" in agent.log() or not agent.alive(), 15, f"{name} connected")
    fleet.apply()
    fleet.wait_all_sas_up(15)
    t0, text = current_run(agent)
    joined = max(installs(text, p)[-1][0] for p in others) - t0
    for p in others:
        for src, dst in ((name, p), (p, name)):
            r = fleet.ping(src, dst, 2)
            assert r.lost == 0, f"{src} -> {dst}: {r.output}\n{logs(fleet, src, dst)}"

    def nat_seen(st: dict[str, status_pb2.NodeStatus]) -> bool:
        mine = [peer_status(st, name, p) for p in others]
        if not all(ps is not None and ps.nat_detected for ps in mine):
            return False
        for p in others:
            ps = peer_status(st, p, name)
            if ps is None or not ps.nat_detected or ":" not in ps.remote_endpoint:
                return False
            host, port = ps.remote_endpoint.rsplit(":", 1)
            if host != NAT_UPLINK or not NAT_PORTS[0] <= int(port) <= NAT_PORTS[1]:
                return False
        return True

    wait_reported(fleet, nat_seen, "NAT detected at both ends, the peers seeing the remapped endpoint")
    counts = _forward_counts(router)
    print(f"\nnode behind NAT: every SA {joined:.2f}s after its agent started; router counted {counts}")
    assert counts["raw-esp"] == 0, counts
    assert counts["natt-out"] >= 4 * len(others) and counts["natt-in"] >= 4 * len(others), counts
    # port 500 carried IKE_SA_INIT (one per peer, or more if retransmitted) and nothing after it: from
    # IKE_AUTH on, node-5 floated to 4500 (RFC 7296 §2.23)
    assert counts["ike-init"] >= len(others) and counts["ike-other"] == 0, counts


def test_sigterm_deletes_sas_at_every_peer_not_by_dpd(fleet: Fleet) -> None:
    """SIGTERM: the agent sends DELETE for each IKE SA before it exits, so every peer drops its SAs
    with it within a second and says the peer deleted them (DPD would take 30 s + 150 s)."""
    victim = "node-3"  # responder towards node-1 and node-2, initiator towards node-4
    peers = [n for n in fleet.members if n != victim]
    for p in peers:
        assert fleet.ping(p, victim, 1).lost == 0
    t0 = time.time()
    code = fleet.kill_agent(victim, signal.SIGTERM)
    exited = time.time() - t0
    assert code == 0, logs(fleet, victim)

    def dropped() -> dict[str, float] | None:
        got = {p: log_events(fleet.agents[p].log(), rf"peer {victim}: deleted by peer") for p in peers}
        if not all(got.values()):
            return None
        return {p: round(v[-1][0] - t0, 3) for p, v in got.items()}

    try:
        lag: dict[str, float] = wait_until(dropped, 3.0, "DELETE seen at every peer", interval=0.05)  # type: ignore[assignment]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(fleet, victim, *peers)}") from None
    print(f"\nSIGTERM: peers dropped the SAs {lag} s after the signal; the agent exited after {exited:.2f}s")
    assert max(lag.values()) < 1.0, lag
    for p in peers:  # the DELETE, not liveness: no DPD, no retransmission timeout at any peer
        after = [m.group(0) for t, m in log_events(fleet.agents[p].log(), r".*") if t >= t0]
        assert not [x for x in after if re.search(r"dead|liveness|retransmi", x)], logs(fleet, p)

    def gone(st: dict[str, status_pb2.NodeStatus]) -> bool:
        for p in peers:
            ps = peer_status(st, p, victim)
            if ps is None or ps.ike_state == status_pb2.IKE_SA_STATE_ESTABLISHED or ps.children:
                return False
            if "deleted by peer" not in ps.last_error:
                return False
        return True

    wait_reported(fleet, gone, "peers reporting the SA gone, 'deleted by peer'")
