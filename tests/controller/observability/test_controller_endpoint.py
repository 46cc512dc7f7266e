"""A real `meshsec-controller serve` process on a real etcd: its /metrics, /healthz and /readyz move.

Connected agents goes to 1 while an agent's Sync stream is open and back to 0 when it closes; applies
and enrollments are counted by result; etcd latency is recorded; /readyz turns 503 when etcd dies and
200 again when it returns, while /healthz stays 200 (the process is alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from meshsec.agent.controlplane import AgentIdentity, EnrollError, enroll
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc

from tests.controller import harness
from tests.controller.observability.support import http, sample, scrape, serve, wait_for
from tests.support.etcd import EtcdCluster, free_port


async def _apply(address: str, state: Path, yaml_text: str, dry_run: bool = False) -> admin_pb2.ApplyResponse:
    async with harness.admin_channel(address, state) as ch:
        return await admin_pb2_grpc.AdminServiceStub(ch).Apply(
            admin_pb2.ApplyRequest(spec_yaml=yaml_text, filename="mesh.yaml", dry_run=dry_run), timeout=10
        )


def test_controller_metrics_and_probes_follow_agents_applies_and_etcd(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    state = tmp_path / "controller"
    asyncio.run(harness.init_state(state, etcd.endpoints))
    mport = free_port()
    proc, port, enroll_port = serve(state, etcd.endpoints, mport)
    base = f"http://127.0.0.1:{mport}"
    try:
        wait_for("/readyz 200", lambda: http(base + "/readyz")[0] == 200, proc)
        assert http(base + "/healthz") == (200, "ok\n")
        assert sample(base, "meshsec_controller_ready") == 1
        assert sample(base, "meshsec_controller_connected_agents") == 0
        assert (sample(base, "meshsec_controller_etcd_request_seconds_count", operation="revision") or 0) > 0
        assert (
            sample(base, "meshsec_controller_etcd_request_seconds_count", operation="get_prefix") or 0
        ) > 0
        info = [k for k in scrape(base) if k[0] == "meshsec_controller_info"]
        assert info and ("replica", "m1") in info[0][1]

        address, enroll_address = f"127.0.0.1:{port}", f"127.0.0.1:{enroll_port}"
        ctl = SimpleNamespace(address=address, enroll_address=enroll_address)

        async def admin_and_agent() -> None:
            mesh = harness.mesh_yaml({"a": 1, "b": 2})
            assert not (await _apply(address, state, mesh, dry_run=True)).errors
            assert (await _apply(address, state, mesh)).version > 0
            assert (await _apply(address, state, "nodes: [")).errors  # YAML error: counted "invalid"

            pin = (await harness.token(address, state, "b")).ca_cert_sha256
            with pytest.raises(EnrollError):
                await enroll(
                    enroll_address, "b", "bogus-token", AgentIdentity(tmp_path / "bad"), ca_sha256=pin
                )
            identity = await harness.enrolled(ctl, state, tmp_path / "a", "a")  # type: ignore[arg-type]

            client = harness.client(address, "a", identity, tmp_path / "a")
            task = asyncio.create_task(client.run())
            try:
                await client.wait_for(lambda: client.connected and client.version > 0, 10)
                deadline = time.monotonic() + 5
                while (await asyncio.to_thread(sample, base, "meshsec_controller_connected_agents")) != 1:
                    assert time.monotonic() < deadline, "connected agents never reached 1"
                    await asyncio.sleep(0.1)
                assert await asyncio.to_thread(sample, base, "meshsec_controller_sync_streams_total") == 1

                # a change that touches a: compiled, then pushed to a's open stream, both timed
                held = client.version
                await _apply(address, state, harness.mesh_yaml({"a": 1, "b": 2, "c": 3}))
                await client.wait_for(lambda: client.version > held, 10)
                deadline = time.monotonic() + 5
                push = "meshsec_controller_sync_push_seconds_count"
                while not (await asyncio.to_thread(sample, base, push)):
                    assert time.monotonic() < deadline, "no Sync push latency recorded"
                    await asyncio.sleep(0.1)
                assert (
                    await asyncio.to_thread(sample, base, "meshsec_controller_compile_seconds_count")
                ) >= 1
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        asyncio.run(admin_and_agent())
        wait_for(
            "connected agents back to 0",
            lambda: sample(base, "meshsec_controller_connected_agents") == 0,
            proc,
        )

        applies = "meshsec_controller_applies_total"
        assert sample(base, applies, result="ok") == 2
        assert sample(base, applies, result="dry_run") == 1
        assert sample(base, applies, result="invalid") == 1
        enrollments = "meshsec_controller_enrollments_total"
        assert sample(base, enrollments, result="ok") == 1
        assert sample(base, enrollments, result="bad_token") == 1
        assert (sample(base, "meshsec_controller_etcd_request_seconds_count", operation="txn") or 0) >= 1

        etcd.stop_member(0)
        wait_for("/readyz 503 with etcd down", lambda: http(base + "/readyz")[0] == 503, proc)
        assert "etcd" in http(base + "/readyz")[1]
        assert http(base + "/healthz")[0] == 200  # alive: nothing to restart
        assert sample(base, "meshsec_controller_ready") == 0
        errors = [v for (n, _), v in scrape(base).items() if n == "meshsec_controller_etcd_errors_total"]
        assert sum(errors) >= 1

        etcd.start_member(0)
        wait_for("/readyz 200 once etcd is back", lambda: http(base + "/readyz")[0] == 200, proc, timeout=20)
        assert proc.stop() == 0
        assert http(base + "/healthz")[0] == 0  # the port is closed with the process
    finally:
        proc.kill()


def test_metrics_listen_empty_disables_the_endpoint(etcd: EtcdCluster, tmp_path: Path) -> None:
    state = tmp_path / "controller"
    asyncio.run(harness.init_state(state, etcd.endpoints))
    mport = free_port()
    args = [
        sys.executable, "-m", "meshsec.controller.main", "serve",
        "--state-dir", str(state), "--etcd", ",".join(etcd.endpoints),
        "--listen", f"127.0.0.1:{free_port()}", "--socket", "",
        "--enroll-listen", "", "--enroll-socket", "",
        "--metrics-listen", "",
    ]  # fmt: skip
    proc = harness.Proc(args, state / "controller.log", {"MESHSEC_HEALTH_LISTEN": f"127.0.0.1:{mport}"})
    try:
        proc.wait_log("serving on", 15)
        assert "metrics and probes on" not in proc.log()
        assert http(f"http://127.0.0.1:{mport}/healthz")[0] == 0  # the flag wins over the chart's env
    finally:
        proc.kill()


def test_the_charts_env_sets_the_address(etcd: EtcdCluster, tmp_path: Path) -> None:
    """MESHSEC_HEALTH_LISTEN (what deploy/helm passes) is honoured when no flag is given."""
    state = tmp_path / "controller"
    asyncio.run(harness.init_state(state, etcd.endpoints))
    mport = free_port()
    args = [
        sys.executable, "-m", "meshsec.controller.main", "serve",
        "--state-dir", str(state), "--etcd", ",".join(etcd.endpoints),
        "--listen", f"127.0.0.1:{free_port()}", "--socket", "",
        "--enroll-listen", "", "--enroll-socket", "",
    ]  # fmt: skip
    proc = harness.Proc(args, state / "controller.log", {"MESHSEC_HEALTH_LISTEN": f"127.0.0.1:{mport}"})
    try:
        wait_for("/readyz 200", lambda: http(f"http://127.0.0.1:{mport}/readyz")[0] == 200, proc)
    finally:
        proc.kill()
