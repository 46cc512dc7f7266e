"""IKE_SA_INIT flood protection: stateless cookies (RFC 7296 §2.6) and half-open SA accounting.

Owns: making and checking COOKIE notify data with a rotating secret (the previous secret stays valid
for a grace period after a rotation), counting half-open IKE SAs globally and per source address, and
the admission decision for an incoming IKE_SA_INIT request (`DosGuard.check_init`).

Must not touch: the notify payload itself and its position as first payload (payloads.py/session.py),
timers and sockets. Pure: `now` (seconds on the engine's monotonic clock) is always an argument;
randomness comes from an injectable `random_bytes` so tests can be deterministic.

Cookie = VersionIDofSecret (4 octets) | HMAC-SHA-256(secret, len(Ni) | Ni | len(IPi) | IPi | SPIi).
RFC 7296 writes Hash(Ni | IPi | SPIi | <secret>); only we ever check our cookies, so we use HMAC (a
keyed MAC is what the construction wants) and length-prefix the variable fields so that no two
(Ni, IPi) pairs hash the same input. 36 octets, within the 1..64 the notify allows.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import os
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = [
    "COOKIE_LEN",
    "Admission",
    "CookieSecrets",
    "Decision",
    "DosGuard",
]

Address = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address  # a packed address is 4/16 octets
_VERSION = struct.Struct("!I")
_LEN = struct.Struct("!H")
_SECRET_LEN = 32
COOKIE_LEN = _VERSION.size + hashlib.sha256().digest_size  # 36
_SPI_LEN = 8


def _packed_ip(ip: Address) -> bytes:
    if isinstance(ip, bytes):
        if len(ip) not in (4, 16):
            raise ValueError("IP address must be 4 or 16 octets")
        return ip
    addr = ip if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) else ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # one source, one identity, whatever the socket family
    return addr.packed


@dataclass(frozen=True, slots=True)
class _Secret:
    version: int
    key: bytes
    created: float


class CookieSecrets:
    """The current cookie secret and, for `grace` seconds after its scheduled retirement, the previous.

    Rotation is lazy: every `make`/`verify` first rotates if `lifetime` has passed, so no timer is needed.
    """

    def __init__(
        self,
        now: float,
        *,
        lifetime: float = 300.0,
        grace: float = 30.0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if lifetime <= 0 or grace < 0:
            raise ValueError("cookie secret lifetime must be > 0 and grace >= 0")
        self._lifetime = lifetime
        self._grace = grace
        self._random = random_bytes
        self._current = _Secret(1, random_bytes(_SECRET_LEN), now)
        self._previous: _Secret | None = None
        self._previous_until = 0.0

    def _rotate(self, now: float) -> None:
        cur = self._current
        if now - cur.created < self._lifetime:
            return
        retired_at = cur.created + self._lifetime
        self._previous = cur if now <= retired_at + self._grace else None
        self._previous_until = retired_at + self._grace
        self._current = _Secret((cur.version + 1) & 0xFFFFFFFF, self._random(_SECRET_LEN), now)

    @staticmethod
    def _mac(key: bytes, nonce_i: bytes, ip: bytes, spi_i: bytes) -> bytes:
        msg = _LEN.pack(len(nonce_i)) + nonce_i + _LEN.pack(len(ip)) + ip + spi_i
        return hmac.new(key, msg, hashlib.sha256).digest()

    def make(self, nonce_i: bytes, ip: Address, spi_i: bytes, now: float) -> bytes:
        """COOKIE notify data for this initiator (Ni, source address, SPIi)."""
        if len(spi_i) != _SPI_LEN:
            raise ValueError("SPIi must be 8 octets")
        self._rotate(now)
        cur = self._current
        return _VERSION.pack(cur.version) + self._mac(cur.key, bytes(nonce_i), _packed_ip(ip), bytes(spi_i))

    def verify(self, cookie: bytes, nonce_i: bytes, ip: Address, spi_i: bytes, now: float) -> bool:
        """True if `cookie` is one we made for exactly this initiator with a still-accepted secret."""
        self._rotate(now)
        cookie = bytes(cookie)
        if len(cookie) != COOKIE_LEN or len(spi_i) != _SPI_LEN:
            return False
        (version,) = _VERSION.unpack_from(cookie)
        if version == self._current.version:
            secret = self._current
        elif self._previous is not None and version == self._previous.version and now <= self._previous_until:
            secret = self._previous
        else:
            return False
        try:
            ip_bytes = _packed_ip(ip)
        except ValueError:
            return False
        expected = self._mac(secret.key, bytes(nonce_i), ip_bytes, bytes(spi_i))
        return hmac.compare_digest(expected, cookie[_VERSION.size :])


class Admission(enum.Enum):
    ACCEPT = "accept"  # create the half-open SA and answer normally
    SEND_COOKIE = "send_cookie"  # answer with only a COOKIE notify (Decision.cookie), keep no state
    DROP = "drop"  # answer nothing; count it


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one IKE_SA_INIT request; `reason` is for the drop counter / debug log."""

    action: Admission
    cookie: bytes | None = None
    reason: str = ""


