"""IkeResponder.get_timer()/handle_timer() with many IKE SAs: right answers, and no per-session scan.

The adapter calls get_timer() after every datagram and handle_timer() on every timer event; both used
to call get_timer() on every session, so each datagram and each timer event cost O(SAs) (about 6 ms
and 9 ms at 2,000 SAs; found with bench/ike_setup.py).  The responder now keeps each session's
deadline as of its last sync() and asks only the sessions that are due.
"""

from __future__ import annotations

from typing import Any

import pytest
from meshsec.agent.ike.cookies import DosGuard
from meshsec.agent.ike.events import ChildSaEstablished
from meshsec.agent.ike.responder import IkeResponder
from meshsec.agent.ike.session import IkeSession

from tests.agent.ike.harness import A_IP, B_IP, make_configs

N = 20


def _pump(a: IkeResponder, b: IkeResponder, now: float) -> list[Any]:
    events = []
    moved = True
    while moved:
        moved = False
        for src, dst, ip in ((a, b, A_IP), (b, a, B_IP)):
            for raw, _addr, lport in src.datagrams_to_send(now):
                dst.receive(raw, (ip, lport), now, local_port=lport)
                moved = True
        while (item := a.next_event()) is not None:
            events.append(item)
        while b.next_event() is not None:
            pass
    return events


def _expected(r: IkeResponder) -> float | None:
    times = [t for t in (s.get_timer() for s in r.sessions) if t is not None]
    if (g := r.guard.next_deadline()) is not None:
        times.append(g)
    return min(times) if times else None


@pytest.fixture
def pair() -> tuple[IkeResponder, IkeResponder, list[IkeSession], float]:
    now = 1000.0
    a_cfg, b_cfg = make_configs(i_initial_contact=False)
    a = IkeResponder(lambda addr: None, now)
    b = IkeResponder(lambda addr: b_cfg, now, DosGuard(now, cookie_threshold=1000, per_source_limit=1000))
    sessions = [a.initiate(a_cfg, now) for _ in range(N)]
    events = _pump(a, b, now)
    assert sum(isinstance(ev, ChildSaEstablished) for _, ev in events) == N
    return a, b, sessions, now


def test_get_timer_is_the_earliest_session_deadline(pair: Any) -> None:
    a, b, sessions, now = pair
    assert len(a.sessions) == len(b.sessions) == N
    assert a.get_timer() == _expected(a) and a.get_timer() is not None
    assert b.get_timer() == _expected(b)
    # drive one session directly (as the agent's reconcile does), then sync: its new deadline counts
    s = sessions[7]
    s.rekey_child(now + 1.0)
    a.sync(s)
    assert a.get_timer() == s.get_timer() == _expected(a)
    assert a.get_timer() < min(x.get_timer() for x in sessions if x is not s)  # type: ignore[operator]
    _pump(a, b, now + 1.0)
    assert a.get_timer() == _expected(a)
    # a finished session no longer holds a deadline
    s.delete(now + 2.0)
    a.sync(s)
    _pump(a, b, now + 2.0)
    assert s not in a.sessions and a.get_timer() == _expected(a)


def test_get_timer_does_not_ask_every_session(pair: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, _, _ = pair
    calls = 0
    original = IkeSession.get_timer

    def counting(self: IkeSession) -> float | None:
        nonlocal calls
        calls += 1
        return original(self)

    monkeypatch.setattr(IkeSession, "get_timer", counting)
    a.get_timer()
    b.get_timer()
    assert calls == 0


def test_handle_timer_asks_only_sessions_that_are_due(pair: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timer event used to call get_timer() on every session (9 ms at 2,000 SAs, per event)."""
    a, _, sessions, now = pair
    s = sessions[3]
    s.rekey_child(now)  # its CREATE_CHILD_SA request is now pending, due for retransmission first
    a.sync(s)
    a.datagrams_to_send(now)  # "lost": never delivered
    due = a.get_timer()
    assert due is not None and due == s.get_timer()
    asked: list[IkeSession] = []
    original = IkeSession.get_timer

    def recording(self: IkeSession) -> float | None:
        asked.append(self)
        return original(self)

    monkeypatch.setattr(IkeSession, "get_timer", recording)
    a.handle_timer(due - 0.001)  # nothing due yet: nobody is asked, nothing is sent
    assert asked == [] and a.datagrams_to_send(due) == []
    a.handle_timer(due)  # the retransmission of exactly that session goes out
    assert set(asked) == {s}
    out = a.datagrams_to_send(due)
    assert len(out) == 1 and out[0][0][:8] == s.sa.spi_i
