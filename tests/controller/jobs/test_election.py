"""Leader election and singleton jobs against a real etcd: one leader at a time, handover on close, on
a killed leader process (within the lease TTL), immediate stop on a revoked lease or an etcd outage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from meshsec.controller.jobs import Job, LeaderElection, Leadership, SingletonRunner, election_key
from meshsec.controller.store import Store

from tests.support.etcd import EtcdCluster

REPO = Path(__file__).resolve().parents[3]
TTL = 3


def run(coro, timeout: float = 40):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Probe:
    """Records which replicas run the job, and the most that ever ran it at the same time."""

    def __init__(self) -> None:
        self.active: set[str] = set()
        self.max_active = 0
        self.started: list[str] = []
        self.stopped_at: dict[str, float] = {}

    def job(self, name: str) -> Job:
        async def body(term: Leadership) -> None:
            self.active.add(name)
            self.started.append(name)
            self.max_active = max(self.max_active, len(self.active))
            try:
                await asyncio.Event().wait()
            finally:
                self.active.discard(name)
                self.stopped_at[name] = time.monotonic()

        return Job("probe", body)


async def wait_until(pred, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_one_leader_and_handover_when_the_leader_closes(etcd: EtcdCluster) -> None:
    async def body() -> None:
        probe = Probe()
        stores = [await Store(etcd.endpoints).open() for _ in range(2)]
        runners = [SingletonRunner(s, f"r{i}", [probe.job(f"r{i}")], ttl=TTL) for i, s in enumerate(stores)]
        try:
            for r in runners:
                r.start()
            await wait_until(lambda: len(probe.active) == 1, 5)
            await asyncio.sleep(0.5)
            assert len(probe.active) == 1 and sum(r.is_leader for r in runners) == 1
            leader = next(r for r in runners if r.is_leader)
            other = next(r for r in runners if r is not leader)
            assert await leader.election.leader() == leader.election.identity
            await leader.close()
            took = await wait_until(lambda: other.is_leader and len(probe.active) == 1, TTL)
            assert took < 1.5  # resigning revokes the lease: no need to wait for it to expire
            assert probe.max_active == 1
        finally:
            for r in runners:
                await r.close()
            for s in stores:
                await s.close()

    run(body())


def test_revoked_lease_stops_the_jobs_at_once_and_the_other_replica_takes_over(etcd: EtcdCluster) -> None:
    async def body() -> None:
        probe = Probe()
        stores = [await Store(etcd.endpoints).open() for _ in range(3)]
        runners = [
            SingletonRunner(s, f"r{i}", [probe.job(f"r{i}")], ttl=TTL) for i, s in enumerate(stores[:2])
        ]
        try:
            for r in runners:
                r.start()
            await wait_until(lambda: len(probe.active) == 1, 5)
            leader = next(r for r in runners if r.is_leader)
            name = next(iter(probe.active))
            assert leader.term is not None
            revoked_at = time.monotonic()
            await stores[2].revoke(leader.term.lease)  # an operator (or etcd) ends the lease
            await wait_until(lambda: name not in probe.active, 2)
            assert probe.stopped_at[name] - revoked_at < 1.0  # watched: far sooner than the TTL
            await wait_until(lambda: len(probe.active) == 1, TTL + 1)
            assert probe.max_active == 1
            assert "deleted" in leader.last_loss or "revoked" in leader.last_loss
        finally:
            for r in runners:
                await r.close()
            for s in stores:
                await s.close()

    run(body())


def test_killed_leader_process_hands_the_jobs_over_within_the_lease_ttl(etcd: EtcdCluster) -> None:
    beat = "/meshsec/v1/test/beat"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.controller.jobs.replica_proc",
            ",".join(etcd.endpoints),
            "p1",
            str(TTL),
            beat,
        ],
        cwd=REPO,
        start_new_session=True,
    )

    async def body() -> None:
        async with Store(etcd.endpoints) as store:
            deadline = time.monotonic() + 15
            while (kv := await store.get(beat)) is None or kv.value != b"p1":
                assert time.monotonic() < deadline, "the process never became leader"
                assert proc.poll() is None, "replica process died"
                await asyncio.sleep(0.05)
            probe = Probe()
            runner = SingletonRunner(store, "r-local", [probe.job("r-local")], ttl=TTL)
            runner.start()
            try:
                await asyncio.sleep(0.5)
                assert not runner.is_leader  # the process still holds the term
                os.killpg(proc.pid, signal.SIGKILL)  # a crash: no resign, the lease must expire
                proc.wait(5)
                killed = time.monotonic()
                await wait_until(lambda: runner.is_leader and probe.active == {"r-local"}, TTL + 2)
                took = time.monotonic() - killed
                assert took <= TTL + 1.0, took
                # the dead leader's guarded writes can no longer land
                assert runner.term is not None
                assert await LeaderElection(store, "jobs", "x").leader() == "r-local"
            finally:
                await runner.close()

    try:
        run(body())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_leader_stops_its_jobs_when_etcd_is_unreachable(etcd: EtcdCluster) -> None:
    async def body() -> None:
        probe = Probe()
        store = await Store(etcd.endpoints, timeout=2.0).open()
        runner = SingletonRunner(store, "r0", [probe.job("r0")], ttl=TTL)
        runner.start()
        try:
            await wait_until(lambda: probe.active == {"r0"}, 5)
            etcd.stop_member(0)
            gone = time.monotonic()
            await wait_until(lambda: not probe.active and not runner.is_leader, TTL)
            # stopped before etcd could have expired the lease and elected someone else
            assert probe.stopped_at["r0"] - gone < TTL - 0.3
            etcd.start_member(0)
            etcd.wait_healthy()
            await wait_until(lambda: probe.active == {"r0"}, 3 * TTL + 5)  # back once etcd is
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.close(), 15)
            await store.close()

    run(body(), 60)


def test_no_two_leaders_under_contention_and_fenced_writes(etcd: EtcdCluster) -> None:
    counter = "/meshsec/v1/test/counter"

    async def body() -> None:
        probe = Probe()
        stores = [await Store(etcd.endpoints).open() for _ in range(5)]
        admin = stores[4]
        writes: list[str] = []

        def job(name: str, store: Store) -> Job:
            inner = probe.job(name).run

            async def both(term: Leadership) -> None:
                async def bump() -> None:
                    while True:
                        kv = await store.get(counter)
                        n = int(kv.value) if kv else 0
                        res = await store.txn(
                            [term.guard(), store.mod_revision_is(counter, kv.mod_revision if kv else 0)],
                            [store.op_put(counter, str(n + 1).encode())],
                        )
                        if res.succeeded:
                            writes.append(name)
                        await asyncio.sleep(0.01)

                t = asyncio.create_task(bump())
                try:
                    await inner(term)
                finally:
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t

            return Job("probe+counter", both)

        runners = [SingletonRunner(s, f"r{i}", [job(f"r{i}", s)], ttl=TTL) for i, s in enumerate(stores[:4])]
        try:
            for r in runners:
                r.start()

            def settled(gone: int) -> bool:
                leaders = [r.term for r in runners if r.term is not None]
                return len(leaders) == 1 and leaders[0].lease != gone and len(probe.active) == 1

            revoked = 0
            for _ in range(6):  # knock the leader out again and again
                await wait_until(lambda gone=revoked: settled(gone), TTL + 2)
                await asyncio.sleep(0.2)
                kv = await admin.get(election_key("jobs"))
                assert kv is not None
                revoked = kv.lease
                await admin.revoke(kv.lease)
            await wait_until(lambda gone=revoked: settled(gone), TTL + 2)
            assert probe.max_active == 1
            assert len(set(probe.started)) >= 2  # leadership really moved around
            final = await admin.get(counter)
            terms = sum(r.terms for r in runners)
            # each write counted once; at most one per ended term landed after its task was cancelled
            assert final is not None and len(writes) <= int(final.value) <= len(writes) + terms
            # fencing: a write guarded by any earlier term is refused now
            current = next(r.term for r in runners if r.term is not None)
            assert current is not None
            stale = Leadership(current.key, current.lease, current.revision - 1, "old")
            res = await admin.txn([stale.guard()], [admin.op_put(counter, b"stale")])
            assert not res.succeeded and (await admin.get(counter)).value != b"stale"  # type: ignore[union-attr]
        finally:
            for r in runners:
                await r.close()
            for s in stores:
                await s.close()

    run(body(), 60)


def test_a_crashed_job_is_restarted_while_the_term_lasts(etcd: EtcdCluster) -> None:
    async def body() -> None:
        runs: list[int] = []

        async def flaky(term: Leadership) -> None:
            runs.append(term.revision)
            if len(runs) < 3:
                raise RuntimeError("boom")
            await asyncio.Event().wait()

        async with Store(etcd.endpoints) as store:
            runner = SingletonRunner(store, "r0", [Job("flaky", flaky, restart_delay=0.05)], ttl=TTL)
            runner.start()
            try:
                await wait_until(lambda: len(runs) == 3, 5)
                assert runner.terms == 1 and len(set(runs)) == 1  # same term throughout
            finally:
                await runner.close()

    run(body())
