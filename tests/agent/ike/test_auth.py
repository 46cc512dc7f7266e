"""AUTH data: shared key MIC (RFC 7296 §2.15) and Digital Signature auth (RFC 7427, RFC 8420).

Known answers for the AlgorithmIdentifiers, the PSK MIC recomputed with the standard library, and
signatures cross-checked both ways with OpenSSL on keys made by strongSwan's `pki`.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from meshsec.agent.ike import auth
from meshsec.agent.ike.auth import (
    DEFAULT_ALLOWED_SCHEMES,
    ECDSA_SHA256,
    ECDSA_SHA384,
    ECDSA_SHA512,
    ED25519,
    RSA_PKCS1_SHA256,
    RSA_PSS_SHA256,
    AuthError,
    HashAlgorithm,
)
from meshsec.agent.ike.constants import Prf

from . import pki_helpers as pk


def _rfc_hex(dump: str) -> bytes:
    """Parse an RFC 7427 Appendix A style hex dump ('0000: 300a 0608 ...')."""
    out = []
    for line in dump.strip().splitlines():
        out.append("".join(line.split(":", 1)[1].split()))
    return bytes.fromhex("".join(out))


# ------------------------------------------------------------------- RFC 7427 Appendix A (KAT)

# source: RFC 7427 Appendix A.3.3, A.3.4, A.3.5, A.4.3, A.1.2; RFC 8420 §2 (id-Ed25519, no params)
RFC7427_ALGORITHM_IDENTIFIERS = {
    "ecdsa-with-sha256": (ECDSA_SHA256, "0000: 300a 0608 2a86 48ce 3d04 0302"),
    "ecdsa-with-sha384": (ECDSA_SHA384, "0000: 300a 0608 2a86 48ce 3d04 0303"),
    "ecdsa-with-sha512": (ECDSA_SHA512, "0000: 300a 0608 2a86 48ce 3d04 0304"),
    "sha256WithRSAEncryption": (RSA_PKCS1_SHA256, "0000: 300d 0609 2a86 4886 f70d 0101 0b05 00"),
    "RSASSA-PSS with SHA-256": (
        RSA_PSS_SHA256,
        """
        0000: 3041 0609 2a86 4886 f70d 0101 0a30 34a0
        0010: 0f30 0d06 0960 8648 0165 0304 0201 0500
        0020: a11c 301a 0609 2a86 4886 f70d 0101 0830
        0030: 0d06 0960 8648 0165 0304 0201 0500 a203
        0040: 0201 20
        """,
    ),
    "id-Ed25519 (RFC 8420)": (ED25519, "0000: 3005 0603 2b65 70"),
}


@pytest.mark.parametrize("label", sorted(RFC7427_ALGORITHM_IDENTIFIERS))
def test_algorithm_identifier_known_answers(label: str) -> None:
    scheme, dump = RFC7427_ALGORITHM_IDENTIFIERS[label]
    assert scheme.algorithm_identifier == _rfc_hex(dump)


def test_pss_algorithm_identifier_matches_openssl_structure(tmp_path: Path) -> None:
    """Independent parse of the PSS blob: openssl asn1parse sees sha256/mgf1-sha256/salt 32."""
    blob = tmp_path / "alg.der"
    blob.write_bytes(RSA_PSS_SHA256.algorithm_identifier)
    text = pk.run("openssl", "asn1parse", "-inform", "DER", "-in", blob).decode()
    assert "rsassaPss" in text and "mgf1" in text
    assert text.count(":sha256") == 2
    assert "INTEGER           :20" in text


def test_hash_algorithm_registry_values() -> None:
    # RFC 7427 §7 and RFC 8420 §2
    assert [int(h) for h in HashAlgorithm] == [1, 2, 3, 4, 5]


# -------------------------------------------------------------------------------- shared key MIC


def test_psk_auth_matches_rfc7296_formula_computed_with_stdlib() -> None:
    psk, octets = b"correct horse battery staple", b"message|nonce|maced-id"
    inner = hmac.new(psk, b"Key Pad for IKEv2", hashlib.sha256).digest()
    expected = hmac.new(inner, octets, hashlib.sha256).digest()
    assert auth.psk_auth("sha256", psk, octets) == expected
    assert auth.psk_auth(Prf.HMAC_SHA2_256, psk, octets) == expected
    assert auth.psk_auth(lambda k, d: hmac.new(k, d, hashlib.sha256).digest(), psk, octets) == expected
    inner512 = hmac.new(psk, b"Key Pad for IKEv2", hashlib.sha512).digest()
    assert (
        auth.psk_auth(Prf.HMAC_SHA2_512, psk, octets) == hmac.new(inner512, octets, hashlib.sha512).digest()
    )


def test_verify_psk_auth_accepts_and_refuses() -> None:
    mic = auth.psk_auth("sha384", b"k", b"octets")
    auth.verify_psk_auth("sha384", b"k", b"octets", mic)
    with pytest.raises(AuthError, match="shared key MIC mismatch"):
        auth.verify_psk_auth("sha384", b"other", b"octets", mic)
    with pytest.raises(AuthError, match="shared key MIC mismatch"):
        auth.verify_psk_auth("sha384", b"k", b"octets", mic[:-1])
    with pytest.raises(AuthError, match="empty pre-shared key"):
        auth.psk_auth("sha384", b"", b"octets")
    with pytest.raises(AuthError, match="unsupported PRF"):
        auth.psk_auth(99, b"k", b"octets")


def test_verify_psk_auth_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    with pytest.raises(AuthError):
        auth.verify_psk_auth("sha256", b"k", b"o", b"\x00" * 32)
    assert len(calls) == 1


def test_signed_octets_layout() -> None:
    id_body = b"\x02\x00\x00\x00node-a.mesh"
    sk_pi = b"\x11" * 32
    got = auth.signed_octets(b"MSG", b"NONCE", "sha256", sk_pi, id_body)
    assert got == b"MSGNONCE" + hmac.new(sk_pi, id_body, hashlib.sha256).digest()


# ----------------------------------------------------------------------------- signatures (ours)

OCTETS = b"RealMessage1 | NonceRData | MACedIDForI" * 3


@pytest.mark.parametrize(
    ("kind", "scheme"),
    [
        ("ec", ECDSA_SHA256),
        ("ec384", ECDSA_SHA384),
        ("ed25519", ED25519),
        ("rsa", RSA_PSS_SHA256),
    ],
)
def test_sign_verify_round_trip(kind: str, scheme: auth.SignatureScheme) -> None:
    key = pk.key(kind)
    data = auth.sign_auth(key, OCTETS, scheme)
    alg = scheme.algorithm_identifier
    assert data[0] == len(alg) and data[1 : 1 + len(alg)] == alg
    assert auth.verify_signature_auth(key.public_key(), OCTETS, data) == scheme
    with pytest.raises(AuthError, match="does not verify"):
        auth.verify_signature_auth(key.public_key(), OCTETS + b"x", data)
    other = pk.key(kind, 1)
    with pytest.raises(AuthError, match="does not verify"):
        auth.verify_signature_auth(other.public_key(), OCTETS, data)


def test_ecdsa_signature_value_is_der_per_rfc7427() -> None:
    key = pk.key("ec")
    data = auth.sign_auth(key, OCTETS, ECDSA_SHA256)
    sig = data[1 + len(ECDSA_SHA256.algorithm_identifier) :]
    assert sig[0] == 0x30  # SEQUENCE { r INTEGER, s INTEGER }, not the 64-octet r|s of methods 9-11
    r, s = decode_dss_signature(sig)
    assert r > 0 and s > 0


def test_disallowed_algorithm_identifier_is_refused() -> None:
    key = pk.key("rsa")
    data = auth.sign_auth(key, OCTETS, RSA_PKCS1_SHA256)
    with pytest.raises(AuthError, match="not allowed by local policy"):
        auth.verify_signature_auth(key.public_key(), OCTETS, data)
    # an operator can allow it explicitly for RSA-only gear
    allowed = DEFAULT_ALLOWED_SCHEMES | {RSA_PKCS1_SHA256}
    assert auth.verify_signature_auth(key.public_key(), OCTETS, data, allowed) == RSA_PKCS1_SHA256
    # and a local policy can narrow further
    ec_data = auth.sign_auth(pk.key("ec"), OCTETS, ECDSA_SHA256)
    with pytest.raises(AuthError, match="not allowed"):
        auth.verify_signature_auth(pk.key("ec").public_key(), OCTETS, ec_data, {ED25519})


def test_unknown_or_reencoded_algorithm_identifier_is_refused() -> None:
    key = pk.key("rsa")
    sig = key.sign(OCTETS, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20), hashes.SHA256())
    # RFC 7427 A.4.1 "RSASSA-PSS with empty parameters": a different AlgorithmIdentifier, not accepted
    alg = bytes.fromhex("300b06092a864886f70d01010a")
    with pytest.raises(AuthError, match="unknown signature AlgorithmIdentifier 300b06"):
        auth.verify_signature_auth(key.public_key(), OCTETS, bytes([len(alg)]) + alg + sig)


def test_key_type_mismatch_is_refused() -> None:
    data = auth.sign_auth(pk.key("ec"), OCTETS, ECDSA_SHA256)
    with pytest.raises(AuthError, match="holds a ed25519 key"):
        auth.verify_signature_auth(pk.key("ed25519").public_key(), OCTETS, data)
    with pytest.raises(AuthError, match="does not fit"):
        auth.sign_auth(pk.key("ed25519"), OCTETS, ECDSA_SHA256)


def test_signature_with_unannounced_hash_is_refused() -> None:
    key = pk.key("ec")
    data = auth.sign_auth(key, OCTETS, ECDSA_SHA512)
    assert auth.verify_signature_auth(key.public_key(), OCTETS, data, announced_hashes=[4]) == ECDSA_SHA512
    with pytest.raises(AuthError, match="did not announce"):
        auth.verify_signature_auth(key.public_key(), OCTETS, data, announced_hashes=[2, 3])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x00", "truncated"),
        (b"\x0c" + ECDSA_SHA256.algorithm_identifier, "truncated"),
        (b"\x40abc", "truncated"),
        (b"\x07" + ED25519.algorithm_identifier + b"\x00" * 3000, "too long"),
    ],
)
def test_malformed_signature_auth_data(data: bytes, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        auth.parse_signature_auth_data(data)


# ------------------------------------------------------------------ negotiation (RFC 7427 §4)


def test_signature_hash_algorithms_notify_known_answer() -> None:
    assert auth.build_signature_hash_algorithms() == bytes.fromhex("0004000300020005")
    assert auth.build_signature_hash_algorithms([2]) == b"\x00\x02"
    assert auth.parse_signature_hash_algorithms(bytes.fromhex("000200030004")) == (2, 3, 4)
    parsed = auth.parse_signature_hash_algorithms(bytes.fromhex("0002ff01"))
    assert parsed == (HashAlgorithm.SHA2_256, 0xFF01)  # unknown ids kept, never matched
    for bad in (b"", b"\x00", b"\x00\x02\x00"):
        with pytest.raises(AuthError, match="not a positive multiple of 2"):
            auth.parse_signature_hash_algorithms(bad)
    with pytest.raises(AuthError):
        auth.build_signature_hash_algorithms([])


@pytest.mark.parametrize(
    ("kind", "offered", "expected"),
    [
        ("ec", [1, 2, 3, 4], ECDSA_SHA256),  # P-256 pairs with SHA-256
        ("ec384", [2, 3, 4], ECDSA_SHA384),
        ("ec384", [2], ECDSA_SHA256),  # any offered hash is legal with any curve
        ("ec", [4], ECDSA_SHA512),
        ("ed25519", [2, 5], ED25519),
        ("rsa", [2, 3, 4], RSA_PSS_SHA256),
    ],
)
def test_choose_scheme(kind: str, offered: list[int], expected: auth.SignatureScheme) -> None:
    assert auth.choose_scheme(pk.key(kind), offered) == expected


def test_choose_scheme_refusals() -> None:
    with pytest.raises(AuthError, match="no SIGNATURE_HASH_ALGORITHMS"):
        auth.choose_scheme(pk.key("ec"), None)
    with pytest.raises(
        AuthError, match=r"no common signature hash for a ed25519 key \(peer offers: SHA2_256\)"
    ):
        auth.choose_scheme(pk.key("ed25519"), [2])
    with pytest.raises(AuthError, match="no common"):
        auth.choose_scheme(pk.key("rsa"), [1, 5])
    assert (
        auth.choose_scheme(pk.key("rsa"), [2], DEFAULT_ALLOWED_SCHEMES | {RSA_PKCS1_SHA256}) == RSA_PSS_SHA256
    )
    assert auth.choose_scheme(pk.key("rsa"), [2], {RSA_PKCS1_SHA256}) == RSA_PKCS1_SHA256


# ------------------------------------------------- interop: strongSwan pki keys, OpenSSL signatures


def _pki_key(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A private key made by strongSwan's pki and its public key (PEM files)."""
    args = {"ecdsa": ["--type", "ecdsa", "--size", "256"], "ed25519": ["--type", "ed25519"]}
    args["rsa"] = ["--type", "rsa", "--size", "2048"]
    keyf, pubf = tmp_path / f"{kind}.key", tmp_path / f"{kind}.pub"
    keyf.write_bytes(pk.strongswan_pki("--gen", *args[kind], "--outform", "pem"))
    pubf.write_bytes(pk.strongswan_pki("--pub", "--in", keyf, "--type", "priv", "--outform", "pem"))
    return keyf, pubf


