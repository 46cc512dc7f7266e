"""IKEv2 message fragmentation (RFC 7383) between two engines, the SKF codec and bounded reassembly.

Proves: IKEV2_FRAGMENTATION_SUPPORTED is exchanged in IKE_SA_INIT by both roles and only then are
messages fragmented; IKE_AUTH, CREATE_CHILD_SA and INFORMATIONAL cross as SKF fragments under a
forced small fragment size with AEAD and with AES-CBC+HMAC; out-of-order, duplicate, corrupted,
stale and restarted (larger Total Fragments) fragments are handled per §2.6; retransmissions resend
every fragment and a retransmitted fragment 1 (only) re-sends the cached response; partial state
times out; and random fragment sets never raise nor exceed the limits (hypothesis).
"""

from __future__ import annotations

import dataclasses
import os
import random
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshsec.agent.ike import fragments as F
from meshsec.agent.ike import payloads as P
from meshsec.agent.ike import peerselect
from meshsec.agent.ike.certs import TrustStore
from meshsec.agent.ike.constants import PT, Encr, Exchange, Flag, Integ, Notify
from meshsec.agent.ike.crypto import IntegrityError, SkCipher
from meshsec.agent.ike.events import (
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
)
from meshsec.agent.ike.identity import IdentityPattern
from meshsec.agent.ike.message import Message, decrypt_message, encode_encrypted, parse_message
from meshsec.agent.ike.payloads import TrafficSelector

from . import pki_helpers as pk
from .harness import Pair, make_configs, of

SMALL = 256  # fragment_size (IP datagram) forced in tests: 256 - 20 - 8 = 228 octets per IKE message
# eight selectors a side make even a PSK IKE_AUTH (and its response) several fragments long
NETS_A = [TrafficSelector.from_cidr(f"198.19.{i}.0/24") for i in range(1, 9)]
NETS_B = [TrafficSelector.from_cidr(f"198.19.{i}.0/24") for i in range(101, 109)]


def _configs(**kw: Any) -> tuple[Any, Any]:
    sel = {"i_local_ts": NETS_A, "i_remote_ts": NETS_B, "r_local_ts": NETS_B, "r_remote_ts": NETS_A}
    return make_configs(**{**sel, **kw})


def _exchange(raw: bytes) -> int:
    return raw[18]


def _is_frag(raw: bytes) -> bool:
    return raw[16] == PT.SKF


def _frag_numbers(raw: bytes) -> tuple[int, int, int]:
    """(next payload, Fragment Number, Total Fragments) of an SKF datagram."""
    nxt, _, _, num, total = F.SKF.unpack_from(raw, 28)
    return nxt, num, total


def _init_notifies(raw: bytes) -> dict[int, P.Notify]:
    return P.notifies(parse_message(raw).payloads)


# ---------------------------------------------------------------------------------------- negotiation
def test_both_roles_announce_support_in_ike_sa_init() -> None:
    p = Pair(*make_configs()).start()
    init_req, init_resp = p.wire.sent("a>b")[0], p.wire.sent("b>a")[0]
    assert Notify.IKEV2_FRAGMENTATION_SUPPORTED in _init_notifies(init_req)
    assert Notify.IKEV2_FRAGMENTATION_SUPPORTED in _init_notifies(init_resp)
    assert p.a.fragmentation and p.b_session.fragmentation
    assert of(p.ev_a, ChildSaEstablished)
    # a PSK IKE_AUTH is far below 1280: never fragmented for nothing (§2.5)
    assert not any(_is_frag(r) for r in p.wire.sent("a>b") + p.wire.sent("b>a"))


@pytest.mark.parametrize("side", ["i", "r"])
def test_no_fragments_unless_both_support_it(side: str) -> None:
    p = Pair(*_configs(fragment_size=SMALL, **{f"{side}_fragmentation": False})).start()
    init_resp = p.wire.sent("b>a")[0]
    # the responder answers with the notify only to an initiator that sent it
    assert Notify.IKEV2_FRAGMENTATION_SUPPORTED not in _init_notifies(init_resp)
    assert not p.a.fragmentation and not p.b_session.fragmentation
    assert of(p.ev_a, ChildSaEstablished) and of(p.ev_b, ChildSaEstablished)
    auth = [r for r in p.wire.sent("a>b") if _exchange(r) == Exchange.IKE_AUTH]
    assert len(auth) == 1 and not _is_frag(auth[0]) and len(auth[0]) > SMALL - 28


