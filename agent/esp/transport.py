"""Transport-mode header work for one SA: strip the IP header outbound, rebuild it inbound.

Owns the addresses a transport-mode SA needs (TransportAddresses), the refusal of what transport mode
cannot carry (IPv4 fragments, IPv6 extension headers), the canonical rebuilt header (IPv4: no options,
DF, TTL 64; IPv6: hop limit 64) and the RFC 3948 §3.1.2 TCP/UDP/ICMPv6 checksum fix-up when a NAT
changed the addresses (incremental, RFC 1624 eqn. 3, O(1) per packet). Must not do cryptography.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from meshsec.agent.esp.errors import DropReason, EspDrop

IPAddress = IPv4Address | IPv6Address

_IP_HDR_V4 = struct.Struct("!BBHHHBBH4s4s")
_IP_HDR_V6 = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")
_V4_FIELDS = struct.Struct("!BxHxxHxB")  # ver/ihl, total length, flags/fragment offset, protocol
_V6_PLEN_NH = struct.Struct("!4xHB")  # payload length, next header
#: IPv6 extension headers (and ESP/AH) that would sit between the fixed header and the L4 header.
_V6_EXT = frozenset((0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254))
_CSUM_OFFSET = {6: 16, 17: 6, 58: 2}  # where TCP, UDP, ICMPv6 keep their checksum
TTL = 64


@dataclass(frozen=True, slots=True)
class TransportAddresses:
    """Addresses a transport-mode SA needs to rebuild the IP header it strips.

    `local`/`remote` are the addresses as this host's stack uses them: the rebuilt inbound header is
    remote -> local. When a NAT sits between the peers (RFC 3948 §3.1.2, RFC 7296 §2.23.1), the peer
    computed its TCP/UDP checksum with its own view of the addresses: pass them as `peer_src` (the
    peer's own address as it sees it) and `peer_dst` (our address as the peer sees it) and the checksum
    is fixed incrementally (RFC 1624). None means "same as remote/local": no fix-up.
    """

    local: IPAddress
    remote: IPAddress
    peer_src: IPAddress | None = None
    peer_dst: IPAddress | None = None

    def __post_init__(self) -> None:
        versions = {
            a.version for a in (self.local, self.remote, self.peer_src, self.peer_dst) if a is not None
        }
        if len(versions) != 1:
            raise ValueError("transport addresses mix IPv4 and IPv6")


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _words(data: bytes) -> int:
    """Ones'-complement sum of the 16-bit words of an even-length byte string, folded."""
    return _fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


class TransportHeaders:
    """Precomputed per-SA state for transport mode (addresses, header checksum base, NAT delta)."""

    __slots__ = ("_csum_delta", "_dst", "_hdr_sum", "_src", "_v6", "family")

    def __init__(self, addrs: TransportAddresses) -> None:
        self.family = addrs.local.version
        self._v6 = self.family == 6
        self._src, self._dst = addrs.remote.packed, addrs.local.packed  # inbound: remote -> local
        self._hdr_sum = _words(self._src + self._dst)
        old = (addrs.peer_src or addrs.remote).packed + (addrs.peer_dst or addrs.local).packed
        self._csum_delta = 0
        if old != self._src + self._dst:
            # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'); precompute ~m + m' over the address words.
            self._csum_delta = _fold(self._hdr_sum + (~_words(old) & 0xFFFF))

    def strip(self, packet: bytes | bytearray | memoryview) -> tuple[memoryview, int]:
        """Outbound: the L4 segment and protocol of an inner packet, or EspDrop (MALFORMED/POLICY)."""
        n = len(packet)
        version = packet[0] >> 4
        if version != self.family:
            raise EspDrop(DropReason.POLICY, f"IPv{version} packet on an IPv{self.family} transport-mode SA")
        if version == 4:
            vihl, total, frag, proto = _V4_FIELDS.unpack_from(packet)
            ihl = (vihl & 15) * 4
            if ihl < 20 or total < ihl or total > n:
                raise EspDrop(DropReason.MALFORMED, "bad IPv4 header or total length")
            if frag & 0x3FFF:
                raise EspDrop(DropReason.POLICY, "IPv4 fragment in transport mode")
            return memoryview(packet)[ihl:total], proto
        if n < 40:
            raise EspDrop(DropReason.MALFORMED, "shorter than an IPv6 header")
        plen, proto = _V6_PLEN_NH.unpack_from(packet)
        if 40 + plen > n:
            raise EspDrop(DropReason.MALFORMED, "bad IPv6 payload length")
        if proto in _V6_EXT:
            raise EspDrop(DropReason.POLICY, "IPv6 extension headers unsupported in transport mode")
        return memoryview(packet)[40 : 40 + plen], proto

    def rebuild(self, nh: int, segment: bytes | memoryview) -> bytearray:
        """Inbound: remote -> local IP header around the segment, L4 checksum fixed behind NAT."""
        n = len(segment)
        if self._v6:
            if n > 0xFFFF:
                raise EspDrop(DropReason.MALFORMED, "segment too long for IPv6")
            hdr = _IP_HDR_V6.pack(0x6000_0000, n, nh, TTL, self._src, self._dst)
        else:
            total = 20 + n
            if total > 0xFFFF:
                raise EspDrop(DropReason.MALFORMED, "segment too long for IPv4")
            csum = ~_fold(self._hdr_sum + 0x4500 + total + 0x4000 + (TTL << 8 | nh)) & 0xFFFF
            hdr = _IP_HDR_V4.pack(0x45, 0, total, 0, 0x4000, TTL, nh, csum, self._src, self._dst)
        out = bytearray(hdr)
        out += segment
        off = _CSUM_OFFSET.get(nh)
        if self._csum_delta and off is not None and n >= off + 2:
            pos = len(hdr) + off
            old = _U16.unpack_from(out, pos)[0]
            if not (nh == 17 and old == 0 and not self._v6):  # IPv4 UDP without checksum stays so
                new = ~_fold((~old & 0xFFFF) + self._csum_delta) & 0xFFFF
                _U16.pack_into(out, pos, new or (0xFFFF if nh == 17 else 0))
        return out
