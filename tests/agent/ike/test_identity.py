"""ID payloads (RFC 7296 §3.5): config spellings, wire encoding, remote-ID matching, certificate binding."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from meshsec.agent.ike.constants import IdType
from meshsec.agent.ike.identity import (
    Identity,
    IdentityError,
    IdentityPattern,
    certificate_vouches_for,
    decode_dn,
    identities_equal,
)

from . import pki_helpers as pk

# ------------------------------------------------------------------------------- parse / encode


@pytest.mark.parametrize(
    ("text", "id_type", "data_hex", "canonical"),
    [
        ("198.18.0.1", IdType.IPV4_ADDR, "c6120001", "198.18.0.1"),
        ("ipv4:198.18.0.1", IdType.IPV4_ADDR, "c6120001", "198.18.0.1"),
        ("fd00::1", IdType.IPV6_ADDR, "fd" + "00" * 14 + "01", "fd00::1"),
        ("ipv6:fd00:0::1", IdType.IPV6_ADDR, "fd" + "00" * 14 + "01", "fd00::1"),
        ("fqdn:node-a.mesh", IdType.FQDN, b"node-a.mesh".hex(), "fqdn:node-a.mesh"),
        ("node-a.mesh", IdType.FQDN, b"node-a.mesh".hex(), "fqdn:node-a.mesh"),
        ("fqdn:198.18.0.1", IdType.FQDN, b"198.18.0.1".hex(), "fqdn:198.18.0.1"),
        ("email:ops@mesh", IdType.RFC822_ADDR, b"ops@mesh".hex(), "email:ops@mesh"),
        ("ops@mesh", IdType.RFC822_ADDR, b"ops@mesh".hex(), "email:ops@mesh"),
        ("keyid:0a1b2c", IdType.KEY_ID, "0a1b2c", "keyid:0a1b2c"),
        ("keyid:#0A1B2C", IdType.KEY_ID, "0a1b2c", "keyid:0a1b2c"),
    ],
)
def test_parse_spellings(text: str, id_type: IdType, data_hex: str, canonical: str) -> None:
    ident = Identity.parse(text)
    assert ident.id_type == id_type
    assert ident.data.hex() == data_hex
    assert str(ident) == canonical
    assert Identity.parse(str(ident)) == ident


def test_payload_body_layout_known_answer() -> None:
    # ID Type 1, three RESERVED zero octets, then the address (RFC 7296 §3.5)
    assert Identity.parse("198.18.0.1").to_payload() == bytes.fromhex("01000000c6120001")
    assert Identity.parse("fqdn:a.mesh").to_payload() == b"\x02\x00\x00\x00a.mesh"


def test_received_reserved_octets_are_ignored() -> None:
    assert Identity.from_payload(b"\x02\xff\xff\xffa.mesh") == Identity.parse("fqdn:a.mesh")


def test_dn_string_is_in_encoding_order_like_strongswan() -> None:
    ident = Identity.parse("CN=node-a, O=meshsec")
    expected = pk.name((NameOID.COMMON_NAME, "node-a"), (NameOID.ORGANIZATION_NAME, "meshsec"))
    assert ident.id_type == IdType.DER_ASN1_DN
    assert ident.data == expected.public_bytes()
    assert str(ident) == "dn:CN=node-a, O=meshsec"
    assert Identity.parse("dn:CN=node-a,O=meshsec") == ident


def test_dn_escapes_round_trip() -> None:
    ident = Identity.parse(r"O=ACME\, Inc., CN=a\+b, OU= spaced\ ")
    rdns = ident.dn()
    assert [v for rdn in rdns for _, v in rdn] == ["ACME, Inc.", "a+b", "spaced "]
    assert Identity.parse(str(ident)) == ident


def test_dn_from_certificate_subject() -> None:
    cert = pk.issue(pk.cn("node-a"), pk.key("ec"))
    ident = Identity.from_certificate_subject(cert)
    assert ident.data == cert.subject.public_bytes()
    assert certificate_vouches_for(cert, ident)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty identity"),
        ("ipv4:fd00::1", "not an IPv4 address"),
        ("ipv6:198.18.0.1", "not an IPv6 address"),
        ("fqdn:bad name", "printable ASCII"),
        ("fqdn:n\u00e4me.mesh", "printable ASCII"),
        ("keyid:xyz", "not hex"),
        ("keyid:", "empty identification data"),
        ("CN=a, BOGUS=b", "unknown DN attribute"),
        ("C=CHE, CN=a", "invalid DN"),
        ("CN=", "empty value"),
        ("CN=a\\", "lone backslash"),
    ],
)
def test_parse_errors_are_precise(text: str, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        Identity.parse(text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "too short"),
        (b"\x01\x00\x00\x00", "too short"),
        (b"\x0c\x00\x00\x00abc", "unsupported ID type 12"),  # ID_FC_NAME
        (b"\x0a\x00\x00\x00abc", "unsupported ID type 10"),  # ID_DER_ASN1_GN
        (b"\x01\x00\x00\x00\x01\x02\x03", "must be 4 octets"),
        (b"\x05\x00\x00\x00" + b"\x00" * 15, "must be 16 octets"),
        (b"\x02\x00\x00\x00a\x00b", "printable ASCII"),
        (b"\x03\x00\x00\x00\xff@x", "not ASCII"),
        (b"\x09\x00\x00\x00\x30\x05\x31\x03", "truncated DER"),
        (b"\x09\x00\x00\x00\x30\x00", "empty DN"),
        (b"\x09\x00\x00\x00\x04\x00", "not one DER SEQUENCE"),
    ],
)
def test_decode_errors(body: bytes, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        Identity.from_payload(body)


# -------------------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("pattern", "received", "expected"),
    [
        ("fqdn:node-a.mesh", "fqdn:NODE-A.mesh", True),
        ("fqdn:node-a.mesh", "fqdn:node-b.mesh", False),
        ("fqdn:node-a.mesh", "email:node-a.mesh@x", False),
        ("*.mesh", "fqdn:a.mesh", True),
        ("*.mesh", "fqdn:a.b.MESH", True),
        ("fqdn:*.mesh", "fqdn:a.mesh", True),
        ("*.mesh", "fqdn:mesh", False),
        ("*.mesh", "fqdn:evilmesh", False),
        ("*.mesh", "email:a@b.mesh", False),
        ("*@mesh", "email:ops@MESH", True),
        ("*@mesh", "email:ops@evil.mesh", False),
        ("%any", "keyid:01", True),
        ("*", "198.18.0.1", True),
        ("198.18.0.0/15", "198.19.255.1", True),
        ("198.18.0.0/15", "198.20.0.1", False),
        ("fd00::/8", "fd12::1", True),
        ("fd00::/8", "198.18.0.1", False),
        ("198.18.0.1", "198.18.0.1", True),
        ("198.18.0.1", "fqdn:198.18.0.1", False),
        ("keyid:0a0b", "keyid:0a0b", True),
        ("keyid:0a0b", "keyid:0a0c", False),
        ("CN=node-a, O=meshsec", "dn:CN=node-a, O=meshsec", True),
        ("CN=node-a, O=meshsec", "dn:cn=NODE-A,  o=MeshSec", True),  # RFC 4518-style folding
        ("CN=node-a, O=meshsec", "dn:O=meshsec, CN=node-a", True),  # RFC 4514 (reversed) order
        ("CN=node-a, O=meshsec", "dn:CN=node-b, O=meshsec", False),
        ("CN=node-a, O=meshsec", "dn:CN=node-a, O=meshsec, OU=x", False),
        ("CN=*, O=meshsec", "dn:CN=anything, O=meshsec", True),
        ("CN=*, O=meshsec", "dn:CN=anything, O=other", False),
        ("CN=*, O=meshsec", "fqdn:node-a.mesh", False),
    ],
)
def test_pattern_matching(pattern: str, received: str, expected: bool) -> None:
    assert IdentityPattern.parse(pattern).matches(Identity.parse(received)) is expected


def test_dn_ignores_string_type_printable_vs_utf8() -> None:
    printable = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH", x509.name._ASN1Type.PrintableString),
            x509.NameAttribute(NameOID.COMMON_NAME, "moon", x509.name._ASN1Type.PrintableString),
        ]
    )
    received = Identity(IdType.DER_ASN1_DN, printable.public_bytes())
    configured = Identity.parse("C=CH, CN=moon")
    assert received != configured  # different bytes ...
    assert identities_equal(received, configured)  # ... same DN
    assert IdentityPattern.parse("C=CH, CN=moon").matches(received)


@pytest.mark.parametrize("text", ["198.18.0.0/33", "*.", "*@", "fqdn:*.bad name"])
def test_pattern_errors(text: str) -> None:
    with pytest.raises(IdentityError):
        IdentityPattern.parse(text)


# ---------------------------------------------------------------------------- certificate binding


def test_certificate_vouches_via_san_and_subject() -> None:
    k = pk.key("ec")
    cert = pk.issue(
        pk.cn("node-a"), k, dns=["node-a.mesh"], ips=["198.18.0.1", "fd00::1"], emails=["ops@mesh"]
    )
    yes = ["fqdn:node-a.mesh", "fqdn:NODE-A.MESH", "198.18.0.1", "fd00::1", "email:ops@mesh"]
    yes += ["CN=node-a, O=meshsec", "cn=Node-A, o=MESHSEC"]
    no = ["fqdn:node-b.mesh", "198.18.0.2", "fd00::2", "email:x@mesh", "CN=node-b, O=meshsec"]
    # a received DN must be the subject in its own order; only configured patterns accept reversal
    no += ["fqdn:198.18.0.1", "keyid:00", "O=meshsec, CN=node-a"]
    for text in yes:
        assert certificate_vouches_for(cert, Identity.parse(text)), text
    for text in no:
        assert not certificate_vouches_for(cert, Identity.parse(text)), text


def test_certificate_without_san_vouches_only_for_subject() -> None:
    cert = pk.issue(pk.cn("node-a"), pk.key("ec"))
    assert not certificate_vouches_for(cert, Identity.parse("fqdn:node-a"))
    assert certificate_vouches_for(cert, Identity.parse("CN=node-a, O=meshsec"))


def test_wildcard_san_is_not_honoured() -> None:
    cert = pk.issue(pk.cn("x"), pk.key("ec"), dns=["*.mesh"])
    assert not certificate_vouches_for(cert, Identity.parse("fqdn:a.mesh"))


def test_key_id_matches_spki_sha1_and_subject_key_identifier() -> None:
    from meshsec.agent.ike.certs import spki_sha1

    k = pk.key("ed25519")
    cert = pk.issue(pk.cn("k"), k)
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert certificate_vouches_for(cert, Identity(IdType.KEY_ID, ski))
    assert certificate_vouches_for(cert, Identity(IdType.KEY_ID, spki_sha1(cert)))
    assert not certificate_vouches_for(cert, Identity(IdType.KEY_ID, b"\x00" * 20))


def test_strongswan_dn_and_san_cross_check(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A certificate made by strongSwan's pki: its DN string (printed by `pki --dn`) parses to an ID
    that the certificate vouches for, and its SANs bind FQDN and address IDs."""
    keyf, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    keyf.write_bytes(pk.strongswan_pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
    crt.write_bytes(
        pk.strongswan_pki(
            "--self", "--in", keyf, "--type", "ecdsa", "--dn", "C=CH, O=strongSwan Project, CN=moon.mesh",
            "--san", "moon.mesh", "--san", "198.18.0.7", "--outform", "pem",
        )
    )  # fmt: skip
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    printed = pk.strongswan_pki("--dn", "--in", crt, "--format", "config").decode().strip().strip('"')
    assert printed.startswith("asn1dn:#")
    assert Identity.parse(printed) == Identity.from_certificate_subject(cert)  # strongSwan's own spelling
    dn = Identity.parse("C=CH, O=strongSwan Project, CN=moon.mesh")  # PrintableString in the cert, UTF8 here
    assert dn != Identity.from_certificate_subject(cert)
    assert certificate_vouches_for(cert, dn)
    assert IdentityPattern.parse("C=CH, O=strongSwan Project, CN=moon.mesh").matches(Identity.parse(printed))
    assert [oid for rdn in decode_dn(cert.subject.public_bytes()) for oid, _ in rdn] == [
        "2.5.4.6",
        "2.5.4.10",
        "2.5.4.3",
    ]
    assert certificate_vouches_for(cert, Identity.parse("fqdn:moon.mesh"))
    assert certificate_vouches_for(cert, Identity.parse("198.18.0.7"))


# -------------------------------------------------------------------------------------- properties

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_fqdn = st.lists(_label, min_size=1, max_size=4).map(".".join)
_dn_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=20,
)
_dn_attr = st.sampled_from(
    [NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.LOCALITY_NAME]
)


