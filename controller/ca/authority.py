"""CertificateAuthority: the mesh CA, its storage in etcd, and the certificates it issues.

Owns certificate profiles: every certificate's subject O is its role (meshsec-node, meshsec-admin,
meshsec-controller) and CN its name, so the API layer authorizes by reading the peer certificate
alone.  Node certificates carry SAN DNS <name> and <name>.meshsec (the default IKE identity) plus any
identity the spec names.  Controller certificates carry SAN DNS "meshsec-controller" (the TLS name every
client verifies), "localhost" and IP 127.0.0.1.  ECDSA P-256 throughout.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from meshsec.controller.ca.kek import Sealer
from meshsec.controller.store import Keys, Store

ROLE_NODE = "meshsec-node"
ROLE_ADMIN = "meshsec-admin"
ROLE_CONTROLLER = "meshsec-controller"
SERVER_NAME = "meshsec-controller"
BACKDATE = dt.timedelta(minutes=5)  # notBefore is set this far back: clocks of agents are not perfect


class CANotInitialized(Exception):
    """etcd holds no CA yet: `meshsec-controller init` has not run against this etcd."""


class CsrInvalid(Exception):
    """A CSR that does not parse, is not self-signed correctly, or has a weak key."""


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is."""

    role: str
    name: str
    fingerprint: str
    not_after: dt.datetime


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex: the key of certs/issued and certs/revoked."""
    return cert.fingerprint(hashes.SHA256()).hex()


def identity_of(cert_pem: bytes) -> Identity:
    cert = x509.load_pem_x509_certificate(cert_pem)
    subject = cert.subject

    def attr(oid: x509.ObjectIdentifier) -> str:
        values = subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return Identity(
        attr(NameOID.ORGANIZATION_NAME),
        attr(NameOID.COMMON_NAME),
        fingerprint(cert),
        cert.not_valid_after_utc,
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    """An in-memory CA: key + certificate; `bundle_pem` is every CA certificate to trust."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, bundle_pem: bytes) -> None:
        self.cert = cert
        self.key = key
        self.bundle_pem = bundle_pem

    @classmethod
    def generate(
        cls, common_name: str = "meshsec CA", lifetime: dt.timedelta = dt.timedelta(days=3650)
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key, _pem(cert))

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def sha256(self) -> str:
        """What CreateToken returns and `meshsec-agent --ca-hash` pins (kubeadm style): SHA-256 of DER."""
        return fingerprint(self.cert)

    def _issue(
        self,
        public_key: object,
        role: str,
        name: str,
        lifetime: dt.timedelta,
        dns: list[str],
        ips: list[str] = (),  # type: ignore[assignment]
    ) -> x509.Certificate:
        now = _now()
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns)]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, role),
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + lifetime, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def sign_node_csr(
        self,
        csr_pem: bytes,
        node: str,
        lifetime: dt.timedelta,
        extra_dns: list[str] = (),  # type: ignore[assignment]
    ) -> x509.Certificate:
        """A node certificate for the CSR's key; the CSR's own subject and SANs are ignored."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise CsrInvalid("csr_pem is not a PEM PKCS#10 request") from None
        if not csr.is_signature_valid:
            raise CsrInvalid("CSR signature does not verify")
        key = csr.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
            raise CsrInvalid("RSA keys must have at least 2048 bits")
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
            raise CsrInvalid("CSR key must be ECDSA, Ed25519 or RSA")
        return self._issue(key, ROLE_NODE, node, lifetime, [node, f"{node}.meshsec", *extra_dns])

    def issue_keypair(
        self,
        role: str,
        name: str,
        lifetime: dt.timedelta,
        dns: list[str] = (),
        ips: list[str] = (),  # type: ignore[assignment]
    ) -> tuple[bytes, bytes]:
        """A fresh key and certificate (admin, controller): (cert_pem, key_pem)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(key.public_key(), role, name, lifetime, list(dns), list(ips))
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return _pem(cert), key_pem

    def issue_server(
        self, replica: str, lifetime: dt.timedelta = dt.timedelta(days=30)
    ) -> tuple[bytes, bytes]:
        """This replica's TLS server certificate: SAN meshsec-controller, localhost, 127.0.0.1."""
        return self.issue_keypair(
            ROLE_CONTROLLER, replica, lifetime, [SERVER_NAME, "localhost"], ["127.0.0.1"]
        )


# -- storage in etcd -------------------------------------------------------------------------------


async def load_ca(store: Store, sealer: Sealer, *, revision: int = 0) -> CertificateAuthority:
    cert_kv = await store.get(Keys.CA_CERT, revision=revision)
    key_kv = await store.get(Keys.CA_KEY, revision=revision)
    if cert_kv is None or key_kv is None:
        raise CANotInitialized("etcd holds no meshsec CA; run `meshsec-controller init` first")
    bundle = cert_kv.value
    cert = x509.load_pem_x509_certificates(bundle)[0]
    key = serialization.load_pem_private_key(sealer.open(key_kv.value, Keys.CA_KEY), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return CertificateAuthority(cert, key, bundle)


async def load_or_create_ca(store: Store, sealer: Sealer) -> tuple[CertificateAuthority, bool]:
    """The CA in etcd, created (with the PSK master) in one txn if absent; True if created here."""
    try:
        return await load_ca(store, sealer), False
    except CANotInitialized:
        pass
    ca = CertificateAuthority.generate()
    key_pem = ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    res = await store.txn(
        [store.absent(Keys.CA_CERT)],
        [
            store.op_put(Keys.CA_CERT, ca.cert_pem),
            store.op_put(Keys.CA_KEY, sealer.seal(key_pem, Keys.CA_KEY)),
            store.op_put(Keys.PSK_MASTER, sealer.seal(secrets.token_bytes(32), Keys.PSK_MASTER)),
        ],
    )
    if not res.succeeded:  # another init won the race: use theirs
        return await load_ca(store, sealer), False
    return ca, True


async def load_psk_master(store: Store, sealer: Sealer, *, revision: int = 0) -> bytes:
    kv = await store.get(Keys.PSK_MASTER, revision=revision)
    if kv is None:
        raise CANotInitialized("etcd holds no PSK master secret; run `meshsec-controller init` first")
    return sealer.open(kv.value, Keys.PSK_MASTER)
