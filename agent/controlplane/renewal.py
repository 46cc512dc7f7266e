"""Node certificate renewal: when to renew (pure), and doing it over AgentService.Renew (I/O).

Owns the renewal schedule, the new key pair per renewal, and the crash-safe swap of node-key.pem and
node.pem (the files AgentIdentity in enroll.py defines; that module stays the owner of enrollment).
It never touches IKE: after a swap it calls ``on_renewed`` so the agent hands the new pair to the IKE
engine for NEW IKE_AUTHs, while established SAs keep running (no tunnel flap).

When: at two thirds of the certificate's lifetime, measured from when the agent obtained it (the CA
backdates notBefore by minutes for clock skew, which would make a seconds-long certificate look spent
at once), with a little jitter so a fleet enrolled together does not renew in the same second; at once
(jittered over a short window) when the certificate was not signed by the CA that signs now (the first
CA of the trusted bundle): that is how a CA rollover moves every node to the new CA.  Failed attempts
retry with jittered exponential backoff, capped so several attempts fit before expiry.

Swap: write node-key.pem.new and node.pem.new (fsynced), then rename the key, then the certificate.
A crash in between leaves node.pem.new, which ``recover_pending`` (run before the files are read)
completes, so the key and certificate on disk always belong together.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from meshsec.agent.controlplane.enroll import AgentIdentity
from meshsec.api.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

UTC = dt.UTC


class RenewalError(Exception):
    """A Renew answer that must not be installed (wrong key, wrong node, not signed by a trusted CA)."""


# -- when to renew (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CertInfo:
    """What the schedule needs to know about the current certificate."""

    not_before: dt.datetime
    not_after: dt.datetime
    obtained_at: dt.datetime | None = None  # when the agent got it (None: unknown, use notBefore)
    issuer_key_id: bytes | None = None  # AuthorityKeyIdentifier of the certificate

    @classmethod
    def of(cls, cert: x509.Certificate, obtained_at: dt.datetime | None = None) -> CertInfo:
        return cls(cert.not_valid_before_utc, cert.not_valid_after_utc, obtained_at, authority_key_id(cert))


@dataclass(frozen=True)
class RenewalPolicy:
    fraction: float = 2 / 3  # renew once this share of the lifetime has passed
    jitter: float = 0.05  # spread the renewal over this share of the lifetime after the due time
    ca_switch_window: dt.timedelta = dt.timedelta(minutes=5)  # spread renewals after a CA switch
    retry_initial: float = 1.0  # seconds
    retry_max: float = 300.0  # seconds


def authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def subject_key_id(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # type: ignore[arg-type]


def signing_ca_key_id(bundle_pem: bytes | str | None) -> bytes | None:
    """Key id of the CA that signs now: the first certificate of the trusted bundle."""
    if not bundle_pem:
        return None
    data = bundle_pem.encode() if isinstance(bundle_pem, str) else bundle_pem
    try:
        cas = x509.load_pem_x509_certificates(data)
    except ValueError:
        return None
    return subject_key_id(cas[0]) if cas else None


def due_at(info: CertInfo, policy: RenewalPolicy = RenewalPolicy()) -> dt.datetime:
    """The moment `fraction` of the certificate's effective lifetime has passed (no jitter)."""
    start = info.not_before
    if info.obtained_at is not None:
        start = min(max(start, info.obtained_at), info.not_after)
    return start + (info.not_after - start) * policy.fraction