@dataclass(slots=True)
class _HalfOpen:
    source: bytes
    since: float


class DosGuard:
    """Admission control for IKE_SA_INIT requests, and the half-open SA ledger behind it.

    Cookies are demanded while the number of half-open SAs is at or above `cookie_threshold`
    (threshold 0: always). A source address may hold at most `per_source_limit` half-open SAs,
    cookie or not. The engine calls `opened(key, source, now)` when it keeps state for a new
    responder SA and `closed(key)` when that SA completes IKE_AUTH, fails or is deleted; `expire(now)`
    returns half-open SAs older than `half_open_timeout` so the engine can drop them.
    """

    def __init__(
        self,
        now: float,
        *,
        cookie_threshold: int = 64,
        per_source_limit: int = 8,
        half_open_timeout: float = 30.0,
        secret_lifetime: float = 300.0,
        secret_grace: float = 30.0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if cookie_threshold < 0 or per_source_limit < 1 or half_open_timeout <= 0:
            raise ValueError("bad DoS guard limits")
        self.cookie_threshold = cookie_threshold
        self.per_source_limit = per_source_limit
        self.half_open_timeout = half_open_timeout
        self.secrets = CookieSecrets(
            now, lifetime=secret_lifetime, grace=secret_grace, random_bytes=random_bytes
        )
        self._half_open: dict[Hashable, _HalfOpen] = {}
        self._per_source: dict[bytes, int] = {}

    # -- ledger --------------------------------------------------------------------------------
    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def half_open_from(self, source: Address) -> int:
        return self._per_source.get(_packed_ip(source), 0)

    @property
    def cookies_required(self) -> bool:
        return len(self._half_open) >= self.cookie_threshold

    def opened(self, key: Hashable, source: Address, now: float) -> None:
        """Record a new half-open SA under `key` (e.g. the SPI pair). Idempotent for the same key."""
        if key in self._half_open:
            return
        src = _packed_ip(source)
        self._half_open[key] = _HalfOpen(src, now)
        self._per_source[src] = self._per_source.get(src, 0) + 1

    def closed(self, key: Hashable) -> None:
        """The SA left the half-open state (established, failed or deleted). Unknown keys are ignored."""
        entry = self._half_open.pop(key, None)
        if entry is None:
            return
        left = self._per_source[entry.source] - 1
        if left:
            self._per_source[entry.source] = left
        else:
            del self._per_source[entry.source]

    def expire(self, now: float) -> list[Hashable]:
        """Forget half-open SAs older than `half_open_timeout`; returns their keys for the engine."""
        old = [k for k, v in self._half_open.items() if now - v.since >= self.half_open_timeout]
        for key in old:
            self.closed(key)
        return old

    def next_deadline(self) -> float | None:
        """When `expire` next has something to do (for the engine's timer), or None."""
        if not self._half_open:
            return None
        return min(v.since for v in self._half_open.values()) + self.half_open_timeout

    # -- admission -----------------------------------------------------------------------------
    def check_init(
        self,
        *,
        source: Address,
        spi_i: bytes,
        nonce_i: bytes,
        cookie: bytes | None,
        now: float,
    ) -> Decision:
        """Decide about an IKE_SA_INIT request. `cookie` is the COOKIE notify data, if the request had one."""
        try:
            src = _packed_ip(source)
        except ValueError:
            return Decision(Admission.DROP, reason="unusable source address")
        if len(spi_i) != _SPI_LEN:
            return Decision(Admission.DROP, reason="SPIi is not 8 octets")
        if self._per_source.get(src, 0) >= self.per_source_limit:
            return Decision(
                Admission.DROP, reason=f"source has {self.per_source_limit} half-open SAs already"
            )
        if not self.cookies_required:
            return Decision(Admission.ACCEPT)
        if cookie is not None and self.secrets.verify(cookie, nonce_i, src, spi_i, now):
            return Decision(Admission.ACCEPT, reason="valid cookie")
        fresh = self.secrets.make(nonce_i, src, spi_i, now)
        why = "invalid or stale cookie" if cookie is not None else "cookies required"
        return Decision(Admission.SEND_COOKIE, cookie=fresh, reason=why)
