"""What the Kubernetes chart needs from `meshsec-controller`: TLS to etcd from MESHSEC_ETCD_*_FILE, and a
SIGTERM that first reports not-ready, drains, then stops.  Real etcd, real controller processes."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshsec.controller.main import main as controller_main
from meshsec.controller.store import Keys, Store, StoreError

from tests.controller.harness import Proc, admin_channel, init_state, mesh_yaml
from tests.support.etcd import EtcdCluster, free_port


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_controller_inits_and_serves_over_tls_etcd_from_env_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with EtcdCluster(1, tls=True) as etcd:
        tls = etcd.tls
        assert tls is not None
        endpoint = f"https://{etcd.endpoints[0]}"  # as the chart spells MESHSEC_ETCD
        state = tmp_path / "state"
        env = {
            "MESHSEC_ETCD_CA_FILE": str(tls.ca_file),
            "MESHSEC_ETCD_CERT_FILE": str(tls.client_cert),
            "MESHSEC_ETCD_KEY_FILE": str(tls.client_key),
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        sock = tmp_path / "c.sock"
        assert (
            controller_main(["init", "--state-dir", str(state), "--etcd", endpoint, "--socket", str(sock)])
            == 0
        )
        assert "CA: created" in capsys.readouterr().out

        # The flags do the same as the env, for serve; an Apply through it lands in the TLS etcd.
        for k in env:
            monkeypatch.delenv(k)
        args = [
            sys.executable, "-m", "meshsec.controller.main", "serve",
            "--state-dir", str(state), "--etcd", endpoint, "--socket", str(sock),
            "--listen", "", "--enroll-listen", "", "--enroll-socket", "", "--metrics-listen", "",
            "--etcd-ca-file", str(tls.ca_file),
            "--etcd-cert-file", str(tls.client_cert),
            "--etcd-key-file", str(tls.client_key),
        ]  # fmt: skip
        proc = Proc(args, tmp_path / "serve.log")
        try:
            proc.wait_log("serving on", timeout=20)

            async def check() -> None:
                from meshsec.api.v1 import admin_pb2, admin_pb2_grpc

                async with admin_channel(f"unix://{sock}", state) as ch:
                    resp = await admin_pb2_grpc.AdminServiceStub(ch).Apply(
                        admin_pb2.ApplyRequest(spec_yaml=mesh_yaml({"a": 1, "b": 2}), filename="m.yaml"),
                        timeout=10,
                    )
                assert not resp.errors
                tls_args = {
                    "ca_cert": tls.ca_file.read_bytes(),
                    "cert": tls.client_cert.read_bytes(),
                    "key": tls.client_key.read_bytes(),
                }
                async with Store(etcd.endpoints, **tls_args) as s:
                    assert (await s.get(Keys.SPEC)) is not None
                # etcd requires a client certificate: the CA alone is not enough.
                anon = Store(etcd.endpoints, timeout=1.0, ca_cert=tls.ca_file.read_bytes())
                async with anon:
                    with pytest.raises(StoreError):
                        await anon.get(Keys.SPEC)

            asyncio.run(asyncio.wait_for(check(), 30))
            assert proc.stop() == 0
        finally:
            proc.kill()


def test_etcd_client_certificate_without_ca_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crt = tmp_path / "c.crt"
    crt.write_text("x")
    code = controller_main(
        ["init", "--state-dir", str(tmp_path), "--etcd", "127.0.0.1:1", "--etcd-cert-file", str(crt)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "--etcd-ca-file" in err
    missing = tmp_path / "absent.crt"
    code = controller_main(
        ["init", "--state-dir", str(tmp_path), "--etcd", "127.0.0.1:1", "--etcd-ca-file", str(missing)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and str(missing) in err


def test_sigterm_reports_not_ready_drains_then_stops(etcd: EtcdCluster, tmp_path: Path) -> None:
    state = tmp_path / "state"
    asyncio.run(init_state(state, etcd.endpoints))
    port = free_port()
    sock = state / "r.sock"
    args = [
        sys.executable, "-m", "meshsec.controller.main", "serve",
        "--state-dir", str(state), "--etcd", etcd.endpoints[0], "--socket", str(sock),
        "--listen", "", "--enroll-listen", "", "--enroll-socket", "",
        "--metrics-listen", f"127.0.0.1:{port}", "--drain-seconds", "2",
    ]  # fmt: skip
    proc = Proc(args, tmp_path / "serve.log")
    try:
        proc.wait_log("serving on", timeout=20)
        _wait(lambda: _readyz(port) == 200, 10, "/readyz 200")

        async def health() -> int:
            async with admin_channel(f"unix://{sock}", state) as ch:
                resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return int(resp.status)

        assert asyncio.run(health()) == health_pb2.HealthCheckResponse.SERVING
        t0 = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        _wait(lambda: _readyz(port) == 503, 1.0, "/readyz 503 after SIGTERM")
        # Still serving while draining: calls answer, and gRPC health says NOT_SERVING.
        _wait(lambda: asyncio.run(health()) == health_pb2.HealthCheckResponse.NOT_SERVING, 1.0, "NOT_SERVING")
        assert proc.popen.poll() is None
        body = urllib.request.Request(f"http://127.0.0.1:{port}/readyz")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(body, timeout=1)
        assert b"shutting down" in err.value.read()
        assert proc.popen.wait(10) == 0
        assert time.monotonic() - t0 >= 1.8  # the drain period, then the stop
        assert "draining for 2.0 s" in proc.log()
        with pytest.raises(grpc.RpcError):
            asyncio.run(health())
    finally:
        proc.kill()


def test_drain_default_is_zero_outside_kubernetes_and_five_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshsec.controller.main import build_parser

    base = ["serve", "--state-dir", "/tmp/x"]
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("MESHSEC_DRAIN_SECONDS", raising=False)
    assert build_parser().parse_args(base).drain_seconds == 0
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert build_parser().parse_args(base).drain_seconds == 5
    monkeypatch.setenv("MESHSEC_DRAIN_SECONDS", "12.5")
    assert build_parser().parse_args(base).drain_seconds == 12.5
    monkeypatch.setenv(
        "MESHSEC_SERVER_NAMES", "meshsec-controller.ns.svc, meshsec-controller.ns.svc.cluster.local"
    )
    args = build_parser().parse_args([*base, "--server-name", "vpn.example.net"])
    assert args.server_name == [
        "meshsec-controller.ns.svc",
        "meshsec-controller.ns.svc.cluster.local",
        "vpn.example.net",
    ]
