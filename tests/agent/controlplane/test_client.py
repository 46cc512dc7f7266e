"""Control-plane client logic: delta application, fail-static start, quiet retries, address rules."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from meshsec.agent.controlplane import (
    AgentIdentity,
    ControlPlaneClient,
    DesiredStateCache,
    RecordingReconciler,
    enroll_address,
)
from meshsec.agent.controlplane.client import DeltaMismatch, apply_delta
from meshsec.api.v1 import config_pb2

from tests.support.etcd import free_port


def _peer(name: str, ep: str = "198.18.0.9") -> config_pb2.PeerConfig:
    return config_pb2.PeerConfig(name=name, endpoints=[ep])


def test_apply_delta_upserts_removes_and_replaces_local() -> None:
    cfg = config_pb2.NodeConfig(
        version=3, local=config_pb2.LocalConfig(name="a"), peers=[_peer("b"), _peer("c")]
    )
    delta = config_pb2.NodeConfigDelta(
        from_version=3,
        to_version=8,
        local=config_pb2.LocalConfig(name="a", subnets=["198.19.1.0/24"]),
        upsert_peers=[_peer("d"), _peer("b", "198.18.0.2")],
        remove_peers=["c"],
    )
    out = apply_delta(cfg, delta)
    assert out.version == 8
    assert [(p.name, list(p.endpoints)) for p in out.peers] == [("b", ["198.18.0.2"]), ("d", ["198.18.0.9"])]
    assert list(out.local.subnets) == ["198.19.1.0/24"]
    assert cfg.version == 3 and len(cfg.peers) == 2  # input untouched
    with pytest.raises(DeltaMismatch):
        apply_delta(cfg, config_pb2.NodeConfigDelta(from_version=2, to_version=8))


def test_enroll_address_sits_beside_the_controller_address() -> None:
    assert enroll_address("unix:///run/meshsec/controller.sock") == "unix:///run/meshsec/enroll.sock"
    assert enroll_address("127.0.0.1:7443") == "127.0.0.1:7444"


def test_starts_from_cache_and_logs_one_line_while_controller_is_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail static: the cached state is applied at once; retries are quiet (no traceback, no flood)."""
    import datetime as dt

    from cryptography import x509  # a throwaway identity: the controller is never reached anyway
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    ident = AgentIdentity(tmp_path)
    key = ident.private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-a")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    ).public_bytes(serialization.Encoding.PEM)
    ident.cert_path.write_bytes(cert)
    ident.ca_path.write_bytes(cert)
    cached = config_pb2.NodeConfig(
        version=42, local=config_pb2.LocalConfig(name="node-a"), peers=[_peer("node-b")]
    )
    DesiredStateCache(tmp_path / "desired.pb").save(cached)
    reconciler = RecordingReconciler()
    client = ControlPlaneClient(
        address=f"127.0.0.1:{free_port()}",
        node="node-a",
        identity=ident,
        cache=DesiredStateCache(tmp_path / "desired.pb"),
        reconciler=reconciler,
        backoff_initial=0.02,
        backoff_max=0.1,
    )

    async def body() -> None:
        task = asyncio.create_task(client.run())
        await asyncio.sleep(1.5)  # a dozen or more failed attempts
        task.cancel()

    with caplog.at_level(logging.INFO, logger="meshsec.agent"):
        asyncio.run(body())
    assert [c.version for c in reconciler.applied] == [42]
    assert client.config == cached
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unreachable" in warnings[0].getMessage() and "version 42" in warnings[0].getMessage()
    assert warnings[0].exc_info is None and "\n" not in warnings[0].getMessage()
