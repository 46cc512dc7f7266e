"""AdminService.Export on a real controller and etcd: the pair key it reveals is the one the agent is
sent over Sync, only on request, only to an admin, and every call is audit-logged without the key."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from pathlib import Path

import grpc
import pytest
from meshsec.agent.controlplane import DesiredStateCache
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster

MESH = """\
apiVersion: meshsec.io/v1
kind: Mesh
nodes:
  - {name: node-a, endpoints: ["198.18.0.1"], subnets: [198.19.1.0/24]}
  - {name: node-b, endpoints: ["198.18.0.2"], subnets: [198.19.2.0/24]}
  - {name: gw-x, kind: external, endpoints: ["198.18.0.9"], auth: psk, subnets: [198.19.9.0/24]}
  - {name: gw-c, kind: external, endpoints: ["198.18.0.8"], subnets: [198.19.8.0/24]}
policies:
  - {name: mesh, topology: full-mesh, members: {all: true}}
  - {name: ext, topology: pairs, pairs: [[node-a, gw-x], [node-b, gw-x], [node-a, gw-c]]}
"""


def run(coro, timeout: float = 30):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_export_reveals_the_agents_key_only_on_request_and_logs_no_key(
    etcd: EtcdCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def body() -> tuple[bytes, str]:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints) as r, h.admin_channel(r.address, tmp_path) as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            version = await h.apply(r.address, tmp_path, MESH)
            # What node-a's agent is sent for gw-x, over a real Sync stream.
            a = await h.enrolled(r, tmp_path, tmp_path / "a", "node-a")
            c = h.client(r.address, "node-a", a, tmp_path / "a")
            task = asyncio.create_task(c.run())
            try:
                await c.wait_for(lambda: c.version >= version, 5)
            finally:
                task.cancel()
            cfg = DesiredStateCache(tmp_path / "a" / "desired.pb").load()  # what the agent applied
            assert cfg is not None and cfg.version >= version
            agent_key = next(p.psk for p in cfg.peers if p.name == "gw-x")
            assert len(agent_key) == 32

            plain = await admin.Export(admin_pb2.ExportRequest(name="gw-x"))
            assert plain.has_placeholders and not plain.has_secrets and "0x" not in plain.config
            assert plain.version >= version and not plain.files
            shown = await admin.Export(
                admin_pb2.ExportRequest(
                    name="gw-x", format=admin_pb2.EXPORT_FORMAT_SWANCTL, include_secrets=True
                )
            )
            assert shown.has_secrets and not shown.has_placeholders
            keys = dict(re.findall(r"ike-(node-[ab]) \{\n.*\n.*\n\s+secret = 0x([0-9a-f]{64})", shown.config))
            assert sorted(keys) == ["node-a", "node-b"]  # one key per pair, each different
            assert hmac.compare_digest(bytes.fromhex(keys["node-a"]), agent_key)
            assert not hmac.compare_digest(keys["node-a"], keys["node-b"])

            cert = await admin.Export(admin_pb2.ExportRequest(name="gw-c", include_secrets=True))
            assert [f.path for f in cert.files] == ["x509ca/meshsec-ca.pem"]
            assert cert.files[0].content == (tmp_path / "admin" / "ca.pem").read_text()
            assert "cacerts = meshsec-ca.pem" in cert.config and not cert.has_secrets

            for name, code in (
                ("nope", grpc.StatusCode.NOT_FOUND),
                ("node-a", grpc.StatusCode.FAILED_PRECONDITION),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await admin.Export(admin_pb2.ExportRequest(name=name, include_secrets=True))
                assert err.value.code() == code
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.Export(admin_pb2.ExportRequest(name="gw-x", format=7))  # type: ignore[arg-type]
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            # A node certificate is not an admin certificate.
            async with h.node_channel(r.address, a) as nch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await admin_pb2_grpc.AdminServiceStub(nch).Export(
                        admin_pb2.ExportRequest(name="gw-x", include_secrets=True)
                    )
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            return agent_key, keys["node-b"]

    agent_key, other_key = run(body())
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("export of ")]
    assert "export of 'gw-x' (swanctl, secrets withheld) requested by meshsec-admin 'admin'" in audit
    assert "export of 'gw-x' (swanctl, secrets INCLUDED) requested by meshsec-admin 'admin'" in audit
    assert all(r.levelno == logging.INFO for r in caplog.records if r.getMessage().startswith("export of "))
    everything = caplog.text + "".join(str(r.args) for r in caplog.records)
    for key in (agent_key.hex(), other_key):
        assert key not in everything.lower()
