"""An in-process fake AdminService on a unix socket with real mTLS (certificates made here)."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.timestamp_pb2 import Timestamp
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc, spec_pb2, status_pb2
from meshsec.controller.compiler import Credentials, plan
from meshsec.controller.spec import SpecInvalid, load_spec


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
    san: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


FAKE_CA_PEM = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"


def fake_psk(a: str, b: str) -> bytes:
    """A stand-in pair key (symmetric, 32 bytes) the export tests can recompute."""
    import hashlib

    return hashlib.sha256("|".join(sorted((a, b))).encode()).digest()


class FakeAdmin(admin_pb2_grpc.AdminServiceServicer):
    """Enough of AdminService for meshctl: spec in memory, canned status, admin-only by certificate CN."""

    def __init__(self) -> None:
        self.spec = spec_pb2.MeshSpec()
        self.version = 0
        self.tokens: list[admin_pb2.CreateTokenRequest] = []
        self.exports: list[admin_pb2.ExportRequest] = []

    def _admin(self, context: grpc.ServicerContext) -> None:
        cn = context.auth_context().get("x509_common_name", [b""])[0]
        if cn != b"admin":
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"this call needs an admin certificate, not {cn.decode()}"
            )

    def Apply(self, request, context):
        self._admin(context)
        try:
            new = load_spec(request.spec_yaml, request.filename)
        except SpecInvalid as exc:
            return admin_pb2.ApplyResponse(
                errors=[
                    admin_pb2.SpecError(file=e.file, line=e.line, field=e.field, reason=e.reason)
                    for e in exc.errors
                ]
            )
        if "server-only-problem" in request.spec_yaml:
            return admin_pb2.ApplyResponse(
                errors=[
                    admin_pb2.SpecError(
                        file=request.filename,
                        line=3,
                        field="nodes[0].name",
                        reason="node 'x' is enrolled elsewhere",
                    )
                ]
            )
        steps = plan(self.spec if self.version else None, new, Credentials("CA"))
        if request.dry_run:
            return admin_pb2.ApplyResponse(plan=steps)
        self.spec, self.version = new, self.version + 1
        return admin_pb2.ApplyResponse(plan=steps, version=self.version)

    def GetSpec(self, request, context):
        self._admin(context)
        return admin_pb2.GetSpecResponse(spec=self.spec, version=self.version)

    def ListNodes(self, request, context):
        self._admin(context)
        return admin_pb2.ListNodesResponse(
            nodes=[
                admin_pb2.NodeView(node=n, connected=n.name == "gw-berlin", applied_version=self.version)
                for n in self.spec.nodes
            ]
        )

    def GetNode(self, request, context):
        self._admin(context)
        for n in self.spec.nodes:
            if n.name == request.name:
                return n
        context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.name!r} not found")

    def DeleteNode(self, request, context):
        self._admin(context)
        for n in self.spec.nodes:
            if n.name == request.name:
                self.spec.nodes.remove(n)
                self.version += 1
                return admin_pb2.DeleteNodeResponse(version=self.version)
        context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.name!r} not found")

    def GetStatus(self, request, context):
        self._admin(context)
        up, failed = status_pb2.IKE_SA_STATE_ESTABLISHED, status_pb2.IKE_SA_STATE_FAILED
        nodes = [
            status_pb2.NodeStatus(
                node="a",
                applied_version=3,
                connected=True,
                peers=[
                    status_pb2.PeerStatus(
                        peer="b",
                        ike_state=up,
                        remote_endpoint="198.18.0.2:4500",
                        ike_transform="aes128gcm16-prfsha256-x25519",
                        dpd_rtt_us=1500,
                        established_at=Timestamp(seconds=int(time.time()) - 125),
                        children=[
                            status_pb2.ChildSaStatus(
                                name="mesh",
                                counters=status_pb2.Counters(bytes_in=1536, bytes_out=3 * 1024 * 1024),
                            )
                        ],
                    ),
                    status_pb2.PeerStatus(
                        peer="c", ike_state=failed, last_error="AUTHENTICATION_FAILED: bad cert"
                    ),
                ],
            ),
            status_pb2.NodeStatus(
                node="b",
                applied_version=3,
                connected=True,
                peers=[status_pb2.PeerStatus(peer="a", ike_state=up)],
            ),
        ]
        return admin_pb2.GetStatusResponse(
            nodes=[n for n in nodes if not request.node or n.node == request.node]
        )

    def CreateToken(self, request, context):
        self._admin(context)
        self.tokens.append(request)
        return admin_pb2.CreateTokenResponse(token="tok123.secret456", ca_cert_sha256="ab" * 32)

    def Export(self, request, context):
        """The real renderer over the spec in memory, with a stand-in PSK per pair and CA bundle."""
        from meshsec.controller.compiler.export import ExportError, export_swanctl

        self._admin(context)
        self.exports.append(request)
        creds = Credentials(FAKE_CA_PEM, psk_for=fake_psk)
        try:
            out = export_swanctl(self.spec, creds, request.name, secrets=request.include_secrets)
        except ExportError as exc:
            missing = "not found" in str(exc)
            context.abort(
                grpc.StatusCode.NOT_FOUND if missing else grpc.StatusCode.FAILED_PRECONDITION, str(exc)
            )
        return admin_pb2.ExportResponse(
            config=out.config,
            files=[admin_pb2.ExportFile(path=k, content=v) for k, v in out.files.items()],
            has_secrets=out.has_secrets,
            has_placeholders=out.has_placeholders,
            version=self.version,
        )


@dataclass
class Controller:
    address: str
    dir: Path
    service: FakeAdmin

    def args(self, who: str = "admin") -> list[str]:
        return [
            "--controller",
            self.address,
            "--ca",
            str(self.dir / "ca.pem"),
            "--cert",
            str(self.dir / f"{who}.pem"),
            "--key",
            str(self.dir / f"{who}.key"),
        ]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("MESHSEC_CONTROLLER", "MESHSEC_CA", "MESHSEC_CERT", "MESHSEC_KEY", "MESHCTL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture(scope="session")
def certs() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="meshctl-"))
    ca = _cert("meshsec-ca", None, ca=True)
    _write(d / "ca", ca[0])
    _write(d / "server", *_cert("meshsec-controller", ca, san="meshsec-controller"))
    _write(d / "admin", *_cert("admin", ca))
    _write(d / "node", *_cert("node-a", ca))
    other = _cert("other-ca", None, ca=True)
    _write(d / "stranger", *_cert("admin", other))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def controller(certs: Path) -> Iterator[Controller]:
    sock_dir = Path(tempfile.mkdtemp(prefix="mc", dir="/tmp"))
    sock = sock_dir / "controller.sock"
    service = FakeAdmin()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    admin_pb2_grpc.add_AdminServiceServicer_to_server(service, server)
    creds = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"unix:{sock}", creds)
    server.start()
    try:
        yield Controller(f"unix://{sock}", certs, service)
    finally:
        server.stop(None)
        shutil.rmtree(sock_dir, ignore_errors=True)
