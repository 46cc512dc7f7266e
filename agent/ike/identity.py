"""IKEv2 identities (RFC 7296 §3.5): the `Identity` value, its config spellings and its matching rules.

Owns: parsing config strings into an `Identity`, encoding/decoding the ID payload *body*
(ID Type | RESERVED | Identification Data, without the generic payload header), deciding whether a
received ID matches a configured remote ID (`IdentityPattern`) and whether a certificate vouches for
an ID (`certificate_vouches_for`). Every refusal is an `IdentityError`.

Must not touch: the payload chain and generic headers (payloads.py), the AUTH computation (auth.py,
which MACs the *received* ID body bytes, never a re-encoding), certificate path validation (certs.py).
Pure: no I/O, no clock.

Config spellings (`Identity.parse`):
  ``198.18.0.1`` / ``ipv4:198.18.0.1``         ID_IPV4_ADDR
  ``fd00::1`` / ``ipv6:fd00::1``               ID_IPV6_ADDR
  ``fqdn:node-a.mesh`` / ``node-a.mesh``       ID_FQDN (case-insensitive when compared)
  ``email:ops@mesh`` / ``ops@mesh``            ID_RFC822_ADDR
  ``dn:CN=node-a, O=meshsec`` / ``CN=node-a, O=meshsec``   ID_DER_ASN1_DN
  ``asn1dn:#3036...`` (hex DER, as strongSwan's ``pki --dn`` prints it)   ID_DER_ASN1_DN
  ``keyid:0a1b2c`` (hex, ``keyid:#0a1b2c`` too) ID_KEY_ID
DN strings are written in encoding order, first RDN first, as strongSwan (``leftid``) and
``openssl x509 -subject`` print them.  RFC 4514 writes them the other way round, so a configured DN
also matches a received DN whose RDN sequence is the exact reverse.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import struct
import unicodedata
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID, ObjectIdentifier

from .constants import IdType

__all__ = [
    "SUPPORTED_ID_TYPES",
    "Identity",
    "IdentityError",
    "IdentityPattern",
    "certificate_vouches_for",
    "decode_dn",
    "dn_to_string",
    "identities_equal",
]

SUPPORTED_ID_TYPES = frozenset(
    {
        IdType.IPV4_ADDR,
        IdType.FQDN,
        IdType.RFC822_ADDR,
        IdType.IPV6_ADDR,
        IdType.DER_ASN1_DN,
        IdType.KEY_ID,
    }
)

_ID_HEADER = struct.Struct("!B3x")  # ID Type, RESERVED (MUST be zero on send, ignored on receipt)
_MAX_ID_DATA = 4096  # far above any sane ID; keeps a hostile peer from making us parse megabytes

# Names for DN attributes in config strings; dotted OIDs are accepted as well.
_ATTR_BY_NAME: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "SN": NameOID.SURNAME,
    "GN": NameOID.GIVEN_NAME,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "E": NameOID.EMAIL_ADDRESS,
    "EMAIL": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "T": NameOID.TITLE,
}
_NAME_BY_OID: dict[str, str] = {
    "2.5.4.3": "CN",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "STREET",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
    "2.5.4.4": "SN",
    "2.5.4.42": "GN",
    "2.5.4.5": "serialNumber",
    "1.2.840.113549.1.9.1": "E",
    "2.5.4.12": "T",
}
_DOTTED_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_PREFIXES = frozenset({"ipv4", "ipv6", "fqdn", "email", "rfc822", "dn", "asn1dn", "keyid"})
# FQDN and e-mail: printable ASCII without spaces; anything else (NUL, CR, UTF-8) would end up in logs.
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


class IdentityError(ValueError):
    """An ID string or ID payload we cannot accept; the message says which and why (no secrets)."""


# --------------------------------------------------------------------------------------------- DER


def _der_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """One DER TLV at `pos`: (tag, value, next position). Short and long (<= 3 octets) lengths only."""
    if pos + 2 > len(data):
        raise IdentityError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 3 or pos + count > len(data):
            raise IdentityError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise IdentityError("non-minimal DER length")
        pos += count
    if pos + length > len(data):
        raise IdentityError("truncated DER")
    return tag, data[pos : pos + length], pos + length


def _der_oid(value: bytes) -> str:
    if not value or value[-1] & 0x80:
        raise IdentityError("bad OID")
    arcs: list[int] = []
    acc = 0
    for i, octet in enumerate(value):
        if acc == 0 and octet == 0x80 and (i == 0 or not value[i - 1] & 0x80):
            raise IdentityError("non-minimal OID arc")
        acc = (acc << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(acc)
            acc = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


_STRING_DECODERS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x12: "ascii",  # NumericString
    0x1A: "ascii",  # VisibleString
    0x14: "latin-1",  # TeletexString (in practice latin-1)
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}

# A DN as compared here: RDNs in encoding order, each a sorted tuple of (dotted OID, value).
Rdns = tuple[tuple[tuple[str, str], ...], ...]


def decode_dn(der: bytes) -> Rdns:
    """Parse a DER Name into RDNs in encoding order; raises IdentityError for anything malformed."""
    tag, body, end = _der_tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise IdentityError("DN is not one DER SEQUENCE")
    rdns: list[tuple[tuple[str, str], ...]] = []
    pos = 0
    while pos < len(body):
        tag, rdn, pos = _der_tlv(body, pos)
        if tag != 0x31 or not rdn:
            raise IdentityError("DN RDN is not a non-empty SET")
        atvs: list[tuple[str, str]] = []
        apos = 0
        while apos < len(rdn):
            tag, atv, apos = _der_tlv(rdn, apos)
            if tag != 0x30:
                raise IdentityError("DN attribute is not a SEQUENCE")
            otag, oid, vpos = _der_tlv(atv, 0)
            if otag != 0x06:
                raise IdentityError("DN attribute type is not an OID")
            vtag, raw, vend = _der_tlv(atv, vpos)
            if vend != len(atv):
                raise IdentityError("trailing data in DN attribute")
            codec = _STRING_DECODERS.get(vtag)
            if codec is None:
                raise IdentityError(f"DN attribute value has unsupported ASN.1 tag 0x{vtag:02x}")
            try:
                text = raw.decode(codec)
            except UnicodeDecodeError as exc:
                raise IdentityError("DN attribute value is not valid text") from exc
            atvs.append((_der_oid(oid), text))
        rdns.append(tuple(sorted(atvs)))
    if not rdns:
        raise IdentityError("empty DN")
    return tuple(rdns)


def _escape_dn_char(ch: str) -> str:
    if ch in ',+"\\<>;=':
        return "\\" + ch
    if ord(ch) < 0x20 or ord(ch) == 0x7F or (ch.isspace() and ch != " "):
        # hex pairs of the UTF-8 octets: control characters cannot forge log lines, and blanks other
        # than the space (U+00A0, U+3000, ...) survive the parser's stripping of surrounding blanks
        return "".join(f"\\{b:02x}" for b in ch.encode())
    return ch


def _escape_dn_value(value: str) -> str:
    """RFC 4514 escaping; control characters and non-space blanks become hex pairs."""
    out = "".join(_escape_dn_char(ch) for ch in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def dn_to_string(rdns: Rdns) -> str:
    """Config spelling of a DN (encoding order, ``CN=a, O=b``), as `Identity.parse` reads it back."""
    parts = []
    for rdn in rdns:
        parts.append(
            "+".join(f"{_NAME_BY_OID.get(oid, oid)}={_escape_dn_value(value)}" for oid, value in rdn)
        )
    return ", ".join(parts)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 == len(text):
                raise IdentityError("DN string ends with a lone backslash")
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


_HEXPAIR = re.compile(r"(?:\\[0-9a-fA-F]{2})+")


def _unescape(value: str) -> str:
    """Undo RFC 4514 escapes: ``\\,`` is a literal comma, runs of ``\\hh`` are UTF-8 octets."""
    out, i = [], 0
    while i < len(value):
        run = _HEXPAIR.match(value, i) if value[i] == "\\" else None
        if run:
            try:
                out.append(bytes.fromhex(run.group().replace("\\", "")).decode("utf-8"))
            except UnicodeDecodeError:
                raise IdentityError(f"DN escape {run.group()!r} is not UTF-8") from None
            i = run.end()
        elif value[i] == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _parse_dn_string(text: str) -> list[list[tuple[ObjectIdentifier, str]]]:
    rdns: list[list[tuple[ObjectIdentifier, str]]] = []
    for rdn_text in _split_unescaped(text, ","):
        atvs = []
        for atv_text in _split_unescaped(rdn_text, "+"):
            name, eq, value = atv_text.partition("=")
            name = name.strip()
            if not eq or not name:
                raise IdentityError(f"DN component {atv_text.strip()!r} is not ATTR=value")
            # strip unescaped surrounding blanks, keep an escaped trailing blank
            value = value.lstrip()
            while value.endswith(" ") and not value.endswith("\\ "):
                value = value[:-1]
            value = _unescape(value)
            if not value:
                raise IdentityError(f"DN attribute {name} has an empty value")
            if _DOTTED_OID.match(name):
                try:
                    oid = ObjectIdentifier(name)
                except ValueError as exc:
                    raise IdentityError(f"bad OID {name!r} in DN") from exc
            elif name.upper() in _ATTR_BY_NAME:
                oid = _ATTR_BY_NAME[name.upper()]
            else:
                raise IdentityError(f"unknown DN attribute {name!r} (use a dotted OID)")
            atvs.append((oid, value))
        rdns.append(atvs)
    return rdns


def _encode_dn(text: str) -> bytes:
    """DER of a DN string given in encoding order (first RDN first)."""
    parsed = _parse_dn_string(text)
    try:
        name = x509.Name(
            [x509.RelativeDistinguishedName([x509.NameAttribute(o, v) for o, v in rdn]) for rdn in parsed]
        )
        return name.public_bytes()
    except ValueError as exc:  # e.g. C= must be two letters; duplicate attribute in one RDN
        raise IdentityError(f"invalid DN {text!r}: {exc}") from exc


def _fold(value: str) -> str:
    """RFC 4518-lite comparison form: NFKC, case-folded, inner runs of blanks collapsed."""
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def _dn_key(rdns: Rdns) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(tuple(sorted((oid, _fold(v)) for oid, v in rdn)) for rdn in rdns)


# ----------------------------------------------------------------------------------------- Identity


def _strip(text: str) -> str:
    """Strip surrounding blanks but keep a DN's escaped trailing blank (``CN=a\\ ``)."""
    head = text.lstrip()
    out = head.rstrip()
    if out.endswith("\\") and len(out) < len(head):
        out += " "
    return out


