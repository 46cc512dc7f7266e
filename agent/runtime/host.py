"""The asyncio host of one agent: IKE dispatcher + sessions, the ESP data plane, TUN routes.

Owns the wiring and nothing protocol-specific (the aioquic asyncio/protocol.py role beside the
sans-I/O cores): IKE datagrams come from the data plane's receive thread and are handed to the event
loop with call_soon_threadsafe; the engine's datagrams go out through Dataplane.send_ike; ONE timer is
re-armed from the dispatcher's next deadline; engine events become SA installs/removals; and after
everything that happens, plan.diff() decides what to start, stop or route (level-triggered).
How SAs are installed is sas.py's job, netlink is routes.py's, the status message status.py's.

Implements the control plane's Reconciler protocol (apply/status).  Must not parse or build IKE or
ESP packets, and never logs keys or PSKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from meshsec.agent.esp import Lifetime
from meshsec.agent.esp.mtu import tunnel_mtu
from meshsec.agent.esp.transforms import transform_spec
from meshsec.agent.ike import certs
from meshsec.agent.ike import events as ev
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.constants import Notify
from meshsec.agent.ike.responder import IkeResponder
from meshsec.agent.ike.session import IkeSession
from meshsec.agent.runtime import credentials, mapping, plan
from meshsec.agent.runtime.routes import TunRoutes
from meshsec.agent.runtime.sas import PeerState, SaInstaller, Session
from meshsec.agent.runtime.status import node_status
from meshsec.api.v1 import config_pb2, spec_pb2, status_pb2

if TYPE_CHECKING:
    from meshsec.agent.host_options import HostOptions

log = logging.getLogger("meshsec.agent.runtime")
_NOTIFY_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
_NOTIFY_NAMES = frozenset(n.name for n in Notify)

#: The IKE engine's ports (RFC 7296): it knows no others.  The wire's are RuntimeOptions.ike_port and
#: natt_port; ports.MappedDataplane translates between the two at the data plane.
NATT_PORT = 4500
IKE_PORT = 500
#: Every transform the ESP core supports: the TUN MTU is the smallest inner size over all of them, so
#: a rekey to another transform never makes a packet that passed the TUN too big for the link.
_ALL_SPECS = (
    transform_spec(20, 128),
    transform_spec(20, 256),
    transform_spec(28, 256),
    transform_spec(12, 256, 12),
)


@dataclass
class RuntimeOptions:
    """Knobs of the host; the defaults are what a production agent uses."""

    state_dir: Path | None = None  # node-key.pem + node.pem (certificate auth), as enrollment writes them
    tun_name: str = "meshsec0"
    tun_device: str = "/dev/net/tun"  # the TUN clone device (a pod may mount the host's elsewhere)
    ike_port: int = IKE_PORT  # UDP port bound for IKE; every agent of a mesh uses the same (ports.py)
    natt_port: int = NATT_PORT  # UDP port bound for NAT-T IKE and ESP-in-UDP; the same mesh-wide
    listen: tuple[str, ...] = ()  # the node's addresses (--node-ips): bound when the NodeConfig names none
    link_mtu: int = 1500
    vnet_hdr: bool = True
    tick: float = 1.0  # seconds between housekeeping passes (retries, keepalives, counters)
    keepalive_interval: float = 20.0  # RFC 3948 NAT keepalives when we are behind a NAT
    rekey_grace: float = 2.0  # an old inbound SA lives this long after it was replaced or deleted
    switch_timeout: float = 2.0  # outbound moves to a rekeyed SA at the latest this long after it
    retry_min: float = 1.0
    retry_max: float = 30.0
    shutdown_timeout: float = 2.0  # how long close() waits for DELETE answers
    # After a start, a designated responder waits this long for its initiators before it reaches out
    # itself (with INITIAL_CONTACT, so a peer that kept SAs from our previous run drops them); the wait
    # keeps a whole mesh starting at once from initiating every pair from both ends.
    boot_contact_delay: float = 2.0


class AgentRuntime:
    """Converges this host to a NodeConfig: the Reconciler the control-plane client drives.

    Data plane, TUN and sockets are created on the first apply() (they need the listen addresses);
    close() sends DELETE for every IKE SA, waits briefly for the answers and removes everything.
    """

    def __init__(self, options: RuntimeOptions | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.opts = options or RuntimeOptions()
        self.clock = clock
        self.desired: config_pb2.NodeConfig | None = None
        self.errors: list[str] = []
        self.ike_failures: dict[str, int] = {}  # IKE SA failures by reason (the notify name) since start
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ike: IkeResponder | None = None
        self._dp: Any = None
        self._net: TunRoutes | None = None
        self._tun: Any = None
        self._sessions: dict[int, Session] = {}  # id(IkeSession) -> Session
        self._pending_cfg: dict[int, tuple[IkeConfig, str, str, float]] = {}  # id(cfg) -> cfg, peer, digest
        self._peers: dict[str, PeerState] = {}
        self._sas: SaInstaller | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._reconcile_soon = False
        self._next_sid = 1
        self._closing = False
        self._credentials: mapping.Credentials | None = None
        self._boot_initiate: set[str] = set()  # agent peers we reach out to once after our start
        self._boot_deadline = 0.0
        self._apply_lock = asyncio.Lock()
        self._digests_of: config_pb2.NodeConfig | None = None  # the config _digest_seen was made for
        self._digest_seen: dict[str, tuple[str, float]] = {}  # peer -> (session digest, first seen)

    # ------------------------------------------------------------------ Reconciler protocol
    async def apply(self, config: config_pb2.NodeConfig) -> None:
        """Adopt `config` as the desired state and converge towards it (idempotent)."""
        copy = config_pb2.NodeConfig()
        copy.CopyFrom(config)
        before = self.desired.local.revoked_fingerprints if self.desired is not None else ()
        self.desired = copy
        async with self._apply_lock:  # the first apply sets up the host; a second one waits for it
            await self._ensure_started(copy)
        added = credentials.normalize(copy.local.revoked_fingerprints) - credentials.normalize(before)
        if added and self._ike is not None and not self._closing:
            self._check_credentials(self.clock(), probe=True)
        self._reconcile()

    async def _ensure_started(self, copy: config_pb2.NodeConfig) -> None:
        """Create TUN, routes and data plane on the first apply (again after a failed attempt)."""
        if self._dp is None:
            try:
                await self._start(copy)
            except Exception as exc:  # reported, and tried again on the next apply()
                line = f"cannot set up the data plane: {type(exc).__name__}: {exc}"
                if line not in self.errors:
                    self.errors.append(line)
                self._tun = self._net = None
                raise
            self.errors = [e for e in self.errors if not e.startswith("cannot set up the data plane")]
            self._boot_initiate = {
                p.name for p in copy.peers if p.kind == spec_pb2.NODE_KIND_AGENT and p.endpoints
            }
            self._boot_deadline = self.clock() + self.opts.boot_contact_delay

    def status(self) -> status_pb2.NodeStatus:
        """Per-peer IKE and Child SA state, counters, DPD round trip and last error."""
        counters = self._dp.counters if self._dp is not None else None
        return node_status(
            self.desired, self._sessions.values(), self._peers, self.errors, counters, self.clock()
        )

    # ------------------------------------------------------------------ hooks of meshsec-agent (main.py)
    def certificate_renewed(self, renewed: Any) -> None:
        """The control plane renewed our certificate: new IKE_AUTHs use it; established SAs stay."""
        key = serialization.load_pem_private_key(renewed.key_pem, password=None)
        chain = certs.load_pem_certificates(renewed.cert_pem)
        self._credentials = mapping.Credentials(private_key=key, cert_chain=tuple(chain))
        serial = f"0x{chain[0].serial_number:x}" if chain else "?"
        log.info("certificate renewed (serial %s); new IKE SAs authenticate with it", serial)

    def dataplane_counters(self) -> Any:
        """The data plane's DataplaneCounters (plain ints, safe to read from another thread), or None."""
        return self._dp.counters if self._dp is not None else None

    # ------------------------------------------------------------------ operator actions
    def rekey_children(self) -> int:
        """Rekey every installed Child SA now (make-before-break); returns how many were started."""
        n = 0
        now = self.clock()
        for s in list(self._sessions.values()):
            if s.ike.state != "established":
                continue
            for c in list(s.children.values()):
                if c.state == "installed":
                    with contextlib.suppress(KeyError, RuntimeError):
                        s.ike.rekey_child(now, c.spi_in)
                        n += 1
            self._collect(s)
        self._after_io()
        return n

    def rekey_ike(self) -> int:
        """Rekey every established IKE SA now; returns how many were started."""
        n = 0
        now = self.clock()
        for s in list(self._sessions.values()):
            if s.ike.state == "established":
                with contextlib.suppress(RuntimeError):
                    s.ike.rekey_ike(now)
                    n += 1
                self._collect(s)
        self._after_io()
        return n

    async def close(self) -> None:
        """DELETE every IKE SA (waiting up to shutdown_timeout for answers), then remove everything."""
        if self._closing:
            return
        self._closing = True
        if self._sas is not None:
            self._sas.closing = True
        now = self.clock()
        for s in list(self._sessions.values()):
            if s.ike.state == "established":
                s.ike.delete(now)
                self._collect(s)
        self._after_io()
        deadline = self.clock() + self.opts.shutdown_timeout
        while self.clock() < deadline and any(
            s.ike.state in ("deleting", "established") for s in self._sessions.values()
        ):
            await asyncio.sleep(0.02)
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._tick_task
        if self._timer is not None:
            self._timer.cancel()
        if self._dp is not None:
            self._dp.set_ike_handler(None)
            self._dp.close()
        if self._net is not None:
            await self._net.close()
        if self._tun is not None:
            self._tun.close()
        self._sessions.clear()

    # ------------------------------------------------------------------ start-up
    async def _start(self, config: config_pb2.NodeConfig) -> None:
        from meshsec.agent.dataplane import Dataplane
        from meshsec.agent.netcfg.tun import open_tun
        from meshsec.agent.runtime.ports import MappedDataplane, PortMap

        o = self.opts
        self._loop = asyncio.get_running_loop()
        self._credentials = self._load_credentials()
        mtu = tunnel_mtu(o.link_mtu, _ALL_SPECS)
        self._tun = open_tun(o.tun_name, vnet_hdr=o.vnet_hdr, tso=o.vnet_hdr, device=o.tun_device)
        listen = (
            list(config.local.listen_addresses) or _node_listen(o.listen, config) or _default_listen(config)
        )
        self._net = TunRoutes(self._loop, self._node_error)
        try:
            await self._net.setup(self._tun.name, mtu)
            dp = Dataplane(
                self._tun, listen=listen, port=o.natt_port, ike_port=o.ike_port, mark=self._net.mark
            )
        except Exception:
            await self._net.close()
            self._tun.close()
            raise
        # Above this line every port is the engine's 500/4500 (SaInstaller too); the wire's are o.*_port.
        ports = PortMap(o.ike_port, o.natt_port)
        self._dp = dp if ports.identity else MappedDataplane(dp, ports)
        self._dp.set_ike_handler(self._from_dataplane)
        self._dp.start()
        self._sas = SaInstaller(
            self._dp,
            self._loop,
            self._sessions.values,
            natt_port=NATT_PORT,
            link_mtu=self.opts.link_mtu,
            rekey_grace=self.opts.rekey_grace,
            switch_timeout=self.opts.switch_timeout,
        )
        self._ike = IkeResponder(self._config_for, self.clock())
        self._tick_task = self._loop.create_task(self._ticker())
        log.info(
            "agent %s: TUN %s up (mtu %d), IKE on %s port %d, NAT-T port %d",
            config.local.name,
            self._tun.name,
            mtu,
            listen,
            o.ike_port,
            o.natt_port,
        )

    def _load_credentials(self) -> mapping.Credentials | None:
        d = self.opts.state_dir
        if d is None:
            return None
        key_path, cert_path = Path(d) / "node-key.pem", Path(d) / "node.pem"
        if not key_path.exists() or not cert_path.exists():
            return None
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        chain = certs.load_pem_certificates(cert_path.read_bytes())
        return mapping.Credentials(private_key=key, cert_chain=tuple(chain))

    # ------------------------------------------------------------------ I/O plumbing
    def _from_dataplane(self, message: bytes, addr: tuple, local_port: int) -> None:
        """Runs on the data plane's receive thread: only hand over to the event loop."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(self._on_datagram, message, (addr[0], addr[1]), local_port)

    def _on_datagram(self, message: bytes, addr: tuple[str, int], local_port: int) -> None:
        if self._ike is None:
            return
        self._ike.receive(message, addr, self.clock(), local_port)
        self._after_io()

    def _on_timer(self) -> None:
        self._timer = None
        if self._ike is None:
            return
        self._ike.handle_timer(self.clock())
        self._after_io()

    def _collect(self, s: Session) -> None:
        """Pick up what a direct call on a session (rekey, delete, create_child) produced."""
        assert self._ike is not None
        self._ike.sync(s.ike)

    def _after_io(self) -> None:
        """Handle events, flush datagrams, then the outbound switches that waited for them; re-arm
        the one timer, schedule a reconcile pass.

        Events first: a new inbound SA must be in the data plane before the IKE message that lets
        the peer use it leaves (a CREATE_CHILD_SA or IKE_AUTH response, the DELETE of the SA a rekey
        replaced).  Outbound switches of new SAs wait for the flush (sas.py): the peer cannot hold
        an SA before our response reached it.
        """
        ike = self._ike
        if ike is None or self._dp is None:
            return
        now = self.clock()
        while (item := ike.next_event()) is not None:
            session, event = item
            try:
                self._on_event(session, event, now)
            except Exception:  # an install bug must not stop the agent; it shows in last_error
                log.exception("handling %s failed", type(event).__name__)
        for raw, dst, lport in ike.datagrams_to_send(now):
            try:
                self._dp.send_ike(raw, dst, nat_t=lport == NATT_PORT)
            except OSError as exc:
                log.debug("IKE send to %s failed: %s", dst, exc)
        if self._sas is not None:
            self._sas.flushed()
        self._arm_timer(now)
        if not self._reconcile_soon and self._loop is not None and not self._closing:
            self._reconcile_soon = True
            self._loop.call_soon(self._reconcile)

    def _arm_timer(self, now: float) -> None:
        assert self._ike is not None and self._loop is not None
        deadline = self._ike.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_later(max(0.0, deadline - now), self._on_timer)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.opts.tick)
            try:
                self._tick()
            except Exception:
                log.exception("housekeeping pass failed")

    def _tick(self) -> None:
        now = self.clock()
        for s in list(self._sessions.values()):
            if s.ike.state != "established":
                continue
            seen = False
            for c in s.children.values():
                if c.inbound is not None and c.inbound.counters.packets_in != c.seen_packets:
                    c.seen_packets = c.inbound.counters.packets_in
                    seen = True
            if seen:
                s.ike.note_inbound_traffic(now)
                self._sas.switch_when_used(s)
            rekey, delete = self._sas.expiring(s, now)
            for spi in rekey:
                with contextlib.suppress(KeyError, RuntimeError):
                    s.ike.rekey_child(now, spi)
            for spi in delete:
                with contextlib.suppress(KeyError, RuntimeError):
                    s.ike.delete_child(now, spi)
            if rekey or delete:
                self._collect(s)
            if self._sas.follow_endpoint(s, self._peers.setdefault(s.peer, PeerState())):
                log.info("peer %s: ESP endpoint now %s:%d", s.peer, *self._sas.esp_endpoint(s))
            local = self.desired.local if self.desired else None
            behind_nat = s.ike.nat_local or (local is not None and local.behind_nat)
            if behind_nat and self._dp and now - s.last_keepalive >= self.opts.keepalive_interval:
                s.last_keepalive = now
                self._dp.send_keepalive(self._sas.esp_endpoint(s))
        self._prune_pending(now)
        self._after_io()  # flush what the rekeys produced, re-arm the timer, reconcile

    # ------------------------------------------------------------------ sessions and configs
    def _peer_cfg(self, name: str) -> config_pb2.PeerConfig | None:
        if self.desired is None:
            return None
        return next((p for p in self.desired.peers if p.name == name), None)

    def _local_addr(self, remote: str) -> str:
        """The address the kernel uses towards `remote` (a routing lookup; nothing is sent)."""
        assert self.desired is not None
        listen = list(self.desired.local.listen_addresses) or list(self.opts.listen)
        fam = socket.AF_INET6 if ":" in remote else socket.AF_INET
        for a in listen:
            if (":" in a) == (fam == socket.AF_INET6):
                return a
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            try:
                s.connect((remote, self.opts.ike_port))
                return str(s.getsockname()[0])
            except OSError:
                return "::" if fam == socket.AF_INET6 else "0.0.0.0"

    def _config_for(self, addr: tuple[str, int]) -> IkeConfig | None:
        """The responder's choice of peer for an IKE_SA_INIT from `addr`: by address, else the one
        peer that may come from anywhere (behind a NAT or without endpoints); with several of those,
        a config that picks the peer by its identity at IKE_AUTH (_roaming_config)."""
        if self.desired is None or self._closing:
            return None
        peers = list(self.desired.peers)
        match = [p for p in peers if any(h == addr[0] for h, _ in _safe_endpoints(p))]
        if not match:
            roaming = [p for p in peers if p.behind_nat or not p.endpoints]
            if len(roaming) > 1:
                return self._roaming_config(addr, roaming)
            if not roaming:
                return None
            match = roaming
        peer = match[0]
        try:
            cfg = mapping.ike_config(
                peer,
                self.desired.local,
                local_addr=(self._local_addr(addr[0]), IKE_PORT),
                remote_addr=None,
                credentials=self._credentials,
                responder=True,
            )
        except mapping.ConfigError as exc:
            self._peer_error(peer.name, str(exc))
            return None
        self._pending_cfg[id(cfg)] = (
            cfg,
            peer.name,
            plan.session_digest(peer, self.desired.local),
            self.clock(),
        )
        return cfg

    def _roaming_config(
        self, addr: tuple[str, int], roaming: list[config_pb2.PeerConfig]
    ) -> IkeConfig | None:
        """IKE_SA_INIT from an address no peer has, while several peers may come from anywhere: a
        config offering what any of them allows, which picks the peer by IDi/IDr at IKE_AUTH
        (ike.peerselect; RFC 7296 §2.15).  The picked peer's fresh config is entered in _pending_cfg
        then, so _session binds the Session to that peer and never earlier.  Built once per desired
        state, credentials and local address: a flood of IKE_SA_INITs must not rebuild every peer."""
        from meshsec.agent.ike import peerselect

        assert self.desired is not None
        local_addr = (self._local_addr(addr[0]), IKE_PORT)
        cached = getattr(self, "_roaming_cache", None)
        if (
            cached is not None
            and cached[0] is self.desired
            and cached[1] is self._credentials
            and cached[2] == local_addr
        ):
            return cached[3]
        local = self.desired.local
        candidates: list[tuple[tuple[str, str], IkeConfig]] = []
        for peer in roaming:
            try:
                cfg = mapping.ike_config(
                    peer,
                    local,
                    local_addr=local_addr,
                    remote_addr=None,
                    credentials=self._credentials,
                    responder=True,
                )
            except mapping.ConfigError as exc:
                self._peer_error(peer.name, str(exc))
                continue
            candidates.append(((peer.name, plan.session_digest(peer, local)), cfg))

        def bind(key: tuple[str, str], cfg: IkeConfig) -> None:
            self._pending_cfg[id(cfg)] = (cfg, key[0], key[1], self.clock())

        deferred = (
            peerselect.deferred_config(candidates, local_addr=local_addr, on_resolved=bind)
            if candidates
            else None
        )
        self._roaming_cache = (self.desired, self._credentials, local_addr, deferred)
        return deferred

    def _session(self, ike_session: IkeSession) -> Session | None:
        s = self._sessions.get(id(ike_session))
        if s is not None:
            return s
        if ike_session.config.resolve is not None:
            return None  # its peer is picked by identity at IKE_AUTH: nothing to bind to yet
        entry = self._pending_cfg.pop(id(ike_session.config), None)
        if entry is None:
            return None
        _, peer, digest, created = entry
        s = Session(self._next_sid, peer, ike_session, digest, initiator=False, created_at=created)
        self._boot_initiate.discard(peer)  # it came to us: no need to reach out
        self._next_sid += 1
        self._sessions[id(ike_session)] = s
        return s

    def _prune_pending(self, now: float) -> None:
        live = {id(x.config) for x in (self._ike.sessions if self._ike else [])}
        for key, (_, _, _, t) in list(self._pending_cfg.items()):
            if key not in live and now - t > 5.0:
                del self._pending_cfg[key]
        for ike_s in list(self._ike.sessions if self._ike else []):
            if id(ike_s) not in self._sessions and id(ike_s.config) in self._pending_cfg:
                self._session(ike_s)

    def _start_ike(self, name: str, now: float) -> None:
        assert self.desired is not None and self._ike is not None
        peer = self._peer_cfg(name)
        if peer is None:
            return
        eps = _safe_endpoints(peer)
        ps = self._peers.setdefault(name, PeerState())
        if not eps:
            self._peer_error(name, f"peer {name}: no usable endpoint in {list(peer.endpoints)}")
            return
        remote = eps[0]
        try:
            cfg = mapping.ike_config(
                peer,
                self.desired.local,
                local_addr=(self._local_addr(remote[0]), IKE_PORT),
                remote_addr=remote,
                credentials=self._credentials,
            )
            # INITIAL_CONTACT (RFC 7296 §2.4) only when we hold no other SA with this peer: it makes
            # the peer drop every other SA with us, right after a restart but not while we replace
            # an SA make-before-break.
            cfg.initial_contact = not any(x.peer == name and not x.dead for x in self._sessions.values())
            ike_s = self._ike.initiate(cfg, now)
        except (mapping.ConfigError, ValueError) as exc:
            self._peer_error(name, str(exc))
            self._backoff(ps, now)
            return
        s = Session(
            self._next_sid, name, ike_s, plan.session_digest(peer, self.desired.local), True, created_at=now
        )
        self._next_sid += 1
        self._sessions[id(ike_s)] = s
        log.info("peer %s: initiating IKE to %s:%d", name, remote[0], remote[1])

    def _count_failure(self, kind: str) -> None:
        self.ike_failures[kind] = self.ike_failures.get(kind, 0) + 1

    def _backoff(self, ps: PeerState, now: float) -> None:
        ps.backoff = min(self.opts.retry_max, ps.backoff * 2 if ps.backoff else self.opts.retry_min)
        ps.retry_at = now + ps.backoff

    def _peer_error(self, name: str, text: str) -> None:
        ps = self._peers.setdefault(name, PeerState())
        if ps.last_error != text:
            log.warning("peer %s: %s", name, text)
        ps.last_error = text
        ps.last_error_wall = time.time()

    # ------------------------------------------------------------------ reconcile
    def _snapshot(self, now: float) -> plan.Actual:
        return plan.Actual(
            sessions=tuple(s.view(now) for s in self._sessions.values() if not s.dead),
            routes=frozenset(self._net.routes if self._net else ()),
            retry_at={k: v.retry_at for k, v in self._peers.items()},
            also_initiate=frozenset(self._boot_initiate) if now >= self._boot_deadline else frozenset(),
            config_since=self._config_since(now),
        )

    def _config_since(self, now: float) -> dict[str, float]:
        """When each peer's current session digest was first seen (recomputed only for a new config)."""
        desired = self.desired
        if desired is not None and desired is not self._digests_of:
            self._digests_of = desired
            seen = self._digest_seen
            self._digest_seen = {}
            for p in desired.peers:
                d = plan.session_digest(p, desired.local)
                old = seen.get(p.name)
                self._digest_seen[p.name] = old if old is not None and old[0] == d else (d, now)
        return {name: t for name, (_, t) in self._digest_seen.items()}

    def _reconcile(self) -> None:
        self._reconcile_soon = False
        if self.desired is None or self._ike is None or self._closing:
            return
        now = self.clock()
        cut = self._check_credentials(now)
        actions = plan.diff(self.desired, self._snapshot(now), now)
        if not actions:
            if cut:
                self._after_io()  # send the DELETEs now
            return
        by_sid = {s.sid: s for s in self._sessions.values()}
        for a in actions:
            try:
                self._execute(a, by_sid, now)
            except Exception as exc:
                log.exception("action %s failed", a)
                if hasattr(a, "peer"):
                    self._peer_error(a.peer, f"{type(a).__name__} failed: {exc}")
        self._after_io()

    def _check_credentials(self, now: float, wall: float | None = None, *, probe: bool = False) -> int:
        """Act on the certificates behind established IKE SAs (rules and reasons: credentials.py):
        DELETE those of revoked peers; with `probe` (the revocation list grew), re-authenticate those
        resting on an expired peer certificate.  Returns how many SAs were deleted."""
        if self.desired is None:
            return 0
        revoked = credentials.normalize(self.desired.local.revoked_fingerprints)
        refused = frozenset(n for n, p in self._peers.items() if credentials.refused_as_revoked(p.last_error))
        by_sid = {s.sid: s for s in self._sessions.values() if not s.dead and s.ike.peer_cert is not None}
        if not by_sid or not (revoked or refused or probe):  # the common case: nothing to look at
            return 0
        wall = time.time() if wall is None else wall
        views = [
            credentials.SessionCert(
                s.sid,
                s.peer,
                s.ike.state,
                credentials.fingerprint(s.ike.peer_cert),
                credentials.not_after(s.ike.peer_cert),
                s.digest.startswith(credentials.REAUTH_MARK),
            )
            for s in by_sid.values()
        ]
        cut = credentials.to_cut(views, revoked, refused, wall)
        for v in cut:
            s = by_sid[v.sid]
            how = "" if v.fingerprint in revoked else ", refused now; the SA's own one has expired"
            log.warning(
                "peer %s: deleting IKE SA: peer certificate revoked (%s%s)", v.peer, v.fingerprint[:16], how
            )
            s.ike.delete(now)
            self._collect(s)
            self._peer_error(v.peer, "peer certificate revoked")
            self._backoff(self._peers.setdefault(v.peer, PeerState()), now)  # its retries are refused
        if probe:
            for v in credentials.to_reauthenticate([v for v in views if v not in cut], wall):
                s, peer = by_sid[v.sid], self._peer_cfg(v.peer)
                log.info("peer %s: its certificate expired; re-authenticating the IKE SA", v.peer)
                s.digest = credentials.REAUTH_MARK + s.digest  # plan.py: replace it make-before-break
                if peer is None or plan.should_initiate(peer, self.desired.local):
                    continue  # the plan starts the new IKE SA
                if _safe_endpoints(peer):  # the peer would not: we reach out ourselves
                    self._start_ike(v.peer, now)
                else:  # unreachable from here (behind NAT): it comes back by itself if not revoked
                    s.ike.delete(now)
                    self._collect(s)
            self._after_io()
        return len(cut)

    def _execute(self, a: plan.Action, by_sid: dict[int, Session], now: float) -> None:
        if isinstance(a, plan.StartIke):
            self._start_ike(a.peer, now)
        elif isinstance(a, plan.DeleteIke):
            s = by_sid.get(a.sid)
            if s is not None:
                log.info("peer %s: deleting IKE SA (%s)", a.peer, a.reason)
                s.ike.delete(now)
                self._collect(s)
        elif isinstance(a, plan.CreateChild):
            s = by_sid.get(a.sid)
            peer = self._peer_cfg(a.peer)
            child = next((c for c in peer.children if c.name == a.child), None) if peer else None
            if s is None or child is None:
                return
            # each child has its own mode and proposals: one IKE SA carries transport and tunnel
            # children side by side (RFC 7296 §1.3.1)
            s.pending_creates.append(a.child)
            s.ike.create_child(
                now,
                mapping.ike_ts(child.local_ts),
                mapping.ike_ts(child.remote_ts),
                mode=mapping.child_mode(child),
                esp_proposals=tuple(child.esp_proposals) or mapping.DEFAULT_ESP_PROPOSALS,
            )
            self._collect(s)
        elif isinstance(a, plan.DeleteChild):
            s = by_sid.get(a.sid)
            if s is None:
                return
            for c in list(s.children.values()):
                if c.name == a.child and c.state == "installed":
                    c.state = "retiring"
                    s.ike.delete_child(now, c.spi_in)
            self._collect(s)
        elif isinstance(a, plan.AddRoute):
            if self._net is not None and self.desired is not None:
                self._net.add(a.cidr, self.desired)
        elif isinstance(a, plan.DelRoute) and self._net is not None:
            self._net.delete(a.cidr)

    def _node_error(self, line: str) -> None:
        if line not in self.errors:
            self.errors.append(line)
            log.error("%s", line)

    # ------------------------------------------------------------------ engine events
    def _on_event(self, ike_session: IkeSession, event: ev.Event, now: float) -> None:
        s = self._session(ike_session)
        if s is None:
            return
        ps = self._peers.setdefault(s.peer, PeerState())
        if isinstance(event, ev.IkeSaEstablished):
            s.established_at = now
            s.established_wall = time.time()
            s.spis = (event.spi_i + event.spi_r).hex()
            s.transform = event.proposal
            ps.backoff = 0.0
            ps.retry_at = 0.0
            ps.last_error = ""
            self._boot_initiate.discard(s.peer)
            cert = s.ike.peer_cert  # a revoked one is cut by the reconcile pass that follows
            who = f"; peer certificate serial 0x{cert.serial_number:x}" if cert is not None else ""
            log.info("peer %s: IKE SA established (%s%s)", s.peer, event.proposal, who)
        elif isinstance(event, ev.ChildSaEstablished):
            self._install(s, event, ps, now)
        elif isinstance(event, ev.ChildSaRekeyed):
            self._rekeyed(s, event, ps)
        elif isinstance(event, ev.ChildSaDeleted):
            self._sas.child_deleted(s, event.spi_in, ps)
        elif isinstance(event, ev.ChildSaFailed):
            name = s.pending_creates.popleft() if s.pending_creates else self._first_child(s)
            if name:
                s.child_retry[name] = now + max(self.opts.retry_min * 5, 5.0)
            self._peer_error(s.peer, f"child SA failed: {event.reason}")
        elif isinstance(event, ev.IkeSaRekeyed):
            ps.rekeys += 1
        elif isinstance(event, ev.DpdRtt):
            ps.dpd_rtt_us = int(event.rtt * 1e6)
        elif isinstance(event, ev.PeerDead):
            self._peer_error(s.peer, "peer dead: liveness checks unanswered")
            self._count_failure("PEER_DEAD")
        elif isinstance(event, ev.IkeSaFailed | ev.IkeSaDeleted):
            # deleted by our own choice, or superseded by the peer's new SA, or the peer retiring an SA
            # that another established one with it already replaced: no error, no back-off
            superseded = isinstance(event, ev.IkeSaDeleted) and any(
                x is not s and x.peer == s.peer and not x.dead and x.ike.state == "established"
                for x in self._sessions.values()
            )
            ours = superseded or "deleted locally" in event.reason or event.reason.startswith("replaced")
            if not ours:
                self._peer_error(s.peer, event.reason)
                if isinstance(event, ev.IkeSaFailed):
                    self._count_failure(_failure_kind(event.reason))
            self._sas.session_gone(s, ps)
            self._sessions.pop(id(s.ike), None)
            if s.initiator and s.established_at is None:
                self._boot_initiate.discard(s.peer)  # the peer will come to us when it is back
            if not ours and (s.initiator or isinstance(event, ev.IkeSaFailed)):
                self._backoff(ps, now)

    def _first_child(self, s: Session) -> str:
        peer = self._peer_cfg(s.peer)
        return peer.children[0].name if peer and peer.children else ""

    def _esp_lifetime(self, s: Session, name: str) -> Lifetime:
        peer = self._peer_cfg(s.peer)
        child = next((c for c in peer.children if c.name == name), None) if peer else None
        return mapping.esp_lifetime(child)

    def _child_name(self, s: Session, e: ev.ChildSaEstablished) -> str:
        """Which configured child a negotiated SA is: by its selectors, else our pending request."""
        peer = self._peer_cfg(s.peer)
        name = mapping.child_for(peer, e.ts_local, e.ts_remote, e.mode) if peer else ""
        if name in s.pending_creates:
            s.pending_creates.remove(name)
        elif not name and s.pending_creates:
            name = s.pending_creates.popleft()
        return name or f"child-{e.spi_in:08x}"

    def _install(self, s: Session, e: ev.ChildSaEstablished, ps: PeerState, now: float) -> None:
        assert self._sas is not None
        requested = set(s.pending_creates)
        name = self._child_name(s, e)
        s.child_retry.pop(name, None)
        # we sent the request that made it (so the peer holds it): our CREATE_CHILD_SA, or the
        # IKE_AUTH of an SA we initiated (its IkeSaEstablished came in this same batch)
        initiated = name in requested or (s.initiator and s.established_at == now)
        lifetime = self._esp_lifetime(s, name)
        child = self._sas.install(s, e, name, ps, self._local_addr(e.peer[0]), lifetime, initiated=initiated)
        log.info(
            "peer %s: child %s installed (in %08x, out %08x, %s)",
            s.peer,
            name,
            e.spi_in,
            e.spi_out,
            child.transform,
        )

    def _rekeyed(self, s: Session, e: ev.ChildSaRekeyed, ps: PeerState) -> None:
        assert self._sas is not None
        old = s.children.get(e.old_spi_in)
        name = old.name if old else self._child_name(s, e.new)
        self._sas.rekeyed(s, e, name, self._local_addr(e.new.peer[0]), self._esp_lifetime(s, name))
        ps.rekeys += 1
        log.info("peer %s: child %s rekeyed (in %08x -> %08x)", s.peer, name, e.old_spi_in, e.new.spi_in)


