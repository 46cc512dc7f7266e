"""Leader election over one etcd key bound to a lease: who may run the controller's singleton jobs.

Owns the election key ``/meshsec/v1/election/<name>`` (value: the replica's identity, lease-bound) and
the rules for when a replica believes it leads.  It does not know what the jobs do.

Why not etcd3aio's ``Election``: it never keeps its lease alive and cannot tell its holder that the lease
is gone, which is exactly what a singleton job needs to know.  Here:

* campaign: wait until the key is absent, grant a fresh lease, create the key in a compare-and-swap
  (``create_revision == 0``, sent once).  The winner's ``mod_revision`` is its fencing token.
* hold: keep the lease alive every TTL/4 and watch the key.  Leadership ends at the FIRST sign of doubt:
  a keepalive that fails or times out (etcd unreachable), a keepalive answering TTL 0 (lease revoked or
  expired), any change to the key (deleted by a revoke), or the local deadline ``last keepalive sent +
  granted TTL - margin`` passing.  The deadline starts before the request is sent and etcd starts its
  countdown after receiving it, so a replica always stops before etcd can hand the key to another one.
* writes that must not outlive leadership carry ``Leadership.guard()`` in their txn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshsec.controller.store import Store, StoreError
from meshsec.controller.store.client import Compare

log = logging.getLogger(__name__)

ELECTION_PREFIX = "/meshsec/v1/election/"


def election_key(name: str) -> str:
    return ELECTION_PREFIX + name


@dataclass(frozen=True)
class Leadership:
    """One term of leadership: the key, its lease and the revision that created it (fencing token)."""

    key: str
    lease: int
    revision: int
    identity: str
    granted_at: float = 0.0  # local clock just before the lease grant was sent (the lease's earliest start)

    def guard(self) -> Compare:
        """A txn compare that holds only while this term lasts (the key is still the one we created)."""
        return Store.mod_revision_is(self.key, self.revision)


class LeaderElection:
    """Campaign for, hold and resign one named election; ttl in whole seconds (etcd lease TTL)."""

    def __init__(
        self,
        store: Store,
        name: str,
        identity: str,
        *,
        ttl: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.key = election_key(name)
        self.identity = identity
        self.ttl = max(2, int(ttl))
        self._clock = clock
        # Stop this long before the earliest moment etcd could expire our lease.
        self.margin = max(0.3, self.ttl * 0.15)

    async def leader(self) -> str | None:
        """The identity of the current leader, if any (for status displays)."""
        kv = await self._store.get(self.key)
        return kv.value.decode(errors="replace") if kv else None

    async def _wait_absent(self) -> None:
        """Return once the key looks absent (polls at least every TTL, watches in between)."""
        while True:
            kv = await self._store.get(self.key)
            if kv is None:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ttl):
                    async for _rev, events in self._store.watch_prefix(self.key, kv.mod_revision + 1):
                        if any(e.key == self.key and e.deleted for e in events):
                            return

    async def campaign(self) -> Leadership:
        """Block until this replica leads; retries through etcd outages (never raises StoreError)."""
        failing = False
        while True:
            try:
                await self._wait_absent()
                granted_at = self._clock()
                lease = await self._store.grant(self.ttl)
                res = await self._store.txn(
                    [self._store.absent(self.key)],
                    [self._store.op_put(self.key, self.identity.encode(), lease=lease)],
                )
                if res.succeeded:
                    log.info("%s: elected leader of %s (lease %x)", self.identity, self.key, lease)
                    return Leadership(self.key, lease, res.revision, self.identity, granted_at)
                with contextlib.suppress(StoreError):
                    await self._store.revoke(lease)  # lost the race: do not leave a lease behind
                failing = False
            except StoreError as exc:
                if not failing:
                    log.warning("%s: campaign for %s: %s (retrying)", self.identity, self.key, exc)
                failing = True
                await asyncio.sleep(0.5)

    async def hold(self, term: Leadership) -> str:
        """Keep the term alive; returns (the reason) as soon as leadership is lost or in doubt."""
        keeper = asyncio.create_task(self._keepalive(term), name="election-keepalive")
        watcher = asyncio.create_task(self._watch(term), name="election-watch")
        try:
            done, _ = await asyncio.wait({keeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
            task = done.pop()
            try:
                return task.result()
            except Exception as exc:
                return f"election check failed: {exc}"
        finally:
            for t in (keeper, watcher):
                t.cancel()
            for t in (keeper, watcher):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _keepalive(self, term: Leadership) -> str:
        # etcd starts the lease's countdown after receiving the grant, which was sent at granted_at
        deadline = (term.granted_at or self._clock()) + self.ttl
        interval = max(0.2, self.ttl / 4)
        while True:
            sent = self._clock()
            budget = deadline - self.margin - sent
            if budget <= 0:
                return "lease deadline passed without a successful keepalive"
            try:
                async with asyncio.timeout(budget):
                    left = await self._store.keepalive_once(term.lease)
            except TimeoutError:
                return "keepalive timed out: etcd unreachable"
            except StoreError as exc:
                return f"keepalive failed: {exc}"
            if left <= 0:
                return "lease revoked or expired"
            deadline = sent + left
            await asyncio.sleep(min(interval, max(0.0, deadline - self.margin - self._clock())))

    async def _watch(self, term: Leadership) -> str:
        try:
            async for _rev, events in self._store.watch_prefix(term.key, term.revision + 1):
                for e in events:
                    if e.key == term.key:
                        return "election key deleted" if e.deleted else "election key overwritten"
        except StoreError as exc:
            return f"watch of the election key failed: {exc}"
        return "watch of the election key ended"

    async def resign(self, term: Leadership) -> None:
        """Give up the term at once (revoking the lease deletes the key); best effort when etcd is gone."""
        with contextlib.suppress(StoreError):
            await self._store.txn([term.guard()], [self._store.op_delete(term.key)])
        with contextlib.suppress(StoreError):
            await self._store.revoke(term.lease)
