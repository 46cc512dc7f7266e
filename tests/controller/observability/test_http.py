"""The shared /metrics /healthz /readyz server over a real loopback socket."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from meshsec.controller.observability.http import (
    Heartbeat,
    ListenError,
    ObservabilityServer,
    parse_listen,
)
from prometheus_client import CollectorRegistry, Counter


def get(url: str, accept: str = "") -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def state() -> dict[str, object]:
    return {"live": (True, "ok"), "ready": (False, "etcd unreachable")}


@pytest.fixture
def server(state: dict[str, object]) -> Iterator[ObservabilityServer]:
    reg = CollectorRegistry()
    Counter("demo_things", "Things.", registry=reg).inc(3)

    def ready() -> tuple[bool, str]:
        value = state["ready"]
        if isinstance(value, Exception):
            raise value
        return value  # type: ignore[return-value]

    srv = ObservabilityServer(
        "127.0.0.1:0",
        reg,
        live=lambda: state["live"],  # type: ignore[arg-type,return-value]
        ready=ready,
    ).start()
    try:
        yield srv
    finally:
        srv.close()


def test_metrics_in_text_and_openmetrics(server: ObservabilityServer) -> None:
    code, ctype, body = get(server.url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert "demo_things_total 3.0" in body
    code, ctype, body = get(server.url + "/metrics", accept="application/openmetrics-text")
    assert code == 200 and ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_probes_follow_their_callables(server: ObservabilityServer, state: dict[str, object]) -> None:
    assert get(server.url + "/healthz")[0::2] == (200, "ok\n")
    assert get(server.url + "/readyz")[0::2] == (503, "etcd unreachable\n")
    state["ready"] = (True, "ok")
    assert get(server.url + "/readyz")[0] == 200
    state["live"] = (False, "main loop has not ticked for 31.0s")
    assert get(server.url + "/healthz")[0::2] == (503, "main loop has not ticked for 31.0s\n")


def test_a_raising_probe_is_a_failing_probe(server: ObservabilityServer, state: dict[str, object]) -> None:
    state["ready"] = RuntimeError("boom")
    code, _, body = get(server.url + "/readyz")
    assert code == 503 and "RuntimeError" in body
    assert get(server.url + "/healthz")[0] == 200  # the server thread survived


def test_unknown_path_is_404(server: ObservabilityServer) -> None:
    code, _, body = get(server.url + "/debug/vars")
    assert code == 404 and "/metrics" in body


def test_close_frees_the_port(state: dict[str, object]) -> None:
    srv = ObservabilityServer(
        "127.0.0.1:0", CollectorRegistry(), live=lambda: (True, "ok"), ready=lambda: (True, "ok")
    )
    srv.start()
    port = srv.port
    srv.close()
    again = ObservabilityServer(
        f"127.0.0.1:{port}", CollectorRegistry(), live=lambda: (True, "ok"), ready=lambda: (True, "ok")
    ).start()
    again.close()


def test_a_taken_port_is_an_oserror() -> None:
    first = ObservabilityServer(
        "127.0.0.1:0", CollectorRegistry(), live=lambda: (True, ""), ready=lambda: (True, "")
    )
    first.start()
    try:
        with pytest.raises(OSError):
            ObservabilityServer(
                f"127.0.0.1:{first.port}",
                CollectorRegistry(),
                live=lambda: (True, ""),
                ready=lambda: (True, ""),
            ).start()
    finally:
        first.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9450", ("127.0.0.1", 9450)),
        ("[::1]:9451", ("::1", 9451)),
        (":9090", ("0.0.0.0", 9090)),
        ("0.0.0.0:9091", ("0.0.0.0", 9091)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9450", "localhost", "127.0.0.1:http", "127.0.0.1:70000", "1.2.3.4:"])
def test_parse_listen_refuses_with_an_example(text: str) -> None:
    with pytest.raises(ListenError, match="expected host:port"):
        parse_listen(text)


def test_heartbeat_age_with_a_fake_clock() -> None:
    now = {"t": 0.0}
    hb = Heartbeat(10.0, clock=lambda: now["t"])
    now["t"] = 9.5
    assert hb.probe() == (True, "ok")
    now["t"] = 10.5
    assert hb.probe()[0] is False
    hb.tick()
    assert hb.age() == 0.0
