"""Agent readiness/liveness logic and reading runtime state on its own event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from meshsec.agent.controlplane.client import SyncEvent
from meshsec.agent.observability.metrics import agent_registry
from meshsec.agent.observability.probes import AgentProbes, bind_reconciler, call_in_loop, probe_sources
from meshsec.agent.runtime import AgentRuntime


def test_ready_needs_enrollment_then_a_sync_from_a_controller() -> None:
    enrolled = {"v": False}
    probes = AgentProbes(lambda: enrolled["v"])
    assert probes.ready() == (False, "not enrolled yet")
    enrolled["v"] = True
    client = SimpleNamespace(events=[], connected=False)
    probes.client = client
    assert probes.ready()[0] is False
    client.events.append(SyncEvent("cached", 7))  # fail-static start: tunnels up, but not "synced"
    assert probes.ready()[0] is False
    client.events.append(SyncEvent("snapshot", 8))
    assert probes.ready() == (True, "ok")
    probes.stopping = True
    assert probes.ready() == (False, "shutting down")


def test_liveness_fails_when_the_loop_stops_ticking() -> None:
    now = {"t": 100.0}
    probes = AgentProbes(lambda: True)
    probes.heartbeat._clock = lambda: now["t"]  # a fake clock: pure logic
    probes.heartbeat.tick()
    now["t"] += probes.heartbeat.max_age - 1
    assert probes.live()[0] is True
    now["t"] += 2
    ok, why = probes.live()
    assert not ok and "has not ticked" in why


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    loop.close()


def test_call_in_loop_runs_on_the_loop_thread(loop_thread: asyncio.AbstractEventLoop) -> None:
    seen: list[threading.Thread] = []
    assert call_in_loop(loop_thread, lambda: seen.append(threading.current_thread()) or 5) == 5
    assert seen[0] is not threading.current_thread()
    with pytest.raises(ZeroDivisionError):
        call_in_loop(loop_thread, lambda: 1 / 0)


def test_call_in_loop_gives_up_on_a_stuck_loop(loop_thread: asyncio.AbstractEventLoop) -> None:
    loop_thread.call_soon_threadsafe(time.sleep, 0.5)  # the loop is busy: nothing else runs
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        call_in_loop(loop_thread, lambda: 1, timeout=0.1)
    assert time.monotonic() - start < 0.4


def test_the_real_runtime_plugs_in(loop_thread: asyncio.AbstractEventLoop) -> None:
    """The runtime class the agent runs (no desired state yet: nothing started) through bind_reconciler."""
    probes = AgentProbes(lambda: True)
    sources = probe_sources(probes, "a")
    bind_reconciler(sources, AgentRuntime(), loop_thread)
    reg = agent_registry(sources, process=False)
    assert reg.get_sample_value("meshsec_agent_peers") == 0
    assert reg.get_sample_value("meshsec_agent_ready") == 0
    assert reg.get_sample_value("meshsec_agent_controller_connected") == 0
    assert reg.get_sample_value("meshsec_agent_scrape_errors_total") == 0


def test_a_stuck_loop_fails_healthz_but_metrics_still_answer(loop_thread: asyncio.AbstractEventLoop) -> None:
    """The HTTP thread answers for a blocked event loop: liveness 503, a scrape without runtime families."""
    import urllib.error
    import urllib.request

    from meshsec.agent.observability.probes import start_endpoint

    probes = AgentProbes(lambda: True)
    probes.heartbeat.max_age = 0.3
    sources = probe_sources(probes, "a")
    bind_reconciler(sources, AgentRuntime(), loop_thread, timeout=0.2)
    ticking = asyncio.run_coroutine_threadsafe(probes.tick_forever(), loop_thread)
    server = start_endpoint("127.0.0.1:0", probes, sources, required=True)

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(server.url + path, timeout=3) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        assert get("/healthz")[0] == 200
        assert "meshsec_agent_peers 0.0" in get("/metrics")[1]
        loop_thread.call_soon_threadsafe(time.sleep, 1.0)  # a handler that blocks the loop
        time.sleep(0.5)
        code, body = get("/healthz")
        assert code == 503 and "has not ticked" in body
        code, body = get("/metrics")
        assert code == 200
        assert "meshsec_agent_peers" not in body
        assert "meshsec_agent_scrape_errors_total 1.0" in body
        deadline = time.monotonic() + 3
        while get("/healthz")[0] != 200:  # the loop recovers, so does liveness
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        ticking.cancel()
        server.close()