def _failure_kind(reason: str) -> str:
    """The notify name a failure reason starts with ("AUTHENTICATION_FAILED: ..."), else TIMEOUT/OTHER."""
    for m in _NOTIFY_NAME.finditer(reason):
        if m.group(0) in _NOTIFY_NAMES:
            return m.group(0)
    return "TIMEOUT" if "expired" in reason or "retransmi" in reason else "OTHER"


def _default_listen(config: config_pb2.NodeConfig) -> list[str]:
    """Any IPv4 address, plus any IPv6 address when a peer has an IPv6 endpoint."""
    v6 = any(":" in h for p in config.peers for h, _ in _safe_endpoints(p))
    return ["0.0.0.0", "::"] if v6 else ["0.0.0.0"]


def _node_listen(node_ips: tuple[str, ...], config: config_pb2.NodeConfig) -> list[str]:
    """The node's addresses (--node-ips, primary first) as listen addresses: the first of each family,
    since the data plane sends from one socket per family; "::" when a peer needs IPv6 and the node
    named no IPv6 address.  [] when the node named none."""
    if not node_ips:
        return []
    first: dict[bool, str] = {}
    for ip in node_ips:
        first.setdefault(":" in ip, ip)
    out = list(first.values())
    if True not in first and "::" in _default_listen(config):
        out.append("::")
    return out


