"""DesiredState against a real etcd: incremental versions, and "what must an agent holding version v
receive" answered from the per-node delta history and, beyond it, from etcd's MVCC history; nothing
is materialized but the snapshots asked for."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshsec.api.v1 import config_pb2
from meshsec.controller.ca import Sealer, load_kek
from meshsec.controller.compiler import apply_delta
from meshsec.controller.desired import DesiredState, load_spec
from meshsec.controller.store import Keys, Store

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster

STEPS = (
    {"node-a": 1, "node-b": 2},
    {"node-a": 1, "node-b": 2, "node-c": 3},
    {"node-a": 1, "node-d": 4},
)


def _peers(cfg: config_pb2.NodeConfig) -> list[str]:
    return [p.name for p in cfg.peers]


def test_every_version_is_answered_from_history_or_etcd(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with Store(etcd.endpoints) as store:
            state = DesiredState(store, Sealer(load_kek(tmp_path / "kek")), history=1)
            task = asyncio.create_task(state.run())
            try:
                await asyncio.wait_for(state.ready.wait(), 5)
                versions, held = [], {}
                for nodes in STEPS:
                    spec = load_spec(h.mesh_yaml(nodes), "mesh.yaml")
                    versions.append(await store.put(Keys.SPEC, spec.SerializeToString(deterministic=True)))
                    await asyncio.wait_for(state.wait_revision(versions[-1], 5), 6)
                    for node in ("node-a", "node-b", "node-c", "node-d"):
                        held[node, versions[-1]] = await state.snapshot(node)
                v1, v2, v3 = versions
                assert state.version == v3
                assert state.history.since == v2 and len(state.history) == 1  # history=1: v2 folded
                assert not state.history.covers(v1)  # v1 is answered from etcd's MVCC history
                assert state.snapshots_built == 12  # only what was asked for

                # For every node and every version: the delta turns what the agent held into current.
                for (node, v), cfg in held.items():
                    delta = await state.delta_since(node, v)
                    assert delta is not None and (delta.from_version, delta.to_version) == (v, v3)
                    assert apply_delta(cfg, delta) == held[node, v3], (node, v)

                a_v2 = await state.delta_since("node-a", v2)  # from the history: a per-peer delta
                assert [p.name for p in a_v2.upsert_peers] == ["node-d"]  # type: ignore[union-attr]
                assert list(a_v2.remove_peers) == ["node-b", "node-c"]  # type: ignore[union-attr]
                assert not a_v2.HasField("local")  # type: ignore[union-attr]
                gone = await state.delta_since("node-c", v2)  # not in the mesh any more
                assert list(gone.remove_peers) == ["node-a", "node-b"]  # type: ignore[union-attr]
                assert _peers(held["node-c", v3]) == [] and _peers(held["node-a", v3]) == ["node-d"]
                current = await state.delta_since("node-a", v3)
                assert current is not None and not current.upsert_peers and not current.remove_peers
                assert await state.delta_since("node-a", 0) is None
                assert (await state.snapshot("node-a")).version == v3
            finally:
                task.cancel()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_unrelated_writes_and_a_fresh_replica_need_no_recompile(etcd: EtcdCluster, tmp_path: Path) -> None:
    """A replica that starts after the last change answers agents holding that change's version with
    'up to date' from the inputs' digest at that revision, without compiling any config."""

    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with Store(etcd.endpoints) as store:
            spec = load_spec(h.mesh_yaml(STEPS[1]), "mesh.yaml")
            v = await store.put(Keys.SPEC, spec.SerializeToString(deterministic=True))
            await store.put("/meshsec/v1/test/unrelated", b"x")
            state = DesiredState(store, Sealer(load_kek(tmp_path / "kek")))
            task = asyncio.create_task(state.run())
            try:
                await asyncio.wait_for(state.ready.wait(), 5)
                assert state.version > v  # the revision of its first read
                delta = await state.delta_since("node-b", v)
                assert delta is not None and (delta.from_version, delta.to_version) == (v, state.version)
                assert not delta.upsert_peers and not delta.remove_peers and not delta.HasField("local")
                assert state.snapshots_built == 0 and not state._old  # no config, no old compiler
            finally:
                task.cancel()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_a_revocation_rebuilds_local_configs_only(etcd: EtcdCluster, tmp_path: Path) -> None:
    """Revoking a certificate changes every agent's LocalConfig and no peer: the replica sends each
    agent only its new LocalConfig and builds no PeerConfig, and the result equals a full compile."""
    from meshsec.controller.desired import compile_configs

    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with Store(etcd.endpoints) as store:
            state = DesiredState(store, Sealer(load_kek(tmp_path / "kek")))
            task = asyncio.create_task(state.run())
            try:
                await asyncio.wait_for(state.ready.wait(), 5)
                spec = load_spec(h.mesh_yaml(STEPS[1]), "mesh.yaml")
                v1 = await store.put(Keys.SPEC, spec.SerializeToString(deterministic=True))
                await asyncio.wait_for(state.wait_revision(v1, 5), 6)
                before = {n: await state.snapshot(n) for n in STEPS[1]}
                peers_built = state._compiler.peers_compiled
                v2 = await store.put(Keys.revoked("ab" * 32), b"{}")
                await asyncio.wait_for(state.wait_revision(v2, 5), 6)
                assert state.version == v2 and "ab" * 32 in state.creds.revoked_fingerprints  # type: ignore[union-attr]
                assert state._compiler.peers_compiled == peers_built  # no PeerConfig rebuilt
                full = compile_configs(state.inputs.spec, state.inputs.creds)  # type: ignore[union-attr]
                for node, held in before.items():
                    delta = await state.delta_since(node, v1)
                    assert delta is not None and not delta.upsert_peers and not delta.remove_peers
                    assert list(delta.local.revoked_fingerprints) == ["ab" * 32]
                    now = apply_delta(held, delta)
                    now.version = 0
                    assert now == full[node]
            finally:
                task.cancel()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_a_change_above_the_delta_budget_sends_snapshots_only_where_it_touches(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """A profile change priced above the compiler's delta budget builds nothing at update time: the
    nodes whose policies use the profile are answered with a snapshot (built on demand, equal to a
    full compile), the others with an empty delta."""
    from meshsec.controller.desired import compile_configs

    base = h.mesh_yaml({"node-a": 1, "node-b": 2, "node-c": 3, "node-d": 4})
    extra = (
        "  - {name: ab, topology: pairs, pairs: [[node-a, node-b]], profile: slow}\n"
        "profiles:\n  - name: slow\n    dpd: {interval: 30s, timeout: 150s}\n"
    )

    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with Store(etcd.endpoints) as store:
            state = DesiredState(store, Sealer(load_kek(tmp_path / "kek")), compiler_delta_peers=0)
            task = asyncio.create_task(state.run())
            try:
                await asyncio.wait_for(state.ready.wait(), 5)
                spec = load_spec(base + extra, "mesh.yaml")
                v1 = await store.put(Keys.SPEC, spec.SerializeToString(deterministic=True))
                await asyncio.wait_for(state.wait_revision(v1, 5), 6)
                built = state._compiler.peers_compiled
                spec2 = load_spec(base + extra.replace("interval: 30s", "interval: 40s"), "mesh.yaml")
                v2 = await store.put(Keys.SPEC, spec2.SerializeToString(deterministic=True))
                await asyncio.wait_for(state.wait_revision(v2, 5), 6)
                assert state.version == v2 and state.history.covers(v1)
                assert state._compiler.peers_compiled == built  # nothing built by the update
                assert await state.delta_since("node-a", v1) is None  # a snapshot
                assert await state.delta_since("node-b", v1) is None
                for node in ("node-c", "node-d"):  # not in the pair policy: nothing to send
                    d = await state.delta_since(node, v1)
                    assert (
                        d is not None
                        and d.to_version == v2
                        and not d.upsert_peers
                        and not d.HasField("local")
                    )
                full = compile_configs(spec2, state.inputs.creds)  # type: ignore[union-attr]
                snap = await state.snapshot("node-a")
                snap.version = 0
                assert snap == full["node-a"]
                assert [c.name for c in snap.peers[0].children] == ["ab", "all"]
                assert snap.peers[0].ike.dpd_interval_seconds == 40
            finally:
                task.cancel()

    asyncio.run(asyncio.wait_for(body(), 30))
