"""ControlPlaneClient's renewal wiring against a real controller replica on a real etcd: renewals run on
the connection and reach ``on_renewed`` (set after the client is built, as the agent runtime does; a
failing callback does not stop the client), and a key/certificate swap interrupted by a crash is
completed before the client first reads the identity files."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from meshsec.agent.controlplane.renewal import CertificateRenewer, Renewed
from meshsec.api.v1 import agent_pb2_grpc

from tests.controller import harness
from tests.support.etcd import EtcdCluster


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster


def _spki_of_key(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _spki_of_cert(pem: bytes) -> bytes:
    return (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_renewals_reach_on_renewed_and_a_failing_callback_does_not_stop_the_client(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    async def body() -> None:
        state = tmp_path / "controller"
        state.mkdir()
        await harness.init_state(state, etcd.endpoints)
        lifetime = dt.timedelta(seconds=3)
        async with harness.replica(state, etcd.endpoints, node_cert_lifetime=lifetime) as c:
            v1 = await harness.apply(c.address, state, harness.mesh_yaml({"n1": 1, "n2": 2}))
            ident = await harness.enrolled(c, state, tmp_path / "agent", "n1")
            client = harness.client(c.address, "n1", ident, tmp_path / "agent", renew_check=0.2)
            got: list[Renewed] = []

            async def on_renewed(r: Renewed) -> None:  # what the agent runtime attaches
                got.append(r)
                if len(got) == 1:
                    raise RuntimeError("data plane hiccup")

            client.on_renewed = on_renewed
            task = asyncio.create_task(client.run())
            try:
                await client.wait_for(lambda: client.version >= v1, 5)
                await client.wait_for(lambda: client.renewals >= 2, 8)  # went on after the failure
                last = got[-1]
                assert client.renewals == len(got)
                assert _spki_of_cert(last.cert_pem) == _spki_of_key(last.key_pem)
                assert ident.key_path.read_bytes() in {r.key_pem for r in got}  # the pair on disk
                assert last.ca_bundle_pem == ident.ca_path.read_bytes()
                assert client.connected
            finally:
                task.cancel()

    asyncio.run(asyncio.wait_for(body(), 60))


def test_client_completes_an_interrupted_swap_before_it_connects(
    etcd: EtcdCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        state = tmp_path / "controller"
        state.mkdir()
        await harness.init_state(state, etcd.endpoints)
        async with harness.replica(state, etcd.endpoints) as c:
            v1 = await harness.apply(c.address, state, harness.mesh_yaml({"n1": 1, "n2": 2}))
            ident = await harness.enrolled(c, state, tmp_path / "agent", "n1")
            old_cert = ident.cert_path.read_bytes()
            async with harness.node_channel(c.address, ident) as ch:
                renewed = await CertificateRenewer(ident).renew_once(agent_pb2_grpc.AgentServiceStub(ch))
            # the crash: the new key was renamed into place, the new certificate was not
            ident.cert_path.with_name("node.pem.new").write_bytes(renewed.cert_pem)
            ident.cert_path.write_bytes(old_cert)
            assert _spki_of_cert(ident.cert_path.read_bytes()) != _spki_of_key(ident.key_path.read_bytes())

            client = harness.client(c.address, "n1", ident, tmp_path / "agent")
            task = asyncio.create_task(client.run())
            try:
                await client.wait_for(lambda: client.version >= v1, 5)  # TLS needs a matching pair
                assert ident.cert_path.read_bytes() == renewed.cert_pem
                assert not ident.cert_path.with_name("node.pem.new").exists()
                assert "unreachable" not in caplog.text  # the very first connection worked
            finally:
                task.cancel()

    caplog.set_level(logging.WARNING, logger="meshsec.agent.controlplane.client")
    asyncio.run(asyncio.wait_for(body(), 60))
