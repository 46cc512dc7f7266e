"""Certificates for IKEv2 (RFC 7296 §3.6-§3.7, RFC 4945, RFC 5280 path validation, trimmed).

Owns: validating a peer's chain (leaf + intermediates from CERT payloads) against a *set* of trusted
CA certificates (several at once for CA rollover), at a wall-clock `now` the caller passes in, with a
controller-pushed revocation set; binding the leaf to the peer's ID; CERT payload data (encoding 4,
"X.509 Certificate - Signature") and CERTREQ data (SHA-1 of each CA's SubjectPublicKeyInfo).
Every refusal is one `CertificateError` whose text names the failed check, so the engine can send
AUTHENTICATION_FAILED and log one precise line.

Checks made, per certificate on the path: validity at `now`; not revoked (serial or SHA-256
fingerprint); signature by the issuer (`verify_directly_issued_by`), never SHA-1/MD5, RSA >= 2048 bits;
no critical extension we do not process. Issuers: basicConstraints cA, keyUsage keyCertSign when
keyUsage is present, pathLenConstraint, no nameConstraints (refused rather than ignored). Leaf: not a
CA, keyUsage digitalSignature when keyUsage is present. Extended key usage is not enforced (RFC 4945
§5.1.3.12 leaves it to local policy; a mesh CA issues for IPsec only). Path building picks, at each
step, a trusted CA before an intermediate, and among same-named issuers the one whose signature
verifies (CA rollover keeps the name and changes the key); it does not backtrack.

Must not touch: sockets, files, the clock (`now` is an argument; PEM/DER come in as bytes), payload
framing (payloads.py has `Cert(encoding, data)` / `CertReq(encoding, data)`), AUTH signatures (auth.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from .constants import IdType
from .identity import Identity, IdentityError, certificate_vouches_for, decode_dn, dn_to_string

__all__ = [
    "CERT_ENCODING_X509_SIGNATURE",
    "MAX_INTERMEDIATES",
    "CertificateError",
    "RevocationSet",
    "TrustStore",
    "ValidatedChain",
    "cert_payload",
    "certificate_from_payload",
    "certreq_matches",
    "certreq_payload",
    "chain_from_cert_payloads",
    "describe",
    "fingerprint_sha256",
    "load_der_certificate",
    "load_pem_certificates",
    "parse_certreq",
    "require_identity",
    "spki_sha1",
    "validate_chain",
    "verify_peer",
]

CERT_ENCODING_X509_SIGNATURE = 4  # RFC 7296 §3.6 Certificate Encoding
MAX_INTERMEDIATES = 4  # longer chains are refused: no mesh PKI needs them, an attacker might
_MAX_CERT_DER = 16384  # a CERT payload bigger than this is not a certificate we want to parse
_SHA1_LEN = 20
_MIN_RSA_BITS = 2048
_WEAK_HASHES = (hashes.SHA1, hashes.MD5)
_PROCESSED_EXTENSIONS = (
    x509.BasicConstraints,
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
    x509.SubjectAlternativeName,
    x509.SubjectKeyIdentifier,
    x509.AuthorityKeyIdentifier,
    x509.CertificatePolicies,
    x509.CRLDistributionPoints,
    x509.AuthorityInformationAccess,
)


class CertificateError(Exception):
    """A certificate, chain or CERT/CERTREQ payload was refused; `reason` is the one-line why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------------------ helpers


def describe(cert: x509.Certificate) -> str:
    """Short human name of a certificate for error lines: its subject DN in config spelling."""
    try:
        return "'" + dn_to_string(decode_dn(cert.subject.public_bytes())) + "'"
    except (IdentityError, ValueError):
        return f"serial 0x{cert.serial_number:x}"


def _name(name: x509.Name) -> str:
    try:
        return "'" + dn_to_string(decode_dn(name.public_bytes())) + "'"
    except (IdentityError, ValueError):
        return "'" + name.rfc4514_string() + "'"


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the DER SubjectPublicKeyInfo: the CA identifier used in CERTREQ (RFC 7296 §3.7)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(spki).digest()


