"""AUTH payload data (RFC 7296 §2.15, RFC 7427, RFC 8420): compute and verify, nothing else.

Owns: the signed-octets construction (`signed_octets`), shared key MIC (auth method 2), Digital
Signature authentication data (auth method 14: length | ASN.1 AlgorithmIdentifier | signature), the
table of AlgorithmIdentifiers we know (byte strings exactly as RFC 7427 Appendix A and RFC 8420 give
them), the SIGNATURE_HASH_ALGORITHMS notify data (RFC 7427 §4) and the choice of a signature scheme.
Every refusal is an `AuthError` whose message says which check failed (never a key or a MIC).

Must not touch: payload framing (payloads.py carries `Auth(method, data)`; the functions here take and
return the *Authentication Data* only), key derivation (crypto.py derives SK_pi/SK_pr), certificate
validation and identity binding (certs.py, identity.py). Pure: no I/O, no clock.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .constants import Prf

__all__ = [
    "DEFAULT_ALLOWED_SCHEMES",
    "DEFAULT_HASH_PREFERENCE",
    "ECDSA_SHA256",
    "ECDSA_SHA384",
    "ECDSA_SHA512",
    "ED25519",
    "KEY_PAD",
    "RSA_PKCS1_SHA256",
    "RSA_PSS_SHA256",
    "SCHEMES",
    "AuthError",
    "HashAlgorithm",
    "PrfSpec",
    "SignatureScheme",
    "build_signature_hash_algorithms",
    "choose_scheme",
    "parse_signature_auth_data",
    "parse_signature_hash_algorithms",
    "prf_function",
    "psk_auth",
    "sign_auth",
    "signed_octets",
    "verify_psk_auth",
    "verify_signature_auth",
]

KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 §2.15, 17 ASCII octets, no terminator

_HASH_ID = struct.Struct("!H")  # one entry of the SIGNATURE_HASH_ALGORITHMS notify data
_MAX_SIGNATURE = 2048  # RSA-16384 is 2048 octets; anything longer is garbage or an attack


class AuthError(Exception):
    """Authentication data could not be produced or did not verify; the text names the failed check."""


class HashAlgorithm(IntEnum):
    """IKEv2 "Hash Algorithms" registry (RFC 7427 §7, RFC 8420 for Identity)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


# ---------------------------------------------------------------------------------------------- PRF

