"""revoke_node on a real etcd, and the node-level rule (`covers`) as pure logic.

The node-level record must be written before revoke_node's last read of certs/issued: then a Renew
that recorded its certificate meanwhile is listed, and one recording later sees the record and refuses
(tests/controller/api/test_node_revocation.py shows the refusal).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from meshsec.controller.ca.revocation import (
    BACKDATE,
    NotEnrolled,
    covers,
    issued_until,
    node_record,
    revoke_node,
)
from meshsec.controller.store import Keys, Store

from tests.support.etcd import EtcdCluster

T = dt.datetime(2030, 1, 1, 12, 0, 0, 500_000, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)


def test_a_node_revocation_covers_certificates_issued_up_to_its_time() -> None:
    until = issued_until(node_record(T, "operator"))
    assert covers(until, T - BACKDATE)  # issued at the revoke (notBefore is backdated by the CA)
    assert covers(until, T - BACKDATE - 30 * 86400 * S)  # long expired: still refused
    # notBefore has whole seconds: one issued in the revoke's second counts as before it
    assert covers(until, T.replace(microsecond=0) - BACKDATE)
    assert not covers(until, T.replace(microsecond=0) + S - BACKDATE)  # the next second: a new one
    assert not covers(None, T)  # no record for the node
    assert covers(issued_until(b"garbage"), T + 1000 * S)  # unreadable record: fail closed


def _issued(node: str, not_after: float) -> bytes:
    return json.dumps({"node": node, "not_after": not_after, "fingerprint": "x"}).encode()


class RenewDuringRevoke:
    """The real store, with a Renew's certs/issued write landing right after revoke_node's first read."""

    def __init__(self, store: Store, late_fp: str, record: bytes) -> None:
        self._store, self._late, self._record, self.reads = store, late_fp, record, 0

    async def get_prefix(self, prefix: str, **kw: Any) -> Any:
        out = await self._store.get_prefix(prefix, **kw)
        if prefix == Keys.CERTS_ISSUED:
            self.reads += 1
            if self.reads == 1:
                await self._store.put(Keys.issued(self._late), self._record)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_revoke_lists_a_certificate_recorded_during_it_and_records_the_node(etcd: EtcdCluster) -> None:
    async def body() -> None:
        now = dt.datetime.now(dt.UTC)
        valid, expired = now.timestamp() + 600, now.timestamp() - 1
        async with Store(etcd.endpoints) as store:
            await store.put(Keys.issued("aa" * 32), _issued("n1", valid))
            await store.put(Keys.issued("bb" * 32), _issued("n1", expired))
            await store.put(Keys.issued("cc" * 32), _issued("n2", valid))
            racing = RenewDuringRevoke(store, "dd" * 32, _issued("n1", valid))
            done = await revoke_node(racing, "n1", now)  # type: ignore[arg-type]
            assert done.fingerprints == ["aa" * 32, "dd" * 32]  # the late one too; not n2's, not expired
            assert await store.get(Keys.revoked("dd" * 32)) is not None
            assert await store.get(Keys.revoked("bb" * 32)) is None
            rec = await store.get(Keys.revoked_node("n1"))
            assert rec is not None and covers(issued_until(rec.value), now - BACKDATE)
            assert await store.get(Keys.revoked_node("n2")) is None
            with pytest.raises(NotEnrolled):  # nothing valid: nothing written (meshctl exits 5)
                await revoke_node(store, "n3", now)
            assert await store.get(Keys.revoked_node("n3")) is None

    asyncio.run(asyncio.wait_for(body(), 30))
