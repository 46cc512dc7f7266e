"""Hook for address allocation as a singleton job (overlay addresses handed out by the leader only).

Nothing allocates addresses yet: the spec names every subnet.  When an allocator exists it is an async
function ``allocate(term)`` doing one pass (read what is free, assign, write with ``term.guard()`` in
the txn, so two leaders can never hand out the same address); ``allocation_job`` runs it periodically.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from meshsec.controller.jobs.election import Leadership
from meshsec.controller.jobs.runner import Job
from meshsec.controller.store import StoreError

log = logging.getLogger(__name__)

Allocator = Callable[[Leadership], Awaitable[None]]


def allocation_job(allocate: Allocator, *, interval: float = 5.0) -> Job:
    async def run(term: Leadership) -> None:
        while True:
            try:
                await allocate(term)
            except StoreError as exc:
                log.warning("address allocation pass skipped: %s", exc)
            await asyncio.sleep(interval)

    return Job("address-allocation", run)