_OPENSSL_SIGN = {
    "ecdsa": ["dgst", "-sha256", "-sign"],
    "rsa": [
        "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
        "-sigopt", "rsa_mgf1_md:sha256", "-sign",
    ],
}  # fmt: skip
_SCHEME = {"ecdsa": ECDSA_SHA256, "ed25519": ED25519, "rsa": RSA_PSS_SHA256}


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519", "rsa"])
def test_openssl_signature_verifies_in_our_code(tmp_path: Path, kind: str) -> None:
    keyf, pubf = _pki_key(tmp_path, kind)
    octets = tmp_path / "octets.bin"
    octets.write_bytes(OCTETS)
    if kind == "ed25519":
        sig = pk.run("openssl", "pkeyutl", "-sign", "-rawin", "-inkey", keyf, "-in", octets)
    else:
        sig = pk.run("openssl", *_OPENSSL_SIGN[kind], keyf, octets)
    scheme = _SCHEME[kind]
    data = bytes([len(scheme.algorithm_identifier)]) + scheme.algorithm_identifier + sig
    public = serialization.load_pem_public_key(pubf.read_bytes())
    assert auth.verify_signature_auth(public, OCTETS, data) == scheme  # type: ignore[arg-type]
    with pytest.raises(AuthError):
        auth.verify_signature_auth(public, OCTETS[:-1], data)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519", "rsa"])
