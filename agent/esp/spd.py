"""Tunnel-mode SPD: traffic selectors mapping outbound packets to SAs, longest prefix first.

Owns the selector type and the outbound lookup (RFC 4301 §4.4.1 reduced to what a mesh needs: PROTECT
entries; no match means the data plane drops or bypasses). Lookup cost grows with the number of distinct
remote prefix lengths, not with the number of SAs: entries sit in per-prefix-length dicts keyed by the
masked remote address (an int). Also compiles the inbound selector check an InboundSa runs on inner
packets. Must not know about SAs, keys or I/O.

Match order (deterministic, the property test's brute-force reference uses the same): longest remote
prefix, then longest local prefix, then a specific protocol before "any", then narrower port ranges,
then insertion order. Ports are matched for TCP (6), UDP (17) and SCTP (132) only; a selector with a
port range other than 0-65535 never matches other protocols or non-first IPv4 fragments (RFC 4301
§4.4.1.1 OPAQUE), and IPv6 ports are only read when the upper-layer header follows the fixed header.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Generic, NamedTuple, TypeVar

V = TypeVar("V", bound=Hashable)

IPNetwork = IPv4Network | IPv6Network
ANY_PORT = (0, 65535)
_PORT_PROTOS = frozenset((6, 17, 132))
_V4 = struct.Struct("!B5xHxB2xII")  # ver/ihl, flags/frag, protocol, src, dst
_PORTS = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """Local and remote prefixes (same family) with optional protocol (0 = any) and inclusive port ranges.

    Seen from this host: outbound packets go local -> remote; inbound inner packets come remote -> local.
    """

    local: IPNetwork
    remote: IPNetwork
    protocol: int = 0
    local_ports: tuple[int, int] = ANY_PORT
    remote_ports: tuple[int, int] = ANY_PORT

    def __post_init__(self) -> None:
        if self.local.version != self.remote.version:
            raise ValueError(f"selector mixes IPv{self.local.version} and IPv{self.remote.version}")
        if not 0 <= self.protocol <= 255:
            raise ValueError(f"protocol {self.protocol} outside 0..255")
        for lo, hi in (self.local_ports, self.remote_ports):
            if not 0 <= lo <= hi <= 65535:
                raise ValueError(f"port range {lo}-{hi} invalid")

    @classmethod
    def of(cls, local: str, remote: str, protocol: int = 0, **ports: tuple[int, int]) -> TrafficSelector:
        """Convenience constructor from prefix strings ("198.18.1.0/24")."""
        return cls(ip_network(local), ip_network(remote), protocol, **ports)

    @property
    def has_ports(self) -> bool:
        return self.local_ports != ANY_PORT or self.remote_ports != ANY_PORT

    def sort_key(self) -> tuple[int, int, int, int]:
        """Smaller sorts first: the match order described in the module docstring (minus insertion)."""
        spread = (self.local_ports[1] - self.local_ports[0]) + (self.remote_ports[1] - self.remote_ports[0])
        return (-self.remote.prefixlen, -self.local.prefixlen, 0 if self.protocol else 1, spread)


@dataclass(frozen=True, slots=True)
class Flow:
    """The fields of a packet the SPD matches on; ports are -1 when absent or unreadable."""

    version: int
    src: int
    dst: int
    protocol: int
    sport: int
    dport: int


def parse_flow(packet: bytes | bytearray | memoryview) -> Flow | None:
    """Extract the selector fields of an IP packet, or None when it is not a parsable IPv4/IPv6 packet."""
    n = len(packet)
    if n < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        vihl, frag, proto, src, dst = _V4.unpack_from(packet)
        off = (vihl & 15) * 4
        if off < 20 or n < off:
            return None
        if proto in _PORT_PROTOS and frag & 0x1FFF == 0 and n >= off + 4:
            sport, dport = _PORTS.unpack_from(packet, off)
        else:
            sport = dport = -1
        return Flow(4, src, dst, proto, sport, dport)
    if version == 6 and n >= 40:
        proto = packet[6]
        src = int.from_bytes(packet[8:24], "big")
        dst = int.from_bytes(packet[24:40], "big")
        if proto in _PORT_PROTOS and n >= 44:
            sport, dport = _PORTS.unpack_from(packet, 40)
        else:
            sport = dport = -1
        return Flow(6, src, dst, proto, sport, dport)
    return None


def _ports_ok(ts: TrafficSelector, proto: int, lport: int, rport: int) -> bool:
    if not ts.has_ports:
        return True
    if proto not in _PORT_PROTOS or lport < 0:
        return False
    return (
        ts.local_ports[0] <= lport <= ts.local_ports[1] and ts.remote_ports[0] <= rport <= ts.remote_ports[1]
    )


class _Entry(NamedTuple, Generic[V]):
    """A selector compiled to ints, so the lookup touches no ipaddress objects."""

    order: tuple[int, ...]
    local_key: int
    local_shift: int
    protocol: int
    ports: tuple[int, int, int, int] | None  # (local lo, local hi, remote lo, remote hi) or None = any
    value: V
    ts: TrafficSelector


class Spd(Generic[V]):
    """Outbound selector table: `lookup(packet)` returns the value (an SA id) of the best match or None."""

    __slots__ = ("_buckets", "_count", "_order")

    def __init__(self) -> None:
        # family -> [(remote prefix length, shift, {masked remote address: entries in match order})],
        # longest prefix first
        self._buckets: dict[int, list[tuple[int, int, dict[int, list[_Entry[V]]]]]] = {4: [], 6: []}
        self._order = 0
        self._count = 0

    def add(self, ts: TrafficSelector, value: V) -> None:
        """Add a PROTECT entry; several entries may share a value (an SA with several selectors)."""
        remote, local = ts.remote, ts.local
        shift = remote.max_prefixlen - remote.prefixlen
        lshift = local.max_prefixlen - local.prefixlen
        self._order += 1
        entry = _Entry(
            (*ts.sort_key(), self._order),
            int(local.network_address) >> lshift,
            lshift,
            ts.protocol,
            (*ts.local_ports, *ts.remote_ports) if ts.has_ports else None,
            value,
            ts,
        )
        levels = self._buckets[remote.version]
        table = next((t for plen, _, t in levels if plen == remote.prefixlen), None)
        if table is None:
            table = {}
            levels.append((remote.prefixlen, shift, table))
            levels.sort(key=lambda level: -level[0])
        entries = table.setdefault(int(remote.network_address) >> shift, [])
        entries.append(entry)
        entries.sort(key=lambda e: e.order)
        self._count += 1

    def remove(self, value: V) -> int:
        """Remove every entry pointing at `value`; returns how many were removed."""
        removed = 0
        for fam, levels in self._buckets.items():
            kept_levels = []
            for plen, shift, table in levels:
                for key in list(table):
                    kept = [e for e in table[key] if e.value != value]
                    removed += len(table[key]) - len(kept)
                    if kept:
                        table[key] = kept
                    else:
                        del table[key]
                if table:
                    kept_levels.append((plen, shift, table))
            self._buckets[fam] = kept_levels
        self._count -= removed
        return removed

    def lookup(self, packet: bytes | bytearray | memoryview) -> V | None:
        """Value of the best entry for an outbound IP packet (src in local, dst in remote), or None."""
        n = len(packet)
        if n < 20:
            return None
        version = packet[0] >> 4
        if version == 4:
            vihl, frag, proto, src, dst = _V4.unpack_from(packet)
            off = (vihl & 15) * 4
            if off < 20 or n < off:
                return None
            ports_ok = frag & 0x1FFF == 0
        elif version == 6 and n >= 40:
            proto = packet[6]
            src = int.from_bytes(packet[8:24], "big")
            dst = int.from_bytes(packet[24:40], "big")
            off = 40
            ports_ok = True
        else:
            return None
        sport = dport = -1
        for _, shift, table in self._buckets[version]:
            entries = table.get(dst >> shift)
            if entries is None:
                continue
            for e in entries:
                if src >> e.local_shift != e.local_key or (e.protocol and e.protocol != proto):
                    continue
                p = e.ports
                if p is not None:
                    if sport < 0:
                        if not (ports_ok and proto in _PORT_PROTOS and n >= off + 4):
                            continue
                        sport, dport = _PORTS.unpack_from(packet, off)
                    if not (p[0] <= sport <= p[1] and p[2] <= dport <= p[3]):
                        continue
                return e.value
        return None

    def lookup_flow(self, flow: Flow) -> V | None:
        """Like `lookup`, for an already parsed flow (ports -1 when absent)."""
        for _, shift, table in self._buckets.get(flow.version, ()):
            for e in table.get(flow.dst >> shift, ()):
                if flow.src >> e.local_shift != e.local_key or (e.protocol and e.protocol != flow.protocol):
                    continue
                if e.ports is None or _ports_ok(e.ts, flow.protocol, flow.sport, flow.dport):
                    return e.value
        return None

    def __len__(self) -> int:
        return self._count


_CHECK_CACHE_MAX = 4096  # flows remembered per inbound SA (cleared when full: bounded memory)


def compile_inbound_check(
    selectors: tuple[TrafficSelector, ...],
) -> Callable[[bytes | bytearray | memoryview], bool] | None:
    """A predicate for inbound inner packets (src in remote, dst in local), or None when unrestricted.

    Selectors are compiled to ints once; the predicate parses the packet's flow and tests them in turn.
    """
    if not selectors:
        return None
    compiled = []
    for ts in selectors:
        rshift = ts.remote.max_prefixlen - ts.remote.prefixlen
        lshift = ts.local.max_prefixlen - ts.local.prefixlen
        compiled.append(
            (
                ts.remote.version,
                rshift,
                int(ts.remote.network_address) >> rshift,
                lshift,
                int(ts.local.network_address) >> lshift,
                ts,
            )
        )

    cache: dict[bytes, bool] = {}

    def check(packet: bytes | bytearray | memoryview) -> bool:
        """Cached per flow: the key holds every byte `_check` reads (addresses, protocol, the first
        4 bytes of L4), for the common shapes only (IPv4 without options or fragmentation, IPv6
        whose next header follows the fixed header); anything else is checked uncached."""
        if type(packet) is bytes:
            n = len(packet)
            b0 = packet[0] if n >= 24 else 0
            if b0 == 0x45 and not packet[6] & 0x3F and not packet[7]:
                key = packet[9:10] + packet[12:24]
            elif b0 >> 4 == 6 and n >= 44:
                key = packet[6:7] + packet[8:44]
            else:
                return _check(packet)
            hit = cache.get(key)
            if hit is None:
                if len(cache) >= _CHECK_CACHE_MAX:
                    cache.clear()
                hit = cache[key] = _check(packet)
            return hit
        return _check(packet)

    def _check(packet: bytes | bytearray | memoryview) -> bool:
        flow = parse_flow(packet)
        if flow is None:
            return False
        for version, rshift, rkey, lshift, lkey, ts in compiled:
            if (
                version == flow.version
                and flow.src >> rshift == rkey
                and flow.dst >> lshift == lkey
                and (ts.protocol == 0 or ts.protocol == flow.protocol)
                and _ports_ok(ts, flow.protocol, flow.dport, flow.sport)
            ):
                return True
        return False

    return check
