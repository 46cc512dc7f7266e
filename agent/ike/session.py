"""One IKE SA with a peer and its Child SAs, as a sans-I/O state machine (RFC 7296).

Owns the exchanges (IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL) as initiator and responder,
message IDs (window 1), retransmission with exponential backoff, the cached last response, NAT
detection and the float to port 4500, lifetimes with jitter, make-before-break rekeying, simultaneous
child rekey (§2.8.1), DPD and deletion. Time is always an argument; nothing here touches a socket.
Messages larger than one fragment go out, and come in, as RFC 7383 fragments (fragmenting.py).

Datagrams are (bytes, (host, port)) WITHOUT the RFC 3948 non-ESP marker: when `local_port` is 4500
the adapter sends them from its 4500 socket and prepends the 4-octet zero marker, and it strips the
marker before calling receive(..., local_port=4500). AUTH octets come from auth.py; keys from crypto.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from math import inf
from typing import Any

from cryptography import x509
from meshsec.agent.esp import transforms as esp_transforms

from . import dh
from . import payloads as P
from .child import ChildSa, policy_for
from .config import MODES, IkeConfig
from .constants import IKE_PORT, NATT_PORT, Exchange, Flag, Notify, Proto, TransformType
from .establish import EstablishMixin
from .events import Addr, ChildSaDeleted, Event, IkeSaDeleted, IkeSaFailed, PeerDead
from .exchanges import ExchangesMixin
from .fragmenting import FragmentingMixin
from .message import Message, encode_plain, parse_message
from .proposals import ProposalSpec, offer, parse_proposals
from .sastate import ERROR_STATES, NONCE_LEN, IkeSaState, Request, exchange_name, nat_hash

log = logging.getLogger(__name__)


class IkeSession(EstablishMixin, ExchangesMixin, FragmentingMixin):
    """IKE SA state machine. Feed it datagrams and time; collect datagrams, events and a deadline."""

    def __init__(
        self, config: IkeConfig, now: float, *, initiator: bool = True, local_port: int = IKE_PORT
    ) -> None:
        self._load(config)
        self.initiator = initiator
        self.remote: Addr | None = config.remote_addr
        self.local_port = local_port
        self.state = "idle"  # idle|init|auth|half_open|established|deleting|closed|failed
        self._rng = random.Random(config.seed)
        spi = self._new_ike_spi()
        self.sa = IkeSaState(spi, bytes(8), True) if initiator else IkeSaState(bytes(8), spi, False)
        self.old_sas: list[IkeSaState] = []  # rekeyed-away SAs until their DELETE completes
        # the peer's new IKE SA from a simultaneous IKE rekey (§2.8.2), with its nonces, until ours completes
        self._ike_collision: tuple[IkeSaState, bytes, bytes] | None = None
        self.children: dict[bytes, ChildSa] = {}
        self.stats: Counter[str] = Counter()
        self.rtt_history: deque[float] = deque(maxlen=16)
        self.nat_local = False
        self.nat_remote = False
        self.peer_id: tuple[int, bytes] | None = None
        # the leaf certificate the peer authenticated with (certificate auth; None with a PSK): the
        # owner checks it against revocations pushed after the SA is up
        self.peer_cert: x509.Certificate | None = None
        self.initial_contact = False  # the peer sent INITIAL_CONTACT in IKE_AUTH (responder side)
        # both sides announced IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (RFC 7383 §2.3); kept
        # across IKE rekeys
        self.fragmentation = False
        self.spi_alloc: Callable[[], bytes] = self._random_child_spi  # the dispatcher shares a host-wide one
        self.spi_free: Callable[[bytes], None] = lambda spi: None
        self._reserved: set[bytes] = set()
        self._events: deque[Event] = deque()
        self._out: list[tuple[bytes, Addr]] = []
        self._last_seen = now
        self._half_open_deadline = inf
        self._dh: dh.KeyExchange | None = None
        self._gir = b""
        self._ni = b""
        self._nr = b""
        self._init_req = b""
        self._init_resp = b""
        self._cookie: bytes | None = None
        self._init_tries = 0
        self._ike_rekeying = False
        self._peer_hashes: tuple[int, ...] | None = None
        self._init_chosen: P.Proposal | None = None  # the IKE proposal chosen in IKE_SA_INIT (responder)

    # ------------------------------------------------------------------ public API
    def initiate(self, now: float) -> None:
        """Start IKE_SA_INIT towards config.remote_addr."""
        if not self.initiator or self.state != "idle" or self.remote is None:
            raise RuntimeError("initiate() needs an idle initiator session with a remote address")
        self._send_init(now, self._ike_specs[0].dh_groups[0])

    def receive(self, datagram: bytes, addr: Addr, now: float, local_port: int = IKE_PORT) -> None:
        """Process one IKE datagram (marker already stripped) from `addr` that arrived on `local_port`."""
        if self.state in ERROR_STATES:
            return
        try:
            msg = parse_message(datagram)
        except P.ParseError as exc:
            self._drop("unparseable", f"from {addr[0]}:{addr[1]}: {exc}")
            return
        if (msg.raw[17] >> 4) != 2:
            self._drop("bad_version", f"IKE major version {msg.raw[17] >> 4} from {addr[0]}")
            return
        sa = self._sa_for(msg)
        if sa is None:
            self._drop("unknown_spi", f"SPIs {msg.spi_i.hex()}_{msg.spi_r.hex()} not ours")
            return
        if bool(msg.flags & Flag.INITIATOR) == sa.initiator:
            self._drop("bad_flags", "Initiator flag claims our own role")
            return
        if msg.frag is not None and msg.exchange == Exchange.IKE_SA_INIT:
            self._drop("fragment_malformed", "IKE_SA_INIT is never fragmented (RFC 7383 §2.5)")
            return
        if msg.is_response:
            self._on_response(sa, msg, addr, now, local_port)
        else:
            self._on_request(sa, msg, addr, now, local_port)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self.state in ERROR_STATES:
            return None
        t = [self._half_open_deadline]
        for sa in self._all_sas():
            if sa.pending is not None:
                t.append(sa.pending.deadline)
            if sa.reassembly is not None:
                t.append(sa.reassembly.deadline())
        if self.state == "established":
            t += [self.sa.rekey_at, self.sa.expire_at, self._dpd_deadline()]
            for c in self.children.values():
                t.append(c.expire_at)
                if c.state == "installed":
                    t.append(c.rekey_at)
        m = min(t)
        return None if m == inf else m

    def handle_timer(self, now: float) -> None:
        if self.state in ERROR_STATES:
            return
        if now >= self._half_open_deadline:
            self._fail(
                f"half-open SA expired: no IKE_AUTH within {self.config.half_open_timeout:g} s",
                now,
                quiet=True,
            )
            return
        for sa in self._all_sas():
            if sa.reassembly is not None:
                self.stats["fragments_reassembly_timeout"] += sa.reassembly.expire(now)
        for sa in self._all_sas():
            if sa.pending is not None and now >= sa.pending.deadline:
                self._retransmit(sa, now)
                if self.state in ERROR_STATES:
                    return
        if self.state != "established":
            return
        if now >= self.sa.expire_at:
            log.warning("IKE %s: hard lifetime reached without rekey; deleting", self.sa.name)
            self.delete(now)
            return
        if now >= self.sa.rekey_at and not self._ike_rekeying:
            self.rekey_ike(now)
        for c in list(self.children.values()):
            if now >= c.expire_at and c.state != "deleting":
                self._delete_children([c], now, "hard lifetime expired")
            elif c.state == "installed" and now >= c.rekey_at:
                self.rekey_child(now, c.spi_in_int)
        if now >= self._dpd_deadline():
            self._request(self.sa, Request(Exchange.INFORMATIONAL, [], self._on_dpd_response, "dpd"), now)

    def create_child(
        self,
        now: float,
        local_ts: list[P.TrafficSelector] | None = None,
        remote_ts: list[P.TrafficSelector] | None = None,
        *,
        mode: str | None = None,
        esp_proposals: Sequence[str] | None = None,
    ) -> None:
        """Negotiate an additional Child SA with CREATE_CHILD_SA.

        Selectors default to the first child policy's; mode and ESP proposals default to those of the
        policy whose selectors contain the requested ones (else the first policy).  One IKE SA may so
        carry transport and tunnel children side by side (RFC 7296 §1.3.1: mode is per Child SA).
        """
        self._require_established()
        first = self._policies[0]
        tsl = tuple(local_ts or first.local_ts)
        tsr = tuple(remote_ts or first.remote_ts)
        pol = policy_for(self._policies, tsl, tsr) or first
        mode = mode or pol.mode
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: must be 'tunnel' or 'transport'")
        specs = tuple(_esp_specs(esp_proposals)) if esp_proposals else self._policy_specs[pol.name]
        if not specs:
            raise ValueError("esp_proposals: at least one proposal")
        self._send_create_child(now, tsl, tsr, None, None, mode=mode, specs=specs, policy=pol.name)

    def rekey_child(self, now: float, spi_in: int | None = None) -> None:
        """Rekey one Child SA (make-before-break); `spi_in` None means the first installed one."""
        self._require_established()
        child = next(
            (
                c
                for c in self.children.values()
                if c.state == "installed" and (spi_in is None or c.spi_in_int == spi_in)
            ),
            None,
        )
        if child is None:
            raise KeyError(f"no installed Child SA with inbound SPI {spi_in}")
        child.state = "rekeying"
        # §2.8: the new SA keeps the old one's mode (USE_TRANSPORT_MODE again) and proposals
        self._send_create_child(
            now,
            child.ts_local,
            child.ts_remote,
            child,
            None,
            mode=child.mode,
            specs=child.specs or self._policy_specs.get(child.policy, tuple(self._esp_specs)),
            policy=child.policy,
        )

    def rekey_ike(self, now: float, group: int | None = None) -> None:
        """Rekey the IKE SA itself (RFC 7296 §2.18); Child SAs move to the new SA."""
        self._require_established()
        if self._ike_rekeying:
            return
        assert self.sa.suite is not None
        self._ike_rekeying = True
        new_spi = self._new_ike_spi()
        x = dh.new(group or self.sa.suite.dh_group)
        ni = os.urandom(NONCE_LEN)
        props = offer(self._ike_specs, new_spi)
        pl = [P.SA(props), P.Nonce(ni), P.KE(x.group, x.public_bytes())]
        ctx = {"spi": new_spi, "dh": x, "ni": ni, "offer": props}
        self._request(
            self.sa,
            Request(Exchange.CREATE_CHILD_SA, pl, self._on_ike_rekey_response, "ike-rekey", ctx),
            now,
        )

    def delete(self, now: float) -> None:
        """Delete the IKE SA and with it every Child SA."""
        if self.state in ERROR_STATES or self.state == "deleting":
            return
        if self.state != "established":
            self._fail("deleted locally before establishment", now, quiet=True)
            return
        self.state = "deleting"
        self.sa.queue.clear()
        req = Request(Exchange.INFORMATIONAL, [P.Delete(Proto.IKE)], self._on_ike_delete_response, "delete")
        if self.sa.pending is not None:  # go next, ahead of anything queued
            self.sa.queue.appendleft(req)
        else:
            self._transmit(self.sa, req, now)

    def delete_child(self, now: float, spi_in: int) -> None:
        self._require_established()
        child = next((c for c in self.children.values() if c.spi_in_int == spi_in), None)
        if child is None:
            raise KeyError(f"no Child SA with inbound SPI {spi_in}")
        self._delete_children([child], now, "deleted locally")

    def abort(self, now: float, reason: str) -> None:
        """Drop the SA without telling the peer (half-open expiry, or replaced after INITIAL_CONTACT)."""
        self._fail(reason, now, quiet=True)

    def note_inbound_traffic(self, now: float) -> None:
        """The data plane saw authenticated ESP from the peer: no liveness check needed for a while."""
        self._last_seen = max(self._last_seen, now)

    @property
    def established(self) -> bool:
        return self.state == "established"

    @property
    def finished(self) -> bool:
        return self.state in ERROR_STATES

    @property
    def encap(self) -> bool:
        """ESP must be UDP-encapsulated on 4500 (a NAT was detected)."""
        return self.nat_local or self.nat_remote

    @property
    def local_spis(self) -> list[bytes]:
        return [sa.local_spi for sa in self._all_sas()]

    def _all_sas(self) -> list[IkeSaState]:
        extra = [self._ike_collision[0]] if self._ike_collision else []
        return [self.sa, *self.old_sas, *extra]

    # ------------------------------------------------------------------ plumbing
    def _load(self, config: IkeConfig) -> None:
        """Take `config` and what is parsed from it: at creation, and again when a responder whose
        peer was undecided at IKE_SA_INIT adopts the peer's own config at IKE_AUTH (peerselect.py).
        Raises ValueError for proposals the engine cannot use (nothing is changed then)."""
        ike_specs = parse_proposals(config.ike_proposals, Proto.IKE)
        esp_specs = _esp_specs(config.esp_proposals)
        policies = config.policies()
        # ESP proposals per child policy (by name; the implicit policy is "")
        policy_specs = {p.name: tuple(_esp_specs(p.esp_proposals)) for p in policies}
        self.config = config
        self._ike_specs, self._esp_specs, self._policies = ike_specs, esp_specs, policies
        self._policy_specs = policy_specs
        self._policy_by_name = {p.name: p for p in policies}

    def _new_ike_spi(self) -> bytes:
        while True:
            spi = os.urandom(8)
            if any(spi):
                return spi

    def _random_child_spi(self) -> bytes:
        while True:
            spi = os.urandom(4)
            if int.from_bytes(spi, "big") >= 256 and spi not in self.children and spi not in self._reserved:
                return spi

    def _retire(self, sa: IkeSaState) -> None:
        """An old or redundant IKE SA is gone (its DELETE completed or gave up)."""
        if sa in self.old_sas:
            self.old_sas.remove(sa)

    def _forget_child(self, c: ChildSa) -> bool:
        """Remove a Child SA and give its inbound SPI back; False if it was already gone."""
        if self.children.pop(c.spi_in, None) is None:
            return False
        self.spi_free(c.spi_in)
        return True

    def _forget_all_children(self) -> None:
        for c in list(self.children.values()):
            self._forget_child(c)
        for spi in list(self._reserved):
            self._release_spi(spi)

    def _alloc_spi(self) -> bytes:
        """An inbound Child SA SPI for a negotiation in flight (host-wide unique via spi_alloc)."""
        spi = self.spi_alloc()
        self._reserved.add(spi)
        return spi

    def _release_spi(self, spi: bytes) -> None:
        if spi in self._reserved:
            self._reserved.discard(spi)
            self.spi_free(spi)

    def _drop(self, counter: str, why: str) -> None:
        self.stats["dropped_" + counter] += 1
        log.debug("IKE %s: dropped datagram (%s): %s", self.sa.name, counter, why)

    def _require_established(self) -> None:
        if self.state != "established":
            raise RuntimeError(f"IKE SA is {self.state}, not established")

    def _send(self, raw: bytes) -> None:
        assert self.remote is not None
        self._out.append((raw, self.remote))

    def _sa_for(self, msg: Message) -> IkeSaState | None:
        for sa in self._all_sas():
            if msg.spi_i == sa.spi_i and msg.spi_r == sa.spi_r:
                return sa
            if msg.exchange == Exchange.IKE_SA_INIT and msg.spi_i == sa.spi_i and sa is self.sa:
                if sa.initiator and msg.is_response and self.state == "init":
                    return sa  # the responder's SPI is new to us
                if not sa.initiator and not msg.is_response and not any(msg.spi_r):
                    return sa  # retransmitted IKE_SA_INIT request
            if (
                not self.initiator
                and self.state == "idle"
                and msg.exchange == Exchange.IKE_SA_INIT
                and not msg.is_response
                and not any(msg.spi_r)
                and sa is self.sa
            ):
                return sa
        return None

    def _request(self, sa: IkeSaState, req: Request, now: float) -> None:
        if sa.pending is not None:
            sa.queue.append(req)
        else:
            self._transmit(sa, req, now)

    def _transmit(self, sa: IkeSaState, req: Request, now: float) -> None:
        req.mid = sa.next_mid
        sa.next_mid += 1
        flags = Flag.INITIATOR if sa.initiator else 0
        msg = Message(sa.spi_i, sa.spi_r, req.exchange, flags, req.mid, req.payloads)
        if req.exchange == Exchange.IKE_SA_INIT:
            req.raw = encode_plain(msg)
            req.wire = (req.raw,)
        else:
            req.wire = self._seal(sa, msg)
            req.raw = b"".join(req.wire)
        req.first_sent = req.last_sent = now
        req.tries = 0
        req.deadline = now + self.config.retransmit_timeout
        sa.pending = req
        for raw in req.wire:
            self._send(raw)

    def _pump(self, sa: IkeSaState, now: float) -> None:
        if sa.pending is None and sa.queue and self.state not in ERROR_STATES:
            self._transmit(sa, sa.queue.popleft(), now)

    def _retransmit(self, sa: IkeSaState, now: float) -> None:
        req = sa.pending
        assert req is not None
        cfg = self.config
        if req.tries >= cfg.retransmit_tries:
            sa.pending = None
            log.warning(
                "IKE %s: no response to %s request (message %d) after %d retransmissions",
                sa.name,
                Exchange(req.exchange).name,
                req.mid,
                req.tries,
            )
            if self.state in ("init", "auth"):
                self._fail(
                    f"peer did not answer {Exchange(req.exchange).name} after {req.tries} retransmissions",
                    now,
                )
            elif sa is not self.sa:
                self._retire(sa)
            elif self.state == "deleting":
                self._close(now, "deleted locally (peer never confirmed)")
            else:
                self._events.append(PeerDead(tuple(self.rtt_history)))
                self._close(now, "peer dead (retransmissions exhausted)")
            return
        req.tries += 1
        req.last_sent = now
        req.deadline = now + cfg.retransmit_timeout * cfg.retransmit_base**req.tries
        self.stats["retransmitted"] += 1
        for raw in req.wire:  # RFC 7383 §2.6.1: a retransmission resends every fragment
            self._send(raw)

    def _respond(self, sa: IkeSaState, req: Message, payloads: list[Any]) -> None:
        flags = Flag.RESPONSE | (Flag.INITIATOR if sa.initiator else 0)
        msg = Message(sa.spi_i, sa.spi_r, req.exchange, flags, req.message_id, payloads)
        wire = (encode_plain(msg),) if req.exchange == Exchange.IKE_SA_INIT else self._seal(sa, msg)
        sa.cache = (req.message_id, hashlib.sha256(req.raw).digest(), wire)
        sa.peer_mid = req.message_id + 1
        for raw in wire:
            self._send(raw)

    def _emit(self, ev: Event) -> None:
        self._events.append(ev)

    def _fail(self, reason: str, now: float, quiet: bool = False) -> None:
        if self.state in ERROR_STATES:
            return
        was_established = self.state in ("established", "deleting")
        (log.info if quiet else log.warning)("IKE %s: %s", self.sa.name, reason)
        self.state = "failed"
        self._half_open_deadline = inf
        for c in list(self.children.values()):
            self._emit(ChildSaDeleted(c.spi_in_int, c.spi_out_int, reason))
        self._forget_all_children()
        self._emit(IkeSaDeleted(reason) if was_established else IkeSaFailed(reason))

    def _close(self, now: float, reason: str) -> None:
        for c in list(self.children.values()):
            self._emit(ChildSaDeleted(c.spi_in_int, c.spi_out_int, reason))
        self._forget_all_children()
        self.state = "closed"
        self._half_open_deadline = inf
        self._emit(IkeSaDeleted(reason))
        log.info("IKE %s: closed: %s", self.sa.name, reason)

    def _dpd_deadline(self) -> float:
        d = self.config.dpd_interval
        if d is None or self.sa.pending is not None or self.sa.queue:
            return inf
        return self._last_seen + d

    def _ike_times(self, now: float) -> tuple[float, float]:
        life = self.config.ike_lifetime
        return self._jittered(now, life), now + life

    def _child_times(self, now: float, policy: str = "") -> tuple[float, float]:
        """(rekey_at, expire_at) of a new Child SA of `policy`.  A policy with its own rekey_time
        rekeys at that time minus up to its own jitter (strongSwan's rekey_time - random(0,
        rand_time)), whatever the IKE SA's ratio; else at the session-wide fractions of its life."""
        p = self._policy_by_name.get(policy)
        life = (p.lifetime if p else None) or self.config.child_lifetime
        if p is None or p.rekey_time is None:
            return self._jittered(now, life), now + life
        rekey = p.rekey_time
        jitter = p.rekey_jitter if p.rekey_jitter is not None else max(0.0, min(life - rekey, rekey / 2))
        return now + rekey - self._rng.uniform(0, jitter), now + life

    def _jittered(self, now: float, life: float) -> float:
        cfg = self.config
        return now + life * cfg.rekey_fraction - self._rng.uniform(0, life * cfg.rekey_jitter)

    def _prf_id(self) -> int:
        assert self.sa.suite is not None and self.sa.suite.prf_id is not None
        return self.sa.suite.prf_id

    def _peer_moved(self, addr: Addr, local_port: int) -> None:
        """Authenticated traffic from a new address/port. Follow it only for the float to 4500 (same
        IP) or when the peer is behind a NAT whose mapping may change (RFC 7296 §2.23); otherwise an
        attacker replaying old traffic from elsewhere must not move our SA."""
        assert self.remote is not None
        if addr == self.remote and local_port == self.local_port:
            return
        floated = local_port == NATT_PORT and addr[0] == self.remote[0]
        if floated or self.nat_remote:
            if addr != self.remote:
                log.info("IKE %s: peer moved from %s:%d to %s:%d", self.sa.name, *self.remote, *addr)
            self.remote = addr
            self.local_port = local_port

    # ------------------------------------------------------------------ dispatch
    def _on_response(self, sa: IkeSaState, msg: Message, addr: Addr, now: float, local_port: int) -> None:
        req = sa.pending
        if req is None or msg.message_id != req.mid or msg.exchange != req.exchange:
            self._drop("unexpected_response", f"response {msg.message_id} matches no outstanding request")
            return
        if msg.exchange == Exchange.IKE_SA_INIT:
            inner = msg.payloads
        else:
            try:
                opened = self._open(sa, msg, now)
            except P.ParseError as exc:
                sa.pending = None
                log.warning(
                    "IKE %s: malformed authenticated %s response: %s",
                    sa.name,
                    Exchange(msg.exchange).name,
                    exc,
                )
                if self.state in ("init", "auth"):
                    self._fail(f"INVALID_SYNTAX in {Exchange(msg.exchange).name} response: {exc}", now)
                self._pump(sa, now)
                return
            if opened is None:
                return
            inner = opened
            self._last_seen = now
            self._peer_moved(addr, local_port)
        sa.pending = None
        req.on_response(req, msg, inner, now)
        self._pump(sa, now)
        if sa is not self.sa:
            self._pump(self.sa, now)

    def _on_request(self, sa: IkeSaState, msg: Message, addr: Addr, now: float, local_port: int) -> None:
        if sa.cache is not None and msg.message_id == sa.cache[0] and msg.message_id == sa.peer_mid - 1:
            if msg.frag is not None:
                self._fragment_retransmitted(sa, msg)
            elif hashlib.sha256(msg.raw).digest() == sa.cache[1]:
                self.stats["retransmit_answered"] += 1
                for raw in sa.cache[2]:
                    self._send(raw)
            else:
                self._drop("stale_request", f"message {msg.message_id} differs from the answered one")
            return
        if msg.message_id != sa.peer_mid:
            self._drop("message_id", f"request {msg.message_id}, expected {sa.peer_mid}")
            return
        if msg.exchange == Exchange.IKE_SA_INIT:
            if self.initiator or self.state != "idle":
                self._drop("unexpected_init", "IKE_SA_INIT request on an existing SA")
                return
            self.remote = addr
            self.local_port = local_port
            self._on_init_request(msg, now)
            return
        if sa.inb is None:
            self._drop("no_keys", "encrypted request before keys exist")
            return
        try:
            opened = self._open(sa, msg, now)
        except P.ParseError as exc:
            log.warning(
                "IKE %s: malformed authenticated %s request: %s; answering INVALID_SYNTAX",
                sa.name,
                exchange_name(msg.exchange),
                exc,
            )
            self.stats["invalid_syntax"] += 1
            self._respond(sa, msg, [P.Notify(Notify.INVALID_SYNTAX)])
            if self.state in ("half_open", "auth"):
                self._fail(f"INVALID_SYNTAX in {exchange_name(msg.exchange)} request: {exc}", now)
            return
        if opened is None:
            return
        inner = opened
        self._last_seen = now
        self._peer_moved(addr, local_port)
        crit = next((p for p in inner if isinstance(p, P.Unknown) and p.critical), None)
        if crit is not None:
            log.warning("IKE %s: unsupported critical payload %d", sa.name, crit.ptype)
            self._respond(sa, msg, [P.Notify(Notify.UNSUPPORTED_CRITICAL_PAYLOAD, data=bytes([crit.ptype]))])
            return
        if msg.exchange == Exchange.IKE_AUTH and self.state == "half_open":
            self._on_auth_request(msg, inner, now)
        elif msg.exchange == Exchange.CREATE_CHILD_SA and self.state in ("established", "deleting"):
            self._on_create_child_request(sa, msg, inner, now)
        elif msg.exchange == Exchange.INFORMATIONAL:
            self._on_informational_request(sa, msg, inner, now)
        else:
            log.warning(
                "IKE %s: %s request not allowed in state %s",
                sa.name,
                exchange_name(msg.exchange),
                self.state,
            )
            self._respond(sa, msg, [P.Notify(Notify.INVALID_SYNTAX)])


def _esp_specs(texts: Sequence[str]) -> list[ProposalSpec]:
    """Parse ESP proposals, refusing at configuration time what the ESP core cannot do."""
    specs = parse_proposals(texts, Proto.ESP)
    for spec in specs:
        integs = spec.transforms.get(TransformType.INTEG, (P.Transform(3, 0),))
        for e in spec.transforms[TransformType.ENCR]:
            for i in integs:
                try:
                    esp_transforms.transform_spec(e.id, e.key_bits or 256, i.id)
                except esp_transforms.TransformError as exc:
                    raise ValueError(f"esp proposal {spec.text!r}: {exc}") from None
    return specs


__all__ = ["IkeSession", "nat_hash"]
