"""RFC 7296 §2.6 cookies and half-open SA accounting, on a fake clock (`now` is just a number here)."""

from __future__ import annotations

import hashlib
import hmac
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshsec.agent.ike import cookies
from meshsec.agent.ike.cookies import COOKIE_LEN, Admission, CookieSecrets, DosGuard

SPI = bytes.fromhex("0102030405060708")
NI = b"\xaa" * 32
SRC = "198.18.0.1"


def counter_random():  # type: ignore[no-untyped-def]
    """Deterministic 'randomness': secret n is n repeated, so tests can recompute cookies."""
    counter = itertools.count(1)
    return lambda n: bytes([next(counter)]) * n


def test_cookie_layout_known_answer() -> None:
    secrets = CookieSecrets(0.0, random_bytes=counter_random())
    cookie = secrets.make(NI, SRC, SPI, 1.0)
    assert len(cookie) == COOKIE_LEN == 36  # within the 1..64 octets a COOKIE notify may carry
    msg = b"\x00\x20" + NI + b"\x00\x04" + bytes([198, 18, 0, 1]) + SPI
    assert cookie == b"\x00\x00\x00\x01" + hmac.new(b"\x01" * 32, msg, hashlib.sha256).digest()


def test_cookie_binds_nonce_address_and_spi() -> None:
    secrets = CookieSecrets(0.0)
    cookie = secrets.make(NI, SRC, SPI, 1.0)
    assert secrets.verify(cookie, NI, SRC, SPI, 2.0)
    assert secrets.verify(cookie, NI, "::ffff:198.18.0.1", SPI, 2.0)  # v4-mapped is the same source
    assert not secrets.verify(cookie, NI[:-1] + b"\xab", SRC, SPI, 2.0)
    assert not secrets.verify(cookie, NI, "198.18.0.2", SPI, 2.0)
    assert not secrets.verify(cookie, NI, SRC, SPI[::-1], 2.0)
    assert not secrets.verify(cookie[:-1] + bytes([cookie[-1] ^ 1]), NI, SRC, SPI, 2.0)
    assert not secrets.verify(cookie[:-1], NI, SRC, SPI, 2.0)
    assert not secrets.verify(b"", NI, SRC, SPI, 2.0)
    assert not secrets.verify(cookie, NI, "not an address", SPI, 2.0)


def test_secret_rotation_with_grace_period() -> None:
    secrets = CookieSecrets(0.0, lifetime=100.0, grace=10.0)
    old = secrets.make(NI, SRC, SPI, 95.0)
    new = secrets.make(NI, SRC, SPI, 101.0)  # rotation happened at t=100
    assert old != new and old[:4] == b"\x00\x00\x00\x01" and new[:4] == b"\x00\x00\x00\x02"
    assert secrets.verify(old, NI, SRC, SPI, 105.0)  # previous secret inside the grace period
    assert secrets.verify(new, NI, SRC, SPI, 105.0)
    assert not secrets.verify(old, NI, SRC, SPI, 110.5)  # grace over
    assert secrets.verify(new, NI, SRC, SPI, 110.5)


def test_long_idle_period_does_not_extend_the_old_secret() -> None:
    secrets = CookieSecrets(0.0, lifetime=100.0, grace=10.0)
    old = secrets.make(NI, SRC, SPI, 50.0)
    assert not secrets.verify(old, NI, SRC, SPI, 5000.0)  # rotated long ago, not "just now"


def test_two_rotations_forget_the_oldest_secret() -> None:
    secrets = CookieSecrets(0.0, lifetime=100.0, grace=50.0)
    first = secrets.make(NI, SRC, SPI, 10.0)
    secrets.make(NI, SRC, SPI, 120.0)  # rotation 1 (secret 2 created at 120)
    assert secrets.verify(first, NI, SRC, SPI, 140.0)
    secrets.make(NI, SRC, SPI, 225.0)  # rotation 2
    assert not secrets.verify(first, NI, SRC, SPI, 226.0)


