"""SaInstaller's ordering rules against a recording stand-in for the data plane (no I/O), and the
host's order of event handling, IKE sends and outbound switches (AgentRuntime._after_io).

Inbound at once, outbound only once the peer holds the SA: a brand-new child's after the datagrams of
its exchange were sent; a child replacing another IKE SA's copy at once if we initiated, else on the
first packet on it, the old copy's deletion or the switch timer; a rekey moves outbound when the old SA
is deleted (or the switch timer fires); the old inbound SA lives on for the grace period; when a
duplicate IKE SA's child goes, the surviving copy takes the outbound SA over; one SA is never added
twice as outbound (its sequence numbers would restart).  The host installs the new inbound SA before
the IKE message that lets the peer use it goes to the data plane.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from meshsec.agent.esp import Lifetime
from meshsec.agent.ike.events import ChildSaEstablished, ChildSaRekeyed, Event, IkeSaEstablished
from meshsec.agent.runtime import mapping
from meshsec.agent.runtime.host import AgentRuntime
from meshsec.agent.runtime.sas import PeerState, SaInstaller, Session
from meshsec.api.v1 import config_pb2


@dataclass
class FakeIke:
    state: str = "established"
    remote: tuple[str, int] = ("198.18.0.2", 4500)
    encap: bool = True


@dataclass
class FakeCounters:
    packets_in: int = 0
    bytes_in: int = 0
    replay_drops: int = 0
    icv_failures: int = 0
    malformed: int = 0
    policy_drops: int = 0


@dataclass
class FakeSa:
    counters: FakeCounters = field(default_factory=FakeCounters)

    def poll(self, now: float) -> list[Any]:
        return []


@dataclass
class FakeDp:
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def set_peer(self, peer: str, ep: tuple[str, int], mtu: int) -> None:
        self.calls.append(("peer", peer, ep))

    def add_inbound_sa(self, params: Any) -> Any:
        self.calls.append(("in+", params.spi))
        return FakeSa()

    def remove_inbound_sa(self, spi: int) -> None:
        self.calls.append(("in-", spi))

    def add_outbound_sa(self, sa_id: str, params: Any, sels: Any, peer: str) -> None:
        self.calls.append(("out", sa_id, params.spi))

    def send_ike(self, raw: bytes, dst: tuple[str, int], *, nat_t: bool) -> None:
        self.calls.append(("ike", raw))

    def remove_outbound_sa(self, sa_id: str) -> None:
        self.calls.append(("out-", sa_id))


@dataclass
class FakeLoop:
    later: list[tuple[float, Any, tuple[Any, ...]]] = field(default_factory=list)

    def call_later(self, delay: float, fn: Any, *args: Any) -> None:
        self.later.append((delay, fn, args))

    def call_soon(self, fn: Any, *args: Any) -> None:
        pass  # the host's reconcile pass: not under test here

    def run_all(self) -> None:
        pending, self.later = self.later, []
        for _, fn, args in pending:
            fn(*args)


def _ev(spi_in: int, spi_out: int) -> ChildSaEstablished:
    return ChildSaEstablished(
        spi_in=spi_in,
        spi_out=spi_out,
        encr_id=20,
        key_bits=128,
        integ_id=0,
        esn=False,
        mode="tunnel",
        ts_local=tuple(mapping.ike_ts(["198.19.1.0/24"])),
        ts_remote=tuple(mapping.ike_ts(["198.19.2.0/24"])),
        peer=("198.18.0.2", 4500),
        local_port=4500,
        encap=True,
        nat_local=False,
        nat_remote=True,
        lifetime=3600.0,
        keymat_in=bytes(20),
        keymat_out=bytes(20),
        encr_key_len=20,
    )


def _setup() -> tuple[SaInstaller, FakeDp, FakeLoop, list[Session]]:
    dp, loop = FakeDp(), FakeLoop()
    sessions: list[Session] = []
    sas = SaInstaller(
        dp,
        loop,
        lambda: sessions,
        natt_port=4500,
        link_mtu=1500,
        rekey_grace=2.0,
        switch_timeout=1.0,  # type: ignore[arg-type]
    )
    return sas, dp, loop, sessions


def _session(sid: int, sessions: list[Session]) -> Session:
    s = Session(sid, "b", FakeIke(), "d", True)  # type: ignore[arg-type]
    sessions.append(s)
    return s


def test_install_inbound_at_once_outbound_after_the_flush() -> None:
    """A responder's first ESP packet must not overtake the IKE response that gives the peer the SA."""
    sas, dp, _, sessions = _setup()
    s = _session(1, sessions)
    sas.install(s, _ev(0x100, 0x200), "net", PeerState(), "198.18.0.1", Lifetime())
    assert dp.calls == [("peer", "b", ("198.18.0.2", 4500)), ("in+", 0x100)]
    sas.flushed()
    assert dp.calls[-1] == ("out", "b/net", 0x200)
    sas.flushed()  # nothing left: the SA is not added again
    assert len([c for c in dp.calls if c[0] == "out"]) == 1