@st.composite
def identities(draw: st.DrawFn) -> Identity:
    kind = draw(st.sampled_from(["v4", "v6", "fqdn", "email", "dn", "keyid"]))
    if kind == "v4":
        return Identity(IdType.IPV4_ADDR, draw(st.binary(min_size=4, max_size=4)))
    if kind == "v6":
        return Identity(IdType.IPV6_ADDR, draw(st.binary(min_size=16, max_size=16)))
    if kind == "fqdn":
        return Identity(IdType.FQDN, draw(_fqdn).encode())
    if kind == "email":
        return Identity(IdType.RFC822_ADDR, (draw(_label) + "@" + draw(_fqdn)).encode())
    if kind == "keyid":
        return Identity(IdType.KEY_ID, draw(st.binary(min_size=1, max_size=64)))
    attrs = draw(st.lists(st.tuples(_dn_attr, _dn_value), min_size=1, max_size=4))
    name = x509.Name([x509.NameAttribute(o, v) for o, v in attrs])
    return Identity(IdType.DER_ASN1_DN, name.public_bytes())


@settings(max_examples=300, deadline=None)
@given(identities())
def test_property_payload_round_trip(ident: Identity) -> None:
    body = ident.to_payload()
    assert Identity.from_payload(body) == ident
    assert Identity.from_payload(body).to_payload() == body


