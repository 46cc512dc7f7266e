"""IKEv2 message framing: the 28-octet header (RFC 7296 §3.1), the payload chain and the Encrypted
payload (§3.14) around it.

Owns parse/encode of whole messages; SK contents are sealed/opened by a crypto.SkCipher handed in by
the session; fragments.py builds and opens the Encrypted Fragment payload (RFC 7383) that this
module locates. Raises only payloads.ParseError (bad framing) and crypto.IntegrityError (bad ICV).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .constants import IKE_HEADER_LEN, PT, Flag
from .payloads import GENERIC, ParseError, Payload, encode_chain, parse_chain, parse_one

HEADER = struct.Struct("!8s8sBBBBII")  # SPIi, SPIr, next payload, version, exchange, flags, msg id, length
assert HEADER.size == IKE_HEADER_LEN
SKF_NUMBERS = struct.Struct("!HH")  # Fragment Number, Total Fragments after the generic header
SKF_HEADER = struct.Struct("!BBHHH")


@dataclass(frozen=True)
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    version: int
    exchange: int
    flags: int
    message_id: int
    length: int

    @property
    def major(self) -> int:
        return self.version >> 4

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & Flag.INITIATOR)


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER.size:
        raise ParseError(f"IKE header: datagram of {len(data)} octets is shorter than 28")
    h = Header(*HEADER.unpack_from(data))
    if h.length != len(data):
        raise ParseError(f"IKE header: length field {h.length} != datagram length {len(data)}")
    return h


@dataclass
class Message:
    """A parsed (or to-be-built) message. `payloads` are the cleartext ones, then the decrypted ones."""

    spi_i: bytes
    spi_r: bytes
    exchange: int
    flags: int
    message_id: int
    payloads: list[Payload] = field(default_factory=list)
    raw: bytes = b""  # the octets as received or sent (AUTH signs IKE_SA_INIT messages verbatim)
    sk_first: int | None = None  # first inner payload type when an SK payload is present
    sk_aad_end: int = 0  # octets before the IV: header + cleartext payloads + SK (or SKF) header
    frag: tuple[int, int] | None = None  # (Fragment Number, Total Fragments) of an SKF message (RFC 7383)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def encrypted(self) -> bool:
        return self.sk_first is not None


def parse_message(data: bytes) -> Message:
    """Parse header and cleartext payloads; an SK payload is located but left sealed."""
    h = parse_header(data)
    msg = Message(h.spi_i, h.spi_r, h.exchange, h.flags, h.message_id, raw=bytes(data))
    nxt = h.next_payload
    off = HEADER.size
    while nxt != PT.NONE:
        if len(data) - off < GENERIC.size:
            raise ParseError("payload header truncated")
        following, flags, length = GENERIC.unpack_from(data, off)
        if length < GENERIC.size or off + length > len(data):
            raise ParseError(f"payload {nxt}: bad length {length}")
        if nxt == PT.SK:
            if off + length != len(data):
                raise ParseError("SK payload is not the last payload")
            msg.sk_first = following
            msg.sk_aad_end = off + GENERIC.size
            return msg
        if nxt == PT.SKF:  # RFC 7383 §2.5: like SK, plus Fragment Number and Total Fragments
            if off + length != len(data) or length < SKF_HEADER.size:
                raise ParseError("SKF payload is not the last payload or is truncated")
            msg.frag = SKF_NUMBERS.unpack_from(data, off + GENERIC.size)
            msg.sk_first = following
            msg.sk_aad_end = off + SKF_HEADER.size
            return msg
        msg.payloads.append(parse_one(nxt, bool(flags & 0x80), data[off + GENERIC.size : off + length]))
        off += length
        nxt = following
    if off != len(data):
        raise ParseError("trailing octets after last payload")
    return msg


def encode_header(msg: Message, next_payload: int, length: int) -> bytes:
    return HEADER.pack(
        msg.spi_i, msg.spi_r, next_payload, 0x20, msg.exchange, msg.flags, msg.message_id, length
    )


def encode_plain(msg: Message) -> bytes:
    first, body = encode_chain(msg.payloads)
    return encode_header(msg, first, HEADER.size + len(body)) + body


def encode_encrypted(msg: Message, cipher: SealCipher, inner: Sequence[Payload] | None = None) -> bytes:
    """Build header + SK{inner} with `cipher` (RFC 7296 §3.14; AEAD per RFC 5282)."""
    payloads = msg.payloads if inner is None else inner
    first, body = encode_chain(payloads)
    plaintext = cipher.pad(body)
    sk_len = GENERIC.size + cipher.iv_len + len(plaintext) + cipher.icv_len
    hdr = encode_header(msg, PT.SK, HEADER.size + sk_len)
    aad = hdr + GENERIC.pack(first, 0, sk_len)
    return aad + cipher.seal(aad, plaintext)


def decrypt_message(msg: Message, cipher: OpenCipher) -> list[Payload]:
    """Open the SK payload and parse its inner chain (raises IntegrityError or ParseError)."""
    if msg.sk_first is None:
        raise ParseError("message has no Encrypted payload")
    aad = msg.raw[: msg.sk_aad_end]
    inner = cipher.open(aad, msg.raw[msg.sk_aad_end :])
    payloads = parse_chain(msg.sk_first, inner)
    msg.payloads = msg.payloads + payloads
    return payloads


class SealCipher(Protocol):
    """What encode_encrypted needs from a cipher (crypto.SkCipher implements it)."""

    iv_len: int
    icv_len: int

    def pad(self, body: bytes) -> bytes: ...
    def seal(self, aad: bytes, plaintext: bytes) -> bytes: ...


class OpenCipher(Protocol):
    def open(self, aad: bytes, body: bytes) -> bytes: ...
