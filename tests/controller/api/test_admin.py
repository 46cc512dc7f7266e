"""AdminService reads and events, gRPC health and reflection, and a controller on a 3-member etcd."""

from __future__ import annotations

import asyncio
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, status_pb2

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster

AB = {"node-a": 1, "node-b": 2}
ABC = {"node-a": 1, "node-b": 2, "node-c": 3}


def run(coro, timeout: float = 30):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_reads_events_health_and_reflection(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints) as r, h.admin_channel(r.address, tmp_path) as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            v1 = await h.apply(r.address, tmp_path, h.mesh_yaml(AB))
            a = await h.enrolled(r, tmp_path, tmp_path / "a", "node-a")
            events = admin.WatchEvents(admin_pb2.WatchEventsRequest(since_version=v1))
            v2 = await h.apply(r.address, tmp_path, h.mesh_yaml(ABC))
            done = asyncio.Event()

            async def reports():  # type: ignore[no-untyped-def]
                yield agent_pb2.ReportRequest(status=status_pb2.NodeStatus(applied_version=v2))
                await done.wait()  # keep the stream (and so its lease-bound status) alive

            async with h.node_channel(r.address, a) as nch:
                report = agent_pb2_grpc.AgentServiceStub(nch).Report(reports())
                seen: dict[str, int] = {}
                while "status_changed" not in seen or "spec_changed" not in seen:
                    ev = await asyncio.wait_for(events.read(), 5)
                    seen[ev.WhichOneof("event")] = ev.version
                    if ev.WhichOneof("event") == "status_changed":
                        assert ev.status_changed.node == "node-a" and ev.status_changed.applied_version == v2
                done.set()
                await report
            assert seen["spec_changed"] == v2
            events.cancel()
            node = await admin.GetNode(admin_pb2.GetNodeRequest(name="node-c"))
            assert node.name == "node-c" and list(node.subnets) == ["198.19.3.0/24"]
            views = {v.node.name: v for v in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes}
            assert sorted(views) == ["node-a", "node-b", "node-c"]
            assert views["node-a"].cert_fingerprint and not views["node-b"].cert_fingerprint
            # Health: on the enrollment endpoint without a certificate, on the main one with one.
            async with h.channel(r.enroll_address, (tmp_path / "admin" / "ca.pem").read_bytes()) as anon:
                resp = await health_pb2_grpc.HealthStub(anon).Check(health_pb2.HealthCheckRequest(service=""))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="meshsec.v1.AgentService")
            )
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = set()
            async for answer in stream:
                names |= {s.name for s in answer.list_services_response.service}
            assert {"meshsec.v1.AgentService", "meshsec.v1.AdminService", "grpc.health.v1.Health"} <= names

    run(body())


def test_controller_on_a_three_member_etcd_survives_losing_one_member(tmp_path: Path) -> None:
    async def body(etcd: EtcdCluster) -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints) as r:
            v1 = await h.apply(r.address, tmp_path, h.mesh_yaml(AB))
            a = await h.enrolled(r, tmp_path, tmp_path / "a", "node-a")
            c = h.client(r.address, "node-a", a, tmp_path / "a")
            task = asyncio.create_task(c.run())
            try:
                await c.wait_for(lambda: c.version >= v1, 5)
                await asyncio.to_thread(etcd.stop_member, 0)
                for _ in range(50):  # the client balances over the remaining two
                    try:
                        v2 = await h.apply(r.address, tmp_path, h.mesh_yaml(ABC))
                        break
                    except Exception:
                        await asyncio.sleep(0.2)
                await c.wait_for(lambda: c.version >= v2, 5)
                assert [p.name for p in c.config.peers] == ["node-b", "node-c"]  # type: ignore[union-attr]
            finally:
                task.cancel()

    with EtcdCluster(3) as etcd:
        run(body(etcd))
