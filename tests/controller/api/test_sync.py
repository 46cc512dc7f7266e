"""Sync semantics against a real etcd: snapshot then deltas, versions = etcd revisions, resume with a
delta whenever the held version can be reconstructed, two replicas, etcd restarts, liveness leases."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc
from meshsec.controller.store import Keys

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster

AB = {"node-a": 1, "node-b": 2}
ABC = {"node-a": 1, "node-b": 2, "node-c": 3}


def run(coro, timeout: float = 30):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _first(address: str, ident, node: str, resume: int) -> agent_pb2.SyncResponse:  # type: ignore[no-untyped-def]
    async with h.node_channel(address, ident) as ch:
        call = agent_pb2_grpc.AgentServiceStub(ch).Sync(
            agent_pb2.SyncRequest(node=node, resume_from_version=resume)
        )
        try:
            return await asyncio.wait_for(call.read(), 5)
        finally:
            call.cancel()


def test_snapshot_then_a_delta_per_change(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints) as r:
            v1 = await h.apply(r.address, tmp_path, h.mesh_yaml(AB))
            a = await h.enrolled(r, tmp_path, tmp_path / "a", "node-a")
            c = h.client(r.address, "node-a", a, tmp_path / "a")
            task = asyncio.create_task(c.run())
            try:
                await c.wait_for(lambda: c.version == v1, 5)
                assert [p.name for p in c.config.peers] == ["node-b"]  # type: ignore[union-attr]
                v2 = await h.apply(r.address, tmp_path, h.mesh_yaml(ABC))
                await c.wait_for(lambda: c.version == v2, 5)
                assert [p.name for p in c.config.peers] == ["node-b", "node-c"]  # type: ignore[union-attr]
                assert [(e.kind, e.version) for e in c.events if e.kind != "heartbeat"] == [
                    ("snapshot", v1),
                    ("delta", v2),
                ]
                # The desired state is on disk, atomically replaced.
                from meshsec.agent.controlplane import DesiredStateCache

                assert DesiredStateCache(tmp_path / "a" / "desired.pb").load() == c.config
                # A status report reaches etcd bound to a lease; the Sync stream marks the node connected.
                async with h.admin_channel(r.address, tmp_path) as ch:
                    admin = admin_pb2_grpc.AdminServiceStub(ch)
                    for _ in range(40):
                        st = await admin.GetStatus(admin_pb2.GetStatusRequest(node="node-a"))
                        if st.nodes and st.nodes[0].applied_version == v2:
                            break
                        await asyncio.sleep(0.1)
                    assert st.nodes[0].connected and st.nodes[0].applied_version == v2
                status_kv = await r.store.get(Keys.status("node-a"))  # type: ignore[union-attr]
                assert status_kv is not None and status_kv.lease != 0
                # Heartbeats flow while nothing changes (0.5 s interval in tests).
                n = len(c.events)
                await c.wait_for(lambda: len(c.events) > n, 3)
                assert c.events[-1].kind == "heartbeat"
            finally:
                task.cancel()
            # Stream gone: the liveness keys go with their leases.
            for _ in range(60):  # both streams end on their own schedule (the Report one too)
                if (
                    await r.store.get(Keys.connected("node-a")) is None  # type: ignore[union-attr]
                    and await r.store.get(Keys.status("node-a")) is None  # type: ignore[union-attr]
                ):
                    break
                await asyncio.sleep(0.1)
            assert await r.store.get(Keys.connected("node-a")) is None  # type: ignore[union-attr]
            assert await r.store.get(Keys.status("node-a")) is None  # type: ignore[union-attr]

    run(body())


def test_two_replicas_change_through_one_reaches_agent_on_the_other_within_1s(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with (
            h.replica(tmp_path, etcd.endpoints, "r1") as r1,
            h.replica(tmp_path, etcd.endpoints, "r2") as r2,
        ):
            v1 = await h.apply(r2.address, tmp_path, h.mesh_yaml(AB))
            a = await h.enrolled(r1, tmp_path, tmp_path / "a", "node-a")
            c = h.client(r1.address, "node-a", a, tmp_path / "a")
            task = asyncio.create_task(c.run())
            try:
                await c.wait_for(lambda: c.version >= v1, 5)
                for step, nodes in enumerate((ABC, AB, ABC)):
                    t0 = time.monotonic()
                    v = await h.apply(r2.address, tmp_path, h.mesh_yaml(nodes))
                    await c.wait_for(lambda v=v: c.version >= v, 1.0)
                    assert time.monotonic() - t0 < 1.0, f"step {step}"
                    assert len(c.config.peers) == len(nodes) - 1  # type: ignore[union-attr]
                    assert c.events[-1].kind == "delta"
            finally:
                task.cancel()

    run(body())


def test_resume_serves_deltas_from_history_and_from_etcd_after_a_restart(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints, "r1") as r:
            v1 = await h.apply(r.address, tmp_path, h.mesh_yaml(AB))
            a = await h.enrolled(r, tmp_path, tmp_path / "a", "node-a")
            v2 = await h.apply(r.address, tmp_path, h.mesh_yaml(ABC))
            # Held version in this replica's history: a delta from exactly that version.
            first = await _first(r.address, a, "node-a", v1)
            assert first.WhichOneof("update") == "delta"
            assert (first.delta.from_version, first.delta.to_version) == (v1, v2)
            assert [p.name for p in first.delta.upsert_peers] == ["node-c"]
            # Already current: no snapshot, just a heartbeat confirming the version.
            first = await _first(r.address, a, "node-a", v2)
            assert first.WhichOneof("update") == "heartbeat" and first.version == v2
            # Nothing held: snapshot.
            first = await _first(r.address, a, "node-a", 0)
            assert first.WhichOneof("update") == "snapshot" and first.version == v2
        # A brand-new replica (empty history) reconstructs version v1 from etcd's MVCC history.
        async with h.replica(tmp_path, etcd.endpoints, "r9") as fresh:
            first = await _first(fresh.address, a, "node-a", v1)
            assert first.WhichOneof("update") == "delta"
            assert first.delta.from_version == v1 and [p.name for p in first.delta.upsert_peers] == ["node-c"]
            # Once etcd compacted that history, only a snapshot can help.
            now = await fresh.store.put("/meshsec/v1/test/bump", b"x")  # type: ignore[union-attr]
            await fresh.store._client.kv.compact(now, physical=True)  # type: ignore[union-attr]
        async with h.replica(tmp_path, etcd.endpoints, "r10") as fresh:
            first = await _first(fresh.address, a, "node-a", v1)
            assert first.WhichOneof("update") == "snapshot"
            assert [p.name for p in first.snapshot.peers] == ["node-b", "node-c"]

    run(body())


async def _health_becomes(r, state: Path, want: int, timeout: float = 6.0) -> None:  # type: ignore[no-untyped-def]
    """Poll gRPC health (enrollment endpoint, no client certificate) until it reports `want`."""
    deadline = time.monotonic() + timeout
    async with h.channel(r.enroll_address, (state / "admin" / "ca.pem").read_bytes()) as ch:
        while True:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
            if resp.status == want:
                return
            assert time.monotonic() < deadline, f"health stayed {resp.status}"
            await asyncio.sleep(0.2)


def test_controller_recovers_by_itself_after_etcd_restart(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints, "r1") as r:
            v1 = await h.apply(r.address, tmp_path, h.mesh_yaml(AB))
            a = await h.enrolled(r, tmp_path, tmp_path / "a", "node-a")
            c = h.client(r.address, "node-a", a, tmp_path / "a")
            task = asyncio.create_task(c.run())
            try:
                await c.wait_for(lambda: c.version >= v1, 5)
                await asyncio.to_thread(etcd.stop_member, 0)
                await _health_becomes(r, tmp_path, health_pb2.HealthCheckResponse.NOT_SERVING)
                assert c.version == v1 and len(c.config.peers) == 1  # type: ignore[union-attr]
                await asyncio.to_thread(etcd.start_member, 0)
                await asyncio.to_thread(etcd.wait_healthy)
                await _health_becomes(r, tmp_path, health_pb2.HealthCheckResponse.SERVING)
                deadline = time.monotonic() + 10
                while True:  # the first apply may race the controller's reconnect
                    try:
                        v2 = await h.apply(r.address, tmp_path, h.mesh_yaml(ABC))
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
                await c.wait_for(lambda: c.version >= v2, 5)
                assert [p.name for p in c.config.peers] == ["node-b", "node-c"]  # type: ignore[union-attr]
                # Liveness came back too.
                for _ in range(50):
                    if await r.store.get(Keys.connected("node-a")):  # type: ignore[union-attr]
                        break
                    await asyncio.sleep(0.1)
                assert await r.store.get(Keys.connected("node-a")) is not None  # type: ignore[union-attr]
            finally:
                task.cancel()

    run(body())


def test_invalid_spec_and_dry_run_store_nothing(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints) as r, h.admin_channel(r.address, tmp_path) as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            v1 = await h.apply(r.address, tmp_path, h.mesh_yaml(AB))
            bad = h.mesh_yaml(AB).replace("198.19.2.0/24", "198.19.2.0/33")
            resp = await admin.Apply(admin_pb2.ApplyRequest(spec_yaml=bad, filename="bad.yaml"))
            assert resp.errors and resp.errors[0].file == "bad.yaml" and resp.version == 0
            dry = await admin.Apply(admin_pb2.ApplyRequest(spec_yaml=h.mesh_yaml(ABC), dry_run=True))
            assert not dry.errors and dry.version == 0
            assert {p.node for p in dry.plan} >= {"node-a", "node-b", "node-c"}
            got = await admin.GetSpec(admin_pb2.GetSpecRequest())
            assert got.version == v1 and len(got.spec.nodes) == 2

    run(body())


def test_agent_renews_its_certificate_before_expiry(etcd: EtcdCluster, tmp_path: Path) -> None:
    """3 s node certificates (notBefore backdated 5 min): the client renews at two thirds of the
    lifetime counted from when it got the certificate (not at once, as the backdated notBefore would
    suggest), with a new key pair, and the new pair works."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from meshsec.controller.ca import identity_of

    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints, node_cert_lifetime=dt.timedelta(seconds=3)) as r:
            v1 = await h.apply(r.address, tmp_path, h.mesh_yaml(AB))
            a = await h.enrolled(r, tmp_path, tmp_path / "a", "node-a")
            enrolled_at = time.monotonic()
            before = identity_of(a.cert_path.read_bytes())
            key_before = a.key_path.read_bytes()
            c = h.client(r.address, "node-a", a, tmp_path / "a", renew_check=0.2)
            task = asyncio.create_task(c.run())
            try:
                await c.wait_for(lambda: c.version >= v1, 5)
                await c.wait_for(lambda: c.renewals >= 1, 5)
                # 2/3 of 2-3 s (notAfter is cut to whole seconds) from receipt, not at once
                assert time.monotonic() - enrolled_at >= 1.0
                after = identity_of(a.cert_path.read_bytes())
                assert c.renewals == 1 and after.fingerprint != before.fingerprint and after.name == "node-a"
                assert a.key_path.read_bytes() != key_before  # a fresh key pair per renewal
                spki = serialization.PublicFormat.SubjectPublicKeyInfo
                key = serialization.load_pem_private_key(a.key_path.read_bytes(), None)
                cert = x509.load_pem_x509_certificate(a.cert_path.read_bytes())
                assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == (
                    key.public_key().public_bytes(serialization.Encoding.DER, spki)
                )
                assert any(e.kind == "renewed" for e in c.events)
                record = await r.store.get(Keys.node("node-a"))  # type: ignore[union-attr]
                assert record is not None and after.fingerprint.encode() in record.value
                async with h.node_channel(r.address, a) as ch:  # the new certificate works
                    call = agent_pb2_grpc.AgentServiceStub(ch).Sync(agent_pb2.SyncRequest(node="node-a"))
                    assert (await call.read()).snapshot.local.name == "node-a"
                    call.cancel()
            finally:
                task.cancel()

    run(body())


