"""Multi-use bootstrap tokens: N enrollments at most, across replicas racing on one real etcd."""

from __future__ import annotations

import asyncio
import json

import pytest
from meshsec.controller.ca import TokenRefused, consume_token, create_token
from meshsec.controller.ca.tokens import MAX_USES
from meshsec.controller.store import Keys, Store

from tests.support.etcd import EtcdCluster


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_a_token_with_n_uses_admits_exactly_n_enrollments_across_replicas(etcd: EtcdCluster) -> None:
    async def body() -> None:
        async with Store(etcd.endpoints) as a, Store(etcd.endpoints) as b, Store(etcd.endpoints) as c:
            token, _ = await create_token(a, ttl=60, uses=5)
            key = Keys.token(token.split(".")[0])
            stores = [a, b, c]
            results = await asyncio.gather(
                *(consume_token(stores[i % 3], token, f"node-{i}") for i in range(12)),
                return_exceptions=True,
            )
            ok = [r for r in results if r is None]
            refused = [r for r in results if isinstance(r, TokenRefused)]
            assert (len(ok), len(refused)) == (5, 7), results
            assert await a.get(key) is None  # the last use deleted it
            with pytest.raises(TokenRefused):
                await consume_token(b, token, "node-late")

            # A partly used token keeps its TTL lease and counts down.
            token2, _ = await create_token(a, ttl=60, uses=3)
            key2 = Keys.token(token2.split(".")[0])
            lease = (await a.get(key2)).lease  # type: ignore[union-attr]
            await consume_token(b, token2, "n1")
            kv = await a.get(key2)
            assert kv is not None and kv.lease == lease != 0
            assert json.loads(kv.value)["uses"] == 2
            assert token2.split(".")[1].encode() not in kv.value

    run(body())


def test_uses_default_to_one_and_are_bounded(etcd: EtcdCluster) -> None:
    async def body() -> None:
        async with Store(etcd.endpoints) as s:
            token, _ = await create_token(s, ttl=60, uses=0)  # proto default: one use
            await consume_token(s, token, "n")
            with pytest.raises(TokenRefused):
                await consume_token(s, token, "n")
            with pytest.raises(ValueError, match="uses"):
                await create_token(s, ttl=60, uses=MAX_USES + 1)
            # A record without "uses" (written before multi-use tokens) is good for one use.
            legacy, _ = await create_token(s, ttl=60)
            key = Keys.token(legacy.split(".")[0])
            kv = await s.get(key)
            assert kv is not None
            record = json.loads(kv.value)
            del record["uses"]
            await s.put(key, json.dumps(record).encode(), lease=kv.lease)
            await consume_token(s, legacy, "n")
            assert await s.get(key) is None

    run(body())
