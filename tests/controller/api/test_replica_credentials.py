"""ReplicaCredentials against a real etcd and a real gRPC server: the server certificate is re-issued
before it expires, and follows a CA rollover (old CA's certificate until retirement, then the new)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl

import grpc
from cryptography import x509
from grpc_health.v1 import health, health_pb2_grpc
from meshsec.controller.api.replica_credentials import ReplicaCredentials
from meshsec.controller.ca import Sealer, load_or_create_ca
from meshsec.controller.ca.rollover import Action, CurrentCA, RolloverPolicy, RolloverStore
from meshsec.controller.store import Store

from tests.support.etcd import EtcdCluster

S = dt.timedelta(seconds=1)
POLICY = RolloverPolicy(propagate=S, overlap=S, rotate_before=3 * S, ca_lifetime=dt.timedelta(days=1))


def _leaf(port: int) -> x509.Certificate:
    """The certificate the server presents (read without verifying: only its identity matters here)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=3) as sock,
        ctx.wrap_socket(sock, server_hostname="meshsec-controller") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_server_certificate_is_refreshed_and_follows_the_rollover(etcd: EtcdCluster) -> None:
    async def body() -> None:
        sealer = Sealer(os.urandom(32))
        async with Store(etcd.endpoints) as store:
            ca_a, _ = await load_or_create_ca(store, sealer)
            creds = ReplicaCredentials(store, sealer, "r1", server_cert_lifetime=3 * S)
            cur = await creds.start()
            seen: list[CurrentCA] = []
            creds.subscribe(seen.append)
            assert seen == [cur] and cur.signing.sha256 == ca_a.sha256
            server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
            port = server.add_secure_port("127.0.0.1:0", creds.enroll_credentials())
            await server.start()
            try:
                first = await asyncio.to_thread(_leaf, port)
                assert first.issuer == ca_a.cert.subject
                await asyncio.sleep(2.5)  # re-issued at two thirds of its 3 s lifetime
                second = await asyncio.to_thread(_leaf, port)
                assert second.serial_number != first.serial_number
                assert second.not_valid_after_utc > first.not_valid_after_utc

                roll = RolloverStore(store, sealer, POLICY)
                for action in (Action.BEGIN, Action.SWITCH):
                    await roll.apply(await roll.read(), action, dt.datetime.now(dt.UTC))
                    n = len(seen)
                    for _ in range(200):
                        if len(seen) > n:
                            break
                        await asyncio.sleep(0.02)
                switched = seen[-1]
                assert switched.signing.sha256 != ca_a.sha256 and switched.tls_issuer.sha256 == ca_a.sha256
                assert (await asyncio.to_thread(_leaf, port)).issuer == ca_a.cert.subject
                await roll.apply(await roll.read(), Action.RETIRE, dt.datetime.now(dt.UTC))
                for _ in range(200):
                    if seen[-1].tls_issuer.sha256 == switched.signing.sha256:
                        break
                    await asyncio.sleep(0.02)
                assert (await asyncio.to_thread(_leaf, port)).issuer == switched.signing.cert.subject
            finally:
                await server.stop(0)
                await creds.close()

    asyncio.run(asyncio.wait_for(body(), 40))