def _replacing(*, initiated: bool) -> tuple[SaInstaller, FakeDp, FakeLoop, Session, Session, Any]:
    """Session 1 owns b/net's outbound SA; session 2 (a new IKE SA) installs its copy."""
    sas, dp, loop, sessions = _setup()
    s1, s2 = _session(1, sessions), _session(2, sessions)
    sas.install(s1, _ev(0x100, 0x200), "net", PeerState(), "198.18.0.1", Lifetime())
    sas.flushed()
    dp.calls.clear()
    new = sas.install(
        s2, _ev(0x300, 0x400), "net", PeerState(), "198.18.0.1", Lifetime(), initiated=initiated
    )
    sas.flushed()
    return sas, dp, loop, s1, s2, new


def test_replacement_we_initiated_switches_after_the_flush() -> None:
    """Our IKE_AUTH (or CREATE_CHILD_SA) got its response: the peer holds the SA both ways."""
    _, dp, _, _, _, _ = _replacing(initiated=True)
    assert dp.calls[-2:] == [("in+", 0x300), ("out", "b/net", 0x400)]


def test_replacement_as_responder_waits_for_the_first_packet() -> None:
    """Our response may still be on its way: the old IKE SA's copy carries our traffic meanwhile."""
    sas, dp, _, _, s2, new = _replacing(initiated=False)
    assert not [c for c in dp.calls if c[0] == "out"]
    sas.switch_when_used(s2)
    assert not [c for c in dp.calls if c[0] == "out"]
    new.inbound.counters.packets_in = 1
    sas.switch_when_used(s2)
    assert dp.calls[-1] == ("out", "b/net", 0x400)


def test_replacement_as_responder_switches_after_the_timeout() -> None:
    _, dp, loop, _, _, _ = _replacing(initiated=False)
    assert [d for d, fn, _ in loop.later if fn.__name__ == "_pending_due"] == [1.0]
    loop.run_all()
    assert dp.calls[-1] == ("out", "b/net", 0x400)


def test_replacement_as_responder_switches_when_the_old_copy_goes() -> None:
    """The peer deleted the old IKE SA (so it holds the new one): the waiting copy takes over once."""
    sas, dp, loop, s1, _, _ = _replacing(initiated=False)
    sas.session_gone(s1, PeerState())
    assert [c for c in dp.calls if c[0] in ("out", "out-")] == [("out", "b/net", 0x400)]
    loop.run_all()  # the switch timer finds it done: no second add (sequence numbers would restart)
    assert [c for c in dp.calls if c[0] in ("out", "out-")] == [("out", "b/net", 0x400)]


def test_replacement_being_deleted_never_takes_the_outbound() -> None:
    """A duplicate that lost (its session is deleting) must not take traffic when its timer fires."""
    _, dp, loop, _, s2, _ = _replacing(initiated=False)
    s2.ike.state = "deleting"  # type: ignore[attr-defined]
    loop.run_all()
    assert not [c for c in dp.calls if c[0] == "out"]


def test_rekey_of_a_waiting_copy_waits_too() -> None:
    """The peer rekeys the SA we have not switched to yet: its successor inherits the wait."""
    sas, dp, loop, _, s2, _ = _replacing(initiated=False)
    new = sas.rekeyed(s2, ChildSaRekeyed(0x300, 0x400, _ev(0x301, 0x401)), "net", "198.18.0.1", Lifetime())
    sas.flushed()
    assert not [c for c in dp.calls if c[0] == "out"]
    assert dp.calls[-1] == ("in+", 0x301)
    new.inbound.counters.packets_in = 1  # type: ignore[union-attr]
    sas.switch_when_used(s2)
    loop.run_all()  # the first copy's timer no longer switches to it
    assert [c for c in dp.calls if c[0] == "out"] == [("out", "b/net", 0x401)]


