"""The small HTTP server for /metrics, /healthz and /readyz (controller and agent share it).

Owns the listening socket and the three handlers.  It runs in its own daemon thread (ThreadingHTTPServer)
on purpose: /healthz must still answer — with 503 — when the asyncio loop it reports on is stuck, so it
cannot be served by that loop.  Probes are plain callables returning (ok, reason); they must be cheap,
thread-safe reads of state the main loop maintains (no I/O, no awaiting).  It must not expose anything
but metrics and probe results: no request payloads, no configuration, no secrets.

Default listen addresses are on loopback; binding another address (for a Prometheus outside the host,
or kubelet probes on a pod IP) is the operator's choice and exposes these three read-only endpoints.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]


class ListenError(ValueError):
    """A --metrics-listen value that is not host:port."""


def parse_listen(text: str) -> tuple[str, int]:
    """Split host:port ("127.0.0.1:9450", "[::1]:9450", ":9450" = all addresses)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"bad listen address {text!r}: expected host:port, e.g. 127.0.0.1:9450")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port)


def choose_listen(flag: str | None, default: str) -> tuple[str, bool]:
    """--metrics-listen, else MESHSEC_METRICS_LISTEN, else MESHSEC_HEALTH_LISTEN, else `default`;
    with whether the operator chose it (then failing to bind it is fatal).  "" disables the endpoint.
    ListenError names the flag."""
    for value in (flag, os.environ.get("MESHSEC_METRICS_LISTEN"), os.environ.get("MESHSEC_HEALTH_LISTEN")):
        if value is not None:
            if value.strip():
                try:
                    parse_listen(value)
                except ListenError as exc:
                    raise ListenError(f"--metrics-listen: {exc}") from None
            return value.strip(), True
    return default, False


class Heartbeat:
    """Monotonic time of the last tick of a loop; liveness is "ticked within max_age seconds"."""

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self._clock = clock
        self._last = clock()

    def tick(self) -> None:
        self._last = self._clock()

    def age(self) -> float:
        return self._clock() - self._last

    def probe(self) -> tuple[bool, str]:
        age = self.age()
        if age > self.max_age:
            return False, f"main loop has not ticked for {age:.1f}s (limit {self.max_age:.0f}s)"
        return True, "ok"


def _handler(server: ObservabilityServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "meshsec"
        sys_version = ""

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _probe(self, probe: Probe) -> None:
            try:
                ok, reason = probe()
            except Exception as exc:  # a broken probe is a failing probe, not a crashed thread
                ok, reason = False, f"probe failed: {type(exc).__name__}"
            self._send(200 if ok else 503, (reason or ("ok" if ok else "not ok")).encode() + b"\n")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                try:
                    body = encoder(server.registry)
                except Exception as exc:
                    log.warning("metrics scrape failed: %s", type(exc).__name__)
                    self._send(500, b"scrape failed\n")
                    return
                self._send(200, body, ctype)
            elif path == "/healthz":
                self._probe(server.live)
            elif path == "/readyz":
                self._probe(server.ready)
            elif path == "/":
                self._send(200, b"meshsec: /metrics /healthz /readyz\n")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


class ObservabilityServer:
    """start() binds and serves in a daemon thread; close() stops it and frees the port."""

    def __init__(self, listen: str, registry: CollectorRegistry, *, live: Probe, ready: Probe) -> None:
        self.host, self.port = parse_listen(listen)
        self.registry = registry
        self.live = live
        self.ready = ready
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ObservabilityServer:
        cls = ThreadingHTTPServer
        if ":" in self.host:
            import socket

            cls = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        httpd = cls((self.host, self.port), _handler(self))
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="meshsec-metrics", daemon=True)
        self._thread.start()
        log.info("metrics and probes on %s (/metrics /healthz /readyz)", self.url)
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
