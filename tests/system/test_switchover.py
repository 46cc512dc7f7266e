"""Make-before-break is exact: whole IKE SAs replaced over and over under a 100 pps ping lose nothing.

Two of our agents in their own namespaces (as in test_agent_pair.py).  Each round changes the ESP
proposal and swaps the initiator role in both NodeConfigs (the new responder's first, as a controller's
pushes may arrive), so the new initiator builds a new IKE SA with the new child and the old one is
deleted: each agent is the initiator of half the replacements and the responder of the other half.  A
responder must keep sending on the old SA until the initiator holds the new one, and each side must
install its new inbound SA before the IKE message that lets the peer use it leaves.  One lost packet
fails the test (before the fix about one replacement in 25 lost one).  A stress check, not a timed
test: the clock only bounds the rounds.
"""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.agent.runtime.harness import AgentProc, node, peer, wait
from tests.support.netns import Namespace, Topology

pytestmark = pytest.mark.system

A_UL, B_UL = "198.18.0.1", "198.18.0.2"
A_NET, B_NET = "198.19.1.0/24", "198.19.2.0/24"
A_IN, B_IN = "198.19.1.1", "198.19.2.1"
TRANSFORMS = ("chacha20poly1305", "aes256gcm16", "aes128gcm16")
ROUNDS = 25
ROUNDS_WITHIN = 30.0  # seconds; a round takes about 0.7 s


@pytest.fixture
def lab() -> Iterator[tuple[Topology, str]]:
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-switch-", ignore_cleanup_errors=True) as d,
        Topology("sw") as topo,
    ):
        yield topo, d


def _configs(esp: str, a_initiates: bool) -> tuple[object, object]:
    pa = peer(
        "b", endpoint=B_UL, local_ts=[A_NET], remote_ts=[B_NET], esp_proposals=[esp], initiate=a_initiates
    )
    pb = peer(
        "a", endpoint=A_UL, local_ts=[B_NET], remote_ts=[A_NET], esp_proposals=[esp], initiate=not a_initiates
    )
    return node("a", [pa]), node("b", [pb])


def _hosts(topo: Topology) -> tuple[Namespace, Namespace]:
    a, b = topo.add("a"), topo.add("b")
    topo.link(a, b, [f"{A_UL}/24"], [f"{B_UL}/24"])
    for ns, addr in ((a, A_IN), (b, B_IN)):
        ns.ip("addr", "add", f"{addr}/32", "dev", "lo")
    return a, b


def _replaced(agent: AgentProc, peer_name: str, transform: str, closed: int) -> bool:
    """The agent's current IKE SA with the peer carries one Child SA of `transform`, and it has closed
    `closed` IKE SAs in all (the replaced ones: the status shows the current SA only)."""
    st = agent.peer_status(peer_name)
    with open(agent.log_path, encoding="utf-8", errors="replace") as fh:
        n = fh.read().count(": closed: ")
    return [c["transform"] for c in st.get("children", [])] == [transform] and n >= closed


def test_ike_sa_replacements_under_100pps_ping_lose_nothing(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    a, b = _hosts(topo)
    cfg_a, cfg_b = _configs("aes128gcm16", True)
    ag_b = AgentProc(b, workdir, "b", cfg_b).start()  # type: ignore[arg-type]
    ag_a = AgentProc(a, workdir, "a", cfg_a).start()  # type: ignore[arg-type]
    ag_a.wait_up("b")
    ag_b.wait_up("a")
    spis: set[str] = {ag_a.children("b")[0]["spiIn"]}
    ping = a.popen(["ping", "-i", "0.01", "-W", "1", B_IN], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        deadline = time.monotonic() + ROUNDS_WITHIN
        done = 0
        while done < ROUNDS and time.monotonic() < deadline:
            esp = TRANSFORMS[done % len(TRANSFORMS)]
            a_initiates = done % 2 == 1
            cfg_a, cfg_b = _configs(esp, a_initiates)
            (first, cfg_1), (then, cfg_2) = ((ag_b, cfg_b), (ag_a, cfg_a))[:: 1 if a_initiates else -1]
            first.write_config(cfg_1)  # type: ignore[arg-type]
            first.signal(signal.SIGHUP)
            time.sleep(0.05)
            then.write_config(cfg_2)  # type: ignore[arg-type]
            then.signal(signal.SIGHUP)
            n = done + 1

            def replaced(esp: str = esp, n: int = n) -> bool:
                return _replaced(ag_a, "b", esp, n) and _replaced(ag_b, "a", esp, n)

            wait(replaced, 8, f"round {n}: {esp}")
            spis.add(ag_a.children("b")[0]["spiIn"])
            done += 1
        time.sleep(1.0)  # the last round's old inbound SAs are gone by now (rekey_grace)
    finally:
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=10)
    logs = ag_a.log_tail() + ag_b.log_tail()
    assert done == ROUNDS, f"only {done} replacements in {ROUNDS_WITHIN:.0f} s\n{logs}"
    assert len(spis) == ROUNDS + 1, logs  # every round really replaced the SA
    # Every echo request got its reply, but for the one that may have been in flight at the SIGINT:
    # the replies' sequence numbers have no gap.
    seqs = [int(m) for m in re.findall(r"bytes from .* icmp_seq=(\d+)", out)]
    assert len(seqs) >= 10 * ROUNDS, out[-400:]  # traffic all along (a round takes 0.3 to 1 s)
    lost = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
    assert not lost, f"lost echo requests {lost}\n{out[-400:]}\n{logs}"
    assert int(ag_a.peer_status("b")["children"][0]["counters"].get("replayDrops", 0)) == 0