class RenewalSchedule:
    """Decides when the next renewal attempt happens; time and randomness come in as arguments.

    An attempt time is drawn once and kept until what it was drawn for changes (the certificate, the
    signing CA, the failure count) or ``attempted`` is called.  Callers ask again after every sleep
    slice: a time drawn afresh each call ("now + a random offset") would never become due.
    """

    def __init__(self, policy: RenewalPolicy = RenewalPolicy(), rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self._kept: tuple[tuple[CertInfo, int, bytes | None], dt.datetime] | None = None

    def next_attempt(
        self, info: CertInfo, now: dt.datetime, *, failures: int = 0, signing_ca: bytes | None = None
    ) -> dt.datetime:
        """When to attempt: the kept time, or `now` once that has come (an overdue attempt is due now)."""
        key = (info, failures, signing_ca)
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, self._draw(info, now, failures, signing_ca))
        return max(now, self._kept[1])

    def attempted(self) -> None:
        """An attempt was made: the next call draws a new time."""
        self._kept = None

    def _draw(self, info: CertInfo, now: dt.datetime, failures: int, signing_ca: bytes | None) -> dt.datetime:
        p = self.policy
        remaining = info.not_after - now
        if failures:
            backoff = min(p.retry_max, p.retry_initial * 2 ** (failures - 1))
            backoff = min(backoff, max(1.0, remaining.total_seconds() / 4))
            return now + dt.timedelta(seconds=backoff * self._rng.uniform(0.5, 1.0))
        if signing_ca is not None and info.issuer_key_id is not None and info.issuer_key_id != signing_ca:
            window = min(p.ca_switch_window, max(remaining / 6, dt.timedelta(0)))
            return now + window * self._rng.random()
        due = due_at(info, p)
        spread = (info.not_after - due) * min(p.jitter / max(1e-9, 1 - p.fraction), 0.5)
        return max(now, due + spread * self._rng.random())


# -- doing it (I/O) ----------------------------------------------------------------------------------


def _pending(identity: AgentIdentity) -> tuple[Path, Path]:
    return (
        identity.key_path.with_name(identity.key_path.name + ".new"),
        identity.cert_path.with_name(identity.cert_path.name + ".new"),
    )


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_pending(identity: AgentIdentity) -> bool:
    """Finish (or drop) a swap a crash interrupted; True when a renewed pair was completed."""
    key_new, cert_new = _pending(identity)
    if cert_new.exists():  # the pair was complete on disk before the first rename
        if key_new.exists():
            os.replace(key_new, identity.key_path)
        os.replace(cert_new, identity.cert_path)
        _fsync_dir(identity.directory)
        return True
    if key_new.exists():  # crashed while writing: the old pair is intact
        key_new.unlink()
    return False


def swap_identity(identity: AgentIdentity, key_pem: bytes, cert_pem: bytes) -> None:
    """Install a new key and certificate so that a crash at any point leaves a matching pair."""
    key_new, cert_new = _pending(identity)
    _write_synced(key_new, key_pem, 0o600)
    _write_synced(cert_new, cert_pem, 0o644)
    _fsync_dir(identity.directory)
    os.replace(key_new, identity.key_path)
    os.replace(cert_new, identity.cert_path)
    _fsync_dir(identity.directory)


def update_trust(identity: AgentIdentity, bundle_pem: bytes) -> bool:
    """Write ca.pem when the trusted bundle changed (Sync's trusted_ca_pem during a rollover)."""
    if not bundle_pem or (identity.ca_path.exists() and identity.ca_path.read_bytes() == bundle_pem):
        return False
    tmp = identity.ca_path.with_name(identity.ca_path.name + ".tmp")
    _write_synced(tmp, bundle_pem, 0o644)
    os.replace(tmp, identity.ca_path)
    return True


def _verify_issued(cert: x509.Certificate, cas: list[x509.Certificate]) -> None:
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        pub = ca.public_key()
        try:
            if isinstance(pub, ec.EllipticCurvePublicKey):
                pub.verify(
                    cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
                )  # type: ignore[arg-type]
            elif isinstance(pub, rsa.RSAPublicKey):
                pub.verify(
                    cert.signature,
                    cert.tbs_certificate_bytes,
                    padding.PKCS1v15(),
                    cert.signature_hash_algorithm,  # type: ignore[arg-type]
                )
            else:
                continue
            return
        except InvalidSignature:
            continue
    raise RenewalError("renewed certificate is not signed by any CA of the trusted bundle")


@dataclass(frozen=True)
class Renewed:
    """What on_renewed gets: the new pair (PEM) and the bundle to trust."""

    cert_pem: bytes
    key_pem: bytes
    ca_bundle_pem: bytes


