"""Certificate chain validation, revocation, ID binding, CERT/CERTREQ data (RFC 7296 §3.6-3.7).

A test PKI made with `cryptography` (root, intermediate, ECDSA/Ed25519/RSA leaves) covers each refusal
with its exact reason; a second PKI made by strongSwan's `pki` checks we accept what a real IKE
implementation issues, and that our CERTREQ hash is strongSwan's "keyid" of the CA.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from hypothesis import given, settings
from hypothesis import strategies as st
from meshsec.agent.ike import auth, certs
from meshsec.agent.ike.certs import CertificateError, RevocationSet, TrustStore
from meshsec.agent.ike.identity import Identity

from . import pki_helpers as pk
from .pki_helpers import DAY, NOW


@dataclass
class Pki:
    root: x509.Certificate
    inter: x509.Certificate
    trust: TrustStore

    def leaf(self, kind: str = "ec", via_intermediate: bool = True, **kw) -> x509.Certificate:  # type: ignore[no-untyped-def]
        kw.setdefault("dns", ["node-a.mesh"])
        kw.setdefault("ips", ["198.18.0.1"])
        issuer, issuer_key = (
            (self.inter, pk.key("ec", 11)) if via_intermediate else (self.root, pk.key("ec", 10))
        )
        return pk.issue(pk.cn(kw.pop("common", "node-a")), pk.key(kind), issuer, issuer_key, **kw)


@pytest.fixture
def pki() -> Pki:
    root = pk.issue(pk.cn("meshsec CA"), pk.key("ec", 10), ca=True)
    inter = pk.issue(pk.cn("meshsec intermediate"), pk.key("ec", 11), root, pk.key("ec", 10), ca=True)
    return Pki(root, inter, TrustStore((root,)))


NODE_A = "'CN=node-a, O=meshsec'"
MESH_CA = "'CN=meshsec CA, O=meshsec'"
INTER = "'CN=meshsec intermediate, O=meshsec'"


def _refused(reason: str, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CertificateError) as info:
        certs.validate_chain(*args, **kwargs)
    assert info.value.reason == reason, info.value.reason


# ------------------------------------------------------------------------------------ accepted


@pytest.mark.parametrize("kind", ["ec", "ed25519", "rsa"])
def test_leaf_via_intermediate_validates(pki: Pki, kind: str) -> None:
    leaf = pki.leaf(kind)
    chain = certs.validate_chain(leaf, [pki.inter], pki.trust, NOW)
    assert chain.leaf == leaf and chain.intermediates == (pki.inter,) and chain.anchor == pki.root
    assert chain.public_key() == leaf.public_key()


def test_leaf_directly_under_root_and_extra_certs_ignored(pki: Pki) -> None:
    leaf = pki.leaf(via_intermediate=False)
    unrelated = pk.issue(pk.cn("unrelated"), pk.key("ec", 3), ca=True)
    chain = certs.validate_chain(leaf, [unrelated, pki.inter, leaf], pki.trust, NOW)
    assert chain.intermediates == () and chain.anchor == pki.root


def test_now_as_posix_seconds_and_naive_datetime(pki: Pki) -> None:
    leaf = pki.leaf()
    certs.validate_chain(leaf, [pki.inter], pki.trust, NOW.timestamp())
    certs.validate_chain(leaf, [pki.inter], pki.trust, NOW.replace(tzinfo=None))


def test_ed25519_ca_and_rsa_pss_signed_certificates(pki: Pki) -> None:
    ed_root = pk.issue(pk.cn("ed CA"), pk.key("ed25519", 20), ca=True)
    ed_leaf = pk.issue(pk.cn("e"), pk.key("ec"), ed_root, pk.key("ed25519", 20))
    certs.validate_chain(ed_leaf, [], TrustStore((ed_root,)), NOW)
    rsa_root = pk.issue(pk.cn("rsa CA"), pk.key("rsa", 20), ca=True, pss=True)
    rsa_leaf = pk.issue(pk.cn("r"), pk.key("ed25519"), rsa_root, pk.key("rsa", 20), pss=True)
    certs.validate_chain(rsa_leaf, [], TrustStore((rsa_root,)), NOW)


def test_ca_rollover_two_cas_with_the_same_name(pki: Pki) -> None:
    """Old and new CA share the subject name but not the key; both are trusted during the overlap."""
    old_root = pki.root
    new_root = pk.issue(pk.cn("meshsec CA"), pk.key("ec", 12), ca=True)
    old_leaf = pki.leaf(via_intermediate=False)
    new_leaf = pk.issue(pk.cn("node-a"), pk.key("ec"), new_root, pk.key("ec", 12), dns=["node-a.mesh"])
    both = TrustStore((new_root, old_root))
    assert certs.validate_chain(old_leaf, [], both, NOW).anchor == old_root
    assert certs.validate_chain(new_leaf, [], both, NOW).anchor == new_root
    _refused(
        f"signature of {NODE_A} does not verify with any issuer named {MESH_CA}",
        old_leaf, [], TrustStore((new_root,)), NOW,
    )  # fmt: skip
    # CERTREQ names both CAs; each credential is matched by its own CA
    _, data = both.certreq()
    hashes_ = certs.parse_certreq(4, data)
    assert certs.certreq_matches(hashes_, [old_root]) and certs.certreq_matches(hashes_, [new_root])
    assert not certs.certreq_matches(certs.parse_certreq(*TrustStore((new_root,)).certreq()), [old_root])


# ------------------------------------------------------------------------------------- refused


def test_expired_and_not_yet_valid(pki: Pki) -> None:
    expired = pki.leaf(not_before=NOW - 60 * DAY, not_after=NOW - DAY)
    _refused(
        f"certificate {NODE_A} expired at 2026-05-31T12:00:00Z",
        expired,
        [pki.inter],
        pki.trust,
        NOW,
    )
    early = pki.leaf(not_before=NOW + DAY)
    _refused(
        f"certificate {NODE_A} not valid before 2026-06-02T12:00:00Z", early, [pki.inter], pki.trust, NOW
    )  # fmt: skip


def test_expired_intermediate_and_expired_ca(pki: Pki) -> None:
    leaf = pki.leaf()
    old_inter = pk.issue(
        pk.cn("meshsec intermediate"), pk.key("ec", 11), pki.root, pk.key("ec", 10), ca=True,
        not_before=NOW - 90 * DAY, not_after=NOW - 2 * DAY,
    )  # fmt: skip
    _refused(
        "certificate 'CN=meshsec intermediate, O=meshsec' expired at 2026-05-30T12:00:00Z",
        leaf, [old_inter], pki.trust, NOW,
    )  # fmt: skip
    short_root = pk.issue(pk.cn("meshsec CA"), pk.key("ec", 10), ca=True, not_after=NOW + 5 * DAY)
    _refused(
        f"trusted CA {MESH_CA} expired at 2026-06-06T12:00:00Z",
        pki.leaf(via_intermediate=False), [], TrustStore((short_root,)), NOW + 10 * DAY,
    )  # fmt: skip


def test_issuer_not_trusted(pki: Pki) -> None:
    other_root = pk.issue(pk.cn("evil CA"), pk.key("ec", 30), ca=True)
    leaf = pk.issue(pk.cn("node-a"), pk.key("ec"), other_root, pk.key("ec", 30))
    _refused("issuer 'CN=evil CA, O=meshsec' of 'CN=node-a, O=meshsec' not trusted", leaf, [], pki.trust, NOW)
    # sending the untrusted root along does not help
    _refused(
        "issuer 'CN=evil CA, O=meshsec' of 'CN=evil CA, O=meshsec' not trusted",
        leaf, [other_root], pki.trust, NOW,
    )  # fmt: skip


def test_missing_intermediate(pki: Pki) -> None:
    _refused(
        "issuer 'CN=meshsec intermediate, O=meshsec' of 'CN=node-a, O=meshsec' not trusted",
        pki.leaf(), [], pki.trust, NOW,
    )  # fmt: skip


def test_forged_issuer_name(pki: Pki) -> None:
    """Same issuer name as the trusted CA, different key: the signature check catches it."""
    fake_root = pk.issue(pk.cn("meshsec CA"), pk.key("ec", 31), ca=True)
    leaf = pk.issue(pk.cn("node-a"), pk.key("ec"), fake_root, pk.key("ec", 31))
    forged = f"signature of {NODE_A} does not verify with any issuer named {MESH_CA}"
    _refused(forged, leaf, [], pki.trust, NOW)
    # sending the fake root along only moves the failure up one step
    forged_root = f"signature of {MESH_CA} does not verify with any issuer named {MESH_CA}"
    _refused(forged_root, leaf, [fake_root], pki.trust, NOW)


def test_revoked_by_serial_and_by_fingerprint(pki: Pki) -> None:
    leaf = pki.leaf(serial=0x1234)
    reason = "certificate 'CN=node-a, O=meshsec' (serial 0x1234) revoked"
    _refused(reason, leaf, [pki.inter], pki.trust, NOW, RevocationSet.of(serials=["12:34"]))
    _refused(reason, leaf, [pki.inter], pki.trust, NOW, RevocationSet.of(serials=[0x1234]))
    fp = certs.fingerprint_sha256(leaf)
    _refused(reason, leaf, [pki.inter], pki.trust, NOW, RevocationSet.of(fingerprints=[fp.hex(":")]))
    certs.validate_chain(leaf, [pki.inter], pki.trust, NOW, RevocationSet.of(serials=[0x1235]))


def test_revoked_intermediate_and_revoked_ca(pki: Pki) -> None:
    leaf = pki.leaf()
    revoked = RevocationSet.of(serials=[pki.inter.serial_number])
    with pytest.raises(CertificateError, match=r"'CN=meshsec intermediate, O=meshsec' .* revoked"):
        certs.validate_chain(leaf, [pki.inter], pki.trust, NOW, revoked)
    ca_fp = RevocationSet.of(fingerprints=[certs.fingerprint_sha256(pki.root)])
    with pytest.raises(CertificateError, match=r"'CN=meshsec CA, O=meshsec' .* revoked"):
        certs.validate_chain(leaf, [pki.inter], pki.trust, NOW, ca_fp)
    # a CA's serial alone does not revoke the trust anchor (serials are scoped to issued certs)
    certs.validate_chain(
        leaf, [pki.inter], pki.trust, NOW, RevocationSet.of(serials=[pki.root.serial_number])
    )


def test_bad_revocation_entries() -> None:
    with pytest.raises(CertificateError, match="bad revocation entry"):
        RevocationSet.of(serials=["zz"])
    with pytest.raises(CertificateError, match="SHA-256"):
        RevocationSet.of(fingerprints=["00ff"])


def test_ca_constraints(pki: Pki) -> None:
    root_key, inter_key = pk.key("ec", 10), pk.key("ec", 11)
    not_ca = pk.issue(pk.cn("meshsec intermediate"), inter_key, pki.root, root_key, key_usage="ca")
    _refused(
        f"issuer {INTER} is not a CA (basicConstraints)", pki.leaf(), [not_ca], pki.trust, NOW
    )  # fmt: skip
    no_bc = pk.issue(pk.cn("meshsec intermediate"), inter_key, pki.root, root_key, basic_constraints=False)
    _refused(
        f"issuer {INTER} is not a CA (basicConstraints)", pki.leaf(), [no_bc], pki.trust, NOW
    )  # fmt: skip
    no_certsign = pk.issue(
        pk.cn("meshsec intermediate"), inter_key, pki.root, root_key, ca=True, key_usage="ee"
    )
    _refused(
        "intermediate 'CN=meshsec intermediate, O=meshsec' key usage does not allow keyCertSign",
        pki.leaf(), [no_certsign], pki.trust, NOW,
    )  # fmt: skip


def test_path_length_constraint(pki: Pki) -> None:
    root0 = pk.issue(pk.cn("meshsec CA"), pk.key("ec", 10), ca=True, path_length=0)
    inter = pk.issue(pk.cn("meshsec intermediate"), pk.key("ec", 11), root0, pk.key("ec", 10), ca=True)
    _refused(
        "trusted CA 'CN=meshsec CA, O=meshsec' path length constraint 0 exceeded (1 below it)",
        pki.leaf(), [inter], TrustStore((root0,)), NOW,
    )  # fmt: skip
    certs.validate_chain(pki.leaf(via_intermediate=False), [], TrustStore((root0,)), NOW)


def test_chain_too_long() -> None:
    keys = [pk.key("ec", 40 + i) for i in range(7)]
    chain = [pk.issue(pk.cn("ca0"), keys[0], ca=True)]
    for i in range(1, 7):
        chain.append(pk.issue(pk.cn(f"ca{i}"), keys[i], chain[-1], keys[i - 1], ca=True))
    leaf = pk.issue(pk.cn("leaf"), pk.key("ec"), chain[-1], keys[6])
    _refused("chain longer than 4 intermediate certificates", leaf, chain[1:], TrustStore((chain[0],)), NOW)
    certs.validate_chain(leaf, chain[1:], TrustStore((chain[0],)), NOW, max_intermediates=6)


def test_leaf_constraints(pki: Pki) -> None:
    _refused(
        "end-entity certificate 'CN=node-a, O=meshsec' is a CA certificate",
        pki.leaf(ca=True), [pki.inter], pki.trust, NOW,
    )  # fmt: skip
    _refused(
        "certificate 'CN=node-a, O=meshsec' key usage does not allow digitalSignature",
        pki.leaf(key_usage="encipher"), [pki.inter], pki.trust, NOW,
    )  # fmt: skip
    certs.validate_chain(pki.leaf(key_usage=None), [pki.inter], pki.trust, NOW)  # no keyUsage at all: fine


def test_unknown_critical_extension_and_name_constraints(pki: Pki) -> None:
    odd = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    _refused(
        "certificate 'CN=node-a, O=meshsec' has unsupported critical extension 1.3.6.1.4.1.55555.1",
        pki.leaf(extra=[(odd, True)]), [pki.inter], pki.trust, NOW,
    )  # fmt: skip
    certs.validate_chain(pki.leaf(extra=[(odd, False)]), [pki.inter], pki.trust, NOW)
    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("mesh")], excluded_subtrees=None)
    inter = pk.issue(
        pk.cn("meshsec intermediate"),
        pk.key("ec", 11),
        pki.root,
        pk.key("ec", 10),
        ca=True,
        extra=[(nc, True)],
    )
    with pytest.raises(CertificateError, match="nameConstraints, which are not supported"):
        certs.validate_chain(pki.leaf(), [inter], pki.trust, NOW)


def test_small_rsa_key(pki: Pki) -> None:
    small = pki.leaf("rsa1024")
    _refused(
        f"certificate {NODE_A} has a 1024-bit RSA key (< 2048)",
        small,
        [pki.inter],
        pki.trust,
        NOW,
    )


def test_trust_store_refuses_non_ca_and_empty(pki: Pki) -> None:
    with pytest.raises(CertificateError, match="no trusted CA"):
        TrustStore(())
    with pytest.raises(CertificateError, match="'CN=node-a, O=meshsec' is not a CA"):
        TrustStore((pki.leaf(),))
    store = TrustStore.from_pem(pk.pem(pki.root, pki.inter))
    assert store.is_anchor(pki.inter) and store.is_anchor(pki.root)


# --------------------------------------------------------------------------------- ID binding


def test_verify_peer_binds_identity(pki: Pki) -> None:
    leaf = pki.leaf()
    certs.verify_peer(leaf, [pki.inter], pki.trust, NOW, Identity.parse("fqdn:node-a.mesh"))
    certs.verify_peer(leaf, [pki.inter], pki.trust, NOW, Identity.parse("198.18.0.1"))
    certs.verify_peer(leaf, [pki.inter], pki.trust, NOW, Identity.parse("CN=node-a, O=meshsec"))
    with pytest.raises(CertificateError) as info:
        certs.verify_peer(leaf, [pki.inter], pki.trust, NOW, Identity.parse("fqdn:x.mesh"))
    assert info.value.reason == "ID fqdn:x.mesh not in certificate SAN of 'CN=node-a, O=meshsec'"
    with pytest.raises(CertificateError, match=r"ID dn:CN=node-b, O=meshsec not in certificate subject"):
        certs.require_identity(leaf, Identity.parse("CN=node-b, O=meshsec"))


def test_full_certificate_authentication_flow(pki: Pki) -> None:
    """What the engine does in IKE_AUTH: CERT payloads -> chain -> ID -> AUTH signature."""
    signer = pk.key("ed25519", 5)
    leaf = pk.issue(pk.cn("node-b"), signer, pki.inter, pk.key("ec", 11), dns=["node-b.mesh"])
    payloads = [certs.cert_payload(leaf), certs.cert_payload(pki.inter)]  # as (encoding, data)
    got_leaf, helpers = certs.chain_from_cert_payloads(payloads)
    chain = certs.verify_peer(got_leaf, helpers, pki.trust, NOW, Identity.parse("fqdn:node-b.mesh"))
    octets = b"signed octets"
    data = auth.sign_auth(signer, octets, auth.choose_scheme(signer, [2, 5]))
    assert auth.verify_signature_auth(chain.public_key(), octets, data) == auth.ED25519  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- CERT / CERTREQ


def test_cert_payload_round_trip_and_errors(pki: Pki) -> None:
    enc, data = certs.cert_payload(pki.root)
    assert enc == 4 and certs.certificate_from_payload(enc, data) == pki.root
    with pytest.raises(CertificateError, match="unsupported certificate encoding 12"):
        certs.certificate_from_payload(12, data)  # Hash and URL of X.509 certificate
    with pytest.raises(CertificateError, match="cannot parse DER certificate"):
        certs.certificate_from_payload(4, data[:-10])
    with pytest.raises(CertificateError, match="too large"):
        certs.certificate_from_payload(4, b"\x30" * 20000)
    with pytest.raises(CertificateError, match="cannot parse PEM"):
        certs.load_pem_certificates(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_certreq_build_parse(pki: Pki) -> None:
    other = pk.issue(pk.cn("other CA"), pk.key("ed25519", 9), ca=True)
    enc, data = certs.certreq_payload([pki.root, other])
    assert enc == 4 and len(data) == 40
    assert certs.parse_certreq(enc, data) == (certs.spki_sha1(pki.root), certs.spki_sha1(other))
    assert certs.parse_certreq(4, b"") == ()
    with pytest.raises(CertificateError, match="not a multiple of 20"):
        certs.parse_certreq(4, data[:-1])
    with pytest.raises(CertificateError, match="unsupported CERTREQ encoding"):
        certs.parse_certreq(12, data)
    assert certs.certreq_matches(certs.parse_certreq(enc, data), [pki.inter, pki.root])
    assert not certs.certreq_matches(certs.parse_certreq(enc, data), [pki.inter])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=200))
def test_property_payload_parsers_raise_only_certificate_error(encoding: int, data: bytes) -> None:
    for parse in (certs.certificate_from_payload, certs.parse_certreq):
        with contextlib.suppress(CertificateError):
            parse(encoding, data)


# ------------------------------------------------------------------ interop: strongSwan's pki


def _swan_pki(tmp_path: Path) -> dict[str, x509.Certificate]:
    """CA (ECDSA), intermediate (RSA-PSS) and leaves (Ed25519, ECDSA) issued by strongSwan's pki."""

    def gen(name: str, *args: str) -> Path:
        path = tmp_path / f"{name}.key"
        path.write_bytes(pk.strongswan_pki("--gen", *args, "--outform", "pem"))
        return path

    def out(name: str, data: bytes) -> Path:
        path = tmp_path / f"{name}.crt"
        path.write_bytes(data)
        return path

    ca_key = gen("ca", "--type", "ecdsa", "--size", "384")
    ca = out("ca", pk.strongswan_pki(
        "--self", "--ca", "--in", ca_key, "--type", "ecdsa", "--dn", "C=CH, O=meshsec, CN=swan CA",
        "--lifetime", "30", "--outform", "pem",
    ))  # fmt: skip
    sub_key = gen("sub", "--type", "rsa", "--size", "2048")
    sub_pub = tmp_path / "sub.pub"
    sub_pub.write_bytes(pk.strongswan_pki("--pub", "--in", sub_key, "--type", "priv", "--outform", "pem"))
    sub = out("sub", pk.strongswan_pki(
        "--issue", "--cacert", ca, "--cakey", ca_key, "--in", sub_pub, "--type", "pub", "--ca",
        "--dn", "C=CH, O=meshsec, CN=swan sub CA", "--lifetime", "20", "--outform", "pem",
    ))  # fmt: skip
    result = {"ca": ca, "sub": sub}
    for kind, args in (("ed", ["--type", "ed25519"]), ("ec", ["--type", "ecdsa", "--size", "256"])):
        key = gen(kind, *args)
        pub = tmp_path / f"{kind}.pub"
        pub.write_bytes(pk.strongswan_pki("--pub", "--in", key, "--type", "priv", "--outform", "pem"))
        result[kind] = out(kind, pk.strongswan_pki(
            "--issue", "--cacert", sub, "--cakey", sub_key, "--rsa-padding", "pss",
            "--in", pub, "--type", "pub",
            "--dn", f"C=CH, O=meshsec, CN={kind}.mesh", "--san", f"{kind}.mesh", "--san", "198.18.0.9",
            "--flag", "serverAuth", "--lifetime", "10", "--outform", "pem",
        ))  # fmt: skip
    return {k: x509.load_pem_x509_certificate(v.read_bytes()) for k, v in result.items()}


