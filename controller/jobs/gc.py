"""Garbage collection of nodes gone too long, and of credential records nobody can use any more.

Owns the keys ``/meshsec/v1/gc/gone-since/<name>`` (JSON {since}: when the leader first saw the node
without a live Sync stream) and ``/meshsec/v1/gc/stale/<name>`` (JSON {since}: the node has been gone
longer than ``gone_after``).  Both live in etcd, so a new leader continues the count where the old one
stopped.  Liveness is ``connected/<name>`` (bound to the lease of the node's Sync stream).

The rule (one pass, ``plan`` is pure):

1. a node with a live Sync stream is present: its gone-since and stale keys are removed;
2. a known node (enrolled, or in the spec) without one gets gone-since = now, once;
3. gone longer than ``gone_after``:
   * still in the spec: MARKED stale, nothing deleted (the spec is the operator's intent; `meshctl
     node delete` or a new apply removes it);
   * not in the spec (deleted, or enrolled but never declared): its still-valid certificates are
     revoked, then its enrollment record ``nodes/<name>`` and its gc keys are DELETED;
4. ``certs/revoked/<fp>`` and ``certs/issued/<fp>`` records whose certificate expired more than
   ``record_grace`` ago are deleted (an expired certificate is refused anyway);
5. gc keys of names that are neither enrolled nor in the spec are deleted.

Every write of a pass carries the leadership guard: a replica that lost the election writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshsec.api.v1 import spec_pb2
from meshsec.controller.ca.revocation import prunable
from meshsec.controller.jobs.election import Leadership
from meshsec.controller.jobs.runner import Job
from meshsec.controller.store import Keys, Store, StoreError

log = logging.getLogger(__name__)

GC_GONE = Keys.ROOT + "gc/gone-since/"
GC_STALE = Keys.ROOT + "gc/stale/"
_TXN_OPS = 100  # etcd refuses txns above --max-txn-ops (128 by default)


@dataclass(frozen=True)
class GcSettings:
    gone_after: float = 7 * 86400.0  # seconds without a Sync stream before a node counts as gone
    record_grace: float = 86400.0  # keep expired certificate records this long after expiry
    interval: float = 60.0  # seconds between passes


@dataclass(frozen=True)
class GcView:
    """Everything one pass reads (names → parsed JSON records)."""

    now: float
    spec_nodes: frozenset[str]
    enrolled: dict[str, dict[str, object]]
    alive: frozenset[str]
    gone_since: dict[str, float]
    stale: frozenset[str]
    issued: dict[str, dict[str, object]]
    revoked: dict[str, dict[str, object]]


@dataclass
class GcPlan:
    puts: dict[str, bytes] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    marked_stale: list[str] = field(default_factory=list)
    removed_nodes: list[str] = field(default_factory=list)


def _expiry(rec: dict[str, object]) -> float:
    try:
        return float(rec.get("not_after", 0) or 0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def plan(view: GcView, settings: GcSettings) -> GcPlan:
    """The writes of one pass (the rule in the module docstring)."""
    out = GcPlan()
    stamp = json.dumps({"since": view.now}).encode()
    known = view.spec_nodes | frozenset(view.enrolled)
    for name in sorted(known):
        if name in view.alive:
            if name in view.gone_since:
                out.deletes.add(GC_GONE + name)
            if name in view.stale:
                out.deletes.add(GC_STALE + name)
            continue
        since = view.gone_since.get(name)
        if since is None:
            out.puts[GC_GONE + name] = stamp
            continue
        if view.now - since < settings.gone_after:
            continue
        if name in view.spec_nodes:
            if name not in view.stale:
                out.puts[GC_STALE + name] = json.dumps({"since": since}).encode()
                out.marked_stale.append(name)
            continue
        for fp, rec in view.issued.items():
            if rec.get("node") == name and _expiry(rec) > view.now and fp not in view.revoked:
                revoked = {"node": name, "at": view.now, "not_after": _expiry(rec), "reason": "gc"}
                out.puts[Keys.revoked(fp)] = json.dumps(revoked, sort_keys=True).encode()
        out.deletes |= {Keys.node(name), GC_GONE + name, GC_STALE + name}
        out.removed_nodes.append(name)
    for name in set(view.gone_since) | set(view.stale):
        if name not in known:
            out.deletes |= {GC_GONE + name, GC_STALE + name}
    for fp, rec in view.revoked.items():
        if prunable(rec, view.now, settings.record_grace):
            out.deletes.add(Keys.revoked(fp))
    for fp, rec in view.issued.items():
        if 0 < _expiry(rec) < view.now - settings.record_grace:
            out.deletes.add(Keys.issued(fp))
    out.deletes -= set(out.puts)
    return out


def _records(kvs: list, prefix: str) -> dict[str, dict[str, object]]:  # type: ignore[type-arg]
    out: dict[str, dict[str, object]] = {}
    for kv in kvs:
        try:
            rec = json.loads(kv.value)
        except ValueError:
            rec = {}
        out[kv.key.removeprefix(prefix)] = rec if isinstance(rec, dict) else {}
    return out


async def read_view(store: Store, now: float) -> GcView:
    spec = spec_pb2.MeshSpec()
    kv = await store.get(Keys.SPEC)
    if kv is not None:
        spec.ParseFromString(kv.value)
    enrolled = _records((await store.get_prefix(Keys.NODES))[0], Keys.NODES)
    alive = frozenset(k.key.removeprefix(Keys.CONNECTED) for k in (await store.get_prefix(Keys.CONNECTED))[0])
    gone = {}
    for name, rec in _records((await store.get_prefix(GC_GONE))[0], GC_GONE).items():
        try:
            gone[name] = float(rec.get("since", now))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            gone[name] = now
    stale = frozenset(_records((await store.get_prefix(GC_STALE))[0], GC_STALE))
    issued = _records((await store.get_prefix(Keys.CERTS_ISSUED))[0], Keys.CERTS_ISSUED)
    revoked = _records((await store.get_prefix(Keys.CERTS_REVOKED))[0], Keys.CERTS_REVOKED)
    return GcView(now, frozenset(n.name for n in spec.nodes), enrolled, alive, gone, stale, issued, revoked)


async def apply_plan(store: Store, gc: GcPlan, term: Leadership) -> bool:
    """Write the plan in guarded txns; False (and stop) as soon as the term no longer holds."""
    ops = [store.op_put(k, v) for k, v in sorted(gc.puts.items())]
    ops += [store.op_delete(k) for k in sorted(gc.deletes)]
    for i in range(0, len(ops), _TXN_OPS):
        res = await store.txn([term.guard()], ops[i : i + _TXN_OPS])
        if not res.succeeded:
            return False
    return True


async def gc_pass(store: Store, settings: GcSettings, term: Leadership, now: float) -> GcPlan:
    """One pass: read, plan, write (guarded).  Returns the plan it applied."""
    gc = plan(await read_view(store, now), settings)
    if (gc.puts or gc.deletes) and not await apply_plan(store, gc, term):
        return GcPlan()  # the term ended mid-pass: the next leader redoes it (every step is idempotent)
    for name in gc.marked_stale:
        log.warning("node %s has had no Sync stream for too long: marked stale", name)
    for name in gc.removed_nodes:
        log.info("gc: removed the enrollment of %s (not in the spec, gone too long)", name)
    return gc


def gc_job(store: Store, settings: GcSettings, clock: Callable[[], float] = time.time) -> Job:
    """The singleton job: a pass every settings.interval seconds while the term lasts."""

    async def run(term: Leadership) -> None:
        while True:
            try:
                await gc_pass(store, settings, term, clock())
            except StoreError as exc:
                log.warning("gc pass skipped: %s", exc)
            await asyncio.sleep(settings.interval)

    return Job("gc", run)
