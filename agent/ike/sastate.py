"""Per-IKE-SA records shared by the session modules: the outstanding request, the cryptographic state of
one IKE SA (swapped on rekey), NAT detection hashes and naming helpers for log lines.

Owns no protocol logic; session.py, establish.py and exchanges.py drive these records.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from math import inf
from typing import Any

from .constants import Exchange, Notify
from .crypto import IkeKeys, SkCipher, sk_ciphers
from .events import Addr
from .fragments import Reassembler
from .message import Message
from .proposals import Suite

log = logging.getLogger(__name__)
GROUP = struct.Struct("!H")  # a DH group number in notify data
PORT = struct.Struct("!H")
NONCE_LEN = 32
ERROR_STATES = ("failed", "closed")


def notify_name(code: int) -> str:
    try:
        return Notify(code).name
    except ValueError:
        return f"notify {code}"


def nat_hash(spi_i: bytes, spi_r: bytes, addr: Addr) -> bytes:
    """NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | port) (RFC 7296 §2.23)."""
    ip = ipaddress.ip_address(addr[0]).packed
    return hashlib.sha1(spi_i + spi_r + ip + PORT.pack(addr[1])).digest()


@dataclass
class Request:
    exchange: int
    payloads: list[Any]
    on_response: Callable[[Request, Message, list[Any], float], None]
    kind: str
    ctx: dict[str, Any] = field(default_factory=dict)
    mid: int = -1
    raw: bytes = b""  # the whole message (for IKE_SA_INIT: the octets AUTH signs)
    wire: tuple[bytes, ...] = ()  # the datagrams sent: the message, or its RFC 7383 fragments
    first_sent: float = 0.0
    last_sent: float = 0.0
    tries: int = 0
    deadline: float = inf


class IkeSaState:
    """Cryptographic state of one IKE SA (the session swaps it on IKE rekey)."""

    def __init__(self, spi_i: bytes, spi_r: bytes, initiator: bool) -> None:
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.initiator = initiator  # we are the original initiator of THIS IKE SA (the I flag)
        self.suite: Suite | None = None
        self.keys: IkeKeys | None = None
        self.out: SkCipher | None = None
        self.inb: SkCipher | None = None
        self.next_mid = 0
        self.peer_mid = 0
        self.pending: Request | None = None
        self.queue: deque[Request] = deque()
        # (peer msg id, request digest, response datagrams: one, or the RFC 7383 fragments)
        self.cache: tuple[int, bytes, tuple[bytes, ...]] | None = None
        self.reassembly: Reassembler | None = None  # fragments in reassembly (RFC 7383), made on first use
        self.rekey_at = inf
        self.expire_at = inf

    def install(self, st: Suite, keys: IkeKeys) -> None:
        self.suite, self.keys = st, keys
        self.out, self.inb = sk_ciphers(keys, st.encr_id, st.key_bits, st.integ_id, self.initiator)

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def name(self) -> str:
        return f"{self.spi_i.hex()}_{self.spi_r.hex()}"


def exchange_name(x: int) -> str:
    try:
        return Exchange(x).name
    except ValueError:
        return f"exchange {x}"


def fmt_id(v: tuple[int, bytes]) -> str:
    t, d = v
    try:
        return f"{t}:{d.decode()}"
    except UnicodeDecodeError:
        return f"{t}:{d.hex()}"


def suite_name(s: Suite) -> str:
    from .constants import Encr, Group, Integ, Prf

    parts = [f"{Encr(s.encr_id).name}_{s.key_bits}"]
    if s.integ_id:
        parts.append(Integ(s.integ_id).name)
    if s.prf_id:
        parts.append(Prf(s.prf_id).name)
    parts.append(Group(s.dh_group).name)
    return "/".join(parts)