def test_strongswan_issued_chain_is_accepted(tmp_path: Path) -> None:
    swan = _swan_pki(tmp_path)
    trust = TrustStore((swan["ca"],))
    assert swan["ed"].signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.10"  # RSASSA-PSS
    at = swan["ed"].not_valid_before_utc + dt.timedelta(hours=1)
    for kind in ("ed", "ec"):
        leaf = swan[kind]
        chain = certs.verify_peer(leaf, [swan["sub"]], trust, at, Identity.parse(f"fqdn:{kind}.mesh"))
        assert chain.anchor == swan["ca"]
        certs.require_identity(leaf, Identity.parse("198.18.0.9"))
        certs.require_identity(leaf, Identity.parse(f"C=CH, O=meshsec, CN={kind}.mesh"))
    with pytest.raises(CertificateError, match="expired at"):
        certs.validate_chain(swan["ed"], [swan["sub"]], trust, at + dt.timedelta(days=11))
    revoked = RevocationSet.of(serials=[swan["ec"].serial_number])
    with pytest.raises(CertificateError, match="revoked"):
        certs.validate_chain(swan["ec"], [swan["sub"]], trust, at, revoked)


def test_certreq_hash_is_strongswan_keyid(tmp_path: Path, pki: Pki) -> None:
    """RFC 7296 §3.7: SHA-1 of the CA's SubjectPublicKeyInfo == what strongSwan calls the keyid."""
    crt = tmp_path / "ca.pem"
    crt.write_bytes(pk.pem(pki.root))
    text = pk.strongswan_pki("--keyid", "--type", "x509", "--in", crt).decode()
    match = re.search(r"keyid \(SHA-1 of subjectPublicKeyInfo\):\s*([0-9a-f:]+)", text)
    assert match, text
    assert certs.spki_sha1(pki.root).hex(":") == match.group(1)


