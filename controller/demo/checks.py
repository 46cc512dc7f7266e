"""What "up" and "green" mean for the demo, as pure functions of AdminService status and tool output.

Owns the success criteria of the SA and traffic steps, so a partial stack fails at the step that is
actually missing and says what is missing: an agent that does not report IKE at all, an IKE SA that
is stuck, a child SA that is not installed, a ping that is answered but did not go through ESP.  No
I/O here; the demo feeds in GetStatus responses and ping/iperf3 output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from meshsec.api.v1 import admin_pb2, spec_pb2, status_pb2

ChildKey = tuple[str, str, str]  # (node, peer, child SA name)

_PING = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def _ike(state: int) -> str:
    return status_pb2.IkeSaState.Name(state).removeprefix("IKE_SA_STATE_")


def _child(state: int) -> str:
    return status_pb2.ChildSaState.Name(state).removeprefix("CHILD_SA_STATE_")


@dataclass(frozen=True)
class SaProblem:
    """One SA that is not up yet: which node sees it, and why, in one line."""

    node: str
    text: str


def _mode(mode: int) -> str:
    return "transport" if mode == spec_pb2.MODE_TRANSPORT else "tunnel"


def sa_problems(
    expected: dict[str, dict[str, set[str]]],
    status: admin_pb2.GetStatusResponse,
    modes: dict[str, str] | None = None,
) -> list[SaProblem]:
    """Every expected IKE SA established and every expected child SA installed, as each node reports it,
    and (with `modes`, child SA name -> "transport"|"tunnel") in the mode its policy says.

    Empty means all up.  Both ends must report (each side's view is checked), so a half-open SA shows.
    """
    nodes = {n.node: n for n in status.nodes}
    problems = []
    for node in sorted(expected):
        st = nodes.get(node)
        if st is None:
            problems.append(SaProblem(node, f"{node}: no status report yet"))
            continue
        for err in st.errors:
            problems.append(SaProblem(node, f"{node}: {err}"))
        peers = {p.peer: p for p in st.peers}
        for peer in sorted(expected[node]):
            p = peers.get(peer)
            if p is None:
                problems.append(SaProblem(node, f"{node} → {peer}: peer not reported"))
                continue
            if p.ike_state != status_pb2.IKE_SA_STATE_ESTABLISHED:
                why = f", last error: {p.last_error}" if p.last_error else ""
                hint = (
                    " (the agent reports no IKE state at all: is its IKE runtime running?)"
                    if p.ike_state == status_pb2.IKE_SA_STATE_UNSPECIFIED
                    else ""
                )
                problems.append(SaProblem(node, f"{node} → {peer}: IKE {_ike(p.ike_state)}{why}{hint}"))
                continue
            children = {c.name: c for c in p.children}
            why = f", last error: {p.last_error}" if p.last_error else ""
            for name in sorted(expected[node][peer]):
                c = children.get(name)
                if c is None:
                    problems.append(SaProblem(node, f"{node} → {peer}: child SA {name!r} missing{why}"))
                elif c.state not in (status_pb2.CHILD_SA_STATE_INSTALLED, status_pb2.CHILD_SA_STATE_REKEYING):
                    problems.append(SaProblem(node, f"{node} → {peer}: child SA {name!r} {_child(c.state)}"))
                elif modes and name in modes and _mode(c.mode) != modes[name]:
                    text = (
                        f"{node} → {peer}: child SA {name!r} is in {_mode(c.mode)} mode, want {modes[name]}"
                    )
                    problems.append(SaProblem(node, text))
    return problems


def shared_ike_sas(status: admin_pb2.GetStatusResponse) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(node, peer, [(child SA, mode), ...]) for every peer with more than one child SA on its IKE SA,
    each pair once (from the node with the lower name): where transport and tunnel mode share an SA."""
    out = []
    for n in sorted(status.nodes, key=lambda n: n.node):
        for p in sorted(n.peers, key=lambda p: p.peer):
            names = sorted({(c.name, _mode(c.mode)) for c in p.children})
            if n.node < p.peer and len(names) > 1:
                out.append((n.node, p.peer, names))
    return out


def count_sas(expected: dict[str, dict[str, set[str]]]) -> tuple[int, int]:
    """(IKE SAs, child SA pairs) in the mesh: each pair is listed by both of its nodes."""
    ike = sum(len(peers) for peers in expected.values()) // 2
    child = sum(len(c) for peers in expected.values() for c in peers.values()) // 2
    return ike, child


def child_counters(status: admin_pb2.GetStatusResponse) -> dict[ChildKey, tuple[int, int]]:
    """(node, peer, child) -> (packets in, packets out), summed over SAs of the same name (rekeys)."""
    out: dict[ChildKey, tuple[int, int]] = {}
    for n in status.nodes:
        for p in n.peers:
            for c in p.children:
                key = (n.node, p.peer, c.name)
                pin, pout = out.get(key, (0, 0))
                out[key] = (pin + c.counters.packets_in, pout + c.counters.packets_out)
    return out


def ping_received(output: str) -> tuple[int, int]:
    """(transmitted, received) from iputils ping's summary line; (0, 0) if there is none."""
    m = _PING.search(output)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def through_esp(
    before: dict[ChildKey, tuple[int, int]],
    after: dict[ChildKey, tuple[int, int]],
    sender: str,
    receiver: str,
    child: str,
    packets: int,
) -> bool:
    """Did at least `packets` go out on the sender's child SA to the receiver, and come in at the other end?

    This is what makes a green ping mean "through the mesh": host-to-host pings would also be answered
    in the clear over the underlay if transport mode were not in the path.
    """
    k_out, k_in = (sender, receiver, child), (receiver, sender, child)
    sent = after.get(k_out, (0, 0))[1] - before.get(k_out, (0, 0))[1]
    got = after.get(k_in, (0, 0))[0] - before.get(k_in, (0, 0))[0]
    return sent >= packets and got >= packets


@dataclass(frozen=True)
class IperfResult:
    ok: bool
    bits_per_second: float
    bytes: int
    error: str


def iperf_result(stdout: str) -> IperfResult:
    """The receiver-side total of an `iperf3 -J` client run, or its error."""
    try:
        data = json.loads(stdout)
    except ValueError:
        return IperfResult(False, 0.0, 0, "iperf3 printed no JSON")
    if data.get("error"):
        return IperfResult(False, 0.0, 0, str(data["error"]))
    received = data.get("end", {}).get("sum_received", {})
    nbytes = int(received.get("bytes", 0))
    bps = float(received.get("bits_per_second", 0.0))
    return IperfResult(nbytes > 0, bps, nbytes, "" if nbytes > 0 else "no bytes received")