def fingerprint_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 of the certificate DER, the fingerprint the controller uses to pin and revoke."""
    return cert.fingerprint(hashes.SHA256())


def _utc(now: datetime | float) -> datetime:
    if isinstance(now, datetime):
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return datetime.fromtimestamp(float(now), UTC)


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# cryptography parses names, keys and extensions lazily and reports bad DER with these.
_PARSE_ERRORS = (
    ValueError,
    KeyError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def _parsed(cert: x509.Certificate, what: str) -> x509.Certificate:
    """Force the lazy parts of `cert` now, so a malformed field fails here as a CertificateError."""
    try:
        _ = cert.version
        cert.subject.public_bytes()
        cert.issuer.public_bytes()
        cert.public_key()
        list(cert.extensions)
        _ = cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature_algorithm_oid
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"cannot parse {what} certificate: {exc}") from None
    return cert


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """All certificates in a PEM bundle (bytes, not a path). Raises CertificateError."""
    try:
        certs = x509.load_pem_x509_certificates(bytes(data))
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"cannot parse PEM certificates: {exc}") from None
    return [_parsed(c, "PEM") for c in certs]


def load_der_certificate(data: bytes) -> x509.Certificate:
    """One DER certificate, fully parsed. Raises CertificateError."""
    if len(data) > _MAX_CERT_DER:
        raise CertificateError(f"certificate too large ({len(data)} octets)")
    try:
        cert = x509.load_der_x509_certificate(bytes(data))
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"cannot parse DER certificate: {exc}") from None
    return _parsed(cert, "DER")


# --------------------------------------------------------------------------------- CERT / CERTREQ


def cert_payload(cert: x509.Certificate) -> tuple[int, bytes]:
    """(Cert Encoding, Certificate Data) for a CERT payload carrying `cert`."""
    return CERT_ENCODING_X509_SIGNATURE, cert.public_bytes(serialization.Encoding.DER)


def certificate_from_payload(encoding: int, data: bytes) -> x509.Certificate:
    """The certificate in a CERT payload; only encoding 4 (X.509 signature, DER) is accepted."""
    if encoding != CERT_ENCODING_X509_SIGNATURE:
        raise CertificateError(f"unsupported certificate encoding {encoding}")
    return load_der_certificate(data)


def chain_from_cert_payloads(
    payloads: Iterable[tuple[int, bytes]],
) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    """(leaf, intermediates) from the CERT payloads of an IKE_AUTH message, as (encoding, data) pairs.

    RFC 7296 §3.6: the first CERT payload holds the certificate that authenticates the peer; later ones
    are helpers, so those in encodings we do not handle are skipped rather than fatal.
    """
    items = list(payloads)
    if not items:
        raise CertificateError("peer sent no CERT payload")
    leaf = certificate_from_payload(*items[0])
    extra = tuple(
        certificate_from_payload(enc, data) for enc, data in items[1:] if enc == CERT_ENCODING_X509_SIGNATURE
    )
    return leaf, extra


def certreq_payload(cas: Iterable[x509.Certificate]) -> tuple[int, bytes]:
    """(Cert Encoding, CA hashes) for a CERTREQ naming every CA we trust."""
    return CERT_ENCODING_X509_SIGNATURE, b"".join(spki_sha1(ca) for ca in cas)


def parse_certreq(encoding: int, data: bytes) -> tuple[bytes, ...]:
    """The 20-octet CA hashes of a CERTREQ. An empty list is legal (any CA)."""
    if encoding != CERT_ENCODING_X509_SIGNATURE:
        raise CertificateError(f"unsupported CERTREQ encoding {encoding}")
    if len(data) % _SHA1_LEN:
        raise CertificateError(f"CERTREQ data length {len(data)} is not a multiple of 20")
    return tuple(bytes(data[i : i + _SHA1_LEN]) for i in range(0, len(data), _SHA1_LEN))


def certreq_matches(ca_hashes: Iterable[bytes], certs: Iterable[x509.Certificate]) -> bool:
    """Does the peer's CERTREQ name one of these CA certificates (e.g. the CA our own cert chains to)?

    The engine uses it to pick, during CA rollover, the credential issued by a CA the peer trusts.
    """
    wanted = set(ca_hashes)
    return any(spki_sha1(c) in wanted for c in certs)


# ------------------------------------------------------------------------------------ trust, revoke


@dataclass(frozen=True)
class RevocationSet:
    """Revoked certificates pushed by the controller: serial numbers and/or SHA-256 fingerprints.

    Serials apply to leaves and intermediates (a serial is only unique per issuer, and the set is
    scoped to the mesh CA); fingerprints apply to every certificate, trusted CAs included.
    """

    serials: frozenset[int] = frozenset()
    fingerprints: frozenset[bytes] = frozenset()

    @classmethod
    def of(cls, serials: Iterable[int | str] = (), fingerprints: Iterable[bytes | str] = ()) -> RevocationSet:
        """Build from ints or hex strings (``"0a:1b..."`` or ``"0a1b..."``); raises CertificateError."""
        try:
            sset = frozenset(s if isinstance(s, int) else int(s.replace(":", ""), 16) for s in serials)
            fset = frozenset(
                f if isinstance(f, bytes) else bytes.fromhex(f.replace(":", "")) for f in fingerprints
            )
        except (ValueError, AttributeError, TypeError) as exc:
            raise CertificateError(f"bad revocation entry: {exc}") from None
        if any(len(f) != 32 for f in fset):
            raise CertificateError("revocation fingerprints must be SHA-256 (32 octets)")
        return cls(sset, fset)

    def check(self, cert: x509.Certificate, *, anchor: bool = False) -> None:
        if fingerprint_sha256(cert) in self.fingerprints or (
            not anchor and cert.serial_number in self.serials
        ):
            raise CertificateError(f"certificate {describe(cert)} (serial 0x{cert.serial_number:x}) revoked")


NO_REVOCATIONS = RevocationSet()


@dataclass(frozen=True)
class TrustStore:
    """The CA certificates we trust, possibly several (old and new CA during a rollover)."""

    cas: tuple[x509.Certificate, ...]
    _by_subject: dict[bytes, list[x509.Certificate]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.cas:
            raise CertificateError("no trusted CA certificate configured")
        index: dict[bytes, list[x509.Certificate]] = {}
        for ca in self.cas:
            bc = _extension(ca, x509.BasicConstraints)
            if bc is None or not bc.ca:
                raise CertificateError(f"trusted certificate {describe(ca)} is not a CA (basicConstraints)")
            index.setdefault(ca.subject.public_bytes(), []).append(ca)
        object.__setattr__(self, "_by_subject", index)

    @classmethod
    def from_pem(cls, data: bytes) -> TrustStore:
        return cls(tuple(load_pem_certificates(data)))

    def certreq(self) -> tuple[int, bytes]:
        """CERTREQ (encoding, data) naming all our CAs."""
        return certreq_payload(self.cas)

    def issuers_of(self, cert: x509.Certificate) -> list[x509.Certificate]:
        return list(self._by_subject.get(cert.issuer.public_bytes(), ()))

    def is_anchor(self, cert: x509.Certificate) -> bool:
        return any(cert == ca for ca in self._by_subject.get(cert.subject.public_bytes(), ()))


# ---------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidatedChain:
    """A chain that passed `validate_chain`: leaf first, then intermediates, then the trusted CA."""

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    anchor: x509.Certificate

    def public_key(self) -> CertificatePublicKeyTypes:
        """The leaf's public key, for auth.verify_signature_auth."""
        return self.leaf.public_key()