def test_rekey_is_make_before_break() -> None:
    sas, dp, loop, sessions = _setup()
    s, ps = _session(1, sessions), PeerState()
    sas.install(s, _ev(0x100, 0x200), "net", ps, "198.18.0.1", Lifetime())
    sas.flushed()
    dp.calls.clear()
    sas.rekeyed(s, ChildSaRekeyed(0x100, 0x200, _ev(0x101, 0x201)), "net", "198.18.0.1", Lifetime())
    assert dp.calls == [("in+", 0x101)]  # new inbound at once, outbound still on the old SA
    sas.child_deleted(s, 0x100, ps)  # the old SA's DELETE is the moment to switch
    assert dp.calls == [("in+", 0x101), ("out", "b/net", 0x201)]  # replaced atomically, never removed
    assert [(d, fn.__name__, args) for d, fn, args in loop.later if d == 2.0] == [
        (2.0, "remove_inbound_sa", (0x100,))
    ]
    loop.run_all()  # the switch timer finds nothing left to do; the grace timer removes the old inbound
    assert dp.calls[-1] == ("in-", 0x100)
    assert [c for c in dp.calls if c[0] == "out"] == [("out", "b/net", 0x201)]


def test_switch_timer_moves_outbound_without_a_delete() -> None:
    sas, dp, loop, sessions = _setup()
    s, ps = _session(1, sessions), PeerState()
    sas.install(s, _ev(0x100, 0x200), "net", ps, "198.18.0.1", Lifetime())
    sas.flushed()
    sas.rekeyed(s, ChildSaRekeyed(0x100, 0x200, _ev(0x101, 0x201)), "net", "198.18.0.1", Lifetime())
    loop.run_all()
    assert dp.calls[-1] == ("out", "b/net", 0x201)
    assert s.children[0x100].state == "retiring"


def test_first_packet_on_the_new_sa_moves_outbound() -> None:
    """The peer sending on the rekeyed SA proves it holds both directions of it."""
    sas, dp, _, sessions = _setup()
    s, ps = _session(1, sessions), PeerState()
    sas.install(s, _ev(0x100, 0x200), "net", ps, "198.18.0.1", Lifetime())
    sas.flushed()
    new = sas.rekeyed(s, ChildSaRekeyed(0x100, 0x200, _ev(0x101, 0x201)), "net", "198.18.0.1", Lifetime())
    sas.switch_when_used(s)
    assert dp.calls[-1] == ("in+", 0x101)  # nothing received on it yet
    new.inbound.counters.packets_in = 1  # type: ignore[union-attr]
    sas.switch_when_used(s)
    assert dp.calls[-1] == ("out", "b/net", 0x201)


def test_duplicate_sa_takes_over_the_outbound_when_the_owner_goes() -> None:
    sas, dp, _, sessions = _setup()
    s1, s2, ps = _session(1, sessions), _session(2, sessions), PeerState()
    sas.install(s1, _ev(0x100, 0x200), "net", ps, "198.18.0.1", Lifetime())
    sas.install(s2, _ev(0x300, 0x400), "net", ps, "198.18.0.1", Lifetime(), initiated=True)
    sas.flushed()  # owner now s2
    dp.calls.clear()
    sas.session_gone(s1, ps)  # not the owner: outbound untouched
    assert ("out-", "b/net") not in dp.calls and not [c for c in dp.calls if c[0] == "out"]
    s1 = _session(3, sessions)
    sas.install(s1, _ev(0x500, 0x600), "net", ps, "198.18.0.1", Lifetime(), initiated=True)
    sas.flushed()
    dp.calls.clear()
    sas.session_gone(s1, ps)  # the owner goes: s2's copy takes over at once
    assert dp.calls[0] == ("out", "b/net", 0x400)
    sas.session_gone(s2, ps)  # the last one goes: outbound removed
    assert ("out-", "b/net") in dp.calls


def test_esp_endpoint_without_nat_is_the_natt_port() -> None:
    sas, _, _, sessions = _setup()
    s = _session(1, sessions)
    s.ike.encap = False  # type: ignore[attr-defined]
    s.ike.remote = ("198.18.0.2", 500)  # type: ignore[attr-defined]
    assert sas.esp_endpoint(s) == ("198.18.0.2", 4500)


# ---------------------------------------------------------------------- the host's order (_after_io)


@dataclass
class FakeSession:
    """An IKE session as the host sees it: its state, remote and config."""

    initiator: bool
    state: str = "established"
    remote: tuple[str, int] = ("198.18.0.2", 4500)
    encap: bool = True
    config: Any = None
    peer_cert: Any = None
    nat_local: bool = False