def _check_text(kind: str, value: str) -> None:
    if not value or len(value) > 255 or not _PRINTABLE.match(value):
        raise IdentityError(f"{kind} must be 1..255 printable ASCII characters without spaces")


@dataclass(frozen=True, slots=True)
class Identity:
    """One IKEv2 identity: the ID type and the Identification Data exactly as carried on the wire.

    Equality is byte equality; use `IdentityPattern.matches` for the comparison rules (case, DN order).
    """

    id_type: IdType
    data: bytes

    def __post_init__(self) -> None:
        """Validate; accepts a plain int type (payloads.IDi carries one) and stores the IdType."""
        try:
            object.__setattr__(self, "id_type", IdType(self.id_type))
        except ValueError:
            raise IdentityError(f"unsupported ID type {self.id_type!r}") from None
        if isinstance(self.data, bytearray | memoryview):
            object.__setattr__(self, "data", bytes(self.data))
        _validate(self.id_type, self.data)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Identity:
        """Parse a config spelling (see module docstring). Raises IdentityError."""
        if not isinstance(text, str):
            raise IdentityError("identity must be a string")
        text = _strip(text)
        if not text:
            raise IdentityError("empty identity")
        prefix, colon, rest = text.partition(":")
        kind = prefix.lower() if colon else ""
        if kind == "ipv4":
            return cls._ip(rest, 4)
        if kind == "ipv6":
            return cls._ip(rest, 6)
        if kind == "fqdn":
            _check_text("FQDN", rest)
            return cls(IdType.FQDN, rest.encode())
        if kind in ("email", "rfc822"):
            _check_text("e-mail identity", rest)
            return cls(IdType.RFC822_ADDR, rest.encode())
        if kind in ("dn", "asn1dn"):
            if rest.startswith("#"):  # strongSwan's binary form, as `pki --dn` prints it
                try:
                    return cls(IdType.DER_ASN1_DN, bytes.fromhex(rest[1:]))
                except ValueError as exc:
                    raise IdentityError(f"DN {rest!r} is not hex DER") from exc
            return cls(IdType.DER_ASN1_DN, _encode_dn(rest))
        if kind == "keyid":
            hexdigits = rest[1:] if rest.startswith("#") else rest
            try:
                raw = bytes.fromhex(hexdigits)
            except ValueError as exc:
                raise IdentityError(f"keyid {rest!r} is not hex") from exc
            return cls(IdType.KEY_ID, raw)
        # no (known) prefix: guess like strongSwan does
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return cls(IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR, addr.packed)
        if "=" in text:
            return cls(IdType.DER_ASN1_DN, _encode_dn(text))
        if "@" in text:
            _check_text("e-mail identity", text)
            return cls(IdType.RFC822_ADDR, text.encode())
        _check_text("FQDN", text)
        return cls(IdType.FQDN, text.encode())

    @classmethod
    def _ip(cls, text: str, version: int) -> Identity:
        try:
            addr = ipaddress.ip_address(text.strip())
        except ValueError as exc:
            raise IdentityError(f"{text!r} is not an IPv{version} address") from exc
        if addr.version != version:
            raise IdentityError(f"{text!r} is not an IPv{version} address")
        return cls(IdType.IPV4_ADDR if version == 4 else IdType.IPV6_ADDR, addr.packed)

    @classmethod
    def from_payload(cls, body: bytes) -> Identity:
        """Decode an ID payload body (after the 4-octet generic header). Raises IdentityError."""
        if len(body) < _ID_HEADER.size + 1:
            raise IdentityError(f"ID payload body too short ({len(body)} octets)")
        (raw_type,) = _ID_HEADER.unpack_from(body)
        try:
            id_type = IdType(raw_type)
        except ValueError:
            raise IdentityError(f"unsupported ID type {raw_type}") from None
        return cls(id_type, bytes(body[_ID_HEADER.size :]))

    @classmethod
    def from_certificate_subject(cls, cert: x509.Certificate) -> Identity:
        """ID_DER_ASN1_DN carrying the certificate's subject, byte for byte as in the certificate."""
        return cls(IdType.DER_ASN1_DN, cert.subject.public_bytes())

    # -- output ---------------------------------------------------------------------------------
    def to_payload(self) -> bytes:
        """ID payload body: ID Type | RESERVED (zero) | Identification Data."""
        return _ID_HEADER.pack(self.id_type) + self.data

    def __str__(self) -> str:
        """Canonical config spelling; `Identity.parse(str(x)) == x` for every supported identity."""
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            return str(ipaddress.ip_address(self.data))
        if self.id_type == IdType.FQDN:
            return "fqdn:" + self.data.decode()
        if self.id_type == IdType.RFC822_ADDR:
            return "email:" + self.data.decode()
        if self.id_type == IdType.DER_ASN1_DN:
            return "dn:" + dn_to_string(decode_dn(self.data))
        return "keyid:" + self.data.hex()

    def dn(self) -> Rdns:
        """RDNs of an ID_DER_ASN1_DN identity (encoding order)."""
        if self.id_type != IdType.DER_ASN1_DN:
            raise IdentityError(f"{self} is not a DN identity")
        return decode_dn(self.data)