def _extension(cert: x509.Certificate, cls: type) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except _PARSE_ERRORS as exc:  # duplicate or malformed extension
        raise CertificateError(f"certificate {describe(cert)} has malformed extensions: {exc}") from None


def _check_common(cert: x509.Certificate, now: datetime, revoked: RevocationSet, *, anchor: bool) -> None:
    what = "trusted CA" if anchor else "certificate"
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{what} {describe(cert)} not valid before {_stamp(cert.not_valid_before_utc)}"
        )
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"{what} {describe(cert)} expired at {_stamp(cert.not_valid_after_utc)}")
    revoked.check(cert, anchor=anchor)
    try:
        extensions = list(cert.extensions)
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"{what} {describe(cert)} has malformed extensions: {exc}") from None
    for ext in extensions:
        if ext.critical and not isinstance(ext.value, _PROCESSED_EXTENSIONS):
            if isinstance(ext.value, x509.NameConstraints):
                raise CertificateError(
                    f"{what} {describe(cert)} has nameConstraints, which are not supported"
                )
            raise CertificateError(
                f"{what} {describe(cert)} has unsupported critical extension {ext.oid.dotted_string}"
            )
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise CertificateError(
            f"{what} {describe(cert)} has a {key.key_size}-bit RSA key (< {_MIN_RSA_BITS})"
        )


