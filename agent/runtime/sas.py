"""Child SA bookkeeping between the IKE engine's events and the ESP data plane.

Owns the records of IKE sessions and their Child SAs as the host sees them, and the install rules,
which are strongSwan's: a new inbound SA goes in at once, before the IKE message that lets the peer use
it leaves (the host handles events before it flushes datagrams); our outbound traffic moves to a new SA
only once the peer holds it:
- a brand-new child (nothing sends for it yet): right after the host flushed the exchange's datagrams
  (`flushed`), so a responder's first packet never overtakes its own response;
- a child whose traffic another IKE SA's copy carries now (a new IKE SA replacing an old one after
  re-authentication or a config change, or a duplicate): right after the flush if we initiated the
  exchange (its response proves the peer installed it), else when the first packet arrives on it, when
  the copy it replaces is deleted, or `switch_timeout` later;
- a rekeyed child: when the old SA is deleted, the first packet arrives on the new one, or
  `switch_timeout` later.
The old inbound SA is kept `rekey_grace` seconds for packets in flight; one outbound SA per configured
child (`peer/child`), handed to a duplicate IKE SA's copy when its owner goes.
Must not talk IKE or decide what should exist (that is plan.py); it only mirrors what the engine
negotiated into the data plane.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from meshsec.agent.esp import (
    HardExpired,
    InboundSa,
    Lifetime,
    OutboundSa,
    SaParams,
    SoftExpired,
    TrafficSelector,
)
from meshsec.agent.ike import events as ev
from meshsec.agent.ike.session import IkeSession
from meshsec.agent.runtime import mapping, plan
from meshsec.api.v1 import status_pb2

COUNTER_FIELDS = (
    "packets_in",
    "packets_out",
    "bytes_in",
    "bytes_out",
    "replay_drops",
    "icv_failures",
    "malformed",
    "policy_drops",
)


@dataclass
class Child:
    """One installed Child SA pair."""

    name: str
    sa_id: str
    spi_in: int
    spi_out: int
    transform: str
    mode: str
    ts_local: list[str]
    ts_remote: list[str]
    established_wall: float
    out_params: SaParams
    out_selectors: tuple[TrafficSelector, ...]
    inbound: InboundSa | None = None
    outbound: OutboundSa | None = None
    state: str = "installed"  # installed | rekeying (replaced, outbound still on it) | retiring
    seen_packets: int = 0
    switch_pending: bool = False  # outbound waits until the peer shows it holds this SA


@dataclass
class Session:
    """One IKE session (initiator or responder) and what the host installed for it."""

    sid: int
    peer: str
    ike: IkeSession
    digest: str
    initiator: bool
    established_at: float | None = None
    created_at: float = 0.0
    established_wall: float = 0.0
    spis: str = ""
    transform: str = ""
    children: dict[int, Child] = field(default_factory=dict)
    pending_creates: deque[str] = field(default_factory=deque)
    child_retry: dict[str, float] = field(default_factory=dict)
    switches: dict[int, Child] = field(default_factory=dict)  # old spi_in -> new child awaiting switch
    last_keepalive: float = 0.0
    dead: bool = False

    def view(self, now: float) -> plan.SessionView:
        if self.ike.state == "established":
            state = "established"
        elif self.ike.state == "deleting":
            state = "deleting"
        else:
            state = "connecting"
        busy = set(self.pending_creates) | {n for n, t in self.child_retry.items() if t > now}
        return plan.SessionView(
            sid=self.sid,
            peer=self.peer,
            digest=self.digest,
            state=state,
            initiator=self.initiator,
            established_at=self.established_at,
            created_at=self.created_at,
            spis=self.spis,
            children=frozenset(c.name for c in self.children.values() if c.state != "retiring"),
            busy_children=frozenset(busy),
        )


@dataclass
class PeerState:
    """Per-peer facts that outlive sessions: retries, last error, DPD, counters of removed SAs."""

    retry_at: float = 0.0
    backoff: float = 0.0
    last_error: str = ""
    last_error_wall: float = 0.0
    dpd_rtt_us: int = 0
    rekeys: int = 0
    endpoint: tuple[str, int] | None = None
    retired: dict[str, int] = field(default_factory=dict)


def fill_counters(out: status_pb2.Counters, c: Child) -> None:
    if c.inbound is not None:
        i = c.inbound.counters
        out.packets_in, out.bytes_in = i.packets_in, i.bytes_in
        out.replay_drops, out.icv_failures = i.replay_drops, i.icv_failures
        out.malformed, out.policy_drops = i.malformed, i.policy_drops
    if c.outbound is not None:
        o = c.outbound.counters
        out.packets_out, out.bytes_out = o.packets_out, o.bytes_out


class SaInstaller:
    """Mirrors negotiated Child SAs into the data plane `dp` (a meshsec.agent.dataplane.Dataplane)."""

    def __init__(
        self,
        dp: Any,
        loop: asyncio.AbstractEventLoop,
        sessions: Callable[[], Iterable[Session]],
        *,
        natt_port: int,
        link_mtu: int,
        rekey_grace: float,
        switch_timeout: float,
    ) -> None:
        self.dp = dp
        self.loop = loop
        self.sessions = sessions
        self.natt_port = natt_port
        self.link_mtu = link_mtu
        self.rekey_grace = rekey_grace
        self.switch_timeout = switch_timeout
        self.closing = False  # remove inbound SAs at once instead of after the grace
        self.out_owner: dict[str, tuple[int, int]] = {}  # sa_id -> (sid, spi_out) installed
        self._after_send: list[tuple[Session, Child]] = []  # outbound switches due after the next flush

    # ------------------------------------------------------------------ endpoints
    def esp_endpoint(self, s: Session) -> tuple[str, int]:
        """Where ESP to the peer goes: the IKE endpoint when UDP-encapsulated after NAT detection,
        else the peer's NAT-T port (our data plane always sends ESP-in-UDP)."""
        remote = s.ike.remote
        assert remote is not None
        return remote if s.ike.encap else (remote[0], self.natt_port)

    def follow_endpoint(self, s: Session, ps: PeerState) -> bool:
        """Move the peer's ESP endpoint where IKE now reaches it (NAT mapping change); True if moved."""
        if s.ike.remote is None or not s.children:
            return False
        ep = self.esp_endpoint(s)
        if ps.endpoint == ep:
            return False
        ps.endpoint = ep
        self.dp.set_peer(s.peer, ep, self.link_mtu)
        return True

    # ------------------------------------------------------------------ install / rekey / delete
    def install(
        self,
        s: Session,
        e: ev.ChildSaEstablished,
        name: str,
        ps: PeerState,
        local_ip: str,
        lifetime: Lifetime,
        *,
        initiated: bool = False,
    ) -> Child:
        """Install the inbound SA now; the outbound switch follows the rules in the module docstring.
        `initiated`: we sent the request of the exchange that made it (we hold its response)."""
        child = self._child(s, e, name, local_ip, lifetime)
        ep = self.esp_endpoint(s)
        self.dp.set_peer(s.peer, ep, self.link_mtu)
        ps.endpoint = ep
        child.inbound = self.dp.add_inbound_sa(mapping.sa_params(e, local_ip=local_ip, lifetime=lifetime)[0])
        s.children[e.spi_in] = child
        self._claim(s, child, initiated=initiated)
        return child

    def rekeyed(
        self, s: Session, e: ev.ChildSaRekeyed, name: str, local_ip: str, lifetime: Lifetime
    ) -> Child:
        old = s.children.get(e.old_spi_in)
        child = self._child(s, e.new, name, local_ip, lifetime)
        child.inbound = self.dp.add_inbound_sa(
            mapping.sa_params(e.new, local_ip=local_ip, lifetime=lifetime)[0]
        )
        s.children[e.new.spi_in] = child
        if old is None or self.out_owner.get(old.sa_id) != (s.sid, old.spi_out):
            if old is not None:  # if it still waited for its switch, its successor waits instead
                old.switch_pending = False
            self._claim(s, child, initiated=False)
            return child
        old.state = "rekeying"
        s.switches[old.spi_in] = child
        self.loop.call_later(self.switch_timeout, self.switch_due, s, old.spi_in)
        return child

    def switch_out(self, s: Session, child: Child) -> None:
        """Point the child's outbound traffic at this SA (an atomic replace of the previous one).
        Never twice for one SA: a second add would restart its sequence numbers (replay drops)."""
        child.switch_pending = False
        if child.outbound is not None and self.out_owner.get(child.sa_id) == (s.sid, child.spi_out):
            return
        child.outbound = self.dp.add_outbound_sa(child.sa_id, child.out_params, child.out_selectors, s.peer)
        self.out_owner[child.sa_id] = (s.sid, child.spi_out)

    def flushed(self) -> None:
        """The host sent the datagrams of the exchanges just handled: the switches that waited for
        them (see `_claim`) happen now."""
        todo, self._after_send = self._after_send, []
        for s, child in todo:
            if not s.dead and s.children.get(child.spi_in) is child:
                self.switch_out(s, child)

    def _claim(self, s: Session, child: Child, *, initiated: bool) -> None:
        """Schedule the outbound switch to a new (not rekeyed) child.  Nothing else sending for it,
        or our request's response in hand: right after the flush.  Else the SA it would take the
        traffic from keeps it until the peer shows it has the new one (first packet, the old SA's
        deletion through `_heir`) or `switch_timeout` passes."""
        owner = self.out_owner.get(child.sa_id)
        if owner is None or initiated:
            self._after_send.append((s, child))
            return
        child.switch_pending = True
        self.loop.call_later(self.switch_timeout, self._pending_due, s, child)

    def _pending_due(self, s: Session, child: Child) -> None:
        live = not s.dead and s.ike.state == "established" and s.children.get(child.spi_in) is child
        if child.switch_pending and live:
            self.switch_out(s, child)

    def switch_due(self, s: Session, old_spi_in: int) -> None:
        new = s.switches.pop(old_spi_in, None)
        if new is not None and not s.dead and new.spi_in in s.children:
            self.switch_out(s, new)
            old = s.children.get(old_spi_in)
            if old is not None:
                old.state = "retiring"

    def child_deleted(self, s: Session, spi_in: int, ps: PeerState) -> None:
        self.switch_due(s, spi_in)  # a rekeyed SA's deletion is the moment to move outbound
        child = s.children.pop(spi_in, None)
        if child is None:
            return
        done = status_pb2.Counters()
        fill_counters(done, child)
        for f in COUNTER_FIELDS:
            ps.retired[f] = ps.retired.get(f, 0) + getattr(done, f)
        if self.out_owner.get(child.sa_id) == (s.sid, child.spi_out):
            heir = self._heir(child)
            if heir is not None:  # another SA of the same child (duplicate IKE SA) takes over at once
                self.switch_out(*heir)
            else:
                self.dp.remove_outbound_sa(child.sa_id)
                del self.out_owner[child.sa_id]
        if self.closing:
            self.dp.remove_inbound_sa(child.spi_in)
        else:
            self.loop.call_later(self.rekey_grace, self.dp.remove_inbound_sa, child.spi_in)

    def switch_when_used(self, s: Session) -> None:
        """The peer sends on a rekeyed SA, so it has the SA in both directions: move outbound now."""
        for old_spi, new in list(s.switches.items()):
            if new.inbound is not None and new.inbound.counters.packets_in:
                self.switch_due(s, old_spi)
        for c in list(s.children.values()):
            if c.switch_pending and c.inbound is not None and c.inbound.counters.packets_in:
                self.switch_out(s, c)

    @staticmethod
    def expiring(s: Session, now: float) -> tuple[list[int], list[int]]:
        """(inbound SPIs to rekey, inbound SPIs to delete) from the ESP lifetime events of `s`'s
        installed children: byte/packet limits and the sequence number running out (RFC 4303 §3.3.3)."""
        rekey: list[int] = []
        delete: list[int] = []
        for c in s.children.values():
            events = []
            for sa in (c.inbound, c.outbound):
                if sa is not None:
                    events += sa.poll(now)
            if any(isinstance(x, HardExpired) for x in events):
                delete.append(c.spi_in)
            elif c.state == "installed" and any(isinstance(x, SoftExpired) for x in events):
                rekey.append(c.spi_in)
        return rekey, delete

    def session_gone(self, s: Session, ps: PeerState) -> None:
        for spi in list(s.children):
            self.child_deleted(s, spi, ps)
        s.switches.clear()
        s.dead = True

    def _heir(self, gone: Child) -> tuple[Session, Child] | None:
        for s in self.sessions():
            if s.dead or s.ike.state != "established":
                continue
            for c in s.children.values():
                if c is not gone and c.sa_id == gone.sa_id and c.state == "installed":
                    return s, c
        return None

    @staticmethod
    def _child(s: Session, e: ev.ChildSaEstablished, name: str, local_ip: str, lifetime: Lifetime) -> Child:
        _, out_params = mapping.sa_params(e, local_ip=local_ip, lifetime=lifetime)
        return Child(
            name=name,
            sa_id=f"{s.peer}/{name}",
            spi_in=e.spi_in,
            spi_out=e.spi_out,
            transform=mapping.transform_name(e),
            mode=e.mode,
            ts_local=[t for x in e.ts_local for t in mapping.ts_text(x)],
            ts_remote=[t for x in e.ts_remote for t in mapping.ts_text(x)],
            established_wall=time.time(),
            out_params=out_params,
            out_selectors=mapping.esp_selectors(e.ts_local, e.ts_remote),
        )
