"""Helpers for endpoint tests: plain HTTP GETs, parsed scrapes, a controller process with metrics on."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.controller import harness
from tests.support.etcd import free_port


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, text = http(base + "/metrics")
    assert code == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(base: str, name: str, **labels: str) -> float | None:
    return scrape(base).get((name, tuple(sorted(labels.items()))))


def wait_for(what: str, check: object, proc: harness.Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} within {timeout}s; log:\n{proc.log()[-3000:]}"
        time.sleep(0.1)


def serve(state: Path, etcd: list[str], metrics_port: int) -> tuple[harness.Proc, int, int]:
    port, enroll_port = free_port(), free_port()
    args = [
        sys.executable, "-m", "meshsec.controller.main", "serve",
        "--state-dir", str(state),
        "--etcd", ",".join(etcd),
        "--listen", f"127.0.0.1:{port}",
        "--socket", "",
        "--enroll-listen", f"127.0.0.1:{enroll_port}",
        "--enroll-socket", "",
        "--replica", "m1",
        "--heartbeat", "0.5",
        "--agent-lease-ttl", "3",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    return harness.Proc(args, state / "controller.log"), port, enroll_port