@dataclass
class FakeDispatcher:
    """IkeResponder's surface for _after_io: one received message's events and datagrams."""

    events: list[tuple[Any, Event]] = field(default_factory=list)
    out: list[tuple[bytes, tuple[str, int], int]] = field(default_factory=list)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int], int]]:
        out, self.out = self.out, []
        return out

    def next_event(self) -> tuple[Any, Event] | None:
        return self.events.pop(0) if self.events else None

    def get_timer(self) -> float | None:
        return None


def _host(initiator: bool) -> tuple[AgentRuntime, FakeDp, FakeDispatcher, FakeSession, Session]:
    rt = AgentRuntime(clock=lambda: 100.0)
    dp, loop, ike = FakeDp(), FakeLoop(), FakeDispatcher()
    rt.desired = config_pb2.NodeConfig()
    rt.desired.local.listen_addresses.append("198.18.0.1")
    rt._loop, rt._dp, rt._ike = loop, dp, ike  # type: ignore[assignment]
    rt._sas = SaInstaller(
        dp, loop, rt._sessions.values, natt_port=4500, link_mtu=1500, rekey_grace=2.0, switch_timeout=1.0
    )  # type: ignore[arg-type]
    fake = FakeSession(initiator)
    s = Session(1, "b", fake, "d", initiator)  # type: ignore[arg-type]
    rt._sessions[id(fake)] = s
    return rt, dp, ike, fake, s


def _run(rt: AgentRuntime, caplog: pytest.LogCaptureFixture) -> None:
    """One _after_io pass, which must handle every event without an error (it logs and goes on)."""
    with caplog.at_level(logging.ERROR, logger="meshsec.agent.runtime"):
        rt._after_io()
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def _auth_established() -> IkeSaEstablished:
    return IkeSaEstablished(b"i" * 8, b"r" * 8, ("198.18.0.2", 4500), (1, b"a"), (1, b"b"), "x")


def test_responder_installs_inbound_before_its_response_leaves_and_outbound_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """IKE_AUTH as responder: the engine queued the response and the ChildSaEstablished together."""
    rt, dp, ike, fake, _ = _host(initiator=False)
    ike.out.append((b"IKE_AUTH response", ("198.18.0.2", 4500), 4500))
    ike.events += [(fake, _auth_established()), (fake, _ev(0x100, 0x200))]
    _run(rt, caplog)
    kinds = [c[0] for c in dp.calls]
    assert kinds.index("in+") < kinds.index("ike") < kinds.index("out")


def test_rekey_initiator_installs_inbound_before_the_delete_of_the_old_sa_leaves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rekey response arrived; the engine queued the DELETE of the old SA with the event.  The
    peer switches on that DELETE, so the new inbound SA must be there first; our outbound stays on
    the old SA until the DELETE is answered."""
    rt, dp, ike, fake, s = _host(initiator=True)
    assert rt._sas is not None
    rt._sas.install(s, _ev(0x100, 0x200), "net", PeerState(), "198.18.0.1", Lifetime())
    rt._sas.flushed()
    dp.calls.clear()
    ike.out.append((b"DELETE old child", ("198.18.0.2", 4500), 4500))
    ike.events.append((fake, ChildSaRekeyed(0x100, 0x200, _ev(0x101, 0x201))))
    _run(rt, caplog)
    assert dp.calls == [("in+", 0x101), ("ike", b"DELETE old child")]


def test_initiator_replacing_an_ike_sa_switches_once_its_auth_response_is_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A new IKE SA we initiated (make-before-break replacement): IKE_AUTH's response proves the peer
    holds the child, so outbound moves in the same pass, inbound first."""
    rt, dp, ike, fake, _ = _host(initiator=True)
    assert rt._sas is not None
    old = Session(7, "b", FakeSession(True), "d", True)  # type: ignore[arg-type]
    rt._sessions[id(old.ike)] = old
    rt._sas.install(old, _ev(0x100, 0x200), "child-00000300", PeerState(), "198.18.0.1", Lifetime())
    rt._sas.flushed()
    dp.calls.clear()
    ike.events += [(fake, _auth_established()), (fake, _ev(0x300, 0x400))]
    _run(rt, caplog)
    assert [c for c in dp.calls if c[0] in ("in+", "out")] == [
        ("in+", 0x300),
        ("out", "b/child-00000300", 0x400),
    ]