def _check_issuer(ca: x509.Certificate, below: int, *, anchor: bool) -> None:
    """CA constraints; `below` is the number of intermediate CAs between `ca` and the leaf."""
    what = "trusted CA" if anchor else "intermediate"
    bc = _extension(ca, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise CertificateError(f"issuer {describe(ca)} is not a CA (basicConstraints)")
    ku = _extension(ca, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        raise CertificateError(f"{what} {describe(ca)} key usage does not allow keyCertSign")
    if bc.path_length is not None and below > bc.path_length:
        raise CertificateError(
            f"{what} {describe(ca)} path length constraint {bc.path_length} exceeded ({below} below it)"
        )


def _check_signature(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, *_PARSE_ERRORS):
        return False
    return True


def _check_leaf(leaf: x509.Certificate) -> None:
    bc = _extension(leaf, x509.BasicConstraints)
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        raise CertificateError(f"end-entity certificate {describe(leaf)} is a CA certificate")
    ku = _extension(leaf, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.digital_signature:
        raise CertificateError(f"certificate {describe(leaf)} key usage does not allow digitalSignature")


def _check_hash(cert: x509.Certificate) -> None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise CertificateError(
            f"certificate {describe(cert)} uses an unsupported signature algorithm"
        ) from None
    if isinstance(algorithm, _WEAK_HASHES):
        raise CertificateError(f"certificate {describe(cert)} is signed with {algorithm.name.upper()}")


def validate_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust: TrustStore,
    now: datetime | float,
    revoked: RevocationSet = NO_REVOCATIONS,
    max_intermediates: int = MAX_INTERMEDIATES,
) -> ValidatedChain:
    """Validate `leaf` up to one of `trust`'s CAs using the peer's `intermediates` (any order).

    `now` is wall-clock time (aware datetime, naive taken as UTC, or POSIX seconds) — not the engine's
    monotonic clock. Raises CertificateError naming the first check that failed.
    """
    try:
        return _validate(leaf, intermediates, trust, _utc(now), revoked, max_intermediates)
    except _PARSE_ERRORS as exc:  # a certificate object not loaded through this module
        raise CertificateError(f"malformed certificate in chain: {exc}") from None


def _validate(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust: TrustStore,
    at: datetime,
    revoked: RevocationSet,
    max_intermediates: int,
) -> ValidatedChain:
    _check_common(leaf, at, revoked, anchor=False)
    _check_leaf(leaf)
    pool = [c for c in intermediates if c != leaf]
    path: list[x509.Certificate] = []
    current = leaf
    while True:
        _check_hash(current)
        anchors = trust.issuers_of(current)
        for ca in anchors:
            if _check_signature(current, ca):
                _check_common(ca, at, revoked, anchor=True)
                _check_issuer(ca, len(path), anchor=True)
                return ValidatedChain(leaf, tuple(path), ca)
        named = [c for c in pool if c.subject.public_bytes() == current.issuer.public_bytes()]
        issuer = next((c for c in named if _check_signature(current, c)), None)
        if issuer is None:
            if anchors or named:
                raise CertificateError(
                    f"signature of {describe(current)} does not verify with any issuer named "
                    f"{_name(current.issuer)}"
                )
            raise CertificateError(f"issuer {_name(current.issuer)} of {describe(current)} not trusted")
        if len(path) >= max_intermediates:
            raise CertificateError(f"chain longer than {max_intermediates} intermediate certificates")
        _check_common(issuer, at, revoked, anchor=False)
        _check_issuer(issuer, len(path), anchor=False)
        path.append(issuer)
        pool.remove(issuer)
        current = issuer


def require_identity(cert: x509.Certificate, identity: Identity) -> None:
    """Raise CertificateError unless `cert` vouches for the ID the peer sent (SAN or subject DN)."""
    try:
        ok = certificate_vouches_for(cert, identity)
    except (IdentityError, *_PARSE_ERRORS) as exc:
        raise CertificateError(f"cannot match ID {identity} against certificate: {exc}") from None
    if not ok:
        where = {IdType.DER_ASN1_DN: "subject", IdType.KEY_ID: "key identifiers"}.get(identity.id_type, "SAN")
        raise CertificateError(f"ID {identity} not in certificate {where} of {describe(cert)}")


def verify_peer(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust: TrustStore,
    now: datetime | float,
    identity: Identity,
    revoked: RevocationSet = NO_REVOCATIONS,
) -> ValidatedChain:
    """`validate_chain` then `require_identity`: everything the engine asks before checking AUTH."""
    chain = validate_chain(leaf, intermediates, trust, now, revoked)
    require_identity(leaf, identity)
    return chain
