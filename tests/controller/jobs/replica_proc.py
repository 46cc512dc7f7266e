"""A controller "replica" reduced to its singleton runner, as a separate process the tests can SIGKILL.

Usage: python -m tests.controller.jobs.replica_proc ENDPOINTS IDENTITY TTL BEAT_KEY
While leader, its one job writes IDENTITY to BEAT_KEY every 50 ms (guarded by the term).
"""

from __future__ import annotations

import asyncio
import sys

from meshsec.controller.jobs import Job, SingletonRunner, periodic
from meshsec.controller.store import Store


async def main(endpoints: str, identity: str, ttl: int, beat_key: str) -> None:
    async with Store(endpoints.split(",")) as store:

        async def beat(term) -> None:  # type: ignore[no-untyped-def]
            await store.txn([term.guard()], [store.op_put(beat_key, identity.encode())])

        runner = SingletonRunner(store, identity, [Job("beat", periodic(0.05, beat))], ttl=ttl)
        await runner.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