def test_fragment_without_negotiation_is_dropped_and_counted() -> None:
    p = Pair(*make_configs(r_fragmentation=False)).start()
    sa = p.a.sa
    assert sa.out is not None
    big = [P.Delete(3, (b"abcd",) * 80)]  # an ESP DELETE of 80 SPIs: 360 octets of content
    msg = Message(sa.spi_i, sa.spi_r, Exchange.INFORMATIONAL, Flag.INITIATOR, sa.next_mid, big)
    wire = F.protect(msg, sa.out, 228)
    assert len(wire) >= 2
    for raw in wire:
        p.b.receive(raw, (p.a_ip, 500), p.now)
    assert p.b_session.stats["dropped_fragment_unnegotiated"] == len(wire)
    assert p.b_session.sa.reassembly is None  # nothing stored
    assert not p.b.datagrams_to_send(p.now)


# ---------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "ike",
    ["aes128gcm16-prfsha256-x25519", "chacha20poly1305-prfsha256-x25519", "aes256-sha256-x25519"],
    ids=["aes-gcm", "chacha20poly1305", "aes-cbc-hmac"],
)
def test_round_trip_with_small_fragment_size(ike: str) -> None:
    p = Pair(*_configs(fragment_size=SMALL, ike_proposals=[ike])).start()
    assert of(p.ev_a, IkeSaEstablished) and of(p.ev_b, IkeSaEstablished), (p.ev_a, p.ev_b)
    assert of(p.ev_a, ChildSaEstablished) and of(p.ev_b, ChildSaEstablished)
    for direction, first in (("a>b", PT.IDI), ("b>a", PT.IDR)):
        auth = [r for r in p.wire.sent(direction) if _exchange(r) == Exchange.IKE_AUTH]
        assert len(auth) >= 2 and all(_is_frag(r) for r in auth), direction
        assert all(len(r) <= SMALL - 28 for r in auth)
        numbers = [_frag_numbers(r) for r in auth]
        total = len(auth)
        assert [n[1] for n in numbers] == list(range(1, total + 1)) and {n[2] for n in numbers} == {total}
        # the first fragment names the first inner payload, the others carry 0 (§2.5)
        assert numbers[0][0] == first and all(n[0] == 0 for n in numbers[1:])
        assert {struct.unpack_from("!I", r, 20)[0] for r in auth} == {1}  # one message ID
    assert p.a.stats["messages_reassembled"] == 1 and p.b_session.stats["messages_reassembled"] == 1

    # CREATE_CHILD_SA (a Child SA rekey) and INFORMATIONAL (DELETE) are fragmented too
    spi = of(p.ev_a, ChildSaEstablished)[0].spi_in
    mark = len(p.wire.log)
    p.a.rekey_child(p.now, spi)
    p.pump()
    assert of(p.ev_a, ChildSaRekeyed) and of(p.ev_b, ChildSaRekeyed)
    ccs = [raw for _, raw, _ in p.wire.log[mark:] if _exchange(raw) == Exchange.CREATE_CHILD_SA]
    assert any(_is_frag(r) for r in ccs)
    mark = len(p.wire.log)
    p.b_session.delete(p.now)
    p.b.sync(p.b_session)
    p.pump()
    assert of(p.ev_a, IkeSaDeleted) and of(p.ev_b, IkeSaDeleted)
    info = [raw for _, raw, _ in p.wire.log[mark:] if _exchange(raw) == Exchange.INFORMATIONAL]
    assert info  # a small DELETE fits in one datagram: sent whole
    assert p.a.stats["dropped_fragment_integrity"] == 0 and p.b.counters()["fragments_received"] >= 2