def _validate(id_type: IdType, data: bytes) -> None:
    if id_type not in SUPPORTED_ID_TYPES:
        raise IdentityError(f"unsupported ID type {int(id_type)}")
    if not isinstance(data, bytes) or not data:
        raise IdentityError("empty identification data")
    if len(data) > _MAX_ID_DATA:
        raise IdentityError(f"identification data too long ({len(data)} octets)")
    if id_type == IdType.IPV4_ADDR and len(data) != 4:
        raise IdentityError(f"ID_IPV4_ADDR must be 4 octets, got {len(data)}")
    if id_type == IdType.IPV6_ADDR and len(data) != 16:
        raise IdentityError(f"ID_IPV6_ADDR must be 16 octets, got {len(data)}")
    if id_type in (IdType.FQDN, IdType.RFC822_ADDR):
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise IdentityError("FQDN/e-mail identity is not ASCII") from None
        _check_text("FQDN" if id_type == IdType.FQDN else "e-mail identity", text)
    if id_type == IdType.DER_ASN1_DN:
        decode_dn(data)


# ------------------------------------------------------------------------------------------ matching


@dataclass(frozen=True, slots=True)
class IdentityPattern:
    """A configured remote ID: an exact identity or one of the documented wildcards.

    Spellings (`IdentityPattern.parse`), besides everything `Identity.parse` takes:
      ``%any`` or ``*``                  any identity
      ``*.mesh`` / ``fqdn:*.mesh``       any FQDN ending in ``.mesh`` (one label or more, strongSwan style)
      ``*@mesh`` / ``email:*@mesh``      any e-mail identity in domain ``mesh``
      ``198.18.0.0/15``, ``fd00::/8``    any address identity in the subnet
      ``CN=*, O=meshsec``                DN with ``*`` as a whole attribute value: any value there
    Comparison: FQDN and e-mail case-insensitively, DN attribute values after RFC 4518-style folding
    (case, blanks, string type ignored) in written order or exactly reversed, everything else by bytes.
    """

    text: str
    kind: str  # "any" | "exact" | "fqdn_suffix" | "email_domain" | "subnet" | "dn"
    identity: Identity | None = None
    suffix: str = ""
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    dn: tuple[tuple[tuple[str, str], ...], ...] = ()

    @classmethod
    def parse(cls, text: str) -> IdentityPattern:
        if not isinstance(text, str):
            raise IdentityError("identity pattern must be a string")
        text = _strip(text)
        if text in ("%any", "*"):
            return cls(text, "any")
        prefix, colon, rest = text.partition(":")
        kind = prefix.lower() if colon and prefix.lower() in _PREFIXES else ""
        body = rest if kind in ("fqdn", "email", "rfc822") else text
        if kind in ("", "fqdn") and body.startswith("*."):
            _check_text("FQDN wildcard", body[2:])
            return cls(text, "fqdn_suffix", suffix=body[1:].lower())
        if kind in ("", "email", "rfc822") and body.startswith("*@"):
            _check_text("e-mail wildcard", body[2:])
            return cls(text, "email_domain", suffix=body[1:].lower())
        if "/" in text and kind in ("", "ipv4", "ipv6") and "=" not in text:
            try:
                network = ipaddress.ip_network(rest if kind else text, strict=True)
            except ValueError as exc:
                raise IdentityError(f"{text!r} is not a subnet") from exc
            return cls(text, "subnet", network=network)
        if "*" in text and (kind in ("dn", "asn1dn") or (not kind and "=" in text)):
            parsed = _parse_dn_string(rest if kind else text)
            key = tuple(
                tuple(sorted((o.dotted_string, v if v == "*" else _fold(v)) for o, v in rdn))
                for rdn in parsed
            )
            return cls(text, "dn", dn=key)
        ident = Identity.parse(text)
        if ident.id_type == IdType.DER_ASN1_DN:
            return cls(text, "dn", identity=ident, dn=_dn_key(ident.dn()))
        return cls(text, "exact", identity=ident)

    def matches(self, received: Identity) -> bool:
        """Does the ID the peer sent satisfy this configured remote ID?"""
        if self.kind == "any":
            return True
        if self.kind == "fqdn_suffix":
            if received.id_type != IdType.FQDN:
                return False
            name = received.data.decode().lower()
            return name.endswith(self.suffix) and len(name) > len(self.suffix)
        if self.kind == "email_domain":
            if received.id_type != IdType.RFC822_ADDR:
                return False
            addr = received.data.decode().lower()
            return addr.endswith(self.suffix) and len(addr) > len(self.suffix)
        if self.kind == "subnet":
            if received.id_type not in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
                return False
            assert self.network is not None
            return ipaddress.ip_address(received.data) in self.network
        if self.kind == "dn":
            if received.id_type != IdType.DER_ASN1_DN:
                return False
            got = _dn_key(received.dn())
            return _dn_pattern_match(self.dn, got) or _dn_pattern_match(self.dn, got[::-1])
        assert self.identity is not None
        return identities_equal(self.identity, received)

    def __str__(self) -> str:
        return self.text