def test_verification_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(cookies.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    secrets = CookieSecrets(0.0)
    secrets.verify(secrets.make(NI, SRC, SPI, 0.0), NI, SRC, SPI, 0.0)
    assert calls == [1]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        CookieSecrets(0.0, lifetime=0)
    with pytest.raises(ValueError):
        CookieSecrets(0.0).make(NI, SRC, b"short", 0.0)
    with pytest.raises(ValueError):
        DosGuard(0.0, per_source_limit=0)


# ------------------------------------------------------------------------------ admission control


def test_no_cookies_below_threshold_then_cookies_required() -> None:
    guard = DosGuard(0.0, cookie_threshold=2, per_source_limit=10)
    for i in range(2):
        decision = guard.check_init(source=f"198.18.0.{i + 1}", spi_i=SPI, nonce_i=NI, cookie=None, now=1.0)
        assert decision.action is Admission.ACCEPT
        guard.opened(("sa", i), f"198.18.0.{i + 1}", 1.0)
    assert guard.cookies_required and guard.half_open == 2
    ask = guard.check_init(source=SRC, spi_i=SPI, nonce_i=NI, cookie=None, now=2.0)
    assert ask.action is Admission.SEND_COOKIE and ask.cookie is not None and ask.reason == "cookies required"
    # the initiator repeats IKE_SA_INIT with the cookie: accepted
    ok = guard.check_init(source=SRC, spi_i=SPI, nonce_i=NI, cookie=ask.cookie, now=2.5)
    assert ok.action is Admission.ACCEPT
    # a cookie made for someone else gets a fresh cookie, not state
    spoof = guard.check_init(source="198.18.9.9", spi_i=SPI, nonce_i=NI, cookie=ask.cookie, now=2.5)
    assert spoof.action is Admission.SEND_COOKIE and spoof.reason == "invalid or stale cookie"
    # load goes down: cookies off again
    guard.closed(("sa", 0))
    assert (
        guard.check_init(source=SRC, spi_i=SPI, nonce_i=NI, cookie=None, now=3.0).action is Admission.ACCEPT
    )


def test_threshold_zero_always_demands_cookies() -> None:
    guard = DosGuard(0.0, cookie_threshold=0)
    assert (
        guard.check_init(source=SRC, spi_i=SPI, nonce_i=NI, cookie=None, now=0.0).action
        is Admission.SEND_COOKIE
    )


def test_per_source_cap() -> None:
    guard = DosGuard(0.0, cookie_threshold=100, per_source_limit=2)
    guard.opened(1, SRC, 0.0)
    guard.opened(2, SRC, 0.0)
    guard.opened(2, SRC, 0.0)  # idempotent
    assert guard.half_open_from(SRC) == 2 and guard.half_open == 2
    drop = guard.check_init(source=SRC, spi_i=SPI, nonce_i=NI, cookie=None, now=1.0)
    assert drop.action is Admission.DROP and "2 half-open SAs" in drop.reason
    other = guard.check_init(source="198.18.0.2", spi_i=SPI, nonce_i=NI, cookie=None, now=1.0)
    assert other.action is Admission.ACCEPT
    guard.closed(1)
    guard.closed(1)  # unknown key now: ignored
    assert guard.half_open_from(SRC) == 1
    assert (
        guard.check_init(source=SRC, spi_i=SPI, nonce_i=NI, cookie=None, now=1.0).action is Admission.ACCEPT
    )


def test_expiry_of_half_open_sas() -> None:
    guard = DosGuard(0.0, half_open_timeout=30.0)
    assert guard.next_deadline() is None
    guard.opened("a", SRC, 10.0)
    guard.opened("b", "fd00::1", 20.0)
    assert guard.next_deadline() == 40.0
    assert guard.expire(39.0) == []
    assert guard.expire(40.0) == ["a"]
    assert guard.half_open_from(SRC) == 0 and guard.half_open == 1
    assert guard.expire(100.0) == ["b"] and guard.next_deadline() is None


def test_malformed_inputs_are_dropped_not_raised() -> None:
    guard = DosGuard(0.0)
    assert (
        guard.check_init(source="bogus", spi_i=SPI, nonce_i=NI, cookie=None, now=0).action is Admission.DROP
    )
    assert guard.check_init(source=SRC, spi_i=b"", nonce_i=NI, cookie=None, now=0).action is Admission.DROP


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=64), st.floats(0, 1e6))
def test_property_random_cookies_never_verify_or_raise(cookie: bytes, nonce: bytes, now: float) -> None:
    guard = DosGuard(0.0, cookie_threshold=0)
    decision = guard.check_init(source=SRC, spi_i=SPI, nonce_i=nonce, cookie=cookie, now=now)
    assert decision.action is Admission.SEND_COOKIE
    assert guard.secrets.verify(decision.cookie or b"", nonce, SRC, SPI, now)