OnRenewed = Callable[[Renewed], Awaitable[None] | None]


class CertificateRenewer:
    """Renews the identity's certificate on schedule; run(stub) until cancelled (one per connection)."""

    def __init__(
        self,
        identity: AgentIdentity,
        *,
        schedule: RenewalSchedule | None = None,
        signing_ca: Callable[[], bytes | str | None] = lambda: None,
        on_renewed: OnRenewed | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(UTC),
        timeout: float = 10.0,
    ) -> None:
        self.identity = identity
        self.schedule = schedule or RenewalSchedule()
        self._signing_ca = signing_ca
        self._on_renewed = on_renewed
        self._clock = clock
        self._timeout = timeout
        self.failures = 0
        self.renewals = 0

    def info(self) -> CertInfo:
        recover_pending(self.identity)
        cert = x509.load_pem_x509_certificate(self.identity.cert_path.read_bytes())
        mtime = dt.datetime.fromtimestamp(self.identity.cert_path.stat().st_mtime, UTC)
        return CertInfo.of(cert, obtained_at=mtime)

    def next_attempt(self) -> dt.datetime:
        return self.schedule.next_attempt(
            self.info(),
            self._clock(),
            failures=self.failures,
            signing_ca=signing_ca_key_id(self._signing_ca()),
        )

    async def renew_once(self, stub: agent_pb2_grpc.AgentServiceStub) -> Renewed:
        """One Renew with a fresh key pair; installs the result only after checking it."""
        node = self.identity.node_name()
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        resp = await stub.Renew(agent_pb2.RenewRequest(csr_pem=csr), timeout=self._timeout)
        try:
            cert = x509.load_pem_x509_certificate(resp.certificate_pem)
            bundle = resp.ca_bundle_pem or self.identity.ca_path.read_bytes()
            cas = x509.load_pem_x509_certificates(bundle)
        except ValueError as exc:
            raise RenewalError(f"controller sent an unreadable certificate: {exc}") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(
            serialization.Encoding.DER, spki
        ):
            raise RenewalError("controller renewed a certificate for another key")
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cns or cns[0].value != node:
            raise RenewalError(f"controller renewed a certificate for another node (not {node!r})")
        _verify_issued(cert, cas)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        update_trust(self.identity, bundle)
        swap_identity(self.identity, key_pem, resp.certificate_pem)
        renewed = Renewed(resp.certificate_pem, key_pem, bundle)
        self.renewals += 1
        log.info("certificate of %s renewed (valid until %s)", node, cert.not_valid_after_utc.isoformat())
        if self._on_renewed is not None:
            result = self._on_renewed(renewed)
            if asyncio.iscoroutine(result):
                await result
        return renewed

    async def run(self, stub: agent_pb2_grpc.AgentServiceStub, *, max_sleep: float = 30.0) -> None:
        """Renew whenever due; sleeps in slices of max_sleep so a CA switch seen via Sync is noticed."""
        while True:
            wait = (self.next_attempt() - self._clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, max_sleep))
                continue
            self.schedule.attempted()  # whatever the outcome, the next attempt gets a time of its own
            try:
                renewed = await self.renew_once(stub)
                signing = signing_ca_key_id(self._signing_ca())
                issuer = authority_key_id(x509.load_pem_x509_certificate(renewed.cert_pem))
                if signing is not None and issuer != signing:
                    # the controller still signs with the old CA: back off instead of renewing in a loop
                    self.failures += 1
                    log.warning("renewed certificate is not from the signing CA yet; retrying later")
                else:
                    self.failures = 0
            except (grpc.aio.AioRpcError, RenewalError, OSError) as exc:
                self.failures += 1
                detail = (
                    f"{exc.code().name}: {exc.details()}"
                    if isinstance(exc, grpc.aio.AioRpcError)
                    else str(exc)
                )
                log.warning("certificate renewal failed (%s); attempt %d, retrying", detail, self.failures)
