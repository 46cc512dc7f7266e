"""The asyncio host of one agent: IKE dispatcher + sessions, the ESP data plane, TUN routes.

Owns the wiring and nothing protocol-specific (the aioquic asyncio/protocol.py role beside the
sans-I/O cores): IKE datagrams come from the data plane's receive thread and are handed to the event
loop with call_soon_threadsafe; the engine's datagrams go out through Dataplane.send_ike; ONE timer is
re-armed from the dispatcher's next deadline; engine events become SA installs/removals; and after
everything that happens, plan.diff() decides what to start, stop or route (level-triggered).

SA installation order: inbound first, then outbound, so the peer's first packets never meet a
missing SA.  A rekeyed Child SA is make-before-break: the new inbound SA is installed at once, the
outbound switches when the old SA is deleted (or SWITCH_TIMEOUT later), and the old inbound SA stays
REKEY_GRACE seconds for packets still in flight.

Implements the control plane's Reconciler protocol (apply/status).  Must not parse or build IKE or
ESP packets, and never logs keys or PSKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from meshsec.agent.esp import InboundSa, OutboundSa, SaParams, TrafficSelector
from meshsec.agent.esp.mtu import tunnel_mtu
from meshsec.agent.esp.transforms import transform_spec
from meshsec.agent.ike import certs
from meshsec.agent.ike import events as ev
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.responder import IkeResponder
from meshsec.agent.ike.session import IkeSession
from meshsec.agent.runtime import mapping, plan
from meshsec.api.v1 import config_pb2, spec_pb2, status_pb2

log = logging.getLogger("meshsec.agent.runtime")

AGENT_VERSION = "0.1.0"
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


_COUNTER_FIELDS = (
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
class RuntimeOptions:
    """Knobs of the host; the defaults are what a production agent uses."""

    state_dir: Path | None = None  # node-key.pem + node.pem (certificate auth), as enrollment writes them
    tun_name: str = "meshsec0"
    link_mtu: int = 1500
    vnet_hdr: bool = True
    tick: float = 1.0  # seconds between housekeeping passes (retries, keepalives, counters)
    keepalive_interval: float = 20.0  # RFC 3948 NAT keepalives when we are behind a NAT
    rekey_grace: float = 2.0  # an old inbound SA lives this long after it was replaced or deleted
    switch_timeout: float = 1.0  # outbound moves to a rekeyed SA at the latest this long after it
    retry_min: float = 1.0
    retry_max: float = 30.0
    shutdown_timeout: float = 2.0  # how long close() waits for DELETE answers
    # After a start, a designated responder waits this long for its initiators before it reaches out
    # itself (with INITIAL_CONTACT, so a peer that kept SAs from our previous run drops them); the wait
    # keeps a whole mesh starting at once from initiating every pair from both ends.
    boot_contact_delay: float = 2.0


@dataclass
class _Child:
    name: str
    sa_id: str
    spi_in: int
    spi_out: int
    transform: str
    mode: str
    ts_local: list[str]
    ts_remote: list[str]
    established_wall: float
    inbound: InboundSa | None
    out_params: SaParams
    out_selectors: tuple[TrafficSelector, ...]
    outbound: OutboundSa | None = None
    state: str = "installed"  # installed | rekeying (replaced, outbound still on it) | retiring
    seen_packets: int = 0


@dataclass
class _Session:
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
    children: dict[int, _Child] = field(default_factory=dict)
    pending_creates: deque[str] = field(default_factory=deque)
    child_retry: dict[str, float] = field(default_factory=dict)
    switches: dict[int, _Child] = field(default_factory=dict)  # old spi_in -> new child awaiting switch
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
class _PeerState:
    retry_at: float = 0.0
    backoff: float = 0.0
    last_error: str = ""
    last_error_wall: float = 0.0
    dpd_rtt_us: int = 0
    rekeys: int = 0
    endpoint: tuple[str, int] | None = None
    retired: dict[str, int] = field(default_factory=dict)  # counters of SAs already removed


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ike: IkeResponder | None = None
        self._dp: Any = None
        self._net: Any = None
        self._tun: Any = None
        self._sessions: dict[int, _Session] = {}  # id(IkeSession) -> _Session
        self._pending_cfg: dict[int, tuple[IkeConfig, str, str, float]] = {}  # id(cfg) -> cfg, peer, digest
        self._peers: dict[str, _PeerState] = {}
        self._routes: set[str] = set()
        self._out_owner: dict[str, tuple[int, int]] = {}  # sa_id -> (sid, spi_out) installed
        self._timer: asyncio.TimerHandle | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._reconcile_soon = False
        self._next_sid = 1
        self._closing = False
        self._credentials: mapping.Credentials | None = None
        self._nl = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netcfg")
        self._boot_initiate: set[str] = set()  # agent peers we reach out to once after our start
        self._boot_deadline = 0.0

    # ------------------------------------------------------------------ Reconciler protocol
    async def apply(self, config: config_pb2.NodeConfig) -> None:
        """Adopt `config` as the desired state and converge towards it (idempotent)."""
        copy = config_pb2.NodeConfig()
        copy.CopyFrom(config)
        self.desired = copy
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
        self._reconcile()

    def status(self) -> status_pb2.NodeStatus:
        st = status_pb2.NodeStatus(agent_version=AGENT_VERSION, errors=list(self.errors))
        st.reported_at.GetCurrentTime()
        if self.desired is None:
            return st
        st.node = self.desired.local.name
        st.applied_version = self.desired.version
        total = st.counters
        now = self.clock()
        for peer in self.desired.peers:
            ps = self._peers.get(peer.name, _PeerState())
            p = st.peers.add(peer=peer.name, rekeys=ps.rekeys, dpd_rtt_us=ps.dpd_rtt_us)
            if ps.last_error:
                p.last_error = ps.last_error
                p.last_error_at.FromNanoseconds(int(ps.last_error_wall * 1e9))
            sessions = [s for s in self._sessions.values() if s.peer == peer.name and not s.dead]
            best = self._best(sessions)
            if best is None:
                p.ike_state = (
                    status_pb2.IKE_SA_STATE_FAILED
                    if ps.last_error and ps.retry_at > now
                    else status_pb2.IKE_SA_STATE_DOWN
                )
                continue
            p.ike_state = _ike_state(best)
            if best.ike.remote is not None:
                p.remote_endpoint = f"{best.ike.remote[0]}:{best.ike.remote[1]}"
            p.ike_transform = best.transform
            p.nat_detected = best.ike.encap
            if best.established_at is not None:
                p.established_at.FromNanoseconds(int(best.established_wall * 1e9))
            for c in best.children.values():
                if c.state == "retiring":
                    continue
                cs = p.children.add(
                    name=c.name,
                    state=status_pb2.CHILD_SA_STATE_INSTALLED
                    if c.state == "installed"
                    else status_pb2.CHILD_SA_STATE_REKEYING,
                    mode=spec_pb2.MODE_TRANSPORT if c.mode == "transport" else spec_pb2.MODE_TUNNEL,
                    spi_in=c.spi_in,
                    spi_out=c.spi_out,
                    transform=c.transform,
                    local_ts=c.ts_local,
                    remote_ts=c.ts_remote,
                )
                cs.established_at.FromNanoseconds(int(c.established_wall * 1e9))
                _fill_counters(cs.counters, c)
                for f in _COUNTER_FIELDS:
                    setattr(total, f, getattr(total, f) + getattr(cs.counters, f))
        for ps in self._peers.values():
            for f, v in ps.retired.items():
                setattr(total, f, getattr(total, f) + v)
        if self._dp is not None:
            total.policy_drops += self._dp.counters.no_policy + self._dp.counters.no_sa
        return st

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
            await asyncio.get_running_loop().run_in_executor(self._nl, self._net.close)
        self._nl.shutdown(wait=True)
        if self._tun is not None:
            self._tun.close()
        self._sessions.clear()

    # ------------------------------------------------------------------ start-up
    async def _start(self, config: config_pb2.NodeConfig) -> None:
        from meshsec.agent.dataplane import Dataplane
        from meshsec.agent.netcfg.tun import open_tun

        self._loop = asyncio.get_running_loop()
        self._credentials = self._load_credentials()
        mtu = tunnel_mtu(self.opts.link_mtu, _ALL_SPECS)
        self._tun = open_tun(self.opts.tun_name, vnet_hdr=self.opts.vnet_hdr, tso=self.opts.vnet_hdr)
        listen = list(config.local.listen_addresses) or ["0.0.0.0"]
        try:
            self._net = await self._loop.run_in_executor(self._nl, self._setup_net, self._tun.name, mtu)
            self._dp = Dataplane(
                self._tun, listen=listen, port=NATT_PORT, ike_port=IKE_PORT, mark=self._net.mark
            )
        except Exception:
            if self._net is not None:
                await self._loop.run_in_executor(self._nl, self._net.close)
            self._tun.close()
            raise
        self._ike = IkeResponder(self._config_for, self.clock())
        self._dp.set_ike_handler(self._from_dataplane)
        self._dp.start()
        self._tick_task = self._loop.create_task(self._ticker())
        log.info("agent %s: TUN %s up (mtu %d), IKE on %s", config.local.name, self._tun.name, mtu, listen)

    @staticmethod
    def _setup_net(ifname: str, mtu: int) -> Any:
        """On the netlink thread: pyroute2's synchronous API cannot run inside a running event loop."""
        from meshsec.agent.netcfg.links import NetcfgError, NetConfig

        net = NetConfig(ifname)
        try:
            net.set_up(mtu)
            try:
                net.add_bypass_rules()
            except NetcfgError as exc:  # left over by a killed agent: the same rule is fine
                if exc.errno != errno.EEXIST:
                    raise
        except Exception:
            net.close()
            raise
        return net

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

    def _collect(self, s: _Session) -> None:
        """Pick up what a direct call on a session (rekey, delete, create_child) produced."""
        assert self._ike is not None
        self._ike.sync(s.ike)

    def _after_io(self) -> None:
        """Flush datagrams, handle events, re-arm the one timer, schedule a reconcile pass."""
        ike = self._ike
        if ike is None or self._dp is None:
            return
        now = self.clock()
        for raw, dst, lport in ike.datagrams_to_send(now):
            try:
                self._dp.send_ike(raw, dst, nat_t=lport == NATT_PORT)
            except OSError as exc:
                log.debug("IKE send to %s failed: %s", dst, exc)
        while (item := ike.next_event()) is not None:
            session, event = item
            try:
                self._on_event(session, event, now)
            except Exception:  # an install bug must not stop the agent; it shows in last_error
                log.exception("handling %s failed", type(event).__name__)
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
            self._follow_endpoint(s)
            local = self.desired.local if self.desired else None
            behind_nat = s.ike.nat_local or (local is not None and local.behind_nat)
            if behind_nat and self._dp and now - s.last_keepalive >= self.opts.keepalive_interval:
                s.last_keepalive = now
                self._dp.send_keepalive(self._esp_endpoint(s))
        self._prune_pending(now)
        self._reconcile()

    # ------------------------------------------------------------------ sessions and configs
    def _peer_cfg(self, name: str) -> config_pb2.PeerConfig | None:
        if self.desired is None:
            return None
        return next((p for p in self.desired.peers if p.name == name), None)

    def _local_addr(self, remote: str) -> str:
        """The address the kernel uses towards `remote` (a routing lookup; nothing is sent)."""
        assert self.desired is not None
        listen = list(self.desired.local.listen_addresses)
        fam = socket.AF_INET6 if ":" in remote else socket.AF_INET
        for a in listen:
            if (":" in a) == (fam == socket.AF_INET6):
                return a
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            try:
                s.connect((remote, IKE_PORT))
                return str(s.getsockname()[0])
            except OSError:
                return "::" if fam == socket.AF_INET6 else "0.0.0.0"

    def _config_for(self, addr: tuple[str, int]) -> IkeConfig | None:
        """The responder's choice of peer for an IKE_SA_INIT from `addr` (by address, else the one
        peer that may come from anywhere: behind a NAT or without endpoints)."""
        if self.desired is None or self._closing:
            return None
        peers = list(self.desired.peers)
        match = [p for p in peers if any(h == addr[0] for h, _ in _safe_endpoints(p))]
        if not match:
            roaming = [p for p in peers if p.behind_nat or not p.endpoints]
            if len(roaming) != 1:
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

    def _session(self, ike_session: IkeSession) -> _Session | None:
        s = self._sessions.get(id(ike_session))
        if s is not None:
            return s
        entry = self._pending_cfg.pop(id(ike_session.config), None)
        if entry is None:
            return None
        _, peer, digest, created = entry
        s = _Session(self._next_sid, peer, ike_session, digest, initiator=False, created_at=created)
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
        ps = self._peers.setdefault(name, _PeerState())
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
            ike_s = self._ike.initiate(cfg, now)
        except (mapping.ConfigError, ValueError) as exc:
            self._peer_error(name, str(exc))
            self._backoff(ps, now)
            return
        s = _Session(
            self._next_sid, name, ike_s, plan.session_digest(peer, self.desired.local), True, created_at=now
        )
        self._next_sid += 1
        self._sessions[id(ike_s)] = s
        log.info("peer %s: initiating IKE to %s:%d", name, remote[0], remote[1])

    def _backoff(self, ps: _PeerState, now: float) -> None:
        ps.backoff = min(self.opts.retry_max, ps.backoff * 2 if ps.backoff else self.opts.retry_min)
        ps.retry_at = now + ps.backoff

    def _peer_error(self, name: str, text: str) -> None:
        ps = self._peers.setdefault(name, _PeerState())
        if ps.last_error != text:
            log.warning("peer %s: %s", name, text)
        ps.last_error = text
        ps.last_error_wall = time.time()

    # ------------------------------------------------------------------ reconcile
    def _snapshot(self, now: float) -> plan.Actual:
        return plan.Actual(
            sessions=tuple(s.view(now) for s in self._sessions.values() if not s.dead),
            routes=frozenset(self._routes),
            retry_at={k: v.retry_at for k, v in self._peers.items()},
            also_initiate=frozenset(self._boot_initiate) if now >= self._boot_deadline else frozenset(),
        )

    def _reconcile(self) -> None:
        self._reconcile_soon = False
        if self.desired is None or self._ike is None or self._closing:
            return
        now = self.clock()
        actions = plan.diff(self.desired, self._snapshot(now), now)
        if not actions:
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

    def _execute(self, a: plan.Action, by_sid: dict[int, _Session], now: float) -> None:
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
            same_mode = (child.mode == spec_pb2.MODE_TRANSPORT) == (s.ike.config.mode == "transport")
            if not same_mode:
                s.child_retry[a.child] = now + 3600.0
                self._peer_error(a.peer, f"child {a.child}: a second mode on one IKE SA is not supported yet")
                return
            s.pending_creates.append(a.child)
            s.ike.create_child(now, mapping.ike_ts(child.local_ts), mapping.ike_ts(child.remote_ts))
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
            self._add_route(a.cidr)
        elif isinstance(a, plan.DelRoute):
            self._del_route(a.cidr)

    def _add_route(self, cidr: str) -> None:
        """Route `cidr` into the TUN (on the netlink thread; marked as installed right away so the
        plan does not ask twice, and unmarked again if the kernel refuses)."""
        if self._net is None or self.desired is None:
            return
        self._routes.add(cidr)
        fut = self._nl.submit(self._nl_add_route, self._net, cidr, self.desired)
        fut.add_done_callback(lambda f: self._route_done(cidr, f))

    def _route_done(self, cidr: str, fut: Any) -> None:
        exc = fut.exception()
        if exc is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._route_failed, cidr, str(exc))

    def _route_failed(self, cidr: str, why: str) -> None:
        self._routes.discard(cidr)
        line = f"route {cidr}: {why}"
        if line not in self.errors:
            self.errors.append(line)
            log.error("%s", line)

    def _del_route(self, cidr: str) -> None:
        self._routes.discard(cidr)
        if self._net is not None:
            self._nl.submit(self._net.del_route, cidr)

    @staticmethod
    def _nl_add_route(net: Any, cidr: str, desired: config_pb2.NodeConfig) -> None:
        from meshsec.agent.netcfg.links import NetcfgError

        src = _route_src(cidr, desired, _local_addresses())
        try:
            net.add_route(cidr, src=src)
        except NetcfgError as exc:
            if exc.errno != errno.EEXIST:
                raise

    # ------------------------------------------------------------------ engine events
    def _on_event(self, ike_session: IkeSession, event: ev.Event, now: float) -> None:
        s = self._session(ike_session)
        if s is None:
            return
        ps = self._peers.setdefault(s.peer, _PeerState())
        if isinstance(event, ev.IkeSaEstablished):
            s.established_at = now
            s.established_wall = time.time()
            s.spis = (event.spi_i + event.spi_r).hex()
            s.transform = event.proposal
            ps.backoff = 0.0
            ps.retry_at = 0.0
            ps.last_error = ""
            self._boot_initiate.discard(s.peer)
            log.info("peer %s: IKE SA established (%s)", s.peer, event.proposal)
        elif isinstance(event, ev.ChildSaEstablished):
            self._install(s, event, now)
        elif isinstance(event, ev.ChildSaRekeyed):
            self._rekeyed(s, event, ps)
        elif isinstance(event, ev.ChildSaDeleted):
            self._child_deleted(s, event.spi_in)
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
        elif isinstance(event, ev.IkeSaFailed | ev.IkeSaDeleted):
            # deleted by our own choice, or superseded by the peer's new SA: no error, no back-off
            ours = "deleted locally" in event.reason or event.reason.startswith("replaced")
            if not ours:
                self._peer_error(s.peer, event.reason)
            self._session_gone(s)
            if s.initiator and s.established_at is None:
                self._boot_initiate.discard(s.peer)  # the peer will come to us when it is back
            if not ours and (s.initiator or isinstance(event, ev.IkeSaFailed)):
                self._backoff(ps, now)

    def _first_child(self, s: _Session) -> str:
        peer = self._peer_cfg(s.peer)
        return peer.children[0].name if peer and peer.children else ""

    def _esp_endpoint(self, s: _Session) -> tuple[str, int]:
        remote = s.ike.remote
        assert remote is not None
        return remote if s.ike.encap else (remote[0], NATT_PORT)

    def _follow_endpoint(self, s: _Session) -> None:
        if s.ike.remote is None or not s.children or self._dp is None:
            return
        ep = self._esp_endpoint(s)
        ps = self._peers.setdefault(s.peer, _PeerState())
        if ps.endpoint != ep:
            log.info("peer %s: ESP endpoint now %s:%d", s.peer, ep[0], ep[1])
            ps.endpoint = ep
            self._dp.set_peer(s.peer, ep, self.opts.link_mtu)

    def _install(self, s: _Session, e: ev.ChildSaEstablished, now: float) -> _Child | None:
        peer = self._peer_cfg(s.peer)
        name = mapping.child_for(peer, e.ts_local, e.ts_remote) if peer else ""
        if name in s.pending_creates:
            s.pending_creates.remove(name)
        elif not name and s.pending_creates:
            name = s.pending_creates.popleft()
        name = name or f"child-{e.spi_in:08x}"
        s.child_retry.pop(name, None)
        child = self._make_child(s, e, name)
        ep = self._esp_endpoint(s)
        self._dp.set_peer(s.peer, ep, self.opts.link_mtu)
        self._peers.setdefault(s.peer, _PeerState()).endpoint = ep
        child.inbound = self._dp.add_inbound_sa(child_params_in(e, self._local_addr(e.peer[0])))
        self._switch_out(s, child)
        s.children[e.spi_in] = child
        log.info(
            "peer %s: child %s installed (in %08x, out %08x, %s)",
            s.peer,
            name,
            e.spi_in,
            e.spi_out,
            child.transform,
        )
        return child

    def _make_child(self, s: _Session, e: ev.ChildSaEstablished, name: str) -> _Child:
        _, out_params = mapping.sa_params(e, local_ip=self._local_addr(e.peer[0]))
        return _Child(
            name=name,
            sa_id=f"{s.peer}/{name}",
            spi_in=e.spi_in,
            spi_out=e.spi_out,
            transform=mapping.transform_name(e),
            mode=e.mode,
            ts_local=[t for x in e.ts_local for t in mapping.ts_text(x)],
            ts_remote=[t for x in e.ts_remote for t in mapping.ts_text(x)],
            established_wall=time.time(),
            inbound=None,
            out_params=out_params,
            out_selectors=mapping.esp_selectors(e.ts_local, e.ts_remote),
        )

    def _switch_out(self, s: _Session, child: _Child) -> None:
        """Point the child's outbound traffic at this SA (atomic replace of the previous one)."""
        child.outbound = self._dp.add_outbound_sa(child.sa_id, child.out_params, child.out_selectors, s.peer)
        self._out_owner[child.sa_id] = (s.sid, child.spi_out)

    def _rekeyed(self, s: _Session, e: ev.ChildSaRekeyed, ps: _PeerState) -> None:
        old = s.children.get(e.old_spi_in)
        new_ev = e.new
        name = (
            old.name
            if old
            else (mapping.child_for(self._peer_cfg(s.peer), new_ev.ts_local, new_ev.ts_remote) or "")
        )
        name = name or f"child-{new_ev.spi_in:08x}"
        child = self._make_child(s, new_ev, name)
        child.inbound = self._dp.add_inbound_sa(child_params_in(new_ev, self._local_addr(new_ev.peer[0])))
        s.children[new_ev.spi_in] = child
        ps.rekeys += 1
        if old is None or self._out_owner.get(old.sa_id) != (s.sid, old.spi_out):
            self._switch_out(s, child)
            return
        old.state = "rekeying"
        s.switches[old.spi_in] = child
        assert self._loop is not None
        self._loop.call_later(self.opts.switch_timeout, self._switch_due, s, old.spi_in)
        log.info("peer %s: child %s rekeyed (in %08x -> %08x)", s.peer, name, old.spi_in, new_ev.spi_in)

    def _switch_due(self, s: _Session, old_spi_in: int) -> None:
        new = s.switches.pop(old_spi_in, None)
        if new is not None and not s.dead and new.spi_in in s.children:
            self._switch_out(s, new)
            old = s.children.get(old_spi_in)
            if old is not None:
                old.state = "retiring"

    def _child_deleted(self, s: _Session, spi_in: int) -> None:
        self._switch_due(s, spi_in)  # a rekeyed SA's deletion is the moment to move outbound
        child = s.children.pop(spi_in, None)
        if child is None:
            return
        retired = self._peers.setdefault(s.peer, _PeerState()).retired
        done = status_pb2.Counters()
        _fill_counters(done, child)
        for f in _COUNTER_FIELDS:
            retired[f] = retired.get(f, 0) + getattr(done, f)
        if self._out_owner.get(child.sa_id) == (s.sid, child.spi_out):
            heir = self._heir(child)
            if heir is not None:  # another SA of the same child (duplicate IKE SA) takes over at once
                self._switch_out(heir[0], heir[1])
            else:
                self._dp.remove_outbound_sa(child.sa_id)
                del self._out_owner[child.sa_id]
        if self._loop is not None and not self._closing:
            self._loop.call_later(self.opts.rekey_grace, self._dp.remove_inbound_sa, child.spi_in)
        else:
            self._dp.remove_inbound_sa(child.spi_in)

    def _heir(self, gone: _Child) -> tuple[_Session, _Child] | None:
        for s in self._sessions.values():
            if s.dead or s.ike.state != "established":
                continue
            for c in s.children.values():
                if c is not gone and c.sa_id == gone.sa_id and c.state == "installed":
                    return s, c
        return None

    def _session_gone(self, s: _Session) -> None:
        for spi in list(s.children):
            self._child_deleted(s, spi)
        s.switches.clear()
        s.dead = True
        self._sessions.pop(id(s.ike), None)

    def _best(self, sessions: list[_Session]) -> _Session | None:
        if not sessions:
            return None
        return max(sessions, key=lambda s: (s.ike.state == "established", s.established_at or 0.0, s.sid))