def _safe_endpoints(peer: config_pb2.PeerConfig) -> list[tuple[str, int]]:
    try:
        return mapping.endpoints(peer)
    except ValueError:
        return []


def reconciler(host: HostOptions | None = None) -> AgentRuntime:
    """meshsec-agent's default reconciler (`--reconciler runtime`).  `host` carries what main.py parsed:
    TUN device and name, IKE/NAT-T ports, the node's addresses (listened on when the NodeConfig names
    none) and the state dir.  Without it (another caller): state dir and TUN name from
    MESHSEC_AGENT_STATE_DIR / MESHSEC_TUN, everything else the defaults."""
    import os

    if host is None:
        state = os.environ.get("MESHSEC_AGENT_STATE_DIR", "/var/lib/meshsec/agent")
        return AgentRuntime(
            RuntimeOptions(state_dir=Path(state), tun_name=os.environ.get("MESHSEC_TUN", "meshsec0"))
        )
    state_dir = host.state_dir or Path(os.environ.get("MESHSEC_AGENT_STATE_DIR", "/var/lib/meshsec/agent"))
    return AgentRuntime(
        RuntimeOptions(
            state_dir=state_dir,
            tun_name=host.tun_name,
            tun_device=host.tun_device,
            ike_port=host.ike_port,
            natt_port=host.natt_port,
            listen=tuple(dict.fromkeys(ip for ip in (host.node_ip, *host.node_ips) if ip)),  # primary first
        )
    )
