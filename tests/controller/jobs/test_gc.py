"""Garbage collection: the pure rule on hand-made views, then passes against a real etcd with a real
leadership term (a pass under a lost term writes nothing)."""

from __future__ import annotations

import asyncio
import json

from meshsec.api.v1 import spec_pb2
from meshsec.controller.jobs import LeaderElection
from meshsec.controller.jobs.gc import GC_GONE, GC_STALE, GcSettings, GcView, gc_pass, plan
from meshsec.controller.store import Keys, Store

from tests.support.etcd import EtcdCluster

SET = GcSettings(gone_after=100.0, record_grace=10.0)


def view(now: float = 1000.0, **kw: object) -> GcView:
    base: dict[str, object] = {
        "now": now,
        "spec_nodes": frozenset(),
        "enrolled": {},
        "alive": frozenset(),
        "gone_since": {},
        "stale": frozenset(),
        "issued": {},
        "revoked": {},
    }
    base.update(kw)
    return GcView(**base)  # type: ignore[arg-type]


def test_alive_nodes_clear_their_marks_and_absent_ones_start_counting() -> None:
    p = plan(
        view(
            spec_nodes=frozenset({"a", "b"}),
            alive=frozenset({"a"}),
            gone_since={"a": 1.0},
            stale=frozenset({"a"}),
        ),
        SET,
    )
    assert p.deletes == {GC_GONE + "a", GC_STALE + "a"}
    assert json.loads(p.puts[GC_GONE + "b"]) == {"since": 1000.0}


def test_spec_nodes_gone_too_long_are_marked_not_deleted() -> None:
    v = view(spec_nodes=frozenset({"b"}), enrolled={"b": {"fingerprint": "f"}}, gone_since={"b": 899.0})
    p = plan(v, SET)
    assert p.marked_stale == ["b"] and GC_STALE + "b" in p.puts and Keys.node("b") not in p.deletes
    assert plan(view(spec_nodes=frozenset({"b"}), gone_since={"b": 901.0}), SET).marked_stale == []
    # already marked: nothing more to write
    assert not plan(
        view(spec_nodes=frozenset({"b"}), gone_since={"b": 1.0}, stale=frozenset({"b"})), SET
    ).puts


def test_unknown_to_the_spec_and_gone_too_long_is_revoked_and_removed() -> None:
    v = view(
        enrolled={"old": {"fingerprint": "f1"}},
        gone_since={"old": 1.0},
        issued={"f1": {"node": "old", "not_after": 5000.0}, "f0": {"node": "old", "not_after": 500.0}},
    )
    p = plan(v, SET)
    assert p.removed_nodes == ["old"]
    assert {Keys.node("old"), GC_GONE + "old"} <= p.deletes
    assert json.loads(p.puts[Keys.revoked("f1")])["reason"] == "gc"  # still valid: revoked first
    assert Keys.revoked("f0") not in p.puts  # long expired: its record is simply dropped
    assert Keys.issued("f0") in p.deletes


def test_expired_records_are_pruned_after_the_grace_and_orphan_marks_dropped() -> None:
    v = view(
        revoked={"r1": {"not_after": 985.0}, "r2": {"not_after": 995.0}, "r3": {}},
        issued={"i1": {"node": "x", "not_after": 985.0}, "i2": {"node": "x", "not_after": 2000.0}},
        gone_since={"ghost": 1.0},
    )
    p = plan(v, SET)
    assert Keys.revoked("r1") in p.deletes and Keys.revoked("r2") not in p.deletes
    assert Keys.revoked("r3") not in p.deletes  # unknown expiry: kept
    assert Keys.issued("i1") in p.deletes and Keys.issued("i2") not in p.deletes
    assert GC_GONE + "ghost" in p.deletes


def test_passes_in_etcd_follow_the_rule_and_a_lost_term_writes_nothing(etcd: EtcdCluster) -> None:
    async def body() -> None:
        async with Store(etcd.endpoints) as store:
            spec = spec_pb2.MeshSpec()
            spec.nodes.add(name="kept")
            await store.put(Keys.SPEC, spec.SerializeToString())
            await store.put(Keys.node("kept"), json.dumps({"fingerprint": "k1", "not_after": 9e9}).encode())
            await store.put(Keys.node("gone"), json.dumps({"fingerprint": "g1", "not_after": 9e9}).encode())
            await store.put(Keys.issued("g1"), json.dumps({"node": "gone", "not_after": 9e9}).encode())
            await store.put(Keys.node("live"), json.dumps({"fingerprint": "l1", "not_after": 9e9}).encode())
            lease = await store.grant(30)
            await store.put(Keys.connected("live"), b"{}", lease=lease)

            election = LeaderElection(store, "jobs", "r1", ttl=5)
            term = await election.campaign()
            await gc_pass(store, SET, term, 1000.0)
            assert {k.key for k in (await store.get_prefix(GC_GONE))[0]} == {
                GC_GONE + "kept",
                GC_GONE + "gone",
            }
            await gc_pass(store, SET, term, 1050.0)  # not long enough yet
            assert await store.get(GC_STALE + "kept") is None
            await gc_pass(store, SET, term, 1101.0)
            assert await store.get(GC_STALE + "kept") is not None and await store.get(Keys.node("kept"))
            assert await store.get(Keys.node("gone")) is None
            assert await store.get(Keys.revoked("g1")) is not None
            assert await store.get(Keys.node("live")) is not None

            await election.resign(term)  # the term ends: a late pass must not write
            await store.put(Keys.node("late"), json.dumps({"fingerprint": "x"}).encode())
            await gc_pass(store, SET, term, 2000.0)
            assert await store.get(GC_GONE + "late") is None

    asyncio.run(asyncio.wait_for(body(), 30))