def child_params_in(e: ev.ChildSaEstablished, local_ip: str) -> SaParams:
    return mapping.sa_params(e, local_ip=local_ip)[0]


def _ike_state(s: _Session) -> int:
    st = s.ike.state
    if st == "established":
        if any(c.state == "rekeying" for c in s.children.values()):
            return status_pb2.IKE_SA_STATE_REKEYING
        return status_pb2.IKE_SA_STATE_ESTABLISHED
    if st == "deleting":
        return status_pb2.IKE_SA_STATE_DELETING
    if st in ("failed", "closed"):
        return status_pb2.IKE_SA_STATE_FAILED
    return status_pb2.IKE_SA_STATE_CONNECTING


def _fill_counters(out: status_pb2.Counters, c: _Child) -> None:
    if c.inbound is not None:
        i = c.inbound.counters
        out.packets_in, out.bytes_in = i.packets_in, i.bytes_in
        out.replay_drops, out.icv_failures = i.replay_drops, i.icv_failures
        out.malformed, out.policy_drops = i.malformed, i.policy_drops
    if c.outbound is not None:
        o = c.outbound.counters
        out.packets_out, out.bytes_out = o.packets_out, o.bytes_out


def _safe_endpoints(peer: config_pb2.PeerConfig) -> list[tuple[str, int]]:
    try:
        return mapping.endpoints(peer)
    except ValueError:
        return []


def _route_src(cidr: str, desired: config_pb2.NodeConfig, addrs: list[str]) -> str | None:
    """A local address inside one of the local selectors paired with `cidr`, so the kernel picks a
    source the SA's selectors cover (the TUN itself has no address)."""
    for peer in desired.peers:
        for child in peer.children:
            if cidr not in {plan.normalize_cidr(t) for t in child.remote_ts}:
                continue
            for ts in child.local_ts:
                net = ipaddress.ip_network(ts, strict=False)
                for a in addrs:
                    if ipaddress.ip_address(a) in net:
                        return a
    return None


def _local_addresses() -> list[str]:
    """Addresses configured on this host (read-only netlink query)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr() if a.get_attr("IFA_ADDRESS")]


def reconciler() -> AgentRuntime:
    """Factory for `meshsec-agent --reconciler meshsec.agent.runtime.host:reconciler`: state dir and
    TUN name from MESHSEC_AGENT_STATE_DIR / MESHSEC_TUN."""
    import os

    state = os.environ.get("MESHSEC_AGENT_STATE_DIR", "/var/lib/meshsec/agent")
    return AgentRuntime(
        RuntimeOptions(state_dir=Path(state), tun_name=os.environ.get("MESHSEC_TUN", "meshsec0"))
    )
