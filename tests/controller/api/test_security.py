"""AgentService/AdminService authorization against a real etcd and a real in-process controller.

Node A's certificate cannot Sync, Report or Renew as node B; used, expired, wrong or foreign tokens are
refused; AdminService refuses callers without a certificate and callers with a node certificate; a
deleted node's certificate is revoked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from meshsec.agent.controlplane import AgentIdentity, EnrollError, enroll
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, status_pb2

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster

NODES = {"node-a": 1, "node-b": 2}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _setup(etcd: EtcdCluster, tmp: Path):  # type: ignore[no-untyped-def]
    await h.init_state(tmp, etcd.endpoints)


def test_node_cannot_act_as_another_node(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await _setup(etcd, tmp_path)
        async with h.replica(tmp_path, etcd.endpoints) as r:
            await h.apply(r.address, tmp_path, h.mesh_yaml(NODES))
            a = await h.enrolled(r, tmp_path, tmp_path / "a", "node-a")
            async with h.node_channel(r.address, a) as ch:
                stub = agent_pb2_grpc.AgentServiceStub(ch)
                # As itself: works.
                call = stub.Sync(agent_pb2.SyncRequest(node="node-a"))
                first = await call.read()
                assert first.snapshot.local.name == "node-a"
                call.cancel()
                # As node B: refused.
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Sync(agent_pb2.SyncRequest(node="node-b")).read()
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Report(
                        iter(
                            [
                                agent_pb2.ReportRequest(
                                    status=status_pb2.NodeStatus(node="node-b", applied_version=1)
                                )
                            ]
                        )
                    )
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert await r.store.get("/meshsec/v1/status/node-b") is None  # type: ignore[union-attr]
                # Report as itself is stored under its own name only.
                await stub.Report(
                    iter([agent_pb2.ReportRequest(status=status_pb2.NodeStatus(applied_version=7))])
                )
                # Renew only ever issues for the certificate's own name, whatever the CSR says.
                renewed = await stub.Renew(agent_pb2.RenewRequest(csr_pem=a.csr("node-b")))
                from meshsec.controller.ca import identity_of

                assert identity_of(renewed.certificate_pem).name == "node-a"
            # No certificate at all: the main endpoint does not even complete TLS.
            async with h.channel(r.address, a.ca_path.read_bytes()) as anon:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await (
                        agent_pb2_grpc.AgentServiceStub(anon)
                        .Sync(agent_pb2.SyncRequest(node="node-a"))
                        .read()
                    )
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            # ... and on the enrollment endpoint Sync has no certificate to go by.
            async with h.channel(r.enroll_address, a.ca_path.read_bytes()) as anon:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await (
                        agent_pb2_grpc.AgentServiceStub(anon)
                        .Sync(agent_pb2.SyncRequest(node="node-a"))
                        .read()
                    )
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    run(body())


def test_used_expired_and_wrong_tokens_are_refused(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await _setup(etcd, tmp_path)
        async with h.replica(tmp_path, etcd.endpoints) as r:
            await h.apply(r.address, tmp_path, h.mesh_yaml(NODES))
            tok = await h.token(r.address, tmp_path)
            await enroll(
                r.enroll_address,
                "node-a",
                tok.token,
                AgentIdentity(tmp_path / "a"),
                ca_sha256=tok.ca_cert_sha256,
            )
            with pytest.raises(EnrollError, match="UNAUTHENTICATED"):  # used
                await enroll(
                    r.enroll_address,
                    "node-b",
                    tok.token,
                    AgentIdentity(tmp_path / "b"),
                    ca_sha256=tok.ca_cert_sha256,
                )
            short = await h.token(r.address, tmp_path, ttl=1)
            await asyncio.sleep(1.2)
            with pytest.raises(EnrollError, match="UNAUTHENTICATED"):  # expired
                await enroll(
                    r.enroll_address,
                    "node-b",
                    short.token,
                    AgentIdentity(tmp_path / "b"),
                    ca_sha256=tok.ca_cert_sha256,
                )
            bound = await h.token(r.address, tmp_path, node="node-a")
            with pytest.raises(EnrollError, match="UNAUTHENTICATED"):  # bound to another node
                await enroll(
                    r.enroll_address,
                    "node-b",
                    bound.token,
                    AgentIdentity(tmp_path / "b"),
                    ca_sha256=tok.ca_cert_sha256,
                )
            unbound = await h.token(r.address, tmp_path)
            with pytest.raises(EnrollError, match="UNAUTHENTICATED"):  # unbound: only for nodes in the spec
                await enroll(
                    r.enroll_address,
                    "node-x",
                    unbound.token,
                    AgentIdentity(tmp_path / "x"),
                    ca_sha256=tok.ca_cert_sha256,
                )
            with pytest.raises(EnrollError, match="presents no CA"):  # wrong pin: never talks to it
                await enroll(
                    r.enroll_address,
                    "node-b",
                    bound.token,
                    AgentIdentity(tmp_path / "b"),
                    ca_sha256="00" * 32,
                )
            assert not AgentIdentity(tmp_path / "b").cert_path.exists()

    run(body())


def test_admin_service_needs_an_admin_certificate(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await _setup(etcd, tmp_path)
        async with h.replica(tmp_path, etcd.endpoints) as r:
            await h.apply(r.address, tmp_path, h.mesh_yaml(NODES))
            a = await h.enrolled(r, tmp_path, tmp_path / "a", "node-a")
            async with h.node_channel(r.address, a) as ch:  # a node certificate
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await admin_pb2_grpc.AdminServiceStub(ch).GetSpec(admin_pb2.GetSpecRequest())
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await admin_pb2_grpc.AdminServiceStub(ch).CreateToken(admin_pb2.CreateTokenRequest())
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            ca = (tmp_path / "admin" / "ca.pem").read_bytes()
            for address in (r.address, r.enroll_address):  # no certificate, on either endpoint
                async with h.channel(address, ca) as ch:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await admin_pb2_grpc.AdminServiceStub(ch).GetSpec(
                            admin_pb2.GetSpecRequest(), timeout=5
                        )
                    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED)
            async with h.admin_channel(r.address, tmp_path) as ch:  # the admin certificate from init
                spec = await admin_pb2_grpc.AdminServiceStub(ch).GetSpec(admin_pb2.GetSpecRequest())
                assert sorted(n.name for n in spec.spec.nodes) == ["node-a", "node-b"]

    run(body())


def test_deleted_node_is_revoked(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await _setup(etcd, tmp_path)
        async with h.replica(tmp_path, etcd.endpoints) as r:
            await h.apply(r.address, tmp_path, h.mesh_yaml(NODES))
            b = await h.enrolled(r, tmp_path, tmp_path / "b", "node-b")
            async with h.admin_channel(r.address, tmp_path) as ch:
                admin = admin_pb2_grpc.AdminServiceStub(ch)
                views = await admin.ListNodes(admin_pb2.ListNodesRequest())
                assert {v.node.name: bool(v.cert_fingerprint) for v in views.nodes} == {
                    "node-a": False,
                    "node-b": True,
                }
                await admin.DeleteNode(admin_pb2.DeleteNodeRequest(name="node-b"))
            for _ in range(40):
                if r.state.is_revoked(views.nodes[1].cert_fingerprint):  # type: ignore[union-attr]
                    break
                await asyncio.sleep(0.05)
            async with h.node_channel(r.address, b) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await (
                        agent_pb2_grpc.AgentServiceStub(ch).Sync(agent_pb2.SyncRequest(node="node-b")).read()
                    )
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "revoked" in (err.value.details() or "")

    run(body())


def test_external_node_cannot_enroll(etcd: EtcdCluster, tmp_path: Path) -> None:
    """External gear has no agent: a mesh certificate in its name would let a token holder impersonate it."""
    mesh = h.mesh_yaml(NODES) + ("  - {name: gw-x, topology: pairs, pairs: [[node-a, gw-x]]}\n")
    mesh = mesh.replace(
        "policies:",
        '  - {name: gw-x, kind: external, endpoints: ["198.18.0.9"], auth: psk, subnets: [198.19.9.0/24]}\n'
        "policies:",
    )

    async def body() -> None:
        await _setup(etcd, tmp_path)
        async with h.replica(tmp_path, etcd.endpoints) as r:
            await h.apply(r.address, tmp_path, mesh)
            tok = await h.token(r.address, tmp_path)
            with pytest.raises(EnrollError, match="FAILED_PRECONDITION"):
                await enroll(
                    r.enroll_address,
                    "gw-x",
                    tok.token,
                    AgentIdentity(tmp_path / "x"),
                    ca_sha256=tok.ca_cert_sha256,
                )
            assert not AgentIdentity(tmp_path / "x").cert_path.exists()
            # The token was not spent on the refused attempt.
            await enroll(
                r.enroll_address,
                "node-a",
                tok.token,
                AgentIdentity(tmp_path / "a"),
                ca_sha256=tok.ca_cert_sha256,
            )

    run(body())
