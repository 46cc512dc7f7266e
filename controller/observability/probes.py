"""What the controller's /healthz and /readyz answer, and starting its observability endpoint.

Owns the liveness/readiness state of one replica.  The Controller's health loop calls `update()` about
once a second with what it just checked (desired state loaded, etcd answered); the HTTP thread reads the
result.  It must not do I/O itself: a probe answers from the last update, so a stuck event loop shows as
a stale heartbeat (liveness 503) instead of a probe that hangs.
"""

from __future__ import annotations

import errno
import importlib.metadata
import logging
import threading

from meshsec.controller.observability import metrics as m
from meshsec.controller.observability.http import Heartbeat, ObservabilityServer

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9450"
LIVENESS_MAX_AGE = 15.0  # seconds without a health-loop tick before /healthz fails
READINESS_MAX_AGE = 5.0  # a "serving" older than this no longer counts as ready


def _version() -> str:
    try:
        return importlib.metadata.version("meshsec")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class ControllerProbes:
    def __init__(self, replica: str = "") -> None:
        self.heartbeat = Heartbeat(LIVENESS_MAX_AGE)
        self._fresh = Heartbeat(READINESS_MAX_AGE)
        self._lock = threading.Lock()
        self._started = False
        self._stopping = False
        self._serving = False
        self._reason = "starting: waiting for etcd and the CA"
        m.READY.set(0)
        m.INFO.info({"replica": replica, "version": _version()})

    def update(self, *, loaded: bool, etcd_ok: bool) -> None:
        """Called by the health loop after each check (on the event loop)."""
        serving = loaded and etcd_ok
        reason = (
            "ok" if serving else ("etcd unreachable" if loaded else "loading the desired state from etcd")
        )
        with self._lock:
            self._started = True
            self._serving, self._reason = serving, reason
        self.heartbeat.tick()
        self._fresh.tick()
        m.READY.set(1 if serving and not self._stopping else 0)

    def stopping(self) -> None:
        self._stopping = True
        m.READY.set(0)

    def live(self) -> tuple[bool, str]:
        with self._lock:
            started = self._started
        if not started:
            return True, "starting"  # start() gives up (and the process exits) if etcd never answers
        return self.heartbeat.probe()

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            started, serving, reason = self._started, self._serving, self._reason
        if self._stopping:
            return False, "shutting down"
        if not started:
            return False, reason
        if not serving:
            return False, reason
        ok, why = self._fresh.probe()
        if not ok:
            return False, f"health check stale: {why}"
        return True, "ok"


def start_endpoint(listen: str, probes: ControllerProbes, *, required: bool) -> ObservabilityServer | None:
    """Serve /metrics /healthz /readyz on `listen`; None when empty.

    When the address is the default (not `required`), a port already taken (a second replica on the
    same host) costs only the endpoint, with a warning; an address the operator asked for must bind.
    """
    if not listen:
        return None
    server = ObservabilityServer(listen, m.REGISTRY, live=probes.live, ready=probes.ready)
    try:
        return server.start()
    except OSError as exc:
        if required or exc.errno != errno.EADDRINUSE:
            raise OSError(exc.errno, f"cannot serve metrics on {listen}: {exc.strerror}") from None
        log.warning(
            "metrics endpoint disabled: %s is in use (another replica?); pass --metrics-listen HOST:PORT",
            listen,
        )
        return None