def test_our_signature_verifies_in_openssl(tmp_path: Path, kind: str) -> None:
    keyf, pubf = _pki_key(tmp_path, kind)
    private = serialization.load_pem_private_key(keyf.read_bytes(), None)
    scheme = _SCHEME[kind]
    data = auth.sign_auth(private, OCTETS, scheme)  # type: ignore[arg-type]
    sigf, octets = tmp_path / "sig.bin", tmp_path / "octets.bin"
    sigf.write_bytes(data[1 + len(scheme.algorithm_identifier) :])
    octets.write_bytes(OCTETS)
    if kind == "ed25519":
        out = pk.run(
            "openssl",
            "pkeyutl",
            "-verify",
            "-rawin",
            "-pubin",
            "-inkey",
            pubf,
            "-in",
            octets,
            "-sigfile",
            sigf,
        )
    else:
        verify = [a if a != "-sign" else "-verify" for a in _OPENSSL_SIGN[kind]]
        out = pk.run("openssl", *verify, pubf, "-signature", sigf, octets)
    assert b"Verified" in out or b"Signature Verified Successfully" in out


# ---------------------------------------------------------------------------------- properties


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_property_auth_data_parser_raises_only_auth_error(data: bytes) -> None:
    key = pk.key("ec").public_key()
    try:
        auth.verify_signature_auth(key, OCTETS, data)
    except AuthError:
        return
    raise AssertionError("random bytes verified")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([ECDSA_SHA256, ED25519, RSA_PSS_SHA256]), st.binary(max_size=300))
