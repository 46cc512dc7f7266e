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

from meshsec.agent.dataplane import offload, udp
from meshsec.agent.dataplane.counters import DataplaneCounters
from meshsec.agent.dataplane.inner import clamp_mss, flow_key, is_tcp_syn, too_big_reply
from meshsec.agent.dataplane.tables import Outbound, SaTables, family_of
from meshsec.agent.esp import EspDrop
from meshsec.agent.netcfg.tun import TunDevice

#: Callback for IKE messages: (message without non-ESP marker, remote (host, port), local port).
IkeHandler = Callable[[bytes, tuple, int], None]

VNET_LEN = offload.VNET_HDR_LEN
TX_BATCH = 64  # inner packets encrypted before a flush (one GSO run is at most 64 segments)
RX_BUFFER = 65535
IKE_PORT = 500
NAT_T_PORT = 4500
_UDP_HDR = 8
_IP_HDR = {4: 20, 6: 40}


class Dataplane(SaTables):
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
        super().__init__(clock)
        self.tun = tun
        self.counters = DataplaneCounters()
        self.clamp = clamp_mss
        self.icmp_source = dict(icmp_source or {})
        self._ike_handler: IkeHandler | None = None
        self._endpoints: list[udp.UdpEndpoint] = []
        self._by_family: dict[int, udp.UdpEndpoint] = {}
        self._ike_by_family: dict[int, udp.UdpEndpoint] = {}
        self._threads: list[threading.Thread] = []
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            for host in listen:
                fam = family_of(host)
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

    def send_ike(self, message: bytes, remote: tuple[str, int], *, nat_t: bool = True) -> None:
        """Send one IKE message; on port 4500 (`nat_t`) it gets the RFC 3948 non-ESP marker."""
        fam = family_of(remote[0])
        ep = (self._by_family if nat_t else self._ike_by_family).get(fam)
        if ep is None:
            raise OSError(errno.EAFNOSUPPORT, f"no {'NAT-T' if nat_t else 'IKE'} socket for {remote[0]}")
        ep.sock.sendto(udp.NON_ESP_MARKER + message if nat_t else message, remote)
        self.counters.ike_out += 1

    def send_keepalive(self, remote: tuple[str, int]) -> None:
        """RFC 3948 §2.3 NAT-keepalive (one 0xFF byte) from the NAT-T socket."""
        ep = self._by_family.get(family_of(remote[0]))
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
        self.wipe_all()
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
                    if n <= 120:
                        entry = None
                    elif pkt[0] == 0x45 and not pkt[6] & 0x3F and not pkt[7]:
                        # flow_key() inlined for unfragmented IPv4 without options (same bytes)
                        entry = out.get(cache.get(pkt[9:10] + pkt[12:24]))  # type: ignore[arg-type]
                    else:
                        entry = out.get(cache.get(flow_key(pkt)))  # type: ignore[arg-type]
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
        sa_id = self.sa_for(pkt)
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
        entry: Outbound,
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
        by_spi = self._sad.by_spi  # the Sad's own dict: a lookup inline, no frame per datagram
        spi_of = udp.SPI.unpack_from
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
                        sa = by_spi.get(spi_of(dgram)[0])
                        inner.append(sa.unprotect(dgram, now) if sa is not None else unprotect(dgram, now)[1])
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
        writes: list[bytes] | list[bytearray] | list[bytes | bytearray] = packets
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