@settings(max_examples=300, deadline=None)
@given(identities())
def test_property_string_round_trip(ident: Identity) -> None:
    again = Identity.parse(str(ident))
    assert identities_equal(again, ident)
    assert IdentityPattern.parse(str(ident)).matches(ident)
    if ident.id_type != IdType.DER_ASN1_DN:
        assert again == ident
    if ident.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        assert str(ident) == str(ipaddress.ip_address(ident.data))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_property_decode_raises_only_identity_error(body: bytes) -> None:
    try:
        ident = Identity.from_payload(body)
    except IdentityError:
        return
    assert ident.to_payload()[4:] == body[4:]
    str(ident)  # a decoded identity can always be printed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_property_dn_decoder_raises_only_identity_error(data: bytes) -> None:
    for body in (b"\x09\x00\x00\x00" + data, b"\x09\x00\x00\x00\x30" + bytes([len(data)]) + data):
        try:
            ident = Identity.from_payload(body)
        except IdentityError:
            continue
        str(ident)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_property_parsers_raise_only_identity_error(text: str) -> None:
    try:
        ident = Identity.parse(text)
    except IdentityError:
        pass
    else:
        str(ident)
    try:
        pattern = IdentityPattern.parse(text)
    except IdentityError:
        return
    pattern.matches(Identity.parse("fqdn:a.mesh"))
    pattern.matches(Identity.parse("CN=a"))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="CNOU=,+\\ *.@:#/0123456789abcdef", max_size=40))
