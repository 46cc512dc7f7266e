"""Controller metric plumbing as pure logic: outcome → label mapping, etcd timing, probe state, docs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from meshsec.controller.observability import metrics as m
from meshsec.controller.observability.etcd import TIMED_OPERATIONS, instrument_store
from meshsec.controller.observability.grpc_metrics import apply_result, enroll_result
from meshsec.controller.observability.probes import ControllerProbes
from meshsec.controller.store import Compacted, Store, StoreUnavailable
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


def value(name: str, **labels: str) -> float:
    return m.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("code", "result"),
    [
        (grpc.StatusCode.OK, "ok"),
        (grpc.StatusCode.UNAUTHENTICATED, "bad_token"),
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
        (grpc.StatusCode.UNAVAILABLE, "error"),
        (grpc.StatusCode.UNKNOWN, "error"),
    ],
)
def test_enroll_result(code: grpc.StatusCode, result: str) -> None:
    assert enroll_result(code) == result


def test_apply_result() -> None:
    ok = grpc.StatusCode.OK
    real, dry = SimpleNamespace(dry_run=False), SimpleNamespace(dry_run=True)
    assert apply_result(ok, real, SimpleNamespace(errors=[])) == "ok"
    assert apply_result(ok, dry, SimpleNamespace(errors=[])) == "dry_run"
    assert apply_result(ok, real, SimpleNamespace(errors=["nodes[0].name: empty"])) == "invalid"
    assert apply_result(grpc.StatusCode.ABORTED, real, None) == "conflict"
    assert apply_result(grpc.StatusCode.PERMISSION_DENIED, real, None) == "denied"
    assert apply_result(grpc.StatusCode.UNAVAILABLE, real, None) == "error"


class FakeStore:
    """Stands in for the etcd adapter: only the method shapes matter to the wrapper."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def get(self, key: str, *, revision: int = 0) -> str:
        self.calls.append(key)
        return f"value of {key}"

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        raise StoreUnavailable("etcd down")

    async def txn(self, compares: list[object], ops: list[object]) -> int:
        raise Compacted("gone")


def test_instrumented_store_passes_results_and_errors_through_and_times_them() -> None:
    store = instrument_store(FakeStore())
    instrument_store(store)  # idempotent: not timed twice
    before = value("meshsec_controller_etcd_request_seconds_count", operation="get")
    errs = value("meshsec_controller_etcd_errors_total", operation="put", error="unavailable")

    async def run() -> None:
        assert await store.get("/k", revision=3) == "value of /k"
        with pytest.raises(StoreUnavailable):
            await store.put("/k", b"v")
        with pytest.raises(Compacted):
            await store.txn([], [])

    asyncio.run(run())
    assert store.calls == ["/k"]
    assert value("meshsec_controller_etcd_request_seconds_count", operation="get") == before + 1
    assert value("meshsec_controller_etcd_errors_total", operation="put", error="unavailable") == errs + 1
    assert value("meshsec_controller_etcd_errors_total", operation="txn", error="compacted") >= 1
    assert value("meshsec_controller_etcd_request_seconds_count", operation="put") >= 1


def test_timed_operations_exist_on_the_real_store() -> None:
    """A renamed Store method must not silently stop being timed."""
    for name in TIMED_OPERATIONS:
        assert callable(getattr(Store, name, None)), name


def test_probes_readiness_follows_the_health_loop() -> None:
    probes = ControllerProbes("r1")
    assert probes.live() == (True, "starting")
    assert probes.ready() == (False, "starting: waiting for etcd and the CA")
    probes.update(loaded=False, etcd_ok=False)
    assert probes.ready() == (False, "loading the desired state from etcd")
    probes.update(loaded=True, etcd_ok=False)
    assert probes.ready() == (False, "etcd unreachable")
    assert value("meshsec_controller_ready") == 0
    probes.update(loaded=True, etcd_ok=True)
    assert probes.ready() == (True, "ok")
    assert value("meshsec_controller_ready") == 1
    now = {"t": 0.0}
    probes._fresh._clock = lambda: now["t"]  # the health loop stops updating: readiness goes stale
    probes._fresh.tick()
    now["t"] = 100.0
    ok, why = probes.ready()
    assert not ok and "stale" in why
    probes.stopping()
    assert probes.ready() == (False, "shutting down")
    assert value("meshsec_controller_ready") == 0


def test_every_controller_metric_is_documented() -> None:
    doc = DOC.read_text()
    names = set()
    for family in text_string_to_metric_families(generate_latest(m.REGISTRY).decode()):
        if family.name.startswith("meshsec_"):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    assert len(names) >= 10
    for name in names:
        assert f"`{name}`" in doc, f"{name} missing from docs/metrics.md"
    documented = set(re.findall(r"`(meshsec_controller_[a-z_]+)`", doc))
    assert documented <= names, f"documented but not defined: {documented - names}"


def test_a_bad_metrics_address_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshsec.agent.main import main as agent_main
    from meshsec.controller.main import main as controller_main

    monkeypatch.delenv("MESHSEC_METRICS_LISTEN", raising=False)
    monkeypatch.delenv("MESHSEC_HEALTH_LISTEN", raising=False)
    assert controller_main(["serve", "--state-dir", str(tmp_path), "--metrics-listen", "9450"]) == 1
    assert "--metrics-listen: bad listen address '9450': expected host:port" in capsys.readouterr().err
    monkeypatch.setenv("MESHSEC_HEALTH_LISTEN", "localhost")
    assert agent_main(["--state-dir", str(tmp_path / "agent"), "--node", "a"]) == 1
    assert "bad listen address 'localhost'" in capsys.readouterr().err
