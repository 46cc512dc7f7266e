"""The engine's use of auth.py, certs.py and identity.py: which AUTH (and CERTs) we send, and whether
the peer's ID, certificate chain and AUTH are acceptable.

Owns the policy glue only (PSK when `psk` is configured, RFC 7427 digital signatures when
`private_key`/`trust` are); the cryptography lives in auth.py, path validation in certs.py, ID rules
in identity.py. Returns a reason string for every refusal so the session logs one precise line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509

from . import auth, certs
from . import payloads as P
from .config import IkeConfig
from .constants import AuthMethod, Notify
from .identity import Identity, IdentityError, IdentityPattern


def wants_signatures(cfg: IkeConfig) -> bool:
    """Can we sign or verify RFC 7427 signatures?  A responder whose peer is decided at IKE_AUTH
    (cfg.resolve) says yes: the peer it resolves to may use certificates."""
    return cfg.private_key is not None or cfg.trust is not None or cfg.resolve is not None


def init_notifies(cfg: IkeConfig) -> list[P.Payload]:
    """SIGNATURE_HASH_ALGORITHMS for IKE_SA_INIT (RFC 7427 §4) when we can sign or verify."""
    if not wants_signatures(cfg):
        return []
    return [P.Notify(Notify.SIGNATURE_HASH_ALGORITHMS, data=auth.build_signature_hash_algorithms())]


def certreqs(cfg: IkeConfig) -> list[P.Payload]:
    if cfg.trust is None:
        return []
    return [P.CertReq(*cfg.trust.certreq())]


def peer_hashes(n: dict[int, P.Notify]) -> tuple[int, ...] | None:
    sha = n.get(Notify.SIGNATURE_HASH_ALGORITHMS)
    if sha is None:
        return None
    try:
        return auth.parse_signature_hash_algorithms(sha.data)
    except auth.AuthError:
        return None


def local_auth(
    cfg: IkeConfig,
    prf_id: int,
    message: bytes,
    peer_nonce: bytes,
    sk_p: bytes,
    id_body: bytes,
    hashes: Sequence[int] | None,
) -> list[P.Payload]:
    """[CERT...,] AUTH for our side (RFC 7296 §2.15 octets). Raises auth.AuthError."""
    octets = auth.signed_octets(message, peer_nonce, prf_id, sk_p, id_body)
    if cfg.private_key is not None:
        scheme = auth.choose_scheme(cfg.private_key, hashes)
        cert_pl: list[P.Payload] = [P.Cert(*certs.cert_payload(c)) for c in cfg.cert_chain]
        sig = auth.sign_auth(cfg.private_key, octets, scheme)
        return [*cert_pl, P.Auth(AuthMethod.DIGITAL_SIGNATURE, sig)]
    if cfg.psk is None:
        raise auth.AuthError("neither a PSK nor a private key is configured")
    return [P.Auth(AuthMethod.SHARED_KEY_MIC, auth.psk_auth(prf_id, cfg.psk, octets))]


def _id_ok(cfg: IkeConfig, got: Identity) -> str | None:
    want: Any = cfg.remote_id
    if want is None:
        return None
    if isinstance(want, IdentityPattern):
        return None if want.matches(got) else f"peer identity {got} does not match {want}"
    if (got.id_type, got.data) != (want[0], want[1]):
        return f"peer identity {got} is not the configured {Identity(want[0], want[1])}"
    return None


def check_peer(
    cfg: IkeConfig,
    prf_id: int,
    id_payload: P.IDi | P.IDr | None,
    au: P.Auth | None,
    cert_payloads: Sequence[P.Cert],
    message: bytes,
    nonce: bytes,
    sk_p: bytes,
    wall_now: float,
) -> tuple[Identity | None, str | None]:
    """(identity, None) when the peer authenticated, else (None, which check failed)."""
    if id_payload is None or au is None:
        return None, "peer sent no ID or no AUTH payload"
    try:
        got = Identity(id_payload.id_type, id_payload.data)
    except IdentityError as exc:
        return None, f"unusable peer ID: {exc}"
    why = _id_ok(cfg, got)
    if why:
        return None, why
    octets = auth.signed_octets(message, nonce, prf_id, sk_p, id_payload.body())
    try:
        if au.method == AuthMethod.SHARED_KEY_MIC:
            if cfg.psk is None:
                return None, "peer uses a shared key, but none is configured for it"
            auth.verify_psk_auth(prf_id, cfg.psk, octets, au.data)
        elif au.method == AuthMethod.DIGITAL_SIGNATURE:
            if cfg.trust is None:
                return None, "peer uses a certificate, but no trusted CA is configured"
            leaf, extra = certs.chain_from_cert_payloads([(c.encoding, c.data) for c in cert_payloads])
            revoked = cfg.revoked if cfg.revoked is not None else certs.NO_REVOCATIONS
            certs.verify_peer(leaf, extra, cfg.trust, wall_now, got, revoked)
            auth.verify_signature_auth(
                leaf.public_key(),
                octets,
                au.data,  # type: ignore[arg-type]
                announced_hashes=auth.DEFAULT_HASH_PREFERENCE,
            )
        else:
            return None, f"peer uses auth method {au.method}; we accept 2 (PSK) and 14 (RFC 7427)"
    except (auth.AuthError, certs.CertificateError) as exc:
        return None, str(exc)
    return got, None


def authenticated_leaf(au: P.Auth | None, cert_payloads: Sequence[P.Cert]) -> x509.Certificate | None:
    """The leaf certificate the peer authenticated with, for a peer check_peer accepted (None for PSK).

    The session keeps it so that its owner can act on revocations pushed after the SA is up (RFC 7296
    leaves that to local policy; the meshsec agent tears such SAs down).
    """
    if au is None or au.method != AuthMethod.DIGITAL_SIGNATURE or not cert_payloads:
        return None
    try:
        leaf, _ = certs.chain_from_cert_payloads([(c.encoding, c.data) for c in cert_payloads])
    except certs.CertificateError:
        return None
    return leaf
