"""Node-level revocation against a real etcd and a real in-process controller replica.

`revoke_node` lists only the node's unexpired, recorded certificates, and TLS checks validity only at
the handshake.  These tests show the controller refusing the node anyway: a connection set up with a
certificate that has expired since (so the list cannot name it) can neither Renew nor Sync; a
certificate issued before the revoke but never recorded is refused; a Renew that signs while the
revoke is written returns no certificate; and, as docs/credentials.md promises, the node comes back
by enrolling again with a new token (while its old connection stays refused).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from meshsec.agent.controlplane import AgentIdentity
from meshsec.api.v1 import agent_pb2, agent_pb2_grpc, status_pb2
from meshsec.controller.ca import CertificateAuthority, Sealer, fingerprint, load_ca, load_kek
from meshsec.controller.ca.revocation import revoke_node
from meshsec.controller.store import Keys, Store

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster

NODES = {"n1": 1, "n2": 2}
S = dt.timedelta(seconds=1)


async def _sleep_until(when: dt.datetime) -> None:
    await asyncio.sleep(max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds()))


def _cert(ident: AgentIdentity) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ident.cert_path.read_bytes())


async def _first_sync(stub: agent_pb2_grpc.AgentServiceStub, node: str) -> agent_pb2.SyncResponse:
    call = stub.Sync(agent_pb2.SyncRequest(node=node))
    try:
        return await asyncio.wait_for(call.read(), 10)
    finally:
        call.cancel()


async def _refused(coro: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro  # type: ignore[misc]
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value
    assert "revoked" in (err.value.details() or "")


async def _revoke(c: h.Controller, store: Store, node: str) -> list[str]:
    done = await revoke_node(store, node, dt.datetime.now(dt.UTC))
    assert c.state is not None
    assert await c.state.wait_revision(await store.revision(), 10)  # the replica's watch saw it
    return done.fingerprints


def test_open_connection_with_a_since_expired_certificate_cannot_renew_or_sync(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """The reported hole: the connection's certificate expired, so the revocation cannot list it."""

    async def body() -> None:
        state = tmp_path / "ctl"
        await h.init_state(state, etcd.endpoints)
        life = 4 * S
        async with (
            h.replica(state, etcd.endpoints, node_cert_lifetime=life) as c,
            Store(etcd.endpoints) as store,
        ):
            await h.apply(c.address, state, h.mesh_yaml(NODES))
            n1 = await h.enrolled(c, state, tmp_path / "n1", "n1")
            old = _cert(n1)
            async with h.node_channel(c.address, n1) as ch:  # TLS handshake now, with `old`
                stub = agent_pb2_grpc.AgentServiceStub(ch)
                assert (await _first_sync(stub, "n1")).WhichOneof("update") == "snapshot"
                stream = stub.Sync(agent_pb2.SyncRequest(node="n1"))  # a stream open across the revoke
                assert (await asyncio.wait_for(stream.read(), 10)).WhichOneof("update") == "snapshot"
                # renewed 2 s before `old` expires (the agent's renewer would, at two thirds)
                await _sleep_until(old.not_valid_after_utc - 2 * S)
                renewed = await stub.Renew(agent_pb2.RenewRequest(csr_pem=n1.csr("n1")))
                new = x509.load_pem_x509_certificate(renewed.certificate_pem)
                await _sleep_until(old.not_valid_after_utc + 0.3 * S)
                listed = await _revoke(c, store, "n1")
                assert fingerprint(old) not in listed and fingerprint(new) in listed  # `old` expired
                # the connection set up with `old` stays open, but the controller refuses it
                await _refused(stub.Renew(agent_pb2.RenewRequest(csr_pem=n1.csr("n1")), timeout=10))
                await _refused(_first_sync(stub, "n1"))
                await _refused(asyncio.wait_for(_drain(stream), 15))  # the open stream is cut off too

    asyncio.run(asyncio.wait_for(body(), 60))


async def _drain(stream: grpc.aio.UnaryStreamCall) -> None:
    while True:
        if await stream.read() is grpc.aio.EOF:
            raise AssertionError("the stream ended without an error")


def _identity_from(
    ca: CertificateAuthority, like: AgentIdentity, directory: Path, node: str
) -> AgentIdentity:
    """A certificate of `node` signed by the controller's CA but never recorded in certs/issued (as a
    Renew in flight leaves it): the revocation's fingerprint list cannot know it."""
    ident = AgentIdentity(directory)
    cert = ca.sign_node_csr(ident.csr(node), node, dt.timedelta(hours=1))
    ident.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ident.ca_path.write_bytes(like.ca_path.read_bytes())
    return ident


