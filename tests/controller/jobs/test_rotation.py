"""The CA rotation job under a real election in a real etcd: a manual rollover is carried through
published → switched → stable by the leader, and the other replica's job does nothing meanwhile."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time

from cryptography import x509
from meshsec.controller.ca import Sealer, load_ca, load_or_create_ca
from meshsec.controller.ca.rollover import Phase, RolloverPolicy, RolloverStore
from meshsec.controller.jobs import SingletonRunner
from meshsec.controller.jobs.rotation import rotation_job
from meshsec.controller.store import Keys, Store

from tests.support.etcd import EtcdCluster

POLICY = RolloverPolicy(
    propagate=dt.timedelta(seconds=1),
    overlap=dt.timedelta(seconds=2),
    rotate_before=dt.timedelta(seconds=3),
    ca_lifetime=dt.timedelta(days=1),
)


def test_rotation_job_completes_a_rollover_once(etcd: EtcdCluster) -> None:
    async def body() -> None:
        sealer = Sealer(os.urandom(32))
        stores = [await Store(etcd.endpoints).open() for _ in range(3)]
        runners: list[SingletonRunner] = []
        try:
            old, _ = await load_or_create_ca(stores[2], sealer)
            roll = RolloverStore(stores[2], sealer, POLICY)
            await roll.step(dt.datetime.now(dt.UTC), requested=True)
            runners = [
                SingletonRunner(s, f"r{i}", [rotation_job(s, sealer, POLICY, interval=0.1)], ttl=3)
                for i, s in enumerate(stores[:2])
            ]
            for r in runners:
                r.start()
            phases, sizes = [], []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                snap = await roll.read()
                if not phases or phases[-1] != snap.state.phase:
                    phases.append(snap.state.phase)
                    sizes.append(len(snap.bundle))
                if snap.state.phase is Phase.STABLE:
                    break
                await asyncio.sleep(0.05)
            assert phases == [Phase.PUBLISHED, Phase.SWITCHED, Phase.STABLE], phases
            assert sizes == [2, 2, 1]
            new = await load_ca(stores[2], sealer)
            assert new.sha256 != old.sha256
            bundle = (await stores[2].get(Keys.CA_CERT)).value  # type: ignore[union-attr]
            assert x509.load_pem_x509_certificates(bundle) == [new.cert]
            assert sum(r.terms for r in runners) == 1  # one leader drove it
        finally:
            for r in runners:
                await r.close()
            for s in stores:
                await s.close()

    asyncio.run(asyncio.wait_for(body(), 40))