def _dn_pattern_match(pattern: Rdns, got: Rdns) -> bool:
    if len(pattern) != len(got):
        return False
    for prdn, grdn in zip(pattern, got, strict=True):
        if len(prdn) != len(grdn):
            return False
        for (poid, pval), (goid, gval) in zip(prdn, grdn, strict=True):
            if poid != goid or (pval != "*" and pval != gval):
                return False
    return True


def identities_equal(a: Identity, b: Identity) -> bool:
    """Same identity under IKE comparison rules (case-insensitive names, folded DNs)."""
    if a.id_type != b.id_type:
        return False
    if a.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
        return a.data.lower() == b.data.lower()
    if a.id_type == IdType.DER_ASN1_DN:
        return _dn_key(a.dn()) == _dn_key(b.dn())
    return a.data == b.data


# ------------------------------------------------------------------------------- certificate binding


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:  # malformed SAN
        raise IdentityError(f"certificate subjectAltName is malformed: {exc}") from exc


def _key_ids(cert: x509.Certificate) -> set[bytes]:
    """Key identifiers a KEY_ID may name: SKI, SHA-1 of the SPKI, SHA-1 of the public key bits."""
    pub = cert.public_key()
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ids = {hashlib.sha1(spki).digest()}
    with contextlib.suppress(ValueError, TypeError):  # SHA-1 of the key BIT STRING (RFC 5280 method 1)
        ids.add(x509.SubjectKeyIdentifier.from_public_key(pub).digest)
    with contextlib.suppress(x509.ExtensionNotFound, ValueError):
        ids.add(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    return ids


def certificate_vouches_for(cert: x509.Certificate, identity: Identity) -> bool:
    """Does `cert` bind `identity` (RFC 4945 §3.1): SAN for names/addresses, subject for DNs.

    SAN wildcards (``*.mesh`` in a dNSName) are deliberately not honoured: a mesh CA issues exact names.
    """
    t = identity.id_type
    if t == IdType.DER_ASN1_DN:
        return _dn_key(decode_dn(cert.subject.public_bytes())) == _dn_key(identity.dn())
    if t == IdType.KEY_ID:
        return identity.data in _key_ids(cert)
    san = _san(cert)
    if san is None:
        return False
    if t in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        want = ipaddress.ip_address(identity.data)
        return any(addr == want for addr in san.get_values_for_type(x509.IPAddress))
    text = identity.data.decode().lower()
    if t == IdType.FQDN:
        return any(
            name.lower().rstrip(".") == text.rstrip(".") for name in san.get_values_for_type(x509.DNSName)
        )
    return any(addr.lower() == text for addr in san.get_values_for_type(x509.RFC822Name))