def test_unlisted_certificate_issued_before_the_revoke_is_refused(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        state = tmp_path / "ctl"
        await h.init_state(state, etcd.endpoints)
        async with h.replica(state, etcd.endpoints) as c, Store(etcd.endpoints) as store:
            await h.apply(c.address, state, h.mesh_yaml(NODES))
            n1 = await h.enrolled(c, state, tmp_path / "n1", "n1")
            n2 = await h.enrolled(c, state, tmp_path / "n2", "n2")
            ca = await load_ca(store, Sealer(load_kek(state / "kek")))
            stray = _identity_from(ca, n1, tmp_path / "stray", "n1")
            other = _identity_from(ca, n2, tmp_path / "other", "n2")  # another node's: unaffected
            listed = await _revoke(c, store, "n1")
            assert fingerprint(_cert(stray)) not in listed
            async with h.node_channel(c.address, stray) as ch:  # a new connection, valid certificate
                stub = agent_pb2_grpc.AgentServiceStub(ch)
                await _refused(_first_sync(stub, "n1"))
                await _refused(stub.Renew(agent_pb2.RenewRequest(csr_pem=stray.csr("n1")), timeout=10))
            async with h.node_channel(c.address, other) as ch:
                stub = agent_pb2_grpc.AgentServiceStub(ch)
                assert (await _first_sync(stub, "n2")).WhichOneof("update") == "snapshot"
                await stub.Renew(agent_pb2.RenewRequest(csr_pem=other.csr("n2")), timeout=10)

    asyncio.run(asyncio.wait_for(body(), 60))


def test_renew_signing_while_the_revoke_is_written_returns_no_certificate(
    etcd: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        state = tmp_path / "ctl"
        await h.init_state(state, etcd.endpoints)
        async with h.replica(state, etcd.endpoints) as c, Store(etcd.endpoints) as store:
            await h.apply(c.address, state, h.mesh_yaml(NODES))
            n1 = await h.enrolled(c, state, tmp_path / "n1", "n1")
            sign = CertificateAuthority.sign_node_csr
            signed: list[x509.Certificate] = []

            async def revoke_elsewhere() -> None:  # an operator's revoke, on another client
                async with Store(etcd.endpoints) as other:
                    await revoke_node(other, "n1", dt.datetime.now(dt.UTC))

            def sign_while_revoked(self: CertificateAuthority, *a: object, **kw: object) -> x509.Certificate:
                cert = sign(self, *a, **kw)  # type: ignore[arg-type]
                signed.append(cert)
                # the revoke completes while this Renew is between its check and its answer
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    pool.submit(asyncio.run, revoke_elsewhere()).result(20)
                return cert

            async with h.node_channel(c.address, n1) as ch:
                stub = agent_pb2_grpc.AgentServiceStub(ch)
                monkeypatch.setattr(CertificateAuthority, "sign_node_csr", sign_while_revoked)
                await _refused(stub.Renew(agent_pb2.RenewRequest(csr_pem=n1.csr("n1")), timeout=20))
                monkeypatch.undo()
            assert len(signed) == 1  # it was signed, and never handed out
            assert await store.get(Keys.revoked_node("n1")) is not None
            assert await store.get(Keys.revoked(fingerprint(_cert(n1)))) is not None

    asyncio.run(asyncio.wait_for(body(), 60))


def test_reenrollment_with_a_new_token_after_a_revoke_works(etcd: EtcdCluster, tmp_path: Path) -> None:
    """docs/credentials.md: the node stays in the spec and comes back only by enrolling again."""

    async def body() -> None:
        state = tmp_path / "ctl"
        await h.init_state(state, etcd.endpoints)
        async with h.replica(state, etcd.endpoints) as c, Store(etcd.endpoints) as store:
            await h.apply(c.address, state, h.mesh_yaml(NODES))
            n1 = await h.enrolled(c, state, tmp_path / "n1", "n1")
            async with h.node_channel(c.address, n1) as old_ch:
                old = agent_pb2_grpc.AgentServiceStub(old_ch)
                assert (await _first_sync(old, "n1")).WhichOneof("update") == "snapshot"
                await _revoke(c, store, "n1")
                await _refused(_first_sync(old, "n1"))
                # soon (well within the CA's notBefore backdating), a new token and a new key; notBefore
                # has a resolution of one second, and one issued in the revoke's second counts as before
                await asyncio.sleep(1.0)
                again = await h.enrolled(c, state, tmp_path / "n1-again", "n1")
                assert _cert(again).not_valid_before_utc < dt.datetime.now(dt.UTC)
                async with h.node_channel(c.address, again) as ch:
                    stub = agent_pb2_grpc.AgentServiceStub(ch)
                    assert (await _first_sync(stub, "n1")).WhichOneof("update") == "snapshot"
                    renewed = await stub.Renew(agent_pb2.RenewRequest(csr_pem=again.csr("n1")), timeout=10)
                    assert renewed.certificate_pem
                await _refused(_first_sync(old, "n1"))  # the revoked connection stays refused
                # a second revoke covers the re-enrolled certificates as well
                await _revoke(c, store, "n1")
                async with h.node_channel(c.address, again) as ch:
                    await _refused(_first_sync(agent_pb2_grpc.AgentServiceStub(ch), "n1"))

    asyncio.run(asyncio.wait_for(body(), 60))


def test_open_report_stream_is_cut_after_the_revoke(etcd: EtcdCluster, tmp_path: Path) -> None:
    """A Report stream opened before the revoke takes no status from the node afterwards."""

    async def body() -> None:
        state = tmp_path / "ctl"
        await h.init_state(state, etcd.endpoints)
        async with h.replica(state, etcd.endpoints) as c, Store(etcd.endpoints) as store:
            await h.apply(c.address, state, h.mesh_yaml(NODES))
            n1 = await h.enrolled(c, state, tmp_path / "n1", "n1")
            async with h.node_channel(c.address, n1) as ch:
                call = agent_pb2_grpc.AgentServiceStub(ch).Report()
                await call.write(agent_pb2.ReportRequest(status=status_pb2.NodeStatus(applied_version=1)))
                stored = None
                for _ in range(100):  # the first report lands
                    stored = await store.get(Keys.status("n1"))
                    if stored is not None:
                        break
                    await asyncio.sleep(0.05)
                assert stored is not None
                await _revoke(c, store, "n1")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call.write(agent_pb2.ReportRequest(status=status_pb2.NodeStatus(applied_version=2)))
                    await call.done_writing()
                    await call
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                after = await store.get(Keys.status("n1"))
                assert after is None or status_pb2.NodeStatus.FromString(after.value).applied_version == 1

    asyncio.run(asyncio.wait_for(body(), 60))
