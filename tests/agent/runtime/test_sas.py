"""SaInstaller's ordering rules against a recording stand-in for the data plane (no I/O).

Inbound before outbound; a rekey installs the new inbound at once and moves outbound only when the old
SA is deleted (or the switch timer fires); the old inbound SA lives on for the grace period; when a
duplicate IKE SA's child goes, the surviving copy takes the outbound SA over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshsec.agent.esp import Lifetime
from meshsec.agent.ike.events import ChildSaEstablished, ChildSaRekeyed
from meshsec.agent.runtime import mapping
from meshsec.agent.runtime.sas import PeerState, SaInstaller, Session


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

    def remove_outbound_sa(self, sa_id: str) -> None:
        self.calls.append(("out-", sa_id))


@dataclass
class FakeLoop:
    later: list[tuple[float, Any, tuple[Any, ...]]] = field(default_factory=list)

    def call_later(self, delay: float, fn: Any, *args: Any) -> None:
        self.later.append((delay, fn, args))

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


def test_install_inbound_before_outbound() -> None:
    sas, dp, _, sessions = _setup()
    s = _session(1, sessions)
    sas.install(s, _ev(0x100, 0x200), "net", PeerState(), "198.18.0.1", Lifetime())
    assert dp.calls == [("peer", "b", ("198.18.0.2", 4500)), ("in+", 0x100), ("out", "b/net", 0x200)]


def test_rekey_is_make_before_break() -> None:
    sas, dp, loop, sessions = _setup()
    s, ps = _session(1, sessions), PeerState()
    sas.install(s, _ev(0x100, 0x200), "net", ps, "198.18.0.1", Lifetime())
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
    sas.rekeyed(s, ChildSaRekeyed(0x100, 0x200, _ev(0x101, 0x201)), "net", "198.18.0.1", Lifetime())
    loop.run_all()
    assert dp.calls[-1] == ("out", "b/net", 0x201)
    assert s.children[0x100].state == "retiring"


def test_first_packet_on_the_new_sa_moves_outbound() -> None:
    """The peer sending on the rekeyed SA proves it holds both directions of it."""
    sas, dp, _, sessions = _setup()
    s, ps = _session(1, sessions), PeerState()
    sas.install(s, _ev(0x100, 0x200), "net", ps, "198.18.0.1", Lifetime())
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
    sas.install(s2, _ev(0x300, 0x400), "net", ps, "198.18.0.1", Lifetime())  # owner now s2
    dp.calls.clear()
    sas.session_gone(s1, ps)  # not the owner: outbound untouched
    assert ("out-", "b/net") not in dp.calls and not [c for c in dp.calls if c[0] == "out"]
    sas.install(s1 := _session(3, sessions), _ev(0x500, 0x600), "net", ps, "198.18.0.1", Lifetime())
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
