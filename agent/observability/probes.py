"""What the agent's /healthz and /readyz answer, how its metrics reach the runtime, and the endpoint.

Owns the agent's liveness (the asyncio loop ticked recently) and readiness (enrolled, and the desired
state received from a controller at least once since this process started — a cached state alone keeps
tunnels up (fail static) but does not make a freshly started pod Ready).  The probes answer from plain
attributes the loop maintains; runtime state for /metrics is read on the event loop (call_in_loop), so
the HTTP thread never iterates the runtime's dicts while the loop changes them.  It must not change
runtime or control-plane state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from meshsec.agent.observability.metrics import AgentSources, agent_registry
from meshsec.controller.observability.http import Heartbeat, ObservabilityServer

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9451"
LIVENESS_MAX_AGE = 20.0  # seconds without a loop tick before /healthz fails
TICK = 1.0  # seconds between loop ticks
LOOP_CALL_TIMEOUT = 2.0  # a scrape waits this long for the loop before leaving runtime metrics out
SYNCED_KINDS = frozenset({"snapshot", "delta", "heartbeat"})  # SyncEvent kinds sent by a controller

T = TypeVar("T")


def call_in_loop(
    loop: asyncio.AbstractEventLoop, fn: Callable[[], T], timeout: float = LOOP_CALL_TIMEOUT
) -> T:
    """Run fn() on `loop` from another thread and return its result (raises TimeoutError if stuck)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    loop.call_soon_threadsafe(run)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"event loop did not answer within {timeout}s") from None


class AgentProbes:
    """Readiness and liveness of one agent process; `client` is set once enrollment is done."""

    def __init__(self, enrolled: Callable[[], bool]) -> None:
        self.heartbeat = Heartbeat(LIVENESS_MAX_AGE)
        self._enrolled = enrolled
        self.client: Any = None  # ControlPlaneClient: .events (list of SyncEvent), .connected
        self.stopping = False

    def synced(self) -> bool:
        client = self.client
        if client is None:
            return False
        return any(e.kind in SYNCED_KINDS for e in list(client.events))

    def connected(self) -> bool:
        return bool(self.client is not None and self.client.connected)

    def live(self) -> tuple[bool, str]:
        return self.heartbeat.probe()

    def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "shutting down"
        if not self._enrolled():
            return False, "not enrolled yet"
        if not self.synced():
            return False, "enrolled; waiting for the first desired state from a controller"
        return True, "ok"

    async def tick_forever(self) -> None:
        """The liveness heartbeat: ticks while the event loop runs tasks."""
        while True:
            self.heartbeat.tick()
            await asyncio.sleep(TICK)


def bind_reconciler(
    sources: AgentSources,
    reconciler: Any,
    loop: asyncio.AbstractEventLoop,
    *,
    timeout: float = LOOP_CALL_TIMEOUT,
) -> None:
    """Point `sources` at the --reconciler object, the cheap and thread-safe way.

    status(): run on the event loop.  Data plane counters: reconciler.dataplane_counters() when the
    runtime offers it (plain ints, safe to read from this thread).  IKE failures by reason:
    reconciler.ike_failures (a dict, or a method returning one) when present.
    """

    def status() -> Any:
        return call_in_loop(loop, reconciler.status, timeout)

    def dataplane() -> Any:
        fn = getattr(reconciler, "dataplane_counters", None)
        if callable(fn):
            return fn()
        # Until the runtime exposes dataplane_counters(): its data plane's counters object.
        return getattr(getattr(reconciler, "_dp", None), "counters", None)

    def ike_failures() -> Any:
        value = getattr(reconciler, "ike_failures", None)
        value = value() if callable(value) else value
        return dict(value) if value else None

    sources.status, sources.dataplane, sources.ike_failures = status, dataplane, ike_failures


def probe_sources(probes: AgentProbes, node: str = "") -> AgentSources:
    """Sources that answer before there is a reconciler (while enrolling): control-plane gauges only."""
    return AgentSources(connected=probes.connected, ready=lambda: probes.ready()[0], node=node)


def start_endpoint(listen: str, probes: AgentProbes, sources: AgentSources, *, required: bool) -> Any:
    """Serve /metrics /healthz /readyz on `listen` (None when empty); see the controller's twin."""
    if not listen:
        return None
    server = ObservabilityServer(listen, agent_registry(sources), live=probes.live, ready=probes.ready)
    try:
        return server.start()
    except OSError as exc:
        if required or exc.errno != errno.EADDRINUSE:
            raise OSError(exc.errno, f"cannot serve metrics on {listen}: {exc.strerror}") from None
        log.warning(
            "metrics endpoint disabled: %s is in use (another agent?); pass --metrics-listen HOST:PORT",
            listen,
        )
        return None
