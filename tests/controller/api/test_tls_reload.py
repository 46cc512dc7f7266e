"""A gRPC server whose TLS follows a CA rollover in etcd (follow_ca + ReloadableServerTLS): clients of
both CAs are accepted during the overlap, the old CA's clients are refused after retirement, and a
client trusting only the new CA accepts the server once the new CA signs.  Real etcd, real TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from meshsec.controller.api.tls_reload import ReloadableServerTLS
from meshsec.controller.ca import ROLE_NODE, CertificateAuthority, Sealer, load_or_create_ca
from meshsec.controller.ca.rollover import Action, CurrentCA, RolloverPolicy, RolloverStore, follow_ca
from meshsec.controller.store import Keys, Store

from tests.support.etcd import EtcdCluster

S = dt.timedelta(seconds=1)
POLICY = RolloverPolicy(propagate=S, overlap=S, rotate_before=3 * S, ca_lifetime=dt.timedelta(days=1))


async def _ok(port: int, roots: bytes, ca: CertificateAuthority) -> bool:
    cert, key = ca.issue_keypair(ROLE_NODE, "client", dt.timedelta(hours=1))
    creds = grpc.ssl_channel_credentials(roots, key, cert)
    opts = [("grpc.ssl_target_name_override", "meshsec-controller"), ("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def test_server_tls_follows_the_rollover(etcd: EtcdCluster) -> None:
    async def body() -> None:
        sealer = Sealer(os.urandom(32))
        async with Store(etcd.endpoints) as store:
            ca_a, _ = await load_or_create_ca(store, sealer)
            cert, key = ca_a.issue_server("r1")
            tls = ReloadableServerTLS(key, cert + ca_a.cert_pem, ca_a.bundle_pem)
            current: list[CurrentCA] = []

            def on_change(cur: CurrentCA) -> None:
                c, k = cur.tls_issuer.issue_server("r1")
                tls.update(k, c + cur.tls_issuer.cert_pem, cur.bundle_pem)
                current.append(cur)

            server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
            port = server.add_secure_port("127.0.0.1:0", tls.credentials())
            await server.start()
            follower = asyncio.create_task(follow_ca(store, sealer, on_change))
            roll = RolloverStore(store, sealer, POLICY)

            async def step(action: Action) -> None:
                await roll.apply(await roll.read(), action, dt.datetime.now(dt.UTC))
                await synced_with_etcd()

            async def synced_with_etcd() -> None:
                """Wait until follow_ca has reported the CA state etcd holds now."""
                bundle = (await store.get(Keys.CA_CERT)).value  # type: ignore[union-attr]
                for _ in range(200):
                    if current and current[-1].bundle_pem == bundle:
                        return
                    await asyncio.sleep(0.02)
                raise AssertionError("the replica did not follow the CA change")

            try:
                assert await _ok(port, ca_a.cert_pem, ca_a)
                await step(Action.BEGIN)
                both = current[-1].bundle_pem
                snap = await roll.read()
                ca_b_cert = snap.bundle[1]
                await step(Action.SWITCH)
                ca_b = current[-1].signing
                assert ca_b.cert == ca_b_cert and current[-1].tls_issuer.sha256 == ca_a.sha256
                # overlap: clients of both CAs are accepted, and a client that still trusts only the
                # old CA (it has not renewed yet) can verify the server, which presents an A chain
                assert await _ok(port, both, ca_a) and await _ok(port, both, ca_b)
                assert await _ok(port, ca_a.cert_pem, ca_a) and await _ok(port, ca_a.cert_pem, ca_b)
                assert not await _ok(port, ca_b.cert_pem, ca_b)  # not yet a B chain
                await step(Action.RETIRE)
                assert current[-1].tls_issuer.sha256 == ca_b.sha256
                assert await _ok(port, ca_b.cert_pem, ca_b) and await _ok(port, both, ca_b)
                assert not await _ok(port, both, ca_a)  # old CA's clients are refused
            finally:
                follower.cancel()
                await server.stop(0)

    asyncio.run(asyncio.wait_for(body(), 40))


def test_enrollment_style_server_without_client_certificates_reloads_too() -> None:
    async def body() -> None:
        ca_a, ca_b = CertificateAuthority.generate("A"), CertificateAuthority.generate("B")
        cert, key = ca_a.issue_server("r1")
        tls = ReloadableServerTLS(key, cert + ca_a.cert_pem, b"", require_client_auth=False)
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_secure_port("127.0.0.1:0", tls.credentials())
        await server.start()

        async def ok(roots: bytes) -> bool:
            creds = grpc.ssl_channel_credentials(roots)
            opts = [
                ("grpc.ssl_target_name_override", "meshsec-controller"),
                ("grpc.use_local_subchannel_pool", 1),
            ]
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as ch:
                try:
                    await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
                except grpc.aio.AioRpcError:
                    return False
            return True

        try:
            assert await ok(ca_a.cert_pem) and not await ok(ca_b.cert_pem)
            cert, key = ca_b.issue_server("r1")
            tls.update(key, cert + ca_b.cert_pem, b"")
            assert await ok(ca_b.cert_pem) and not await ok(ca_a.cert_pem)
        finally:
            await server.stop(0)

    asyncio.run(asyncio.wait_for(body(), 20))