def _rsa_pki() -> dict[str, Any]:
    root = pk.issue(pk.cn("meshsec CA"), pk.key("rsa", 10), ca=True)
    mid = pk.issue(pk.cn("meshsec intermediate"), pk.key("rsa", 11), root, pk.key("rsa", 10), ca=True)
    a = pk.issue(pk.cn("node-a"), pk.key("rsa", 1), mid, pk.key("rsa", 11), dns=["a.test"])
    b = pk.issue(pk.cn("node-b"), pk.key("rsa", 2), mid, pk.key("rsa", 11), dns=["b.test"])
    return {"root": root, "mid": mid, "a": a, "b": b}


def test_certificate_chain_ike_auth_fragmented_at_default_size() -> None:
    """RSA leaf + intermediate in IKE_AUTH exceeds 1280: fragmented at the default size, verified."""
    x = _rsa_pki()
    cfgs = make_configs(
        psk=None,
        trust=TrustStore((x["root"],)),
        wall_clock=lambda now: pk.NOW.timestamp(),
        i_private_key=pk.key("rsa", 1),
        i_cert_chain=[x["a"], x["mid"]],
        r_private_key=pk.key("rsa", 2),
        r_cert_chain=[x["b"], x["mid"]],
    )
    p = Pair(*cfgs).start()
    assert of(p.ev_a, ChildSaEstablished) and of(p.ev_b, ChildSaEstablished), (p.ev_a, p.ev_b)
    for direction in ("a>b", "b>a"):
        auth = [r for r in p.wire.sent(direction) if _exchange(r) == Exchange.IKE_AUTH]
        assert len(auth) >= 2 and all(_is_frag(r) and len(r) <= 1280 - 28 for r in auth)
        assert sum(len(r) for r in auth) > 1500
    assert p.a.peer_cert is not None and p.b_session.peer_cert is not None


# ---------------------------------------------------------------------------------------- receiver rules
def _held_auth(**kw: Any) -> tuple[Pair, list[bytes]]:
    """A pair whose initiator's IKE_AUTH fragments were held back (not delivered) for the test to feed."""
    p = Pair(*_configs(fragment_size=SMALL, **kw))
    held: list[bytes] = []

    def hold(direction: str, raw: bytes) -> bool:
        if direction == "a>b" and _exchange(raw) == Exchange.IKE_AUTH and not held_done:
            held.append(raw)
            return True
        return False

    held_done = False
    p.drop = hold
    p.start()
    held_done = True
    p.drop = lambda d, r: False
    assert len(held) >= 3, len(held)
    return p, held


def _feed(p: Pair, datagrams: list[bytes]) -> None:
    for raw in datagrams:
        p.b.receive(raw, (p.a_ip, 500), p.now)
    p.pump()


def test_out_of_order_and_duplicate_fragments() -> None:
    p, frags = _held_auth()
    order = [f for f in reversed(frags) if f is not frags[1]]  # fragment 2 held back
    order.insert(1, order[0])  # the last fragment twice
    order.append(frags[0])  # fragment 1 twice
    _feed(p, order)
    assert not of(p.ev_b, IkeSaEstablished)
    s = p.b_session
    assert s.stats["dropped_fragment_duplicate"] == 2
    assert s.sa.reassembly is not None and s.sa.reassembly.held(False) == (1, len(frags), len(frags) - 1)
    _feed(p, [frags[1]])
    assert of(p.ev_a, ChildSaEstablished) and of(p.ev_b, ChildSaEstablished)
    assert s.stats["messages_reassembled"] == 1 and s.sa.reassembly.held(False) is None


def test_corrupted_fragment_is_dropped_before_storing() -> None:
    p, frags = _held_auth()
    bad = bytearray(frags[1])
    bad[-20] ^= 0x01  # inside the ciphertext/ICV: the fragment's own integrity check fails
    _feed(p, [frags[0], bytes(bad)])
    s = p.b_session
    assert s.stats["dropped_fragment_integrity"] == 1
    assert s.sa.reassembly is not None and s.sa.reassembly.held(False) == (1, len(frags), 1)
    _feed(p, frags[1:])
    assert of(p.ev_b, ChildSaEstablished)


