"""A CA rollover end to end on the control plane: a real etcd, a real replica (admin, enrollment) and a
second server hosting the real AgentService wired the way the lead is asked to wire it (follow_ca keeps
the signing CA and ReloadableServerTLS current).  An enrolled agent keeps syncing through every phase,
moves to the new CA by renewal after the switch (its schedule says "now"), and after retirement works
with a bundle holding only the new CA, while a certificate of the old CA is refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from meshsec.agent.controlplane import AgentIdentity
from meshsec.agent.controlplane.renewal import (
    CertificateRenewer,
    RenewalPolicy,
    RenewalSchedule,
    authority_key_id,
    signing_ca_key_id,
    update_trust,
)
from meshsec.api.v1 import agent_pb2, agent_pb2_grpc
from meshsec.controller.api.agent_service import AgentService, AgentSettings
from meshsec.controller.api.tls_reload import ReloadableServerTLS
from meshsec.controller.ca import Sealer, load_ca, load_kek
from meshsec.controller.ca.rollover import Action, CurrentCA, RolloverPolicy, RolloverStore, follow_ca
from meshsec.controller.desired import DesiredState
from meshsec.controller.store import Keys, Store

from tests.controller import harness
from tests.support.etcd import EtcdCluster

S = dt.timedelta(seconds=1)
POLICY = RolloverPolicy(propagate=S, overlap=S, rotate_before=3 * S, ca_lifetime=dt.timedelta(days=1))


async def _trusted_bundle(address: str, ident: AgentIdentity) -> str:
    """One Sync snapshot with the agent's current files; returns the bundle its peers' certs chain to."""
    async with harness.node_channel(address, ident) as ch:
        call = agent_pb2_grpc.AgentServiceStub(ch).Sync(agent_pb2.SyncRequest(node="n1"))
        try:
            first = await asyncio.wait_for(call.read(), 10)
        finally:
            call.cancel()
    assert first.WhichOneof("update") == "snapshot"
    return first.snapshot.local.trusted_ca_pem


def test_agent_follows_a_ca_rollover_by_renewal(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        state_dir = tmp_path / "controller"
        state_dir.mkdir()
        await harness.init_state(state_dir, etcd.endpoints)
        sealer = Sealer(load_kek(state_dir / "kek"))
        async with harness.replica(state_dir, etcd.endpoints) as c, Store(etcd.endpoints) as store:
            await harness.apply(c.address, state_dir, harness.mesh_yaml({"n1": 1, "n2": 2}))
            ident = await harness.enrolled(c, state_dir, tmp_path / "n1", "n1")

            # -- the wiring under test (what controller/api/server.py should do) ----------------
            state = DesiredState(store, sealer)
            state_task = asyncio.create_task(state.run())
            await state.ready.wait()
            ca = await load_ca(store, sealer)
            agents = AgentService(store, state, ca, AgentSettings(heartbeat_seconds=0.5, replica="r2"))
            cert, key = ca.issue_server("r2")
            tls = ReloadableServerTLS(key, cert + ca.cert_pem, ca.bundle_pem)
            seen: list[CurrentCA] = []

            def on_ca(cur: CurrentCA) -> None:
                agents._ca = cur.signing  # the hook the lead must add: AgentService signs with the current CA
                c2, k2 = cur.tls_issuer.issue_server("r2")
                tls.update(k2, c2 + cur.tls_issuer.cert_pem, cur.bundle_pem)
                seen.append(cur)

            server = grpc.aio.server()
            agent_pb2_grpc.add_AgentServiceServicer_to_server(agents, server)
            port = server.add_secure_port("127.0.0.1:0", tls.credentials())
            await server.start()
            follower = asyncio.create_task(follow_ca(store, sealer, on_ca))
            address = f"127.0.0.1:{port}"
            roll = RolloverStore(store, sealer, POLICY)

            async def step(action: Action) -> None:
                await roll.apply(await roll.read(), action, dt.datetime.now(dt.UTC))
                await synced_with_etcd()
                # and the DesiredState serving Sync has compiled the new bundle
                assert await state.wait_revision(await store.revision(), 10)

            async def synced_with_etcd() -> None:
                """Wait until follow_ca has reported the CA state etcd holds now."""
                bundle = (await store.get(Keys.CA_CERT)).value  # type: ignore[union-attr]
                for _ in range(200):
                    if seen and seen[-1].bundle_pem == bundle:
                        return
                    await asyncio.sleep(0.02)
                raise AssertionError("the replica did not follow the CA change")

            synced: list[str] = []  # the bundle from the last Sync (NodeConfig.local.trusted_ca_pem)
            renewer = CertificateRenewer(
                ident,
                schedule=RenewalSchedule(RenewalPolicy(ca_switch_window=dt.timedelta(milliseconds=1))),
                signing_ca=lambda: synced[-1] if synced else None,
            )
            try:
                await synced_with_etcd()
                old_cert = x509.load_pem_x509_certificate(ident.cert_path.read_bytes())
                old_key = ident.key_path.read_bytes()
                assert (
                    len(x509.load_pem_x509_certificates((await _trusted_bundle(address, ident)).encode()))
                    == 1
                )

                await step(Action.BEGIN)
                both = await _trusted_bundle(address, ident)
                synced.append(both)
                assert len(x509.load_pem_x509_certificates(both.encode())) == 2  # IKE trusts both now
                assert renewer.next_attempt() > dt.datetime.now(dt.UTC) + 5 * S  # A still signs

                await step(Action.SWITCH)
                # ca.pem still holds only A: the server keeps presenting an A chain until A retires
                assert len(x509.load_pem_x509_certificates(ident.ca_path.read_bytes())) == 1
                switched = await _trusted_bundle(address, ident)  # the old certificate still syncs
                synced.append(switched)
                assert renewer.next_attempt() <= dt.datetime.now(dt.UTC) + S  # issuer no longer signs
                async with harness.node_channel(address, ident) as ch:
                    await renewer.renew_once(agent_pb2_grpc.AgentServiceStub(ch))
                new_cert = x509.load_pem_x509_certificate(ident.cert_path.read_bytes())
                assert authority_key_id(new_cert) == signing_ca_key_id(switched) != authority_key_id(old_cert)
                assert ident.ca_path.read_bytes() == switched.encode()  # learnt from RenewResponse
                assert await _trusted_bundle(address, ident) == switched  # the B certificate syncs

                stale = AgentIdentity(tmp_path / "stale")
                stale.directory.mkdir()
                stale.key_path.write_bytes(old_key)
                stale.cert_path.write_bytes(old_cert.public_bytes(serialization.Encoding.PEM))
                stale.ca_path.write_bytes(switched.encode())
                stale.key_path.chmod(0o600)
                assert await _trusted_bundle(address, stale) == switched  # overlap: the old cert works
                await step(Action.RETIRE)
                final = await _trusted_bundle(address, ident)  # the server now presents a B chain
                assert len(x509.load_pem_x509_certificates(final.encode())) == 1
                assert update_trust(ident, final.encode())
                assert await _trusted_bundle(address, ident) == final  # only the new CA trusted now
                stale.ca_path.write_bytes(final.encode())
                try:
                    await _trusted_bundle(address, stale)
                    raise AssertionError("a certificate of the retired CA was accepted")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE  # refused in the TLS handshake
            finally:
                follower.cancel()
                state_task.cancel()
                await server.stop(0)

    asyncio.run(asyncio.wait_for(body(), 60))