def _pairs_yaml(d_subnet: str, b_subnet: str) -> str:
    nodes = {"node-a": "198.19.1.0/24", "node-b": b_subnet, "node-c": "198.19.3.0/24", "node-d": d_subnet}
    lines = ["apiVersion: meshsec.io/v1", "kind: Mesh", "nodes:"]
    for i, (name, subnet) in enumerate(nodes.items(), 1):
        lines += [f"  - name: {name}", f'    endpoints: ["198.18.0.{i}"]', f"    subnets: [{subnet}]"]
    lines += ["policies:", "  - name: p", "    topology: pairs"]
    lines += ["    pairs: [[node-a, node-b], [node-c, node-d]]"]
    return "\n".join(lines) + "\n"


def test_changes_to_other_nodes_only_advance_the_version(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints) as r:
            v1 = await h.apply(r.address, tmp_path, _pairs_yaml("198.19.4.0/24", "198.19.2.0/24"))
            a = await h.enrolled(r, tmp_path, tmp_path / "a", "node-a")
            c = h.client(r.address, "node-a", a, tmp_path / "a")
            task = asyncio.create_task(c.run())
            try:
                await c.wait_for(lambda: c.version >= v1, 5)
                # A change between c and d only.
                v2 = await h.apply(r.address, tmp_path, _pairs_yaml("198.19.44.0/24", "198.19.2.0/24"))
                await c.wait_for(lambda: c.version >= v2, 2)
                assert [e.kind for e in c.events if e.version == v2] == ["heartbeat"]  # nothing changed for A
                # A change between a and b.
                v3 = await h.apply(r.address, tmp_path, _pairs_yaml("198.19.44.0/24", "198.19.22.0/24"))
                await c.wait_for(lambda: c.version >= v3, 2)
                deltas = [e for e in c.events if e.kind == "delta"]
                assert [(d.from_version, d.version) for d in deltas] == [(v2, v3)]
                assert [e.kind for e in c.events].count("snapshot") == 1
                assert list(c.config.peers[0].children[0].remote_ts) == ["198.19.22.0/24"]  # type: ignore[union-attr]
            finally:
                task.cancel()

    run(body())


