"""LeaseHolder: keys that exist exactly while something is alive (an agent's stream, a replica).

Owns one etcd lease, its keepalive loop and the keys bound to it; when etcd loses the lease (expired
during an outage, etcd restarted from an old snapshot) it grants a new one and writes the keys again.
It never raises into its owner: liveness is best effort and must not break the stream it describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from meshsec.controller.store.client import Store, StoreError

log = logging.getLogger(__name__)


class LeaseHolder:
    """Start with start(), write keys with set(), end with close() (which deletes the keys)."""

    def __init__(self, store: Store, ttl: int) -> None:
        self._store = store
        self._ttl = max(2, ttl)
        self._keys: dict[str, bytes] = {}
        self._lease = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._dirty = False

    @property
    def lease_id(self) -> int:
        return self._lease

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lease-holder")

    async def set(self, key: str, value: bytes) -> None:
        """Bind key=value to the lease (written by the keepalive task at once, or when etcd is back)."""
        self._keys[key] = value
        self._dirty = True
        self._wake.set()

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                if not self._lease:
                    self._lease = await self._store.grant(self._ttl)
                    self._dirty = True  # a new lease holds no keys yet
                elif await self._store.keepalive_once(self._lease) <= 0:
                    self._lease = 0  # etcd lost it: grant a new one at once
                    continue
                if self._dirty:
                    for key, value in list(self._keys.items()):
                        await self._store.put(key, value, lease=self._lease)
                    self._dirty = False
                if failing:
                    log.info("lease %x: etcd reachable again", self._lease)
                failing = False
                delay = self._ttl / 3
            except StoreError as exc:
                if not failing:
                    log.warning("lease: %s (retrying)", exc)
                failing = True
                delay = 0.5
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease:
            with contextlib.suppress(StoreError):
                await self._store.revoke(self._lease)
        self._lease = 0
