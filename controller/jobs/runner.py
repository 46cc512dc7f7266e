"""SingletonRunner: run the controller's singleton jobs on exactly one replica, the election's leader.

Owns the lifecycle of the jobs: started when this replica wins the election, cancelled the moment the
term is lost or in doubt (before anything else happens, including resigning), restarted after a crash
while the term lasts.  It does not know what any job does; a job is an async function of the term that
runs until cancelled and puts ``term.guard()`` into every etcd write that must not outlive the term.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from meshsec.controller.jobs.election import LeaderElection, Leadership
from meshsec.controller.store import Store

log = logging.getLogger(__name__)

JobFn = Callable[[Leadership], Awaitable[None]]


@dataclass(frozen=True)
class Job:
    """A named singleton job; restart_delay: pause before restarting it after a crash."""

    name: str
    run: JobFn
    restart_delay: float = 1.0


def periodic(interval: float, step: Callable[[Leadership], Awaitable[None]]) -> JobFn:
    """A job that runs step(term) every `interval` seconds (the first time at once)."""

    async def loop(term: Leadership) -> None:
        while True:
            await step(term)
            await asyncio.sleep(interval)

    return loop


class SingletonRunner:
    """run() campaigns forever; close() stops the jobs and resigns so another replica takes over now."""

    def __init__(
        self,
        store: Store,
        identity: str,
        jobs: Sequence[Job],
        *,
        election: str = "jobs",
        ttl: int = 10,
        on_change: Callable[[Leadership | None], None] | None = None,
    ) -> None:
        self.election = LeaderElection(store, election, identity, ttl=ttl)
        self.jobs = list(jobs)
        self.term: Leadership | None = None
        self.terms = 0  # how many times this replica became leader
        self.last_loss = ""  # why the last term ended
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self.term is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="singleton-runner")

    async def run(self) -> None:
        while True:
            term = await self.election.campaign()
            self._set_term(term)
            self.terms += 1
            tasks = [
                asyncio.create_task(self._supervise(job, term), name=f"job-{job.name}") for job in self.jobs
            ]
            try:
                self.last_loss = await self.election.hold(term)
                log.warning(
                    "%s: leadership lost (%s): stopping singleton jobs", term.identity, self.last_loss
                )
            finally:
                await _cancel_all(tasks)  # first: a job never runs past the moment doubt arose
                self._set_term(None)
                # Resigning only helps (a revoked lease lets the next leader in at once); shielded so a
                # close() arriving meanwhile still gets the key deleted.
                await asyncio.shield(self.election.resign(term))
            await asyncio.sleep(0.2)

    def _set_term(self, term: Leadership | None) -> None:
        self.term = term
        if self._on_change is not None:
            self._on_change(term)

    async def _supervise(self, job: Job, term: Leadership) -> None:
        while True:
            try:
                await job.run(term)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("singleton job %s crashed; restarting in %.1f s", job.name, job.restart_delay)
                await asyncio.sleep(job.restart_delay)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
