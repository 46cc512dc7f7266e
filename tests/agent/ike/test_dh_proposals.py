"""DH groups (RFC 3526/5903/8031 encodings, peer value validation) and proposal strings/selection."""

from __future__ import annotations

import pytest
from meshsec.agent.ike import dh
from meshsec.agent.ike.constants import Encr, Esn, Group, Integ, Prf, Proto, TransformType
from meshsec.agent.ike.payloads import Proposal, Transform
from meshsec.agent.ike.proposals import (
    ProposalError,
    check_answer,
    offer,
    parse_proposal,
    parse_proposals,
    select,
    suite,
)

P256_GENERATOR = bytes.fromhex(  # the P-256 base point G, x || y (SEC 2)
    "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
)


@pytest.mark.parametrize(("group", "size"), [(14, 256), (19, 64), (20, 96), (31, 32)])
def test_groups_agree_and_encode_per_rfc(group: int, size: int) -> None:
    a, b = dh.new(group), dh.new(group)
    assert len(a.public_bytes()) == size  # MODP padded to the modulus, ECP x||y without 0x04, X25519 raw
    s = a.shared_secret(b.public_bytes())
    assert s == b.shared_secret(a.public_bytes())
    assert len(s) == {14: 256, 19: 32, 20: 48, 31: 32}[group]  # ECP: x coordinate only (RFC 5903 §7)


def test_ecp_shared_secret_is_x_coordinate() -> None:
    a = dh.new(Group.ECP256)
    # with peer = G, the shared point is our public key itself: its x must come back
    assert a.shared_secret(P256_GENERATOR) == a.public_bytes()[:32]


@pytest.mark.parametrize(
    ("group", "bad"),
    [
        (14, bytes(256)),  # 0
        (14, (1).to_bytes(256, "big")),  # 1
        (14, (dh._MODP2048_P - 1).to_bytes(256, "big")),  # p - 1: order-2 subgroup
        (14, dh._MODP2048_P.to_bytes(256, "big")),  # >= p
        (14, bytes(255)),  # wrong length
        (19, bytes(64)),  # not on the curve
        (19, P256_GENERATOR[:32] + bytes(32)),  # x on curve, wrong y
        (19, b"\x04" + P256_GENERATOR),  # SEC1 prefix is not the IKE encoding
        (20, P256_GENERATOR + bytes(32)),  # P-256 point offered for P-384
        (31, bytes(32)),  # low-order point: all-zero shared secret (RFC 8031 §2.3)
        (31, bytes(31)),
    ],
)
def test_invalid_peer_values_are_refused(group: int, bad: bytes) -> None:
    with pytest.raises(dh.DhError):
        dh.new(group).shared_secret(bad)


def test_unsupported_group() -> None:
    with pytest.raises(dh.DhError, match="unsupported"):
        dh.new(2)


def test_parse_strongswan_style_strings() -> None:
    s = parse_proposal("aes256-sha256-modp2048")
    assert s.transforms[TransformType.ENCR] == (Transform(1, Encr.AES_CBC, 256),)
    assert s.transforms[TransformType.PRF] == (Transform(2, Prf.HMAC_SHA2_256),)  # prf from integ
    assert s.transforms[TransformType.INTEG] == (Transform(3, Integ.HMAC_SHA2_256_128),)
    assert s.dh_groups == (Group.MODP2048,)
    c = parse_proposal("chacha20poly1305-prfsha512-ecp256-x25519")
    assert TransformType.INTEG not in c.transforms and c.dh_groups == (19, 31)
    e = parse_proposal("aes128gcm16-esn-noesn", Proto.ESP)
    assert [t.id for t in e.transforms[TransformType.ESN]] == [Esn.YES, Esn.NO]
    assert parse_proposal("aes128gcm16", Proto.ESP).transforms[TransformType.ESN] == (Transform(5, Esn.NO),)


@pytest.mark.parametrize(
    ("text", "proto", "why"),
    [
        ("aes128gcm16-sha256-x25519", Proto.IKE, "AEAD encryption takes no integrity"),
        ("aes128-prfsha256-x25519", Proto.IKE, "needs an integrity"),
        ("aes128gcm16-x25519", Proto.IKE, "needs a prf"),
        ("aes128gcm16-prfsha256", Proto.IKE, "needs a DH group"),
        ("aes128gcm16-aes128-sha256-prfsha256-x25519", Proto.IKE, "mixes AEAD"),
        ("3des-sha1-modp1024", Proto.IKE, "unknown or misplaced algorithm '3des'"),
        ("aes128gcm16-prfsha256", Proto.ESP, "misplaced algorithm 'prfsha256'"),
        ("sha256-x25519", Proto.ESP, "no encryption"),
    ],
)
def test_bad_strings_say_why(text: str, proto: int, why: str) -> None:
    with pytest.raises(ProposalError, match=why):
        parse_proposal(text, proto)


def test_responder_choice_follows_initiator_order() -> None:
    theirs = offer(
        parse_proposals(["aes256gcm16-prfsha384-ecp384", "aes128gcm16-prfsha256-x25519-ecp256"]), b""
    )
    ours = parse_proposals(["aes128gcm16-prfsha256-ecp256-x25519", "aes256gcm16-prfsha384-ecp384"])
    chosen = select(theirs, ours, Proto.IKE, b"")
    assert chosen is not None and chosen.num == 1 and suite(chosen).dh_group == Group.ECP384
    chosen = select(theirs[1:], ours, Proto.IKE, b"")
    assert chosen is not None and suite(chosen).dh_group == Group.CURVE25519  # their first acceptable group
    assert select(theirs, parse_proposals(["aes256-sha512-modp2048"]), Proto.IKE, b"") is None
    unknown = Proposal(
        1, Proto.IKE, b"", (*theirs[0].transforms, Transform(1, 99, None, b"\x80\x99\x00\x01"))
    )
    assert select((unknown,), ours, Proto.IKE, b"")  # the known transform of that type still matches


def test_pfs_and_ignore_dh_in_ike_auth() -> None:
    theirs = offer(parse_proposals(["aes128gcm16"], Proto.ESP), b"\x01\x02\x03\x04")
    pfs = parse_proposals(["aes128gcm16-x25519"], Proto.ESP)
    assert select(theirs, pfs, Proto.ESP, b"abcd") is None  # we insist on PFS, they offer none
    assert select(theirs, pfs, Proto.ESP, b"abcd", ignore_dh=True) is not None  # IKE_AUTH: no KE there
    both = offer(parse_proposals(["aes128gcm16-x25519"], Proto.ESP), b"\x01\x02\x03\x04")
    assert select(both, parse_proposals(["aes128gcm16"], Proto.ESP), Proto.ESP, b"abcd") is None


def test_initiator_rejects_answers_it_did_not_offer() -> None:
    mine = offer(parse_proposals(["aes128gcm16-prfsha256-x25519"]), b"")
    good = Proposal(1, Proto.IKE, b"", mine[0].transforms)
    assert check_answer([good], mine) == good
    with pytest.raises(ProposalError, match="returned 2 proposals"):
        check_answer([good, good], mine)
    with pytest.raises(ProposalError, match="did not offer"):
        check_answer([Proposal(2, Proto.IKE, b"", good.transforms)], mine)
    swapped = tuple(Transform(4, 19) if t.type == 4 else t for t in good.transforms)
    with pytest.raises(ProposalError, match="type 4"):
        check_answer([Proposal(1, Proto.IKE, b"", swapped)], mine)
    with pytest.raises(ProposalError, match="omitted"):
        check_answer([Proposal(1, Proto.IKE, b"", good.transforms[:-1])], mine)
