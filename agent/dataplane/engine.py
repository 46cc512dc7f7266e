"""The data plane: TUN <-> ESP-in-UDP, one blocking loop per direction, each in its own thread.

Owns the two I/O loops, the outbound SA table (SA id -> OutboundSa + peer), the inbound SAD and the
peer endpoints.  The ESP core (`meshsec.agent.esp`) does every byte of cryptography and framing; this
module only moves packets, batches system calls and counts.  It must not negotiate anything: the
agent (and its IKE engine) installs SAs and consumes IKE datagrams through the public methods.

Why threads and not asyncio: a drain-until-EAGAIN loop per direction amortises one poll() over a
whole burst (profiled under iperf3: ~80 TUN reads and ~230 ESP datagrams per wake-up) and lets the
sender batch the burst into UDP GSO sendmsg calls, where an asyncio reader would pay a callback and an
event-loop turn per packet.  cryptography's AEAD calls did not release the GIL in our measurement, so
two busy directions in one process share one core; a single bulk flow keeps one direction busy per
process, which is the case the benchmark measures.  The two directions only share dicts that the GIL
keeps consistent; SA installs from the agent thread are single dict assignments.

Hot-path rules: nothing a peer (or a local application) sends can raise out of a loop -- every
per-packet step sits in a try that counts; no logging per packet; time is read once per batch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshsec.agent.dataplane import offload, udp
from meshsec.agent.dataplane.counters import DataplaneCounters
from meshsec.agent.dataplane.inner import clamp_mss, flow_key, is_tcp_syn, too_big_reply
from meshsec.agent.esp import EspDrop, InboundSa, Mode, OutboundSa, Sad, SaParams, Spd, TrafficSelector
from meshsec.agent.esp.mtu import max_inner_packet
from meshsec.agent.netcfg.tun import TunDevice

#: Callback for IKE messages: (message without non-ESP marker, remote (host, port), local port).
IkeHandler = Callable[[bytes, tuple, int], None]

SPD_CACHE_SIZE = 4096  # distinct flows remembered between SPD changes; cleared when full
_MISS = object()
VNET_LEN = offload.VNET_HDR_LEN
TX_BATCH = 64  # inner packets encrypted before a flush (one GSO run is at most 64 segments)
RX_BUFFER = 65535
IKE_PORT = 500
NAT_T_PORT = 4500
_UDP_HDR = 8
_IP_HDR = {4: 20, 6: 40}


def _family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@dataclass
class Peer:
    """Where a peer's ESP goes: its current (address, port); the IKE engine moves it (RFC 7296 §2.23)."""

    endpoint: tuple[str, int]
    link_mtu: int = 1500
    family: int = field(init=False)

    def __post_init__(self) -> None:
        self.family = _family_of(self.endpoint[0])


@dataclass
class _Outbound:
    sa: OutboundSa
    params: SaParams
    peer: Peer
    selectors: tuple[TrafficSelector, ...]
    mtu: dict[int, int]  # inner IP version -> largest inner packet that fits one outer packet
    mss: dict[int, int]