def test_property_garbage_signature_under_known_alg_raises_only_auth_error(
    scheme: auth.SignatureScheme, sig: bytes
) -> None:
    key = {ECDSA_SHA256: "ec", ED25519: "ed25519", RSA_PSS_SHA256: "rsa"}[scheme]
    data = bytes([len(scheme.algorithm_identifier)]) + scheme.algorithm_identifier + sig
    with pytest.raises(AuthError):
        auth.verify_signature_auth(pk.key(key).public_key(), OCTETS, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_property_hash_notify_parser(data: bytes) -> None:
    try:
        parsed = auth.parse_signature_hash_algorithms(data)
    except AuthError:
        assert not data or len(data) % 2
        return
    assert auth.build_signature_hash_algorithms(parsed) == data


def test_ed25519_and_ec_keys_from_cryptography_types() -> None:
    assert isinstance(pk.key("ed25519"), ed25519.Ed25519PrivateKey)
    assert isinstance(pk.key("ec"), ec.EllipticCurvePrivateKey)


def test_rsa_pss_with_sha384_and_sha512_as_charon_signs_by_default() -> None:
    """charon (rsa_pss = yes) signs with RSASSA-PSS and the hash that fits the key, salt = hash length;
    the AlgorithmIdentifier is RFC 7427 A.4.3's with the hash OID and salt length changed."""
    a384 = auth.RSA_PSS_SHA384.algorithm_identifier.hex()
    assert a384.startswith("3041") and a384.endswith("a203020130")  # salt 48, as charon sends it
    assert a384.count("06096086480165030402020500") == 2  # sha384 in hashAlgorithm and in MGF1
    assert auth.RSA_PSS_SHA512.algorithm_identifier.hex().endswith("a203020140")
    small, big = pk.key("rsa"), rsa.generate_private_key(65537, 4096)
    assert auth.choose_scheme(small, [2, 3, 4]) == RSA_PSS_SHA256  # 2048 bits: SHA-256 fits
    assert auth.choose_scheme(big, [2, 3, 4]) == auth.RSA_PSS_SHA384  # 4096 bits: SHA-384, as charon
    assert auth.choose_scheme(small, [4]) == auth.RSA_PSS_SHA512  # only what the peer announced
    for scheme in (auth.RSA_PSS_SHA384, auth.RSA_PSS_SHA512):
        data = auth.sign_auth(small, b"signed octets", scheme)
        assert auth.verify_signature_auth(small.public_key(), b"signed octets", data) == scheme
        with pytest.raises(AuthError, match="does not verify"):
            auth.verify_signature_auth(small.public_key(), b"other octets", data)
    # a PSS signature whose salt differs from what the identifier says does not verify
    h = hashes.SHA384()
    bad = small.sign(b"m", padding.PSS(mgf=padding.MGF1(h), salt_length=32), h)
    alg = auth.RSA_PSS_SHA384.algorithm_identifier
    with pytest.raises(AuthError, match="does not verify"):
        auth.verify_signature_auth(small.public_key(), b"m", bytes([len(alg)]) + alg + bad)