def test_malformed_fragments_are_counted_never_raise() -> None:
    p, frags = _held_auth()
    s = p.b_session

    def renumber(raw: bytes, num: int, total: int) -> bytes:
        b = bytearray(raw)
        struct.pack_into("!HH", b, 32, num, total)
        return bytes(b)

    _feed(p, [renumber(frags[0], 0, 3), renumber(frags[0], 4, 3), renumber(frags[0], 1, 0)])
    assert s.stats["dropped_fragment_malformed"] == 3
    _feed(p, [renumber(frags[0], 1, 1000)])  # above max_fragments: not even decrypted
    assert s.stats["dropped_fragment_limit"] == 1
    short = bytearray(frags[0][:34])
    struct.pack_into("!I", short, 24, len(short))
    struct.pack_into("!H", short, 30, 6)
    _feed(p, [bytes(short)])
    assert s.stats["dropped_unparseable"] == 1
    init_frag = bytearray(frags[0])
    init_frag[18] = Exchange.IKE_SA_INIT
    _feed(p, [bytes(init_frag)])
    assert s.stats["dropped_fragment_malformed"] == 4
    assert s.sa.reassembly is None or s.sa.reassembly.octets == 0
    _feed(p, frags)  # the genuine ones still complete the message
    assert of(p.ev_b, ChildSaEstablished)


def _refragment(p: Pair, max_len: int) -> list[bytes]:
    """The initiator's pending IKE_AUTH request fragmented again at another size (as after PMTU
    discovery, §2.5.2): same message ID, a different Total Fragments."""
    sa, req = p.a.sa, p.a.sa.pending
    assert req is not None and sa.out is not None
    msg = Message(sa.spi_i, sa.spi_r, req.exchange, Flag.INITIATOR, req.mid, req.payloads)
    return list(F.protect(msg, sa.out, max_len))


def test_larger_total_fragments_restarts_reassembly_smaller_is_stale() -> None:
    p, frags = _held_auth()
    finer = _refragment(p, 160)
    assert len(finer) > len(frags)
    s = p.b_session
    _feed(p, [frags[0], frags[1]])
    _feed(p, [finer[0]])  # a larger Total Fragments: start again with just this one (§2.6.2)
    assert s.stats["fragments_reassembly_restarted"] == 1
    assert s.sa.reassembly is not None and s.sa.reassembly.held(False) == (1, len(finer), 1)
    _feed(p, [frags[2]])  # the older, coarser copy is now stale
    assert s.stats["dropped_fragment_stale_total"] == 1
    _feed(p, finer[1:])
    assert of(p.ev_a, ChildSaEstablished) and of(p.ev_b, ChildSaEstablished)


