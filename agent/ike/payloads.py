"""IKEv2 payload bodies (RFC 7296 §3.3-§3.13, §3.16): one dataclass and one parse/encode pair each.

Owns the byte layout of every payload except the Encrypted (SK) payload, whose framing lives in
message.py and whose cryptography lives in crypto.py. Every parser checks lengths before slicing and
raises only ParseError; callers turn it into a counted drop or an INVALID_SYNTAX notify.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from .constants import ATTR_FORMAT_TV, ATTR_KEY_LENGTH, PT, Proto, TsType


class ParseError(ValueError):
    """The one error any IKE parser raises for malformed input."""


GENERIC = struct.Struct("!BBH")  # next payload, critical|reserved, payload length
PROPOSAL = struct.Struct("!BBHBBBB")  # last/more, reserved, length, number, protocol, spi size, #transforms
TRANSFORM = struct.Struct("!BBHBBH")  # last/more, reserved, length, type, reserved, transform id
ATTR = struct.Struct("!HH")
KE_HDR = struct.Struct("!HH")
ID_HDR = struct.Struct("!B3x")
AUTH_HDR = struct.Struct("!B3x")
NOTIFY_HDR = struct.Struct("!BBH")
DELETE_HDR = struct.Struct("!BBH")
TS_HDR = struct.Struct("!B3x")
SELECTOR_HDR = struct.Struct("!BBHHH")  # type, ip protocol, length, start port, end port

CRITICAL = 0x80
_ADDR_LEN = {TsType.IPV4_ADDR_RANGE: 4, TsType.IPV6_ADDR_RANGE: 16}


def _need(data: bytes, n: int, what: str) -> None:
    if len(data) < n:
        raise ParseError(f"{what}: need {n} octets, have {len(data)}")


@dataclass(frozen=True)
class Transform:
    type: int
    id: int
    key_bits: int | None = None
    other_attrs: bytes = b""  # attributes we do not understand, kept verbatim (selection rejects them)

    def encode(self, last: bool) -> bytes:
        attrs = b""
        if self.key_bits is not None:
            attrs = ATTR.pack(ATTR_FORMAT_TV | ATTR_KEY_LENGTH, self.key_bits)
        attrs += self.other_attrs
        return TRANSFORM.pack(0 if last else 3, 0, TRANSFORM.size + len(attrs), self.type, 0, self.id) + attrs


@dataclass(frozen=True)
class Proposal:
    num: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def encode(self, last: bool) -> bytes:
        body = b"".join(t.encode(i == len(self.transforms) - 1) for i, t in enumerate(self.transforms))
        length = PROPOSAL.size + len(self.spi) + len(body)
        hdr = PROPOSAL.pack(
            0 if last else 2, 0, length, self.num, self.protocol, len(self.spi), len(self.transforms)
        )
        return hdr + self.spi + body


def _parse_attrs(data: bytes) -> tuple[int | None, bytes]:
    key_bits: int | None = None
    other = b""
    off = 0
    while off < len(data):
        _need(data[off:], ATTR.size, "transform attribute")
        atype, value = ATTR.unpack_from(data, off)
        if atype & ATTR_FORMAT_TV:
            if atype & 0x7FFF == ATTR_KEY_LENGTH and key_bits is None:
                key_bits = value
            else:
                other += data[off : off + 4]
            off += 4
        else:
            end = off + 4 + value
            if end > len(data):
                raise ParseError("transform attribute: TLV length exceeds transform")
            other += data[off:end]
            off = end
    return key_bits, other


def _parse_transforms(data: bytes, count: int) -> tuple[Transform, ...]:
    out = []
    off = 0
    for i in range(count):
        _need(data[off:], TRANSFORM.size, "transform")
        more, _, length, ttype, _, tid = TRANSFORM.unpack_from(data, off)
        if length < TRANSFORM.size or off + length > len(data):
            raise ParseError("transform: bad length")
        last = i == count - 1
        if more != (0 if last else 3):
            raise ParseError("transform: last/more flag disagrees with transform count")
        key_bits, other = _parse_attrs(data[off + TRANSFORM.size : off + length])
        out.append(Transform(ttype, tid, key_bits, other))
        off += length
    if off != len(data):
        raise ParseError("proposal: trailing octets after transforms")
    return tuple(out)


@dataclass(frozen=True)
class SA:
    ptype: ClassVar[int] = PT.SA
    proposals: tuple[Proposal, ...]

    def body(self) -> bytes:
        return b"".join(p.encode(i == len(self.proposals) - 1) for i, p in enumerate(self.proposals))

    @classmethod
    def parse(cls, data: bytes) -> SA:
        props = []
        off = 0
        while True:
            _need(data[off:], PROPOSAL.size, "proposal")
            more, _, length, num, proto, spi_size, ntrans = PROPOSAL.unpack_from(data, off)
            if length < PROPOSAL.size + spi_size or off + length > len(data):
                raise ParseError("proposal: bad length")
            if more not in (0, 2):
                raise ParseError("proposal: bad last/more flag")
            spi_start = off + PROPOSAL.size
            spi = data[spi_start : spi_start + spi_size]
            transforms = _parse_transforms(data[spi_start + spi_size : off + length], ntrans)
            props.append(Proposal(num, proto, spi, transforms))
            off += length
            if more == 0:
                break
        if off != len(data):
            raise ParseError("SA: trailing octets after last proposal")
        if not props:
            raise ParseError("SA: no proposal")
        return cls(tuple(props))


@dataclass(frozen=True)
class KE:
    ptype: ClassVar[int] = PT.KE
    group: int
    data: bytes

    def body(self) -> bytes:
        return KE_HDR.pack(self.group, 0) + self.data

    @classmethod
    def parse(cls, data: bytes) -> KE:
        _need(data, KE_HDR.size, "KE")
        group, _ = KE_HDR.unpack_from(data)
        return cls(group, data[KE_HDR.size :])


@dataclass(frozen=True)
class _Id:
    id_type: int
    data: bytes

    def body(self) -> bytes:
        return ID_HDR.pack(self.id_type) + self.data

    @classmethod
    def parse(cls, data: bytes):  # type: ignore[no-untyped-def]
        _need(data, ID_HDR.size, "ID")
        return cls(data[0], data[ID_HDR.size :])


@dataclass(frozen=True)
class IDi(_Id):
    ptype: ClassVar[int] = PT.IDI


@dataclass(frozen=True)
class IDr(_Id):
    ptype: ClassVar[int] = PT.IDR


@dataclass(frozen=True)
class Cert:
    ptype: ClassVar[int] = PT.CERT
    encoding: int
    data: bytes

    def body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def parse(cls, data: bytes):  # type: ignore[no-untyped-def]
        _need(data, 1, "CERT")
        return cls(data[0], data[1:])


@dataclass(frozen=True)
class CertReq(Cert):
    ptype: ClassVar[int] = PT.CERTREQ


@dataclass(frozen=True)
class Auth:
    ptype: ClassVar[int] = PT.AUTH
    method: int
    data: bytes

    def body(self) -> bytes:
        return AUTH_HDR.pack(self.method) + self.data

    @classmethod
    def parse(cls, data: bytes) -> Auth:
        _need(data, AUTH_HDR.size, "AUTH")
        return cls(data[0], data[AUTH_HDR.size :])


@dataclass(frozen=True)
class Nonce:
    ptype: ClassVar[int] = PT.NONCE
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, data: bytes) -> Nonce:
        if not 16 <= len(data) <= 256:  # RFC 7296 §3.9
            raise ParseError(f"Nonce: length {len(data)} outside 16..256")
        return cls(data)


@dataclass(frozen=True)
class Notify:
    ptype: ClassVar[int] = PT.NOTIFY
    type: int
    protocol: int = 0
    spi: bytes = b""
    data: bytes = b""

    def body(self) -> bytes:
        return NOTIFY_HDR.pack(self.protocol, len(self.spi), self.type) + self.spi + self.data

    @classmethod
    def parse(cls, data: bytes) -> Notify:
        _need(data, NOTIFY_HDR.size, "Notify")
        proto, spi_size, ntype = NOTIFY_HDR.unpack_from(data)
        _need(data, NOTIFY_HDR.size + spi_size, "Notify SPI")
        spi = data[NOTIFY_HDR.size : NOTIFY_HDR.size + spi_size]
        return cls(ntype, proto, spi, data[NOTIFY_HDR.size + spi_size :])


@dataclass(frozen=True)
class Delete:
    ptype: ClassVar[int] = PT.DELETE
    protocol: int
    spis: tuple[bytes, ...] = ()

    def body(self) -> bytes:
        spi_size = len(self.spis[0]) if self.spis else (0 if self.protocol == Proto.IKE else 4)
        return DELETE_HDR.pack(self.protocol, spi_size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def parse(cls, data: bytes) -> Delete:
        _need(data, DELETE_HDR.size, "Delete")
        proto, spi_size, num = DELETE_HDR.unpack_from(data)
        if len(data) != DELETE_HDR.size + spi_size * num:
            raise ParseError("Delete: length disagrees with SPI size x count")
        if proto == Proto.IKE and (spi_size or num):
            raise ParseError("Delete: IKE SA deletion carries no SPI")
        if proto in (Proto.AH, Proto.ESP) and spi_size != 4:
            raise ParseError("Delete: ESP/AH SPI must be 4 octets")
        base = DELETE_HDR.size
        return cls(proto, tuple(data[base + i * spi_size : base + (i + 1) * spi_size] for i in range(num)))


@dataclass(frozen=True)
class Vendor:
    ptype: ClassVar[int] = PT.VENDOR
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, data: bytes) -> Vendor:
        return cls(data)


@dataclass(frozen=True, order=True)
class TrafficSelector:
    """One address range + protocol + port range (RFC 7296 §3.13.1)."""

    ts_type: int
    ip_proto: int
    start_port: int
    end_port: int
    start_addr: bytes
    end_addr: bytes

    @classmethod
    def from_cidr(cls, cidr: str, ip_proto: int = 0, ports: tuple[int, int] = (0, 65535)) -> TrafficSelector:
        net = ipaddress.ip_network(cidr, strict=False)
        ts_type = TsType.IPV4_ADDR_RANGE if net.version == 4 else TsType.IPV6_ADDR_RANGE
        return cls(
            ts_type, ip_proto, ports[0], ports[1], net.network_address.packed, net.broadcast_address.packed
        )

    def __str__(self) -> str:
        a = ipaddress.ip_address(self.start_addr)
        b = ipaddress.ip_address(self.end_addr)
        return f"{a}-{b} proto {self.ip_proto} ports {self.start_port}-{self.end_port}"

    def encode(self) -> bytes:
        length = SELECTOR_HDR.size + len(self.start_addr) + len(self.end_addr)
        hdr = SELECTOR_HDR.pack(self.ts_type, self.ip_proto, length, self.start_port, self.end_port)
        return hdr + self.start_addr + self.end_addr

    def intersect(self, other: TrafficSelector) -> TrafficSelector | None:
        """The narrowed selector both sides accept (RFC 7296 §2.9), or None if disjoint."""
        if self.ts_type != other.ts_type:
            return None
        if self.ip_proto and other.ip_proto and self.ip_proto != other.ip_proto:
            return None
        proto = self.ip_proto or other.ip_proto
        sp, ep = max(self.start_port, other.start_port), min(self.end_port, other.end_port)
        sa, ea = max(self.start_addr, other.start_addr), min(self.end_addr, other.end_addr)
        if sp > ep or sa > ea:
            return None
        return TrafficSelector(self.ts_type, proto, sp, ep, sa, ea)

    def is_subset_of(self, other: TrafficSelector) -> bool:
        return self.intersect(other) == self


@dataclass(frozen=True)
class _Ts:
    selectors: tuple[TrafficSelector, ...]

    def body(self) -> bytes:
        return TS_HDR.pack(len(self.selectors)) + b"".join(s.encode() for s in self.selectors)

    @classmethod
    def parse(cls, data: bytes):  # type: ignore[no-untyped-def]
        _need(data, TS_HDR.size, "TS")
        count = data[0]
        off = TS_HDR.size
        out = []
        for _ in range(count):
            _need(data[off:], SELECTOR_HDR.size, "traffic selector")
            ts_type, proto, length, sport, eport = SELECTOR_HDR.unpack_from(data, off)
            alen = _ADDR_LEN.get(ts_type)  # type: ignore[call-overload]
            if alen is None:
                raise ParseError(f"traffic selector: unsupported type {ts_type}")
            if length != SELECTOR_HDR.size + 2 * alen or off + length > len(data):
                raise ParseError("traffic selector: bad length")
            a = off + SELECTOR_HDR.size
            out.append(
                TrafficSelector(
                    ts_type, proto, sport, eport, data[a : a + alen], data[a + alen : a + 2 * alen]
                )
            )
            off += length
        if off != len(data):
            raise ParseError("TS: trailing octets after selectors")
        if not out:
            raise ParseError("TS: no selector")
        return cls(tuple(out))


@dataclass(frozen=True)
class TSi(_Ts):
    ptype: ClassVar[int] = PT.TSI


@dataclass(frozen=True)
class TSr(_Ts):
    ptype: ClassVar[int] = PT.TSR


@dataclass(frozen=True)
class Unknown:
    """A payload type we do not implement; kept so a critical one can be refused by type."""

    ptype: int
    critical: bool = False
    data: bytes = field(default=b"")

    def body(self) -> bytes:
        return self.data


Payload = SA | KE | IDi | IDr | Cert | CertReq | Auth | Nonce | Notify | Delete | Vendor | TSi | TSr | Unknown

PARSERS: dict[int, type] = {
    c.ptype: c for c in (SA, KE, IDi, IDr, Cert, CertReq, Auth, Nonce, Notify, Delete, Vendor, TSi, TSr)
}


def encode_chain(payloads: Sequence[Payload], last_next: int = PT.NONE) -> tuple[int, bytes]:
    """Encode payloads back to back; returns (type of the first payload, octets)."""
    parts = []
    for i, p in enumerate(payloads):
        nxt = payloads[i + 1].ptype if i + 1 < len(payloads) else last_next
        body = p.body()
        crit = CRITICAL if isinstance(p, Unknown) and p.critical else 0
        parts.append(GENERIC.pack(nxt, crit, GENERIC.size + len(body)) + body)
    first = payloads[0].ptype if payloads else last_next
    return first, b"".join(parts)


def parse_chain(first: int, data: bytes) -> list[Payload]:
    """Parse a complete chain of plain payloads (no SK inside), e.g. the decrypted SK contents."""
    out: list[Payload] = []
    nxt = first
    off = 0
    while nxt != PT.NONE:
        _need(data[off:], GENERIC.size, "payload header")
        following, flags, length = GENERIC.unpack_from(data, off)
        if length < GENERIC.size or off + length > len(data):
            raise ParseError(f"payload {nxt}: bad length {length}")
        if nxt in (PT.SK, PT.SKF):
            raise ParseError("encrypted payload nested inside a payload chain")
        out.append(parse_one(nxt, bool(flags & CRITICAL), data[off + GENERIC.size : off + length]))
        off += length
        nxt = following
    if off != len(data):
        raise ParseError("trailing octets after last payload")
    return out


def parse_one(ptype: int, critical: bool, body: bytes) -> Payload:
    cls = PARSERS.get(ptype)
    if cls is None:
        return Unknown(ptype, critical, body)
    try:
        return cls.parse(body)  # type: ignore[no-any-return]
    except (struct.error, ValueError) as exc:  # ValueError covers ParseError
        raise ParseError(str(exc)) from None


def find(payloads: Iterable[Payload], cls: type) -> list:  # type: ignore[type-arg]
    return [p for p in payloads if isinstance(p, cls) and type(p) is cls]


def notifies(payloads: Iterable[Payload]) -> dict[int, Notify]:
    return {p.type: p for p in payloads if isinstance(p, Notify)}
