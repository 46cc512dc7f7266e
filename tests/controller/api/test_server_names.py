"""--server-name / MESHSEC_SERVER_NAMES: a replica's server certificate also names the Kubernetes Service
(meshsec-controller.<ns>.svc), so a client that verifies the name it dials accepts the controller."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshsec.controller.api.replica_credentials import split_server_names

from tests.controller.harness import apply, enrolled, init_state, mesh_yaml, replica
from tests.support.etcd import EtcdCluster

SVC = "meshsec-controller.meshsec.svc"


def _handshake(port: int, ca_pem: bytes, name: str) -> x509.Certificate:
    """A TLS handshake that checks `name` against the certificate, as a client dialling `name` does."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_agent_dialling_the_service_name_verifies(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        state = tmp_path / "c"
        await init_state(state, etcd.endpoints)
        names = [SVC, f"{SVC}.cluster.local", "198.18.7.7"]
        async with replica(state, etcd.endpoints, server_names=names) as c:
            await apply(c.address, state, mesh_yaml({"a": 1, "b": 2}))
            identity = await enrolled(c, state, tmp_path / "a", "a")
            ca_pem = identity.ca_path.read_bytes()
            assert c.enroll_port and c.port
            cert = await asyncio.to_thread(_handshake, c.enroll_port, ca_pem, SVC)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert set(san.get_values_for_type(x509.DNSName)) == {
                "meshsec-controller",
                "localhost",
                SVC,
                f"{SVC}.cluster.local",
            }
            assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "198.18.7.7"}
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.to_thread(_handshake, c.enroll_port, ca_pem, "meshsec-controller.other.svc")

            # The agent's own mTLS channel, verifying the Service name instead of the built-in one.
            async def check(name: str) -> int:
                creds = identity.credentials()
                opts = [("grpc.ssl_target_name_override", name)]
                async with grpc.aio.secure_channel(c.address, creds, options=opts) as ch:
                    resp = await health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=5
                    )
                return int(resp.status)

            assert await check(SVC) == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await check("meshsec-controller.other.svc")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        # Without --server-name the certificate keeps the standard names only.
        async with replica(state, etcd.endpoints, name="r2") as c2:
            assert c2.enroll_port
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.to_thread(_handshake, c2.enroll_port, ca_pem, SVC)
            await asyncio.to_thread(_handshake, c2.enroll_port, ca_pem, "meshsec-controller")

    asyncio.run(asyncio.wait_for(body(), 60))


def test_server_names_split_into_dns_and_ip_sans() -> None:
    assert split_server_names(
        [" Meshsec-Controller.NS.svc. ", "", "10.0.0.5", "[fd00::5]", "*.x.example"]
    ) == (
        ["meshsec-controller.ns.svc", "*.x.example"],
        ["10.0.0.5", "fd00::5"],
    )
    assert split_server_names(["a.svc", "a.svc"]) == (["a.svc"], [])
    for bad in ("under_score.svc", "a..b", "x" * 64 + ".svc", "spaced name", "ünï.svc"):
        with pytest.raises(ValueError, match="--server-name"):
            split_server_names([bad])