def test_retransmission_resends_all_fragments_and_only_fragment_1_triggers_a_resend() -> None:
    p = Pair(*_configs(fragment_size=SMALL))
    lost = {"b>a": True}

    def lose_first_response(direction: str, raw: bytes) -> bool:
        return direction == "b>a" and _exchange(raw) == Exchange.IKE_AUTH and lost["b>a"]

    p.drop = lose_first_response
    p.start()
    first_try = [r for r in p.wire.sent("a>b") if _exchange(r) == Exchange.IKE_AUTH]
    assert not of(p.ev_a, IkeSaEstablished) and of(p.ev_b, IkeSaEstablished)
    lost["b>a"] = False
    p.advance(p.a.config.retransmit_timeout + 0.01)
    auth = [r for r in p.wire.sent("a>b") if _exchange(r) == Exchange.IKE_AUTH]
    assert auth == first_try + first_try  # every fragment again, the very same octets
    s = p.b_session
    assert s.stats["retransmit_answered"] == 1  # fragment 1 only ...
    assert s.stats["fragments_retransmit_ignored"] == len(first_try) - 1  # ... the others are ignored
    assert of(p.ev_a, ChildSaEstablished)
    responses = [r for r in p.wire.sent("b>a") if _exchange(r) == Exchange.IKE_AUTH]
    assert len(responses) % 2 == 0 and responses[: len(responses) // 2] == responses[len(responses) // 2 :]


def test_partial_message_times_out() -> None:
    p, frags = _held_auth(fragment_timeout=5.0, retransmit_timeout=60.0)
    _feed(p, frags[:1])
    s = p.b_session
    assert s.sa.reassembly is not None and s.sa.reassembly.held(False) is not None
    assert (s.get_timer() or 0) <= p.now + 5.0
    p.drop = lambda d, r: True
    p.advance(5.5)
    assert s.sa.reassembly.held(False) is None
    assert s.stats["fragments_reassembly_timeout"] == 1


def test_fragments_of_an_unfragmented_retransmission_are_discarded() -> None:
    """A whole copy of the message (peer stopped fragmenting) wins over a partial fragmented one."""
    p, frags = _held_auth()
    _feed(p, frags[:1])
    sa, req = p.a.sa, p.a.sa.pending
    assert req is not None and sa.out is not None
    whole = encode_encrypted(
        Message(sa.spi_i, sa.spi_r, req.exchange, Flag.INITIATOR, req.mid, req.payloads), sa.out
    )
    _feed(p, [whole])
    assert of(p.ev_b, IkeSaEstablished)
    assert p.b_session.sa.reassembly is not None and p.b_session.sa.reassembly.held(False) is None


# ---------------------------------------------------------------------------------------- codec
def _ciphers(kind: str) -> tuple[SkCipher, SkCipher]:
    if kind == "gcm":
        k = os.urandom(20)
        return SkCipher(Encr.AES_GCM_16, 128, k, Integ.NONE, b""), SkCipher(Encr.AES_GCM_16, 128, k, 0, b"")
    k, m = os.urandom(32), os.urandom(32)
    return (
        SkCipher(Encr.AES_CBC, 256, k, Integ.HMAC_SHA2_256_128, m),
        SkCipher(Encr.AES_CBC, 256, k, Integ.HMAC_SHA2_256_128, m),
    )


def test_max_message_len_follows_headers() -> None:
    assert F.max_message_len(1280, ipv6=False, natt=False) == 1252
    assert F.max_message_len(1280, ipv6=False, natt=True) == 1248
    assert F.max_message_len(1280, ipv6=True, natt=True) == 1228


@given(
    kind=st.sampled_from(["gcm", "cbc"]),
    sizes=st.lists(st.integers(0, 600), min_size=1, max_size=8),
    max_len=st.integers(120, 1400),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_property_protect_then_reassemble_is_identity(
    kind: str, sizes: list[int], max_len: int, seed: int
) -> None:
    seal, opener = _ciphers(kind)
    rnd = random.Random(seed)
    payloads = [P.Vendor(rnd.randbytes(n)) for n in sizes]
    msg = Message(b"i" * 8, b"r" * 8, Exchange.IKE_AUTH, Flag.INITIATOR, 7, payloads)
    wire = F.protect(msg, seal, max_len)
    assert all(len(r) <= max_len for r in wire) or len(wire) == 1
    if len(wire) == 1 and not _is_frag(wire[0]):
        assert decrypt_message(parse_message(wire[0]), opener) == payloads
        return
    r = F.Reassembler(F.Limits(max_fragments=65535, max_octets=1 << 20))
    rnd.shuffle(list_ := list(wire))
    done = None
    for raw in list_:
        m = parse_message(raw)
        res = r.add(False, m.message_id, F.open_fragment(m, opener), 0.0)
        if isinstance(res, F.Reassembled):
            done = res
    assert done is not None and P.parse_chain(done.first, done.data) == payloads


def test_open_fragment_rejects_tampered_header_fields() -> None:
    """The SKF header (numbers included) is authenticated: a renumbered fragment fails integrity."""
    seal, opener = _ciphers("gcm")
    msg = Message(b"i" * 8, b"r" * 8, Exchange.IKE_AUTH, Flag.INITIATOR, 1, [P.Vendor(bytes(900))])
    wire = F.protect(msg, seal, 300)
    b = bytearray(wire[1])
    struct.pack_into("!H", b, 32, 3)
    with pytest.raises(IntegrityError):
        F.open_fragment(parse_message(bytes(b)), opener)


# ---------------------------------------------------------------------------------------- bounds (hypothesis)
_frag = st.tuples(
    st.booleans(),  # response?
    st.integers(0, 3),  # message id
    st.integers(1, 12),  # fragment number
    st.integers(1, 12),  # total fragments
    st.integers(0, 400),  # content octets
)


@given(st.lists(_frag, max_size=80), st.integers(1, 8), st.integers(64, 2000))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_property_reassembly_never_exceeds_limits(
    frags: list[Any], max_fragments: int, max_octets: int
) -> None:
    limits = F.Limits(max_fragments=max_fragments, max_octets=max_octets, timeout=10.0)
    r = F.Reassembler(limits)
    now = 0.0
    for response, mid, num, total, n in frags:
        if num > total:
            continue  # check_numbers refuses these before the reassembler sees them
        now += 1.0
        content = bytes([num]) * n
        res = r.add(response, mid, F.Fragment(num, total, PT.NONE, content), now)
        if isinstance(res, F.Reassembled):
            assert res.fragments == total <= max_fragments
            assert len(res.data) <= max_octets
        for direction in (False, True):
            h = r.held(direction)
            if h is not None:
                assert h[1] <= max_fragments and h[2] < h[1]
        assert r.octets <= 2 * max_octets
        r.expire(now)
    r.expire(now + 11.0)
    assert r.octets == 0 and r.deadline() == float("inf")


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5), st.integers(0, 255)), max_size=30))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_property_random_fragment_sets_into_the_engine(ops: list[tuple[int, int, int]]) -> None:
    """Genuine fragments, reordered, repeated, renumbered and bit-flipped, into a responder: nothing
    raises, memory stays within the limits, and every datagram either counts or completes."""
    p, frags = _held_auth(max_fragments=8, max_reassembly=2000)
    s = p.b_session
    for pick, op, byte in ops:
        raw = bytearray(frags[pick % len(frags)])
        if op == 1:
            raw[28 + byte % (len(raw) - 28)] ^= 1 + byte % 255
        elif op == 2:
            struct.pack_into("!HH", raw, 32, byte % 12, byte % 9)
        elif op == 3:
            raw = raw[: 28 + byte % (len(raw) - 28)]
        p.b.receive(bytes(raw), (p.a_ip, 500), p.now)
        if s.sa.reassembly is not None:
            assert s.sa.reassembly.octets <= 2000
            h = s.sa.reassembly.held(False)
            assert h is None or h[1] <= 8
        p.pump()
    _feed(p, frags)
    assert of(p.ev_b, IkeSaEstablished) and not s.finished


