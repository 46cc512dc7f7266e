"""The CA rotation job: advances the rollover state machine (controller/ca/rollover.py) on the leader.

Owns only the schedule: every ``interval`` it takes the step that is due (begin before the signing CA
expires, switch after ``propagate``, retire after ``overlap``) in a txn carrying the leadership guard,
so the step is taken once, by the current leader.  `meshctl ca rotate` begins a rollover from any
replica; this job carries it on from there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from meshsec.controller.ca.kek import Sealer
from meshsec.controller.ca.rollover import RolloverError, RolloverPolicy, RolloverState, RolloverStore
from meshsec.controller.jobs.election import Leadership
from meshsec.controller.jobs.runner import Job
from meshsec.controller.store import Store, StoreError

log = logging.getLogger(__name__)


def rotation_job(
    store: Store,
    sealer: Sealer,
    policy: RolloverPolicy,
    *,
    interval: float = 30.0,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> Job:
    roll = RolloverStore(store, sealer, policy)

    async def run(term: Leadership) -> None:
        while True:
            try:
                action, state = await roll.step(clock(), guard=term.guard())
                if action is not None:
                    log.info("CA rollover: %s done, now %s", action, _describe(state))
            except (StoreError, RolloverError) as exc:
                log.warning("CA rotation check: %s", exc)
            await asyncio.sleep(interval)

    return Job("ca-rotation", run)


def _describe(state: RolloverState) -> str:
    if state.new_fp:
        return f"{state.phase} (new CA {state.new_fp[:16]})"
    return str(state.phase)