def test_sha1_signed_certificate_is_refused(tmp_path: Path) -> None:
    """cryptography no longer signs with SHA-1, so strongSwan's pki makes the certificate."""
    ca_key, leaf_key, leaf_pub = tmp_path / "ca.key", tmp_path / "leaf.key", tmp_path / "leaf.pub"
    ca_key.write_bytes(pk.strongswan_pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
    ca_crt = tmp_path / "ca.crt"
    ca_crt.write_bytes(pk.strongswan_pki(
        "--self", "--ca", "--in", ca_key, "--type", "ecdsa", "--dn", "CN=old CA", "--outform", "pem"
    ))  # fmt: skip
    leaf_key.write_bytes(pk.strongswan_pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
    leaf_pub.write_bytes(pk.strongswan_pki("--pub", "--in", leaf_key, "--type", "priv", "--outform", "pem"))
    leaf = x509.load_pem_x509_certificate(pk.strongswan_pki(
        "--issue", "--cacert", ca_crt, "--cakey", ca_key, "--in", leaf_pub, "--type", "pub",
        "--dn", "CN=sha1", "--digest", "sha1", "--outform", "pem",
    ))  # fmt: skip
    trust = TrustStore((x509.load_pem_x509_certificate(ca_crt.read_bytes()),))
    at = leaf.not_valid_before_utc + dt.timedelta(hours=1)
    _refused("certificate 'CN=sha1' is signed with SHA1", leaf, [], trust, at)


_FUZZ_PKI: dict[str, x509.Certificate] = {}


def _fuzz_pki() -> dict[str, x509.Certificate]:
    if not _FUZZ_PKI:
        root = pk.issue(pk.cn("meshsec CA"), pk.key("ec", 10), ca=True)
        inter = pk.issue(pk.cn("meshsec intermediate"), pk.key("ec", 11), root, pk.key("ec", 10), ca=True)
        leaf = pk.issue(
            pk.cn("node-a"),
            pk.key("ed25519"),
            inter,
            pk.key("ec", 11),
            dns=["node-a.mesh"],
            ips=["198.18.0.1"],
        )
        _FUZZ_PKI.update(root=root, inter=inter, leaf=leaf)
    return _FUZZ_PKI


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_property_mutated_chain_raises_only_certificate_error(data: st.DataObject) -> None:
    """Flip bytes anywhere in the leaf or the intermediate: validation either passes or refuses cleanly."""
    fuzz = _fuzz_pki()
    which = data.draw(st.sampled_from(["leaf", "inter"]))
    der = bytearray(certs.cert_payload(fuzz[which])[1])
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(der) - 1))
        der[pos] ^= data.draw(st.integers(1, 255))
    try:
        mutated = certs.certificate_from_payload(4, bytes(der))
        leaf, inter = (mutated, fuzz["inter"]) if which == "leaf" else (fuzz["leaf"], mutated)
        certs.verify_peer(leaf, [inter], TrustStore((fuzz["root"],)), NOW, Identity.parse("fqdn:node-a.mesh"))
    except CertificateError:
        pass


