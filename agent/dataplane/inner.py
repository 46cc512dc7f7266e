"""Inner (cleartext) IP packet surgery on the data plane's hot path: checksums, TCP MSS clamping and
ICMP "fragmentation needed" / ICMPv6 "packet too big" replies.

Owns only byte-level rewriting of inner packets; never encrypts, never does I/O.  Every function takes
packets straight from the TUN, so each one checks lengths first and answers "leave it alone" (or None)
on anything it does not understand instead of raising.
"""

from __future__ import annotations

import struct

_H = struct.Struct("!H")
_I = struct.Struct("!I")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_ICMP4_PTB = struct.Struct("!BBHHH")  # type, code, checksum, unused, next-hop MTU
_ICMP6_PTB = struct.Struct("!BBHI")  # type, code, checksum, MTU

PROTO_TCP = 6
PROTO_ICMP = 1
PROTO_ICMPV6 = 58
TCP_SYN = 0x02
IPV4_DF = 0x4000
IPV4_MIN_MTU = 576
IPV6_MIN_MTU = 1280


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """16-bit one's-complement sum of `data` (odd length padded with a zero byte), not complemented.

    Uses the identity 2**16 == 1 (mod 0xFFFF): the sum of the 16-bit words equals the number read
    big-endian, modulo 0xFFFF -- one C-level bignum pass instead of a Python loop per word.
    """
    if len(data) & 1:
        data = bytes(data) + b"\0"
    s = int.from_bytes(data, "big") % 0xFFFF
    return s if s or not any(data) else 0xFFFF


def fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Internet checksum (RFC 1071) of `data` plus an already-summed `initial` (e.g. a pseudo-header)."""
    return ~fold(ones_sum(data) + initial) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """One's-complement sum of the IPv4 or IPv6 pseudo-header (RFC 793 / RFC 8200 §8.1)."""
    return fold(ones_sum(src) + ones_sum(dst) + proto + length)


def flow_key(pkt: bytes) -> bytes:
    """Bytes that determine the SPD decision for `pkt`: addresses, protocol, ports (when readable).

    The SPD matches on exactly these fields (RFC 4301 §4.4.1), so its answer can be cached per key;
    a non-first IPv4 fragment gets a distinct key because its ports are unreadable (OPAQUE).
    """
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 0x0F) * 4
        frag = b"f" if (pkt[6] & 0x1F) or pkt[7] else b""
        return pkt[9:10] + pkt[12:20] + pkt[ihl : ihl + 4] + frag
    return pkt[6:7] + pkt[8:44]


def ip_version(pkt: bytes | bytearray) -> int:
    return pkt[0] >> 4 if pkt else 0


def _tcp_offset(pkt: bytes | bytearray) -> int:
    """Offset of the TCP header if `pkt` is an unfragmented TCP segment with a full header, else -1."""
    n = len(pkt)
    if n < 40:
        return -1
    v = pkt[0] >> 4
    if v == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if pkt[9] != PROTO_TCP or ihl < 20 or (_H.unpack_from(pkt, 6)[0] & 0x1FFF) or n < ihl + 20:
            return -1
        return ihl
    if v == 6:
        if pkt[6] != PROTO_TCP or n < 60:
            return -1
        return 40
    return -1


def is_tcp_syn(pkt: bytes | bytearray) -> bool:
    off = _tcp_offset(pkt)
    return off >= 0 and bool(pkt[off + 13] & TCP_SYN)


def clamp_mss(pkt: bytes, mss: int) -> bytes:
    """Lower the MSS option of a TCP SYN to `mss`; any other packet comes back unchanged.

    The TCP checksum is adjusted incrementally (RFC 1624) so the cost does not grow with the packet.
    """
    off = _tcp_offset(pkt)
    if off < 0 or not pkt[off + 13] & TCP_SYN:
        return pkt
    hdr_len = (pkt[off + 12] >> 4) * 4
    end = min(off + hdr_len, len(pkt))
    i = off + 20
    while i < end:
        kind = pkt[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or pkt[i + 1] < 2:
            break
        opt_len = pkt[i + 1]
        if kind == 2 and opt_len == 4 and i + 4 <= end:
            old = _H.unpack_from(pkt, i + 2)[0]
            if old <= mss:
                return pkt
            out = bytearray(pkt)
            _H.pack_into(out, i + 2, mss)
            new = mss
            if (i - off) & 1:  # the field straddles two 16-bit words: it counts byte-swapped
                old, new = ((old & 0xFF) << 8) | (old >> 8), ((new & 0xFF) << 8) | (new >> 8)
            csum = _H.unpack_from(out, off + 16)[0]
            csum = ~fold((~csum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF
            _H.pack_into(out, off + 16, csum)
            return bytes(out)
        i += opt_len
    return pkt


def _is_icmp_error(pkt: bytes | bytearray) -> bool:
    """RFC 1122 / RFC 4443 §2.4(e): never answer an ICMP error with another one."""
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 0x0F) * 4
        return pkt[9] == PROTO_ICMP and len(pkt) > ihl and pkt[ihl] in (3, 4, 5, 11, 12)
    return pkt[6] == PROTO_ICMPV6 and len(pkt) > 40 and pkt[40] < 128


def too_big_reply(pkt: bytes, mtu: int, source: bytes | None = None) -> bytes | None:
    """The ICMP reply to write back into the TUN for an inner packet longer than `mtu`, or None.

    IPv4 gets "fragmentation needed" (type 3 code 4, RFC 1191) only when DF is set -- without DF the
    caller may send it and let the outer layer fragment; IPv6 always gets "packet too big" (RFC 4443).
    The reply claims to come from `source`, else from the packet's destination (the host stack matches
    the quoted header, not the sender; an address of this host would be dropped as a martian).
    """
    if len(pkt) < 20:
        return None
    v = pkt[0] >> 4
    if v == 4:
        _vihl, _tos, _tl, _id, frag, _ttl, _p, _c, src, dst = _IPV4.unpack_from(pkt)
        if not frag & IPV4_DF or _is_icmp_error(pkt):
            return None
        quoted = pkt[: IPV4_MIN_MTU - 20 - 8]
        icmp = bytearray(_ICMP4_PTB.pack(3, 4, 0, 0, min(mtu, 0xFFFF)) + quoted)
        _H.pack_into(icmp, 2, checksum(icmp))
        ip = bytearray(_IPV4.pack(0x45, 0xC0, 20 + len(icmp), 0, 0, 64, PROTO_ICMP, 0, source or dst, src))
        _H.pack_into(ip, 10, checksum(ip))
        return bytes(ip + icmp)
    if v == 6 and len(pkt) >= 40:
        if _is_icmp_error(pkt):
            return None
        src, dst = pkt[8:24], pkt[24:40]
        me = source or dst
        quoted = pkt[: IPV6_MIN_MTU - 40 - 8]
        icmp = bytearray(_ICMP6_PTB.pack(2, 0, 0, mtu) + quoted)
        _H.pack_into(icmp, 2, checksum(icmp, pseudo_header_sum(me, src, PROTO_ICMPV6, len(icmp))))
        ip = _IPV6.pack(0x60000000, len(icmp), PROTO_ICMPV6, 64, me, src)
        return ip + bytes(icmp)
    return None


def ipv4_dont_fragment(pkt: bytes | bytearray) -> bool:
    return len(pkt) >= 20 and bool(_H.unpack_from(pkt, 6)[0] & IPV4_DF)
