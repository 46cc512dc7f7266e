"""Host-wide IKE dispatcher: routes datagrams to IkeSessions by our SPI and creates responder sessions
for new IKE_SA_INIT requests, behind cookies.DosGuard (cookies + half-open accounting).

`config_for(addr)` picks the config for a new IKE_SA_INIT by source address; when the address cannot
tell (several roaming peers) it may return a config whose `resolve` hook names the peer by IDi/IDr at
IKE_AUTH (peerselect.deferred_config).

Owns the SPI index, the answer to IKEv1/unknown major versions (INVALID_MAJOR_VERSION, RFC 7296 §1.5;
IKEv1 itself is deliberately unsupported, RFC 9395), and host-wide unique Child SA SPIs. Sans-I/O like
the sessions: datagrams out are (bytes, addr, local_port); the adapter picks the socket by local_port
and adds the non-ESP marker on 4500.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, deque
from collections.abc import Callable
from math import inf

from .config import IkeConfig
from .constants import IKE_PORT, Exchange, Flag, Notify
from .cookies import Admission, DosGuard
from .events import Addr, Event
from .message import Message, encode_plain, parse_header, parse_message
from .payloads import Nonce as NoncePayload
from .payloads import Notify as NotifyPayload
from .payloads import ParseError, notifies
from .session import IkeSession

log = logging.getLogger(__name__)
TOMBSTONE_SECONDS = 60.0  # how long a finished SA's last response is kept for retransmitted requests


class IkeResponder:
    """All IKE SAs of one host. Call receive/handle_timer; drain datagrams_to_send and next_event."""

    def __init__(
        self, config_for: Callable[[Addr], IkeConfig | None], now: float, guard: DosGuard | None = None
    ) -> None:
        self._config_for = config_for
        self.guard = guard or DosGuard(now)
        self._by_spi: dict[bytes, IkeSession] = {}
        self._spis: dict[int, list[bytes]] = {}
        self._by_init: dict[tuple[bytes, Addr], IkeSession] = {}
        self._init_key: dict[int, tuple[bytes, Addr]] = {}
        self.sessions: list[IkeSession] = []
        self._events: deque[tuple[IkeSession, Event]] = deque()
        self._out: list[tuple[bytes, Addr, int]] = []
        self._child_spis: set[bytes] = set()
        # each live session's next deadline as of its last sync(), so that get_timer() -- called after
        # every datagram -- is one min() over floats instead of a get_timer() call per session
        self._deadlines: dict[int, float] = {}
        self._v1_logged: set[str] = set()
        self.stats: Counter[str] = Counter()
        self._finished_stats: Counter[str] = Counter()
        # finished SAs' last responses, so a retransmitted final request (e.g. an IKE_AUTH we refused
        # with AUTHENTICATION_FAILED) still gets its answer: our SPI -> (forget at, request digest, response)
        self._tombstones: dict[bytes, tuple[float, bytes, tuple[bytes, ...], Addr, int]] = {}
        self._now = now

    # ------------------------------------------------------------------ API
    def add(self, session: IkeSession) -> None:
        """Register a session we initiate so that its responses and the peer's requests reach it."""
        session.spi_alloc, session.spi_free = self._alloc_child_spi, self._child_spis.discard
        self.sessions.append(session)
        self.sync(session)

    def receive(self, datagram: bytes, addr: Addr, now: float, local_port: int = IKE_PORT) -> None:
        try:
            h = parse_header(datagram)
        except ParseError as exc:
            self.stats["dropped_unparseable"] += 1
            log.debug("IKE: dropped unparseable datagram from %s: %s", addr[0], exc)
            return
        if h.major != 2:
            self._invalid_major(datagram, h.major, addr, local_port)
            return
        ours = h.spi_r if h.from_initiator else h.spi_i
        session = self._by_spi.get(ours) if any(ours) else None
        self._now = now
        if session is None and ours in self._tombstones and not h.is_response:
            _, digest, response, dst, lport = self._tombstones[ours]
            if hashlib.sha256(datagram).digest() == digest:
                self.stats["retransmit_answered_after_close"] += 1
                self._out.extend((raw, dst, lport) for raw in response)
                return
        if session is None and h.exchange == Exchange.IKE_SA_INIT and h.from_initiator and not h.is_response:
            session = self._by_init.get((h.spi_i, addr))
            if session is None and not any(h.spi_r) and h.message_id == 0:
                session = self._new_responder(datagram, addr, now, local_port)
        if session is None:
            self.stats["dropped_unknown_spi"] += 1
            return
        session.receive(datagram, addr, now, local_port)
        self.sync(session)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, int]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> tuple[IkeSession, Event] | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times = [min(self._deadlines.values())] if self._deadlines else []
        g = self.guard.next_deadline()
        if g is not None:
            times.append(g)
        if self._tombstones:
            times.append(min(v[0] for v in self._tombstones.values()))
        m = min(times) if times else inf
        return None if m == inf else m

    def handle_timer(self, now: float) -> None:
        self._now = now
        for spi in [k for k, v in self._tombstones.items() if v[0] <= now]:
            del self._tombstones[spi]
        for key in self.guard.expire(now):
            if isinstance(key, IkeSession):
                key.abort(now, "half-open SA expired (no IKE_AUTH in time)")
                self.sync(key)
        # only sessions whose deadline (as of their last sync) has come: asking all of them cost O(SAs)
        # per timer event; a session never synced (no entry) is asked, as before
        for s in [s for s in self.sessions if self._deadlines.get(id(s), -inf) <= now]:
            t = s.get_timer()
            if t is not None and t <= now:
                s.handle_timer(now)
                self.sync(s)

    def counters(self) -> Counter[str]:
        """Drops and retransmissions of the dispatcher and every session, past and present, for Report."""
        total = self.stats + self._finished_stats
        for s in self.sessions:
            total.update(s.stats)
        return total

    @property
    def half_open(self) -> int:
        return sum(1 for s in self.sessions if s.state == "half_open")

    # ------------------------------------------------------------------ internals
    def _alloc_child_spi(self) -> bytes:
        while True:
            spi = os.urandom(4)
            if int.from_bytes(spi, "big") >= 256 and spi not in self._child_spis:
                self._child_spis.add(spi)
                return spi

    def _new_responder(self, datagram: bytes, addr: Addr, now: float, local_port: int) -> IkeSession | None:
        config = self._config_for(addr)
        if config is None:
            self.stats["dropped_no_config"] += 1
            log.info("IKE: IKE_SA_INIT from %s:%d matches no configured peer; dropped", addr[0], addr[1])
            return None
        try:
            msg = parse_message(datagram)
        except ParseError:
            self.stats["dropped_unparseable"] += 1
            return None
        nonce = next((p.data for p in msg.payloads if isinstance(p, NoncePayload)), b"")
        cookie = notifies(msg.payloads).get(Notify.COOKIE)
        decision = self.guard.check_init(
            source=addr[0], spi_i=msg.spi_i, nonce_i=nonce, cookie=cookie.data if cookie else None, now=now
        )
        if decision.action is Admission.DROP:
            self.stats["dropped_dos_guard"] += 1
            log.debug("IKE: IKE_SA_INIT from %s dropped: %s", addr[0], decision.reason)
            return None
        if decision.action is Admission.SEND_COOKIE:
            assert decision.cookie is not None
            self.stats["cookies_sent"] += 1
            reply = Message(
                msg.spi_i,
                bytes(8),
                Exchange.IKE_SA_INIT,
                Flag.RESPONSE,
                0,
                [NotifyPayload(Notify.COOKIE, data=decision.cookie)],
            )
            self._out.append((encode_plain(reply), addr, local_port))
            return None
        session = IkeSession(config, now, initiator=False, local_port=local_port)
        session.spi_alloc, session.spi_free = self._alloc_child_spi, self._child_spis.discard
        self.sessions.append(session)
        self._by_init[(msg.spi_i, addr)] = session
        self._init_key[id(session)] = (msg.spi_i, addr)
        self.guard.opened(session, addr[0], now)
        self.stats["responder_sessions"] += 1
        return session

    def initiate(self, config: IkeConfig, now: float) -> IkeSession:
        """Create, register and start an initiator session towards config.remote_addr."""
        session = IkeSession(config, now)
        self.add(session)
        session.initiate(now)
        self.sync(session)
        return session

    def _initial_contact(self, s: IkeSession) -> None:
        """RFC 7296 §2.4: INITIAL_CONTACT means the peer kept no state, so every other IKE SA with the
        same authenticated identity is stale: drop it (and its Child SAs) without a DELETE."""
        s.initial_contact = False
        for other in list(self.sessions):
            if other is not s and other.peer_id == s.peer_id and not other.finished:
                other.abort(self._now, "replaced: the peer restarted (INITIAL_CONTACT)")
                self.sync(other)

    def sync(self, s: IkeSession) -> None:
        """Collect a session's datagrams/events and re-index its SPIs; call after driving it directly
        (rekey_child, delete, ...)."""
        for raw, dst in s.datagrams_to_send(0.0):
            self._out.append((raw, dst, s.local_port))
        while (ev := s.next_event()) is not None:
            self._events.append((s, ev))
        if s.state != "half_open":
            self.guard.closed(s)
        if s.initial_contact and s.established:
            self._initial_contact(s)
        old = self._spis.get(id(s), [])
        new = [] if s.finished else s.local_spis
        for spi in old:
            if spi not in new and self._by_spi.get(spi) is s:
                del self._by_spi[spi]
        for spi in new:
            self._by_spi[spi] = s
        self._spis[id(s)] = new
        t = s.get_timer()
        self._deadlines[id(s)] = inf if t is None else t
        if s.finished:
            self._spis.pop(id(s), None)
            self._deadlines.pop(id(s), None)
            key = self._init_key.pop(id(s), None)
            if key is not None and self._by_init.get(key) is s:
                del self._by_init[key]
            self.sessions.remove(s)
            self._finished_stats.update(s.stats)
            # only for SAs that got past IKE_SA_INIT: expired half-open SAs need no tombstone
            if s.sa.cache is not None and s.sa.cache[0] >= 1 and s.remote is not None:
                _, digest, response = s.sa.cache
                entry = (self._now + TOMBSTONE_SECONDS, digest, response, s.remote, s.local_port)
                self._tombstones[s.sa.local_spi] = entry

    def _invalid_major(self, datagram: bytes, major: int, addr: Addr, local_port: int) -> None:
        self.stats["dropped_invalid_major_version"] += 1
        if addr[0] not in self._v1_logged and len(self._v1_logged) < 1024:
            self._v1_logged.add(addr[0])
            if major == 1:
                log.warning(
                    "IKE: IKEv1 packet from %s: IKEv1 is deliberately unsupported (deprecated by "
                    "RFC 9395); answering INVALID_MAJOR_VERSION",
                    addr[0],
                )
            else:
                log.warning(
                    "IKE: IKE major version %d from %s; answering INVALID_MAJOR_VERSION", major, addr[0]
                )
        h = parse_header(datagram)
        if h.flags & Flag.RESPONSE:
            return  # never answer a response: no notify ping-pong
        exchange = h.exchange if h.exchange in tuple(Exchange) else Exchange.INFORMATIONAL
        reply = Message(
            h.spi_i,
            h.spi_r,
            exchange,
            Flag.RESPONSE,
            h.message_id,
            [NotifyPayload(Notify.INVALID_MAJOR_VERSION, data=b"\x20")],
        )
        self._out.append((encode_plain(reply), addr, local_port))
