"""Agent identity: its key (generated here, never sent anywhere), certificate and CA, and enrollment.

Owns the identity files in the agent state dir (node-key.pem 0600, node.pem, ca.pem) and the Enroll
call; renewal (a new key pair each time, crash-safe swap of key and certificate) is renewal.py's.
On first contact the agent trusts the controller either through a CA file it was given or by pinning
the CA certificate's SHA-256 (from `CreateToken`, kubeadm style): it reads the TLS chain the controller
presents without verifying it, keeps only the certificate whose hash matches the pin, and then talks
gRPC with full verification against that CA.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from meshsec.api.v1 import agent_pb2, agent_pb2_grpc

SERVER_NAME = "meshsec-controller"  # the DNS SAN every controller certificate carries
CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", SERVER_NAME),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # A full-mesh snapshot grows ~260 bytes per peer (2.6 MB at 10,000): past gRPC's 4 MiB default at
    # ~15,000 peers.  Same limit as the controller's GRPC_MESSAGE_OPTIONS.
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class EnrollError(Exception):
    """Enrollment failed; the message is one line for the operator.  retryable: worth trying again."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def grpc_target(address: str) -> str:
    """unix:///path and host:port pass through; tcp://host:port loses its scheme."""
    return address.removeprefix("tcp://")


def enroll_address(controller: str) -> str:
    """The enrollment endpoint beside a controller address (the first of a comma-separated list):
    unix .../enroll.sock, or TCP port + 1."""
    target = grpc_target(controller.split(",")[0].strip())
    if target.startswith("unix:"):
        path = target.removeprefix("unix:").removeprefix("//")
        return "unix://" + os.path.join(os.path.dirname(path), "enroll.sock")
    host, _, port = target.rpartition(":")
    return f"{host}:{int(port) + 1}"


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class AgentIdentity:
    """The identity files of one agent, under its state dir."""

    directory: Path

    @property
    def key_path(self) -> Path:
        return self.directory / "node-key.pem"

    @property
    def cert_path(self) -> Path:
        return self.directory / "node.pem"

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    def enrolled(self) -> bool:
        return self.key_path.exists() and self.cert_path.exists() and self.ca_path.exists()

    def node_name(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_path.read_bytes(),
            private_key=self.key_path.read_bytes(),
            certificate_chain=self.cert_path.read_bytes(),
        )

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The node key, created (P-256, mode 0600) on first use; it never leaves this host."""
        if self.key_path.exists():
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return key
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write(self.key_path, pem, 0o600)
        return key

    def csr(self, node: str) -> bytes:
        req = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
            .sign(self.private_key(), hashes.SHA256())
        )
        return req.public_bytes(serialization.Encoding.PEM)


def fetch_pinned_ca(address: str, ca_sha256: str, timeout: float = 5.0) -> bytes:
    """The CA certificate (PEM) from the controller's TLS chain whose SHA-256 equals the pin."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is trusted from this connection except the pinned hash
    ctx.set_alpn_protocols(["h2"])
    target = grpc_target(address)
    try:
        if target.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(target.removeprefix("unix:").removeprefix("//"))
        else:
            host, _, port = target.rpartition(":")
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        with ctx.wrap_socket(sock, server_hostname=SERVER_NAME) as tls:
            chain = tls._sslobj.get_unverified_chain() or []  # type: ignore[attr-defined]
            ders = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]
    except (OSError, ValueError) as exc:
        raise EnrollError(f"cannot reach controller at {address}: {exc}", retryable=True) from None
    want = ca_sha256.lower().removeprefix("sha256:")
    for der in ders:
        if hmac.compare_digest(hashlib.sha256(der).hexdigest(), want):
            return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    raise EnrollError(
        f"controller at {address} presents no CA with sha256 {want}: wrong --ca-hash or not our controller"
    )


async def enroll(
    address: str,
    node: str,
    token: str,
    identity: AgentIdentity,
    *,
    ca_pem: bytes | None = None,
    ca_sha256: str | None = None,
    timeout: float = 10.0,
) -> None:
    """Exchange the token and a CSR for a certificate; writes node.pem and ca.pem on success."""
    if ca_pem is None:
        if not ca_sha256:
            raise EnrollError("enrollment needs --ca-hash (from `meshctl token create`) or --ca-file")
        ca_pem = await asyncio.to_thread(fetch_pinned_ca, address, ca_sha256, timeout)
    csr = identity.csr(node)
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(grpc_target(address), creds, options=CHANNEL_OPTIONS) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        try:
            resp = await stub.Enroll(
                agent_pb2.EnrollRequest(node=node, token=token, csr_pem=csr), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            retry = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            raise EnrollError(
                f"enrollment at {address} failed: {exc.code().name}: {exc.details()}", retryable=retry
            ) from None
    key_pub = (
        identity.private_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cert = x509.load_pem_x509_certificate(resp.certificate_pem)
    if (
        cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        != key_pub
    ):
        raise EnrollError("controller returned a certificate for another key")
    _write(identity.ca_path, resp.ca_bundle_pem or ca_pem, 0o644)
    _write(identity.cert_path, resp.certificate_pem, 0o644)