PrfSpec = Callable[[bytes, bytes], bytes] | int | str
_PRF_HASHES: dict[int | str, type[hashes.HashAlgorithm]] = {
    Prf.HMAC_SHA1: hashes.SHA1,
    Prf.HMAC_SHA2_256: hashes.SHA256,
    Prf.HMAC_SHA2_384: hashes.SHA384,
    Prf.HMAC_SHA2_512: hashes.SHA512,
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def prf_function(prf: PrfSpec) -> Callable[[bytes, bytes], bytes]:
    """Normalise a PRF given as `prf(key, data) -> bytes`, an IKEv2 PRF transform id or a hash name.

    Accepting all three lets the engine pass whatever its negotiated-suite object holds (crypto.py's
    callable, or the transform id from proposals.py) without auth.py importing the engine.
    """
    if callable(prf):
        return prf
    algorithm = _PRF_HASHES.get(prf.lower() if isinstance(prf, str) else prf)
    if algorithm is None:
        raise AuthError(f"unsupported PRF {prf!r}")

    def _hmac(key: bytes, data: bytes) -> bytes:
        mac = crypto_hmac.HMAC(key, algorithm())
        mac.update(data)
        return mac.finalize()

    return _hmac


def signed_octets(message: bytes, peer_nonce: bytes, prf: PrfSpec, sk_p: bytes, id_body: bytes) -> bytes:
    """The octets an AUTH covers (RFC 7296 §2.15).

    InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, RestOfInitIDPayload), and the mirror
    image for the responder (RealMessage2 | NonceIData | prf(SK_pr, RestOfRespIDPayload)).
    `message` is the whole IKE_SA_INIT message the signer sent (header included, as on the wire),
    `peer_nonce` the other side's Nonce data, `sk_p` the signer's SK_pi/SK_pr and `id_body` the signer's
    ID payload body as received/sent (ID Type | RESERVED | data, generic header excluded).
    """
    return bytes(message) + bytes(peer_nonce) + prf_function(prf)(sk_p, bytes(id_body))


# --------------------------------------------------------------------------------------- shared key


def psk_auth(prf: PrfSpec, psk: bytes, signed: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) — auth method 2."""
    if not psk:
        raise AuthError("empty pre-shared key")
    f = prf_function(prf)
    return f(f(psk, KEY_PAD), signed)


def verify_psk_auth(prf: PrfSpec, psk: bytes, signed: bytes, received: bytes) -> None:
    """Raise AuthError unless `received` is the shared key MIC; compared in constant time."""
    expected = psk_auth(prf, psk, signed)
    if not hmac.compare_digest(expected, bytes(received)):
        raise AuthError("shared key MIC mismatch (wrong pre-shared key or tampered exchange)")


# -------------------------------------------------------------------------------- digital signature

_ECDSA = "ecdsa"
_ED25519 = "ed25519"
_RSA = "rsa"


@dataclass(frozen=True, slots=True)
class SignatureScheme:
    """One RFC 7427 signature algorithm: its AlgorithmIdentifier DER and what it needs."""

    name: str
    algorithm_identifier: bytes
    hash_algorithm: HashAlgorithm
    key_kind: str  # "ecdsa" | "ed25519" | "rsa"
    pss: bool = False

    def __str__(self) -> str:
        return self.name


# RFC 7427 Appendix A.3.3-A.3.5 (ECDSA: the hash is independent of the curve; signature is DER
# Ecdsa-Sig-Value per RFC 3279, unlike auth methods 9-11).
ECDSA_SHA256 = SignatureScheme(
    "ecdsa-with-sha256", bytes.fromhex("300a06082a8648ce3d040302"), HashAlgorithm.SHA2_256, _ECDSA
)
ECDSA_SHA384 = SignatureScheme(
    "ecdsa-with-sha384", bytes.fromhex("300a06082a8648ce3d040303"), HashAlgorithm.SHA2_384, _ECDSA
)
ECDSA_SHA512 = SignatureScheme(
    "ecdsa-with-sha512", bytes.fromhex("300a06082a8648ce3d040304"), HashAlgorithm.SHA2_512, _ECDSA
)


def _rsa_pss_identifier(hash_oid_last: int, salt_length: int) -> bytes:
    """RSASSA-PSS AlgorithmIdentifier DER with hash = MGF1 hash = SHA-2 (OID arc 2.16.840.1.101.3.4.2.x,
    parameters NULL), the given salt length and trailer 1, as RFC 7427 A.4.3 gives it for SHA-256 and
    strongSwan and libreswan encode it for SHA-384/512 (salt length = hash length)."""
    return bytes.fromhex(
        "3041"  # SEQUENCE AlgorithmIdentifier
        "06092a864886f70d01010a"  # id-RSASSA-PSS
        "3034"  # RSASSA-PSS-params
        f"a00f300d06096086480165030402{hash_oid_last:02x}"
        "0500"  # [0] hashAlgorithm, NULL
        "a11c301a06092a864886f70d010108"  # [1] maskGenAlgorithm id-mgf1
        f"300d06096086480165030402{hash_oid_last:02x}"
        "0500"  # ... with the same hash, NULL
        f"a2030201{salt_length:02x}"  # [2] saltLength
    )


# RFC 7427 Appendix A.4.3: RSASSA-PSS, SHA-256, MGF1 with SHA-256, salt length 32, trailer 1.
RSA_PSS_SHA256 = SignatureScheme(
    "rsassa-pss-sha256", _rsa_pss_identifier(1, 32), HashAlgorithm.SHA2_256, _RSA, pss=True
)
# The same with SHA-384 / SHA-512: what charon signs with by default when we announce those hashes.
RSA_PSS_SHA384 = SignatureScheme(
    "rsassa-pss-sha384", _rsa_pss_identifier(2, 48), HashAlgorithm.SHA2_384, _RSA, pss=True
)
RSA_PSS_SHA512 = SignatureScheme(
    "rsassa-pss-sha512", _rsa_pss_identifier(3, 64), HashAlgorithm.SHA2_512, _RSA, pss=True
)
# RFC 7427 Appendix A.1.2: PKCS #1 v1.5 with SHA-256; known so that a deployment talking to RSA-only
# gear can allow it explicitly, never allowed by default.
RSA_PKCS1_SHA256 = SignatureScheme(
    "sha256WithRSAEncryption", bytes.fromhex("300d06092a864886f70d01010b0500"), HashAlgorithm.SHA2_256, _RSA
)
# RFC 8420 §2: id-Ed25519 without parameters; the "hash" is Identity (the message is signed whole).
ED25519 = SignatureScheme("ed25519", bytes.fromhex("300506032b6570"), HashAlgorithm.IDENTITY, _ED25519)

SCHEMES: tuple[SignatureScheme, ...] = (
    ECDSA_SHA256,
    ECDSA_SHA384,
    ECDSA_SHA512,
    ED25519,
    RSA_PSS_SHA256,
    RSA_PSS_SHA384,
    RSA_PSS_SHA512,
    RSA_PKCS1_SHA256,
)
_BY_ALG_ID = {s.algorithm_identifier: s for s in SCHEMES}
DEFAULT_ALLOWED_SCHEMES: frozenset[SignatureScheme] = frozenset(
    {ECDSA_SHA256, ECDSA_SHA384, ECDSA_SHA512, ED25519, RSA_PSS_SHA256, RSA_PSS_SHA384, RSA_PSS_SHA512}
)
# What we announce in SIGNATURE_HASH_ALGORITHMS, strongest first.
DEFAULT_HASH_PREFERENCE: tuple[HashAlgorithm, ...] = (
    HashAlgorithm.SHA2_512,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_256,
    HashAlgorithm.IDENTITY,
)

_HASH_CLASS = {
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def _key_kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return _ECDSA
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return _ED25519
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return _RSA
    raise AuthError(f"unsupported key type {type(key).__name__} for digital signature authentication")


def _pss_padding(scheme: SignatureScheme) -> padding.PSS:
    """MGF1 with the signature's own hash and a salt as long as that hash (what the identifier says)."""
    h = _HASH_CLASS[scheme.hash_algorithm]()
    return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)


