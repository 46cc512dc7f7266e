"""UDP sockets for IKE (500) and ESP-in-UDP/NAT-T (4500), RFC 3948 demultiplexing, GSO sends.

Owns socket creation and options (SO_MARK so our datagrams bypass the tunnel routing table, UDP_GRO,
large buffers) and the wire-level framing of port 4500: non-ESP marker for IKE, 0xFF NAT-keepalives.
Must not decrypt, and must not decide which SA a datagram belongs to.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from dataclasses import dataclass

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_MARK = 36
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
NON_ESP_MARKER = b"\0\0\0\0"
NAT_KEEPALIVE = b"\xff"
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65000
SOCKET_BUFFER = 8 << 20
_GSO = struct.Struct("=H")
_GRO = struct.Struct("=i")
SPI = struct.Struct("!I")  # first word of an ESP datagram (RFC 4303 §2.1)
GRO_CMSG_SPACE = socket.CMSG_SPACE(_GRO.size)

KIND_ESP = 0
KIND_IKE = 1
KIND_KEEPALIVE = 2
KIND_INVALID = 3


def classify(datagram: bytes | memoryview) -> int:
    """RFC 3948 §2.2 demultiplexing of a port-4500 datagram."""
    n = len(datagram)
    if n == 1 and datagram[0] == 0xFF:
        return KIND_KEEPALIVE
    if n < 8:
        # 4..7 bytes: a non-ESP marker with nothing after it, or an ESP header cut short
        return KIND_INVALID
    if datagram[:4] == NON_ESP_MARKER:
        return KIND_IKE
    return KIND_ESP


@dataclass
class UdpEndpoint:
    """One bound UDP socket and what it carries."""

    sock: socket.socket
    family: int
    port: int
    nat_t: bool  # True on 4500: ESP + marker-prefixed IKE; False on 500: bare IKE
    gso: bool
    gro: bool

    def close(self) -> None:
        self.sock.close()


def open_udp(
    family: int, address: str, port: int, *, nat_t: bool, mark: int | None, gro: bool = True, gso: bool = True
) -> UdpEndpoint:
    """Bind a UDP socket; the socket stays blocking (sends block = backpressure) and receives use
    MSG_DONTWAIT so one poll loop can drain it.  No SO_REUSEADDR: for UDP it would let a second
    socket (say, a stray IKE daemon) share 500/4500 and silently steal datagrams."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        if gro:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            except OSError:
                gro = False
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return UdpEndpoint(sock=sock, family=family, port=sock.getsockname()[1], nat_t=nat_t, gso=gso, gro=gro)


def gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """Segment size of a GRO-coalesced receive, 0 when the kernel delivered a single datagram."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO.size:
            return int(_GRO.unpack_from(data)[0])
    return 0


def send_batch(ep: UdpEndpoint, addr: tuple, datagrams: list[bytes | bytearray], max_single: int) -> int:
    """Send datagrams to one address, as few sendmsg calls as UDP GSO allows.

    A GSO run needs equal-sized segments (the last may be shorter), at most 64 of them, and each must
    fit the path MTU (`max_single` bytes of UDP payload) -- the kernel refuses to fragment GSO.
    Returns the number of send errors (counted by the caller, never raised).
    """
    errors = 0
    sock = ep.sock
    i = 0
    n = len(datagrams)
    while i < n:
        first = len(datagrams[i])
        j = i + 1
        if ep.gso and first <= max_single:
            total = first
            while j < n and j - i < MAX_GSO_SEGMENTS:
                size = len(datagrams[j])
                if size > first or total + size > MAX_GSO_BYTES:
                    break
                total += size
                j += 1
                if size < first:
                    break
        try:
            if j - i == 1:
                sock.sendto(datagrams[i], addr)
            else:
                sock.sendmsg(datagrams[i:j], [(SOL_UDP, UDP_SEGMENT, _GSO.pack(first))], 0, addr)
        except OSError as exc:
            if exc.errno == errno.EIO and j - i > 1:
                ep.gso = False  # no GSO on this path (e.g. a device without checksum offload)
                continue
            errors += j - i
        i = j
    return errors


def close_all(endpoints: list[UdpEndpoint]) -> None:
    for ep in endpoints:
        with contextlib.suppress(OSError):
            ep.close()