@pytest.mark.parametrize(
    ("find", "replace", "message"),
    [
        ("a003020102", "a003020103", "not a valid X509 version"),  # version v4 (found by the fuzz test)
        ("0603551d0f", "0603551d0e", "Duplicate 2.5.29.14 extension"),  # keyUsage OID -> a 2nd SKI
    ],
)
def test_malformed_certificate_regressions(find: str, replace: str, message: str) -> None:
    der = certs.cert_payload(_fuzz_pki()["leaf"])[1]
    assert bytes.fromhex(find) in der
    with pytest.raises(CertificateError, match=message):
        certs.certificate_from_payload(4, der.replace(bytes.fromhex(find), bytes.fromhex(replace), 1))


def test_chain_from_cert_payloads(pki: Pki) -> None:
    leaf = pki.leaf()
    items = [certs.cert_payload(leaf), (12, b"http://x/y"), certs.cert_payload(pki.inter)]
    got_leaf, rest = certs.chain_from_cert_payloads(items)
    assert got_leaf == leaf and rest == (pki.inter,)  # the Hash-and-URL helper (12) is skipped
    with pytest.raises(CertificateError, match="no CERT payload"):
        certs.chain_from_cert_payloads([])
    with pytest.raises(CertificateError, match="unsupported certificate encoding 12"):
        certs.chain_from_cert_payloads([(12, b"http://x/y")])