def choose_scheme(
    private_key: PrivateKey,
    peer_hashes: Iterable[int] | None,
    allowed: Iterable[SignatureScheme] = DEFAULT_ALLOWED_SCHEMES,
) -> SignatureScheme:
    """Pick the scheme to sign with: fits our key, allowed locally, its hash announced by the peer.

    `peer_hashes` is the parsed SIGNATURE_HASH_ALGORITHMS of the peer, or None when it sent none — then
    method 14 must not be used (RFC 7427 §4) and we refuse rather than guess.
    """
    if peer_hashes is None:
        raise AuthError("peer sent no SIGNATURE_HASH_ALGORITHMS; cannot use digital signature auth (14)")
    offered = set(peer_hashes)
    kind = _key_kind(private_key)
    allowed_set = set(allowed)
    # PSS before PKCS #1 v1.5; the hash that fits the key's strength (as strongSwan picks it), then
    # the strongest
    want = _fitting_digest_bits(private_key)
    for scheme in sorted(
        (s for s in SCHEMES if s in allowed_set and s.key_kind == kind),
        key=lambda s: (-int(s.pss), _digest_mismatch(s, want), -_strength(s.hash_algorithm)),
    ):
        if scheme.hash_algorithm in offered:
            return scheme
    names = ", ".join(_hash_name(h) for h in sorted(offered)) or "none"
    raise AuthError(f"no common signature hash for a {kind} key (peer offers: {names})")


def _fitting_digest_bits(key: PrivateKey) -> int:
    """The digest size that matches the key: P-256/SHA-256, P-384/SHA-384, P-521/SHA-512; RSA up to 3072
    bits SHA-256, up to 7680 SHA-384, else SHA-512 (NIST SP 800-57 strengths); 0 for Ed25519."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        bits = key.curve.key_size
        return 256 if bits <= 256 else 384 if bits <= 384 else 512
    if isinstance(key, rsa.RSAPrivateKey):
        bits = key.key_size
        return 256 if bits <= 3072 else 384 if bits <= 7680 else 512
    return 0


def _digest_mismatch(scheme: SignatureScheme, want: int) -> int:
    """0 when the scheme's hash has the wanted size (or any size fits)."""
    if not want:
        return 0
    digest_bits = {HashAlgorithm.SHA2_256: 256, HashAlgorithm.SHA2_384: 384, HashAlgorithm.SHA2_512: 512}
    return 0 if digest_bits.get(scheme.hash_algorithm) == want else 1


def _strength(h: HashAlgorithm) -> int:
    """Ordering key: SHA-1 < SHA2-256 < SHA2-384 < SHA2-512; Identity (value 5) is not a hash, so 0."""
    return 0 if h == HashAlgorithm.IDENTITY else int(h)


def _hash_name(h: int) -> str:
    try:
        return HashAlgorithm(h).name
    except ValueError:
        return str(h)