class Dataplane:
    """User-space ESP data plane for one TUN device.

    Construct, `add_*` SAs (before or after `start()`), `start()`, and `close()` at the end.
    `listen` are the local addresses to bind 4500 (and 500 when `ike_port` is set) on: one per family.
    `mark` is set as SO_MARK on every socket (see `meshsec.agent.netcfg.links` for why).
    `icmp_source` maps IP version -> the source address of ICMP too-big replies; by default the
    too-big packet's own destination.  It must not be an address of this host: the kernel drops
    packets arriving with a local source address (martians).
    """

    def __init__(
        self,
        tun: TunDevice,
        *,
        listen: Iterable[str] = ("0.0.0.0",),
        port: int = NAT_T_PORT,
        ike_port: int | None = IKE_PORT,
        mark: int | None = None,
        gso: bool = True,
        gro: bool = True,
        clamp_mss: bool = True,
        icmp_source: dict[int, bytes] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tun = tun
        self.counters = DataplaneCounters()
        self.clock = clock
        self.clamp = clamp_mss
        self.icmp_source = dict(icmp_source or {})
        self._spd: Spd[str] = Spd()
        self._spd_cache: dict[bytes, str | None] = {}
        self._out: dict[str, _Outbound] = {}
        self._sad = Sad()
        self._peers: dict[str, Peer] = {}
        self._ike_handler: IkeHandler | None = None
        self._endpoints: list[udp.UdpEndpoint] = []
        self._by_family: dict[int, udp.UdpEndpoint] = {}
        self._ike_by_family: dict[int, udp.UdpEndpoint] = {}
        self._threads: list[threading.Thread] = []
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            for host in listen:
                fam = _family_of(host)
                ep = udp.open_udp(fam, host, port, nat_t=True, mark=mark, gso=gso, gro=gro)
                self._endpoints.append(ep)
                self._by_family[fam] = ep
                if ike_port is not None:
                    ike = udp.open_udp(fam, host, ike_port, nat_t=False, mark=mark, gso=False, gro=False)
                    self._endpoints.append(ike)
                    self._ike_by_family[fam] = ike
        except OSError:
            self.close()
            raise
        os.set_blocking(tun.fd, False)

    # ------------------------------------------------------------------ agent API
    @property
    def ports(self) -> dict[int, int]:
        """Bound NAT-T port per family (useful when constructed with port=0)."""
        return {fam: ep.port for fam, ep in self._by_family.items()}

    @property
    def ike_ports(self) -> dict[int, int]:
        """Bound bare-IKE port per family (500 unless constructed otherwise)."""
        return {fam: ep.port for fam, ep in self._ike_by_family.items()}

    def set_ike_handler(self, handler: IkeHandler | None) -> None:
        """Register the IKE engine's receive callback; it runs on the receive thread, so it must only
        hand the datagram over (e.g. loop.call_soon_threadsafe) and return quickly."""
        self._ike_handler = handler

    def set_peer(self, peer_id: str, endpoint: tuple[str, int], link_mtu: int = 1500) -> None:
        """Create a peer or move it to a new (address, port): NAT mobility / MOBIKE updates."""
        peer = self._peers.get(peer_id)
        if peer is None:
            self._peers[peer_id] = Peer(endpoint, link_mtu)
            return
        new_family = _family_of(endpoint[0])
        peer.endpoint = endpoint
        peer.family = new_family
        if peer.link_mtu != link_mtu:
            peer.link_mtu = link_mtu
        for entry in self._out.values():
            if entry.peer is peer:
                entry.mtu, entry.mss = self._limits(entry.params, peer)

    def update_peer_endpoint(self, peer_id: str, endpoint: tuple[str, int]) -> None:
        peer = self._peers[peer_id]
        self.set_peer(peer_id, endpoint, peer.link_mtu)

    def remove_peer(self, peer_id: str) -> None:
        for sa_id in [k for k, v in self._out.items() if v.peer is self._peers.get(peer_id)]:
            self.remove_outbound_sa(sa_id)
        self._peers.pop(peer_id, None)

    def _limits(self, params: SaParams, peer: Peer) -> tuple[dict[int, int], dict[int, int]]:
        outer = 6 if peer.family == socket.AF_INET6 else 4
        mtu = {
            v: max_inner_packet(
                peer.link_mtu, params.spec, mode=params.mode, outer_family=outer, inner_family=v
            )
            for v in (4, 6)
        }
        mss = {v: mtu[v] - _IP_HDR[v] - 20 for v in (4, 6)}
        return mtu, mss

    def add_outbound_sa(
        self, sa_id: str, params: SaParams, selectors: Iterable[TrafficSelector], peer_id: str
    ) -> OutboundSa:
        """Install (or atomically replace, for a rekey) the outbound SA `sa_id` for `selectors`.

        Returns the OutboundSa so the agent can poll its lifetime events and counters.
        """
        peer = self._peers[peer_id]
        sa = OutboundSa(params, self.clock())
        sels = tuple(selectors)
        mtu, mss = self._limits(params, peer)
        entry = _Outbound(sa, params, peer, sels, mtu, mss)
        old = self._out.get(sa_id)
        self._out[sa_id] = entry
        if old is None or old.selectors != sels:
            if old is not None:
                self._spd.remove(sa_id)
            for ts in sels:
                self._spd.add(ts, sa_id)
            self._spd_cache.clear()
        if old is not None:
            old.sa.wipe()
        return sa

    def remove_outbound_sa(self, sa_id: str) -> None:
        old = self._out.pop(sa_id, None)
        self._spd.remove(sa_id)
        self._spd_cache.clear()
        if old is not None:
            old.sa.wipe()

    def outbound_sa(self, sa_id: str) -> OutboundSa | None:
        entry = self._out.get(sa_id)
        return entry.sa if entry else None

    def add_inbound_sa(self, params: SaParams) -> InboundSa:
        sa = InboundSa(params, self.clock())
        self._sad.add(sa)
        return sa

    def remove_inbound_sa(self, spi: int) -> None:
        self._sad.remove(spi)

    def inbound_sa(self, spi: int) -> InboundSa | None:
        return self._sad.get(spi)

    def inbound_spis(self) -> list[int]:
        return [sa.spi for sa in self._sad]

    def sa_counters(self) -> dict[str, object]:
        """Per-SA counters (the ESP core's `Counters`): outbound by SA id, inbound by SPI."""
        out: dict[str, object] = {f"out:{k}": v.sa.counters for k, v in list(self._out.items())}
        out.update({f"in:{sa.spi:08x}": sa.counters for sa in self._sad})
        return out

    def send_ike(self, message: bytes, remote: tuple[str, int], *, nat_t: bool = True) -> None:
        """Send one IKE message; on port 4500 (`nat_t`) it gets the RFC 3948 non-ESP marker."""
        fam = _family_of(remote[0])
        ep = (self._by_family if nat_t else self._ike_by_family).get(fam)
        if ep is None:
            raise OSError(errno.EAFNOSUPPORT, f"no {'NAT-T' if nat_t else 'IKE'} socket for {remote[0]}")
        ep.sock.sendto(udp.NON_ESP_MARKER + message if nat_t else message, remote)
        self.counters.ike_out += 1

    def send_keepalive(self, remote: tuple[str, int]) -> None:
        """RFC 3948 §2.3 NAT-keepalive (one 0xFF byte) from the NAT-T socket."""
        ep = self._by_family.get(_family_of(remote[0]))
        if ep is not None:
            with contextlib.suppress(OSError):
                ep.sock.sendto(udp.NAT_KEEPALIVE, remote)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for name, target in (("dp-tx", self._tx_loop), ("dp-rx", self._rx_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        udp.close_all(self._endpoints)
        self._endpoints.clear()
        for entry in self._out.values():
            entry.sa.wipe()
        self._out.clear()
        for sa in list(self._sad):
            self._sad.remove(sa.spi)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> Dataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ TUN -> ESP
    def _tx_loop(self) -> None:
        """Drain the TUN, protect, and flush ESP datagrams in GSO batches when idle or every 64.

        The common case (flow already in the SPD cache, packet neither tiny nor too big) is inlined;
        everything else takes `_protect_one`, which also fills the cache.
        """
        poller = select.poll()
        poller.register(self.tun.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        fd = self.tun.fd
        vnet = self.tun.vnet_hdr
        read = os.read
        c = self.counters
        cache = self._spd_cache
        out = self._out
        clock = self.clock
        pending: dict[tuple[str, int], list[bytearray]] = {}
        pending_ep: dict[tuple[str, int], tuple[udp.UdpEndpoint, int]] = {}
        count = 0
        while not self._stop:
            try:
                buf = read(fd, RX_BUFFER + offload.VNET_HDR_LEN)
            except BlockingIOError:
                if count:
                    self._flush(pending, pending_ep)
                    count = 0
                poller.poll()
                continue
            except OSError:
                if self._stop:
                    return
                c.offload_errors += 1
                continue
            c.tun_reads += 1
            if vnet:
                try:
                    # common case inline: no offload work (flags 0, GSO_NONE) -> strip the header
                    packets = (buf[VNET_LEN:],) if not (buf[0] or buf[1]) else offload.split_read(buf)
                except (offload.OffloadError, IndexError, ValueError):
                    c.offload_errors += 1
                    continue
            else:
                packets = (buf,)
            c.tun_packets_in += len(packets)
            now = clock()
            for pkt in packets:
                try:
                    n = len(pkt)
                    entry = out.get(cache.get(flow_key(pkt))) if n > 120 else None  # type: ignore[arg-type]
                    if entry is not None and n <= entry.mtu[pkt[0] >> 4]:
                        esp = entry.sa.protect(pkt, now)
                        batch = pending.get(entry.peer.endpoint)
                        if batch is not None:
                            batch.append(esp)
                            count += 1
                            continue
                        count += self._queue(entry, esp, pending, pending_ep)
                    else:
                        count += self._protect_one(pkt, now, pending, pending_ep)
                except EspDrop as drop:
                    key = "out_" + drop.reason.value
                    c.drops[key] = c.drops.get(key, 0) + 1
                except Exception as exc:  # a local packet must never kill the loop
                    c.note_internal_error(exc)
            if count >= TX_BATCH:
                self._flush(pending, pending_ep)
                count = 0

    def _protect_one(
        self,
        pkt: bytes,
        now: float,
        pending: dict[tuple[str, int], list[bytearray]],
        pending_ep: dict[tuple[str, int], tuple[udp.UdpEndpoint, int]],
    ) -> int:
        c = self.counters
        if len(pkt) < 20:
            c.no_policy += 1
            return 0
        key = flow_key(pkt)
        sa_id = self._spd_cache.get(key, _MISS)
        if sa_id is _MISS:
            sa_id = self._spd.lookup(pkt)
            if len(self._spd_cache) >= SPD_CACHE_SIZE:
                self._spd_cache.clear()
            self._spd_cache[key] = sa_id
        if sa_id is None:
            c.no_policy += 1
            return 0
        entry = self._out.get(sa_id)
        if entry is None:
            c.no_sa += 1
            return 0
        version = pkt[0] >> 4
        limit = entry.mtu[version]
        if len(pkt) > limit:
            c.too_big += 1
            reply = too_big_reply(pkt, limit, self.icmp_source.get(version))
            if reply is not None:
                self._write_tun([reply])
                c.icmp_too_big_sent += 1
                return 0
            # IPv4 without DF: send it, the outer IP layer fragments
        elif self.clamp and len(pkt) <= 120 and is_tcp_syn(pkt):
            clamped = clamp_mss(pkt, entry.mss[version])
            if clamped is not pkt:
                c.mss_clamped += 1
                pkt = clamped
        try:
            esp = entry.sa.protect(pkt, now)
        except EspDrop as drop:
            key = "out_" + drop.reason.value
            c.drops[key] = c.drops.get(key, 0) + 1
            return 0
        return self._queue(entry, esp, pending, pending_ep)

    def _queue(
        self,
        entry: _Outbound,
        esp: bytearray,
        pending: dict[tuple[str, int], list[bytearray]],
        pending_ep: dict[tuple[str, int], tuple[udp.UdpEndpoint, int]],
    ) -> int:
        peer = entry.peer
        dest = peer.endpoint
        batch = pending.get(dest)
        if batch is None:
            ep = self._by_family.get(peer.family)
            if ep is None:
                self.counters.udp_sends_failed += 1
                return 0
            outer = 6 if peer.family == socket.AF_INET6 else 4
            pending_ep[dest] = (ep, peer.link_mtu - _IP_HDR[outer] - _UDP_HDR)
            batch = pending[dest] = []
        batch.append(esp)
        return 1

    def _flush(
        self,
        pending: dict[tuple[str, int], list[bytearray]],
        pending_ep: dict[tuple[str, int], tuple[udp.UdpEndpoint, int]],
    ) -> None:
        c = self.counters
        for dest, batch in pending.items():
            ep, max_single = pending_ep[dest]
            c.esp_out += len(batch)
            c.udp_sends_failed += udp.send_batch(ep, dest, batch, max_single)
        pending.clear()
        pending_ep.clear()

    # ------------------------------------------------------------------ ESP -> TUN
    def _rx_loop(self) -> None:
        poller = select.poll()
        socks = {ep.sock.fileno(): ep for ep in self._endpoints}
        for fd in socks:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop:
            events = poller.poll()
            for fd, _ev in events:
                ep = socks.get(fd)
                if ep is not None:
                    try:
                        self._drain(ep)
                    except Exception as exc:  # nothing a peer sends may stop the loop
                        self.counters.note_internal_error(exc)

    def _drain(self, ep: udp.UdpEndpoint) -> None:
        """Receive until the socket is empty (bounded), decrypting and writing in batches."""
        sock = ep.sock
        c = self.counters
        unprotect = self._sad.unprotect
        inner: list[bytes] = []
        for _ in range(64):
            try:
                data, anc, _flags, addr = sock.recvmsg(RX_BUFFER, udp.GRO_CMSG_SPACE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                c.invalid_datagrams += 1
                break
            c.udp_recvs += 1
            seg = udp.gro_segment_size(anc) if anc else 0
            if seg and len(data) > seg:
                view = memoryview(data)
                datagrams: list[bytes] | list[memoryview] = [
                    view[i : i + seg] for i in range(0, len(data), seg)
                ]
            else:
                datagrams = [data]
            now = self.clock()
            c.udp_datagrams_in += len(datagrams)
            for dgram in datagrams:
                try:
                    # fast path: ESP (non-zero SPI, RFC 3948 §2.2); the rest is classified below
                    if ep.nat_t and len(dgram) >= 8 and (dgram[0] or dgram[1] or dgram[2] or dgram[3]):
                        inner.append(unprotect(dgram, now)[1])
                    else:
                        self._other_datagram(ep, dgram, addr)
                except EspDrop as drop:
                    key = drop.reason.value
                    c.drops[key] = c.drops.get(key, 0) + 1
                except Exception as exc:  # a bug in a parser must not be a remote kill switch
                    c.note_internal_error(exc)
            if len(inner) >= 64:
                self._write_tun(inner)
                inner = []
        if inner:
            self._write_tun(inner)

    def _other_datagram(self, ep: udp.UdpEndpoint, dgram: bytes | memoryview, addr: tuple) -> None:
        """Everything but ESP: bare IKE on 500; marker-prefixed IKE, keepalives and junk on 4500."""
        c = self.counters
        if not ep.nat_t:
            self._deliver_ike(bytes(dgram), addr, ep.port)
            return
        kind = udp.classify(dgram)
        if kind == udp.KIND_IKE:
            self._deliver_ike(bytes(dgram[4:]), addr, ep.port)
        elif kind == udp.KIND_KEEPALIVE:
            c.keepalives_in += 1
        else:  # too short for ESP (ESP itself never gets here: the caller's fast path takes it)
            c.invalid_datagrams += 1

    def _deliver_ike(self, message: bytes, addr: tuple, port: int) -> None:
        self.counters.ike_in += 1
        handler = self._ike_handler
        if handler is None:
            return
        try:
            handler(message, addr[:2], port)
        except Exception:  # the IKE engine's bug must not stop ESP
            self.counters.ike_handler_errors += 1

    def _write_tun(self, packets: list[bytes]) -> None:
        c = self.counters
        c.tun_packets_out += len(packets)
        writes: list[bytes] | list[bytearray] = packets
        if self.tun.vnet_hdr:
            try:
                writes = offload.coalesce(packets)
            except Exception as exc:  # a merge bug must cost performance, not packets
                c.note_internal_error(exc)
                writes = [offload.PLAIN_HDR + p for p in packets]
        fd = self.tun.fd
        for buf in writes:
            try:
                os.write(fd, buf)
                c.tun_writes += 1
            except OSError:
                c.tun_write_errors += 1

    # ------------------------------------------------------------------ observability
    def sa_mode(self, sa_id: str) -> Mode | None:
        entry = self._out.get(sa_id)
        return entry.params.mode if entry else None
