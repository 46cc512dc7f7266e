"""Wire codec: hypothesis round trips for every payload and message, and garbage only raises ParseError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshsec.agent.ike import payloads as P
from meshsec.agent.ike.constants import PT, Exchange, Proto, TsType
from meshsec.agent.ike.message import Message, encode_plain, parse_header, parse_message

u8 = st.integers(0, 255)
u16 = st.integers(0, 65535)
blob = st.binary(max_size=64)

transforms = st.builds(P.Transform, st.integers(1, 5), u16, st.none() | u16)
proposals = st.builds(
    P.Proposal,
    u8,
    u8,
    st.sampled_from([b"", b"abcd", b"12345678"]),
    st.lists(transforms, min_size=0, max_size=5).map(tuple),
)
selector4 = st.builds(
    P.TrafficSelector,
    st.just(TsType.IPV4_ADDR_RANGE),
    u8,
    u16,
    u16,
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
)
selector6 = st.builds(
    P.TrafficSelector,
    st.just(TsType.IPV6_ADDR_RANGE),
    u8,
    u16,
    u16,
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
)
selectors = st.lists(selector4 | selector6, min_size=1, max_size=4).map(tuple)

payload = st.one_of(
    st.builds(P.SA, st.lists(proposals, min_size=1, max_size=4).map(tuple)),
    st.builds(P.KE, u16, blob),
    st.builds(P.IDi, u8, blob),
    st.builds(P.IDr, u8, blob),
    st.builds(P.Cert, u8, blob),
    st.builds(P.CertReq, u8, blob),
    st.builds(P.Auth, u8, blob),
    st.builds(P.Nonce, st.binary(min_size=16, max_size=256)),
    st.builds(P.Notify, u16, u8, st.sampled_from([b"", b"abcd", b"12345678"]), blob),
    st.builds(
        P.Delete, st.just(Proto.ESP), st.lists(st.binary(min_size=4, max_size=4), max_size=5).map(tuple)
    ),
    st.builds(P.Delete, st.just(Proto.IKE)),
    st.builds(P.Vendor, blob),
    st.builds(P.TSi, selectors),
    st.builds(P.TSr, selectors),
    st.builds(P.Unknown, st.integers(49, 52), st.booleans(), blob),
)


@given(st.lists(payload, max_size=6))
@settings(max_examples=400, derandomize=True, deadline=None)
def test_payload_chain_round_trip(items: list) -> None:
    first, raw = P.encode_chain(items)
    assert P.parse_chain(first, raw) == items


@given(
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=8, max_size=8),
    st.sampled_from(list(Exchange)),
    st.sampled_from([0, 0x08, 0x20, 0x28]),
    st.integers(0, 2**32 - 1),
    st.lists(payload, max_size=5),
)
@settings(max_examples=300, derandomize=True, deadline=None)
def test_message_round_trip(spi_i, spi_r, exchange, flags, mid, items) -> None:  # type: ignore[no-untyped-def]
    raw = encode_plain(Message(spi_i, spi_r, exchange, flags, mid, items))
    msg = parse_message(raw)
    assert (msg.spi_i, msg.spi_r, msg.exchange, msg.flags, msg.message_id) == (
        spi_i,
        spi_r,
        exchange,
        flags,
        mid,
    )
    assert msg.payloads == items
    assert encode_plain(msg) == raw


@given(st.binary(max_size=300))
@settings(max_examples=1500, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_garbage_only_raises_parse_error(data: bytes) -> None:
    with contextlib.suppress(P.ParseError):
        parse_message(data)


@given(st.lists(payload, min_size=1, max_size=5), st.randoms(use_true_random=False))
@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_mutated_messages_only_raise_parse_error(items, rnd) -> None:  # type: ignore[no-untyped-def]
    """Mutating valid messages reaches deep parser paths that random bytes never get past the header."""
    valid = encode_plain(Message(b"a" * 8, b"b" * 8, 34, 0x08, 0, items))
    for _ in range(30):
        raw = bytearray(valid)
        for _ in range(rnd.randint(1, 4)):
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        for candidate in (bytes(raw), bytes(raw[: rnd.randrange(len(raw) + 1)])):
            with contextlib.suppress(P.ParseError):
                parse_message(candidate)


def test_header_length_must_match_datagram() -> None:
    raw = encode_plain(Message(b"a" * 8, b"\0" * 8, 34, 0x08, 0, [P.Nonce(b"n" * 16)]))
    with pytest.raises(P.ParseError, match="length"):
        parse_header(raw + b"\0")
    with pytest.raises(P.ParseError):
        parse_message(raw[:27])


def test_known_layouts() -> None:
    """Byte layouts checked by hand against RFC 7296 §3.3.5 (key length TV attribute) and §3.10."""
    t = P.Transform(1, 20, 128)
    assert t.encode(last=True) == bytes.fromhex("0000000c01000014800e0080")
    n = P.Notify(16388, data=b"\x01" * 20)
    assert P.encode_chain([n])[1][:8] == bytes.fromhex("0000001c00004004")
    assert P.Delete(Proto.IKE).body() == bytes.fromhex("01000000")
    ts = P.TrafficSelector.from_cidr("198.18.0.0/24")
    assert ts.encode() == bytes.fromhex("070000100000ffffc6120000c61200ff")


def test_ts_narrowing() -> None:
    wide = P.TrafficSelector.from_cidr("198.18.0.0/16")
    narrow = P.TrafficSelector.from_cidr("198.18.5.0/24", ip_proto=6, ports=(80, 80))
    assert wide.intersect(narrow) == narrow
    assert narrow.is_subset_of(wide) and not wide.is_subset_of(narrow)
    assert wide.intersect(P.TrafficSelector.from_cidr("fd00::/64")) is None
    assert P.TrafficSelector.from_cidr("198.19.0.0/24").intersect(narrow) is None


def test_sk_must_be_last_payload() -> None:
    raw = bytearray(encode_plain(Message(b"a" * 8, b"b" * 8, 37, 0, 1, [P.Vendor(b"x"), P.Vendor(b"y")])))
    raw[16] = PT.SK  # first payload now claims to be SK but another payload follows
    with pytest.raises(P.ParseError, match="last"):
        parse_message(bytes(raw))
