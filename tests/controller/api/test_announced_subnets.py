"""Announced subnets end to end on a real etcd and controller: an agent's Report carries its podCIDRs,
the controller stores them, and peers route them only when the spec's node accepts them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from meshsec.api.v1 import config_pb2, spec_pb2
from meshsec.controller.desired.announced import announced_key
from meshsec.controller.store import Keys

from tests.controller.harness import apply, client, enrolled, init_state, mesh_yaml, replica
from tests.support.etcd import EtcdCluster

POD_CIDR = "198.19.200.0/24"


def _remote_ts(cfg: config_pb2.NodeConfig, peer: str) -> set[str]:
    return {ts for p in cfg.peers if p.name == peer for ch in p.children for ts in ch.remote_ts}


def test_announced_pod_cidr_is_routed_only_when_the_node_accepts_it(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    async def body() -> None:
        state = tmp_path / "c"
        await init_state(state, etcd.endpoints)
        async with replica(state, etcd.endpoints) as c:
            assert c.store is not None and c.state is not None
            await apply(c.address, state, mesh_yaml({"a": 1, "b": 2}))
            identity = await enrolled(c, state, tmp_path / "a", "a")
            agent = client(c.address, "a", identity, tmp_path / "a")
            agent.announce([POD_CIDR])
            task = asyncio.create_task(agent.run())
            try:
                for _ in range(200):
                    kv = await c.store.get(announced_key("a"))
                    if kv is not None:
                        break
                    await asyncio.sleep(0.05)
                assert kv is not None and json.loads(kv.value) == [POD_CIDR]
                # Not accepted by the spec: b does not route it to a.
                await asyncio.sleep(0.3)
                assert POD_CIDR not in _remote_ts(await c.state.snapshot("b"), "a")

                # The spec accepts a's announcements (written as the loader will once it knows
                # acceptAnnouncedSubnets): b routes the pod CIDR to a, a lists it as its own.
                kv_spec = await c.store.get(Keys.SPEC)
                assert kv_spec is not None
                spec = spec_pb2.MeshSpec.FromString(kv_spec.value)
                spec.nodes[0].accept_announced_subnets = True
                assert spec.nodes[0].name == "a"
                rev = await c.store.put(Keys.SPEC, spec.SerializeToString(deterministic=True))
                await c.state.wait_revision(rev, 5)
                for _ in range(100):
                    if POD_CIDR in _remote_ts(await c.state.snapshot("b"), "a"):
                        break
                    await asyncio.sleep(0.05)
                assert POD_CIDR in _remote_ts(await c.state.snapshot("b"), "a")
                assert POD_CIDR in (await c.state.snapshot("a")).local.subnets
                # The stored spec (what `meshctl get spec` shows) is unchanged.
                stored = spec_pb2.MeshSpec.FromString((await c.store.get(Keys.SPEC)).value)  # type: ignore[union-attr]
                assert POD_CIDR not in stored.nodes[0].subnets

                # A new announcement replaces the old one; the agent's Sync stream gets a delta.
                agent.announce(["198.19.201.0/24"])
                for _ in range(100):
                    if "198.19.201.0/24" in _remote_ts(await c.state.snapshot("b"), "a"):
                        break
                    await asyncio.sleep(0.05)
                b_cfg = await c.state.snapshot("b")
                assert "198.19.201.0/24" in _remote_ts(b_cfg, "a") and POD_CIDR not in _remote_ts(b_cfg, "a")
                await agent.wait_for(
                    lambda: agent.config is not None and "198.19.201.0/24" in agent.config.local.subnets, 5
                )
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(body(), 60))
