"""CreateToken(uses=N): one token enrolls N nodes (a DaemonSet's shared Secret), then is spent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from meshsec.agent.controlplane import AgentIdentity, EnrollError, enroll
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc
from meshsec.controller.ca.tokens import MAX_USES

from tests.controller.harness import admin_channel, apply, init_state, mesh_yaml, replica
from tests.support.etcd import EtcdCluster


def test_token_with_two_uses_enrolls_two_nodes_then_is_spent(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        state = tmp_path / "c"
        await init_state(state, etcd.endpoints)
        async with replica(state, etcd.endpoints) as c:
            await apply(c.address, state, mesh_yaml({"a": 1, "b": 2, "c": 3}))
            async with admin_channel(c.address, state) as ch:
                stub = admin_pb2_grpc.AdminServiceStub(ch)
                tok = await stub.CreateToken(
                    admin_pb2.CreateTokenRequest(ttl_seconds=600, uses=2), timeout=10
                )
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.CreateToken(admin_pb2.CreateTokenRequest(uses=MAX_USES + 1), timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            async def join(node: str) -> None:
                identity = AgentIdentity(tmp_path / node)
                await enroll(c.enroll_address, node, tok.token, identity, ca_sha256=tok.ca_cert_sha256)

            results = await asyncio.gather(*(join(n) for n in ("a", "b", "c")), return_exceptions=True)
            assert sorted(type(r).__name__ for r in results) == ["EnrollError", "NoneType", "NoneType"]
            refused = next(r for r in results if isinstance(r, EnrollError))
            assert "UNAUTHENTICATED" in str(refused) and tok.token not in str(refused)

    asyncio.run(asyncio.wait_for(body(), 60))
