"""RevokeNode / RotateCA / GetCA through meshctl, against a real replica on a real etcd.

The lifecycle handlers are served by a second gRPC server (mounted on a bare AdminService servicer,
as the lead will mount them on the real one); the agent side runs against the real replica, so the
test shows a revoked node cut off from Sync and listed as revoked in its peers' NodeConfig.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from meshsec.api.v1 import admin_pb2_grpc, agent_pb2, agent_pb2_grpc
from meshsec.controller.api.lifecycle_service import LifecycleHandlers, mount
from meshsec.controller.ca import Sealer, fingerprint, load_ca, load_kek
from meshsec.controller.cli.main import main as meshctl
from meshsec.controller.store import Store

from tests.controller import harness
from tests.support.etcd import EtcdCluster


async def _lifecycle_server(state: Path, store: Store) -> tuple[grpc.aio.Server, int]:
    sealer = Sealer(load_kek(state / "kek"))
    ca = await load_ca(store, sealer)
    cert, key = ca.issue_server("lifecycle-test")
    servicer = admin_pb2_grpc.AdminServiceServicer()
    mount(servicer, LifecycleHandlers(store, sealer, lambda fp: False))
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([(key, cert + ca.cert_pem)], ca.bundle_pem, True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, port


async def _sync_first(address: str, ident, node: str):  # type: ignore[no-untyped-def]
    async with harness.node_channel(address, ident) as ch:
        call = agent_pb2_grpc.AgentServiceStub(ch).Sync(agent_pb2.SyncRequest(node=node))
        try:
            return await asyncio.wait_for(call.read(), 10)
        finally:
            call.cancel()


def test_meshctl_node_revoke_and_ca_rotate(
    etcd: EtcdCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def body() -> None:
        state = tmp_path / "controller"
        state.mkdir()
        await harness.init_state(state, etcd.endpoints)
        admin = state / "admin"
        async with harness.replica(state, etcd.endpoints) as c, Store(etcd.endpoints) as store:
            await harness.apply(c.address, state, harness.mesh_yaml({"n1": 1, "n2": 2}))
            n1 = await harness.enrolled(c, state, tmp_path / "n1", "n1")
            n2 = await harness.enrolled(c, state, tmp_path / "n2", "n2")
            server, port = await _lifecycle_server(state, store)

            def ctl(*argv: str) -> int:
                conn = ["--controller", f"127.0.0.1:{port}", "--ca", str(admin / "ca.pem")]
                conn += ["--cert", str(admin / "admin.pem"), "--key", str(admin / "admin-key.pem")]
                return meshctl([*argv, *conn])

            try:
                assert (await _sync_first(c.address, n1, "n1")).WhichOneof("update") == "snapshot"
                fp = fingerprint(x509.load_pem_x509_certificate(n1.cert_path.read_bytes()))
                capsys.readouterr()
                assert await asyncio.to_thread(ctl, "node", "revoke", "n1") == 0
                assert f"sha256:{fp}" in capsys.readouterr().out
                assert await asyncio.to_thread(ctl, "node", "revoke", "nobody") == 5  # NOT_FOUND
                assert "nobody" in capsys.readouterr().err

                assert c.state is not None  # the replica's watch picks the revocation up
                assert await c.state.wait_revision(await store.revision(), 10)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await _sync_first(c.address, n1, "n1")
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                peer = await _sync_first(c.address, n2, "n2")
                assert fp in peer.snapshot.local.revoked_fingerprints

                assert await asyncio.to_thread(ctl, "ca", "rotate", "-o", "json") == 0
                status = json.loads(capsys.readouterr().out)
                assert status["phase"] == "published" and status["reason"] == "manual"
                assert [c["signing"] for c in status["cas"]] == [True, False]
                assert await asyncio.to_thread(ctl, "ca", "rotate") == 0
                assert "already in progress" in capsys.readouterr().err
                assert await c.state.wait_revision(await store.revision(), 10)
                trusted = (await _sync_first(c.address, n2, "n2")).snapshot.local.trusted_ca_pem
                assert len(x509.load_pem_x509_certificates(trusted.encode())) == 2  # agents trust both
                assert await asyncio.to_thread(ctl, "ca", "status") == 0
                assert "published" in capsys.readouterr().out
            finally:
                await server.stop(0)

    asyncio.run(asyncio.wait_for(body(), 60))