def test_property_structured_garbage_raises_only_identity_error(text: str) -> None:
    for parse in (Identity.parse, IdentityPattern.parse):
        with contextlib.suppress(IdentityError):
            parse(text)


def test_construct_from_core_payload_fields() -> None:
    """payloads.IDi carries (int, bytes); Identity takes them as they are and validates."""
    ident = Identity(2, b"node-a.mesh")  # type: ignore[arg-type]
    assert ident.id_type is IdType.FQDN and ident == Identity.parse("fqdn:node-a.mesh")
    with pytest.raises(IdentityError, match="unsupported ID type 99"):
        Identity(99, b"x")  # type: ignore[arg-type]


def test_dn_control_characters_are_escaped_for_logs() -> None:
    """A peer's DN with a newline must not be able to forge a second log line."""
    name = pk.name(
        (NameOID.COMMON_NAME, "evil\nINFO: peer authenticated"), (NameOID.ORGANIZATION_NAME, "a,b")
    )
    ident = Identity(IdType.DER_ASN1_DN, name.public_bytes())
    assert str(ident) == r"dn:CN=evil\0aINFO: peer authenticated, O=a\,b"
    assert "\n" not in str(ident)
    assert Identity.parse(str(ident)) == ident
    assert Identity.parse(r"CN=caf\c3\a9") == Identity.parse("CN=café")
    with pytest.raises(IdentityError, match="not UTF-8"):
        Identity.parse(r"CN=\ff")