def sign_auth(private_key: PrivateKey, signed: bytes, scheme: SignatureScheme) -> bytes:
    """Authentication Data for auth method 14: len(AlgorithmIdentifier) | AlgorithmIdentifier | signature."""
    if _key_kind(private_key) != scheme.key_kind:
        raise AuthError(f"scheme {scheme} does not fit a {_key_kind(private_key)} key")
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        sig = private_key.sign(signed, ec.ECDSA(_HASH_CLASS[scheme.hash_algorithm]()))  # DER, RFC 7427 §3
    elif isinstance(private_key, ed25519.Ed25519PrivateKey):
        sig = private_key.sign(signed)
    else:
        assert isinstance(private_key, rsa.RSAPrivateKey)
        pad = _pss_padding(scheme) if scheme.pss else padding.PKCS1v15()
        sig = private_key.sign(signed, pad, _HASH_CLASS[scheme.hash_algorithm]())
    alg = scheme.algorithm_identifier
    return bytes([len(alg)]) + alg + sig


def parse_signature_auth_data(
    auth_data: bytes, allowed: Iterable[SignatureScheme] = DEFAULT_ALLOWED_SCHEMES
) -> tuple[SignatureScheme, bytes]:
    """Split method-14 Authentication Data; refuse an AlgorithmIdentifier that is not allowed here.

    AlgorithmIdentifiers are compared as whole DER byte strings (as strongSwan and libreswan do): a
    re-encoding with other parameters is a different algorithm for us.
    """
    data = bytes(auth_data)
    if len(data) < 1:
        raise AuthError("empty signature authentication data")
    alg_len = data[0]
    if alg_len == 0 or len(data) < 1 + alg_len + 1:
        raise AuthError(
            f"signature authentication data truncated ({len(data)} octets, ASN.1 length {alg_len})"
        )
    alg = data[1 : 1 + alg_len]
    signature = data[1 + alg_len :]
    if len(signature) > _MAX_SIGNATURE:
        raise AuthError(f"signature too long ({len(signature)} octets)")
    scheme = _BY_ALG_ID.get(alg)
    if scheme is None:
        raise AuthError(f"unknown signature AlgorithmIdentifier {alg.hex()}")
    if scheme not in set(allowed):
        raise AuthError(f"signature algorithm {scheme} not allowed by local policy")
    return scheme, signature


def verify_signature_auth(
    public_key: PublicKey,
    signed: bytes,
    auth_data: bytes,
    allowed: Iterable[SignatureScheme] = DEFAULT_ALLOWED_SCHEMES,
    announced_hashes: Sequence[int] | None = None,
) -> SignatureScheme:
    """Verify method-14 Authentication Data with the peer's (already validated) public key.

    `announced_hashes`, when given, is what *we* sent in SIGNATURE_HASH_ALGORITHMS: a signature made with
    a hash we did not announce is refused (RFC 7427 §4). Returns the scheme that verified.
    """
    scheme, signature = parse_signature_auth_data(auth_data, allowed)
    if announced_hashes is not None and scheme.hash_algorithm not in set(announced_hashes):
        raise AuthError(f"peer signed with {scheme.hash_algorithm.name}, which we did not announce")
    kind = _key_kind(public_key)
    if kind != scheme.key_kind:
        raise AuthError(f"AUTH uses {scheme} but the peer's certificate holds a {kind} key")
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, signed, ec.ECDSA(_HASH_CLASS[scheme.hash_algorithm]()))
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, signed)
        else:
            assert isinstance(public_key, rsa.RSAPublicKey)
            pad = _pss_padding(scheme) if scheme.pss else padding.PKCS1v15()
            public_key.verify(signature, signed, pad, _HASH_CLASS[scheme.hash_algorithm]())
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise AuthError(f"{scheme} signature does not verify with the peer's public key") from None
    return scheme


# ------------------------------------------------------------------------ SIGNATURE_HASH_ALGORITHMS


def build_signature_hash_algorithms(algorithms: Iterable[int] = DEFAULT_HASH_PREFERENCE) -> bytes:
    """Notify data for SIGNATURE_HASH_ALGORITHMS (16431): a list of 2-octet hash algorithm ids."""
    out = b"".join(_HASH_ID.pack(int(a)) for a in algorithms)
    if not out:
        raise AuthError("SIGNATURE_HASH_ALGORITHMS needs at least one hash algorithm")
    return out


def parse_signature_hash_algorithms(data: bytes) -> tuple[int, ...]:
    """Parse the notify data; ids we do not know are kept (as ints) and simply never match."""
    data = bytes(data)
    if not data or len(data) % _HASH_ID.size:
        raise AuthError(f"SIGNATURE_HASH_ALGORITHMS data length {len(data)} is not a positive multiple of 2")
    values = tuple(v for (v,) in _HASH_ID.iter_unpack(data))
    return tuple(HashAlgorithm(v) if v in HashAlgorithm._value2member_map_ else v for v in values)
