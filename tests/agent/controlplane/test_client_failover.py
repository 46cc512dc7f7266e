"""Controller failover in the client: a comma-separated target list, the next replica tried at once.

The session itself is replaced by a script (pure logic of the reconnect loop; the real failover
between two controller processes is tests/system/test_fleet_control.py)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
from meshsec.agent.controlplane import (
    AgentIdentity,
    ControlPlaneClient,
    DesiredStateCache,
    RecordingReconciler,
    enroll_address,
)
from meshsec.agent.controlplane.client import split_targets

A, B = "unix:///run/a/controller.sock", "unix:///run/b/controller.sock"


def test_split_targets_keeps_order_and_refuses_an_empty_list() -> None:
    assert split_targets(A) == [A]
    assert split_targets(f" {A} , {B},") == [A, B]
    with pytest.raises(ValueError, match="no controller address"):
        split_targets(" , ")


def test_enroll_address_follows_the_first_target() -> None:
    assert enroll_address(f"{A},{B}") == "unix:///run/a/enroll.sock"
    assert enroll_address("127.0.0.1:7443,127.0.0.1:8443") == "127.0.0.1:7444"


def _client(tmp_path: Path, address: str) -> ControlPlaneClient:
    return ControlPlaneClient(
        address=address,
        node="node-a",
        identity=AgentIdentity(tmp_path),
        cache=DesiredStateCache(tmp_path / "desired.pb"),
        reconciler=RecordingReconciler(),
        backoff_initial=0.2,
        backoff_max=0.2,
    )


def test_losing_a_working_replica_tries_the_next_at_once_and_failures_rotate(tmp_path: Path) -> None:
    client = _client(tmp_path, f"{A},{B}")
    tried: list[tuple[str, float]] = []

    async def session() -> bool:
        tried.append((client.address, time.monotonic()))
        if len(tried) == 1:
            client.connected = True  # a stream on A that worked for a while ...
            client._connected_since = time.monotonic() - 5
            raise OSError("A died")  # ... then broke (SIGKILLed replica)
        raise OSError("refused")

    client._session = session  # type: ignore[method-assign]

    async def body() -> None:
        task = asyncio.create_task(client.run())
        while len(tried) < 4:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(body(), 10))
    assert [t for t, _ in tried[:4]] == [A, B, A, B]
    assert tried[1][1] - tried[0][1] < 0.1  # straight to B after losing A, no backoff
    assert tried[2][1] - tried[1][1] >= 0.09  # B refused too: back off (0.2 s x jitter 0.5-1) before A


def test_a_single_target_behaves_as_before(tmp_path: Path) -> None:
    client = _client(tmp_path, A)
    assert client.address == A and client.addresses == [A]


def test_a_replica_that_drops_every_stream_at_once_is_not_bounced_on_without_a_pause(tmp_path: Path) -> None:
    client = _client(tmp_path, f"{A},{B}")
    tried: list[float] = []

    async def session() -> bool:
        tried.append(time.monotonic())
        client.connected = True  # data arrives, then the stream fails at once
        client._connected_since = time.monotonic()
        raise OSError("dropped")

    client._session = session  # type: ignore[method-assign]

    async def body() -> None:
        task = asyncio.create_task(client.run())
        while len(tried) < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(body(), 10))
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(tried))  # backoff every time