async def _next_update(call, timeout: float = 5.0) -> agent_pb2.SyncResponse:  # type: ignore[no-untyped-def]
    """The next snapshot or delta on a raw Sync stream (heartbeats skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            resp = await call.read()
            if resp.WhichOneof("update") != "heartbeat":
                return resp


def _count(name: str) -> float:
    from meshsec.controller.observability.metrics import REGISTRY

    return REGISTRY.get_sample_value(f"meshsec_controller_{name}_seconds_count") or 0.0


def test_one_node_change_reaches_every_agent_as_a_one_peer_delta(etcd: EtcdCluster, tmp_path: Path) -> None:
    """Fan-out sends each affected agent only the peer that changed; no snapshot is rebuilt for it."""
    five = {f"node-{x}": i for i, x in enumerate("abcde", 1)}

    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints) as r:
            v1 = await h.apply(r.address, tmp_path, h.mesh_yaml(five))
            names = ["node-a", "node-b", "node-c"]
            idents = [await h.enrolled(r, tmp_path, tmp_path / n, n) for n in names]
            async with contextlib.AsyncExitStack() as stack:
                calls = []
                for name, ident in zip(names, idents, strict=True):
                    ch = await stack.enter_async_context(h.node_channel(r.address, ident))
                    call = agent_pb2_grpc.AgentServiceStub(ch).Sync(agent_pb2.SyncRequest(node=name))
                    stack.callback(call.cancel)
                    first = await _next_update(call)
                    assert first.WhichOneof("update") == "snapshot" and first.version == v1
                    assert len(first.snapshot.peers) == 4
                    calls.append(call)
                built = r.state.snapshots_built  # type: ignore[union-attr]
                pushes, compiles = _count("sync_push"), _count("compile")
                moved = h.mesh_yaml(five).replace('"198.18.0.5"', '"198.18.0.55"')
                v2 = await h.apply(r.address, tmp_path, moved)
                for call in calls:
                    resp = await _next_update(call)
                    assert resp.WhichOneof("update") == "delta" and resp.version == v2
                    d = resp.delta
                    assert (d.from_version, d.to_version) == (v1, v2)
                    assert [p.name for p in d.upsert_peers] == ["node-e"]
                    assert list(d.upsert_peers[0].endpoints) == ["198.18.0.55"]
                    assert not d.remove_peers and not d.HasField("local")
                assert r.state.snapshots_built == built  # type: ignore[union-attr]
                assert _count("compile") == compiles + 1  # metrics: one compile, three timed pushes
                for _ in range(50):  # the push is recorded once the stream resumes after sending
                    if _count("sync_push") >= pushes + 3:
                        break
                    await asyncio.sleep(0.02)
                assert _count("sync_push") == pushes + 3
                assert r.state.history.delta_since("node-e", v1) is not None  # type: ignore[union-attr]
                assert not r.state.history.delta_since("node-e", v1)  # type: ignore[union-attr]

    run(body())


def test_liveness_keys_share_one_lease_and_outlive_overlapping_streams(etcd: EtcdCluster) -> None:
    """One lease for every stream's key (keepalives O(1), not per agent); a node's key stays while any
    of its streams is open (a reconnect overlaps the old stream) and goes with the last one."""
    from meshsec.controller.api.agent_service import SharedLease
    from meshsec.controller.store import Store

    async def body() -> None:
        async with Store(etcd.endpoints) as store:
            lease = SharedLease(store, 10)
            a, b = Keys.connected("node-a"), Keys.connected("node-b")
            for key in (a, a, b):  # node-a: an old and a new stream
                lease.enter(key)
                await lease.put(key, b"x")
            kv_a, kv_b = await store.get(a), await store.get(b)
            assert kv_a is not None and kv_b is not None and kv_a.lease == kv_b.lease != 0
            await lease.leave(a)  # the old stream of node-a ends
            assert await store.get(a) is not None
            await lease.leave(a)
            assert await store.get(a) is None and await store.get(b) is not None
            await lease.leave(b)  # the last stream: the lease is revoked, nothing is kept alive
            assert await store.get(b) is None
            assert lease._task is None and lease._lease == 0

    run(body())
