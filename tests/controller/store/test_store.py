"""Store adapter against a real etcd: CAS txns, prefix reads, MVCC reads, watch resume/compaction, leases."""

from __future__ import annotations

import asyncio

import pytest
from meshsec.controller.store import Compacted, Store, StoreUnavailable
from meshsec.controller.store.lease import LeaseHolder

from tests.support.etcd import EtcdCluster

P = "/meshsec/v1/test/"


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_put_get_prefix_and_old_revisions(etcd: EtcdCluster) -> None:
    async def body() -> None:
        async with Store(etcd.endpoints) as s:
            r1 = await s.put(P + "a", b"1")
            await s.put(P + "b", b"2")
            r3 = await s.put(P + "a", b"3")
            kvs, rev = await s.get_prefix(P)
            assert [(k.key, k.value) for k in kvs] == [(P + "a", b"3"), (P + "b", b"2")]
            assert rev >= r3
            old = await s.get(P + "a", revision=r1)
            assert old is not None and old.value == b"1"
            assert await s.get(P + "missing") is None
            await s.delete(P + "b")
            assert [k.key for k in (await s.get_prefix(P))[0]] == [P + "a"]

    run(body())


def test_compare_and_swap_and_create(etcd: EtcdCluster) -> None:
    async def body() -> None:
        async with Store(etcd.endpoints) as s:
            assert await s.create(P + "x", b"first")
            assert not await s.create(P + "x", b"second")
            kv = await s.get(P + "x")
            assert kv is not None and kv.value == b"first"
            ok = await s.txn([s.mod_revision_is(P + "x", kv.mod_revision)], [s.op_put(P + "x", b"swapped")])
            stale = await s.txn([s.mod_revision_is(P + "x", kv.mod_revision)], [s.op_put(P + "x", b"lost")])
            assert ok.succeeded and not stale.succeeded
            assert (await s.get(P + "x")).value == b"swapped"  # type: ignore[union-attr]

    run(body())


def test_watch_resumes_from_a_revision_and_reports_compaction(etcd: EtcdCluster) -> None:
    async def body() -> None:
        async with Store(etcd.endpoints) as s:
            r1 = await s.put(P + "w", b"1")
            await s.put(P + "w", b"2")
            await s.delete(P + "w")
            seen = []
            async for _rev, events in s.watch_prefix(P, r1):
                seen += [(e.key, e.value, e.deleted) for e in events]
                if len(seen) >= 3:
                    break
            assert seen == [(P + "w", b"1", False), (P + "w", b"2", False), (P + "w", b"", True)]
            now = await s.put(P + "w", b"4")
            await s._client.kv.compact(now, physical=True)  # type: ignore[union-attr]
            with pytest.raises(Compacted):
                async for _ in s.watch_prefix(P, r1):
                    pass
            with pytest.raises(Compacted):
                await s.get(P + "w", revision=r1)

    run(body())


def test_watch_survives_an_etcd_restart(etcd: EtcdCluster) -> None:
    async def body() -> None:
        async with Store(etcd.endpoints) as s:
            start = await s.put(P + "k", b"before")
            got: list[bytes] = []

            async def watch() -> None:
                async for _rev, events in s.watch_prefix(P, start + 1):
                    got.extend(e.value for e in events)
                    return

            task = asyncio.create_task(watch())
            await asyncio.sleep(0.2)
            await asyncio.to_thread(etcd.restart_member, 0)
            await asyncio.to_thread(etcd.wait_healthy)
            async with Store(etcd.endpoints) as other:
                await other.put(P + "k", b"after")
            await asyncio.wait_for(task, 10)
            assert got == [b"after"]

    run(body())


def test_unreachable_etcd_is_store_unavailable() -> None:
    from tests.support.etcd import free_port

    async def body() -> None:
        async with Store([f"127.0.0.1:{free_port()}"], timeout=0.5) as s:
            with pytest.raises(StoreUnavailable):
                await s.get(P + "x")
            with pytest.raises(StoreUnavailable):
                await s.txn([], [s.op_put(P + "x", b"1")])

    run(body())


def test_lease_bound_keys_vanish_and_are_recreated(etcd: EtcdCluster) -> None:
    async def body() -> None:
        async with Store(etcd.endpoints) as s:
            holder = LeaseHolder(s, ttl=2)
            holder.start()
            await holder.set(P + "live", b"yes")
            for _ in range(50):
                if await s.get(P + "live"):
                    break
                await asyncio.sleep(0.05)
            assert (await s.get(P + "live")) is not None
            # etcd loses the lease (as after a long outage): the holder grants a new one and rewrites.
            await s.revoke(holder.lease_id)
            assert await s.get(P + "live") is None
            for _ in range(60):
                if await s.get(P + "live"):
                    break
                await asyncio.sleep(0.1)
            assert (await s.get(P + "live")) is not None
            await holder.close()
            assert await s.get(P + "live") is None
            # A lease nobody keeps alive expires and takes its keys with it.
            lease = await s.grant(2)
            await s.put(P + "gone", b"soon", lease=lease)
            await asyncio.sleep(3.2)
            assert await s.get(P + "gone") is None

    run(body())
