"""DesiredState against a real etcd: incremental versions, and "what did an agent hold at version v"
answered from the history, from the base it folds into, and from etcd's MVCC history beyond it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshsec.controller.ca import Sealer, load_kek
from meshsec.controller.desired import DesiredState, load_spec
from meshsec.controller.store import Keys, Store

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster


def test_every_version_is_answered_from_history_base_or_etcd(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with Store(etcd.endpoints) as store:
            state = DesiredState(store, Sealer(load_kek(tmp_path / "kek")), history=1)
            task = asyncio.create_task(state.run())
            try:
                await asyncio.wait_for(state.ready.wait(), 5)
                versions = []
                for nodes in (
                    {"node-a": 1, "node-b": 2},
                    {"node-a": 1, "node-b": 2, "node-c": 3},
                    {"node-a": 1, "node-d": 4},
                ):
                    spec = load_spec(h.mesh_yaml(nodes), "mesh.yaml")
                    versions.append(await store.put(Keys.SPEC, spec.SerializeToString(deterministic=True)))
                    await asyncio.wait_for(state.wait_revision(versions[-1], 5), 6)
                v1, v2, v3 = versions
                assert state.version == v3
                assert state._base[0] == v2  # history=1: v1 and v2 were folded into the base

                async def peers(node: str, v: int) -> list[str]:
                    held = await state.held_at(node, v)
                    assert held is not None
                    return [p.name for p in held.peers]

                assert await peers("node-a", v3) == ["node-d"]  # current
                assert await peers("node-a", v2) == ["node-b", "node-c"]  # base
                assert await peers("node-a", v1) == ["node-b"]  # older than the base: etcd MVCC
                assert await peers("node-d", v2) == []  # not in the mesh then
                assert await peers("node-c", v3) == []  # not any more
                assert state.current("node-a").version == v3
                assert await state.held_at("node-a", 0) is None
            finally:
                task.cancel()

    asyncio.run(asyncio.wait_for(body(), 30))
