"""Two real controller processes (`meshsec-controller serve --singleton-jobs`) on one real etcd: the
one holding the election is SIGKILLed and the other takes the singleton jobs over within the lease TTL."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from meshsec.controller.jobs import election_key
from meshsec.controller.jobs.runner import SingletonRunner
from meshsec.controller.store import Store

from tests.controller import harness
from tests.support.etcd import EtcdCluster, free_port

TTL = SingletonRunner.__init__.__kwdefaults__["ttl"]  # what `serve` uses


def _serve(state: Path, etcd: list[str], name: str) -> harness.Proc:
    args = [
        sys.executable, "-m", "meshsec.controller.main", "serve",
        "--state-dir", str(state),
        "--etcd", ",".join(etcd),
        "--listen", f"127.0.0.1:{free_port()}",
        "--socket", str(state / f"{name}.sock"),
        "--enroll-listen", f"127.0.0.1:{free_port()}",
        "--enroll-socket", str(state / f"{name}-enroll.sock"),
        "--replica", name,
        "--singleton-jobs",
    ]  # fmt: skip
    return harness.Proc(args, state / f"{name}.log")


def test_killing_the_elected_replica_hands_the_jobs_over_within_the_lease_ttl(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    asyncio.run(harness.init_state(tmp_path, etcd.endpoints))
    procs = {name: _serve(tmp_path, etcd.endpoints, name) for name in ("r1", "r2")}

    async def leader(store: Store) -> str | None:
        kv = await store.get(election_key("jobs"))
        return kv.value.decode() if kv else None

    async def body() -> None:
        async with Store(etcd.endpoints) as store:
            deadline = time.monotonic() + 20
            while (first := await leader(store)) is None:
                assert time.monotonic() < deadline, {n: p.log()[-2000:] for n, p in procs.items()}
                await asyncio.sleep(0.1)
            assert first in procs
            other = "r2" if first == "r1" else "r1"
            procs[first].wait_log("elected leader", 5)
            procs[first].kill()  # a crash: no resign, etcd must expire the lease
            killed = time.monotonic()
            while (now := await leader(store)) != other:
                assert now in (first, None)
                assert time.monotonic() - killed < TTL + 2, procs[other].log()[-2000:]
                await asyncio.sleep(0.1)
            assert time.monotonic() - killed <= TTL + 1.5
            procs[other].wait_log("elected leader", 5)

    try:
        asyncio.run(asyncio.wait_for(body(), 60))
    finally:
        for p in procs.values():
            p.kill()