# ---------------------------------------------------------------------------------------- with other features
def test_fragmented_ike_auth_to_a_responder_that_picks_the_peer_at_ike_auth() -> None:
    """peerselect: the IKE_AUTH request is reassembled before the peer is known, then resolved."""
    a_cfg, b_cfg = _configs(fragment_size=SMALL, r_remote_id=IdentityPattern.parse("fqdn:a.test"))
    other = dataclasses.replace(
        b_cfg, remote_id=IdentityPattern.parse("fqdn:other.test"), psk=b"another-secret-0123456789"
    )
    resolved: list[str] = []
    deferred = peerselect.deferred_config(
        [("other", other), ("a", b_cfg)], on_resolved=lambda k, c: resolved.append(k)
    )
    assert deferred.fragmentation and deferred.fragment_size == SMALL
    p = Pair(a_cfg, deferred).start()
    assert resolved == ["a"]
    assert of(p.ev_a, ChildSaEstablished) and of(p.ev_b, ChildSaEstablished), (p.ev_a, p.ev_b)
    for direction in ("a>b", "b>a"):
        auth = [r for r in p.wire.sent(direction) if _exchange(r) == Exchange.IKE_AUTH]
        assert len(auth) >= 2 and all(_is_frag(r) for r in auth)


def test_fragmentation_survives_an_ike_rekey() -> None:
    p = Pair(*_configs(fragment_size=SMALL)).start()
    p.a.rekey_ike(p.now)
    p.pump()
    assert of(p.ev_a, IkeSaRekeyed) and p.a.fragmentation and p.b_session.fragmentation
    mark = len(p.wire.log)
    p.a.rekey_child(p.now, of(p.ev_a, ChildSaEstablished)[0].spi_in)
    p.pump()
    assert of(p.ev_a, ChildSaRekeyed) and of(p.ev_b, ChildSaRekeyed)
    new_spi = p.a.sa.spi_i
    ccs = [raw for _, raw, _ in p.wire.log[mark:] if _exchange(raw) == Exchange.CREATE_CHILD_SA]
    assert any(_is_frag(r) for r in ccs) and all(r[:8] == new_spi for r in ccs)
