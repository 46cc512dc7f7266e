"""The CLIs fail with one clear line (exit 1) when run in the wrong order or without credentials."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshsec.agent.main import main as agent_main
from meshsec.controller.ca import create_kek
from meshsec.controller.main import main as controller_main

from tests.support.etcd import EtcdCluster


def test_serve_before_init_says_run_init(
    etcd: EtcdCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "serve",
        "--state-dir",
        str(tmp_path),
        "--etcd",
        etcd.endpoints[0],
        "--listen",
        "",
        "--socket",
        "",
    ]
    assert controller_main([*args, "--enroll-listen", "", "--enroll-socket", ""]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "meshsec-controller init" in err
    create_kek(tmp_path / "kek")  # a KEK but no CA in this etcd
    assert controller_main([*args, "--enroll-listen", "", "--enroll-socket", ""]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "meshsec-controller init" in err


def test_init_writes_admin_credentials_and_meshctl_config(
    etcd: EtcdCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "run" / "controller.sock"
    assert (
        controller_main(
            ["init", "--state-dir", str(tmp_path), "--etcd", etcd.endpoints[0], "--socket", str(sock)]
        )
        == 0
    )
    out = capsys.readouterr().out
    admin = tmp_path / "admin"
    assert {p.name for p in admin.iterdir()} == {"ca.pem", "admin.pem", "admin-key.pem", "meshctl.yaml"}
    assert oct((admin / "admin-key.pem").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "kek").stat().st_mode & 0o777) == "0o600"
    conf = (admin / "meshctl.yaml").read_text()
    assert f"controller: unix://{sock}" in conf and f"key: {admin / 'admin-key.pem'}" in conf
    assert "PRIVATE KEY" not in out
    # Idempotent: a second init keeps the CA (same hash) and the KEK.
    first_ca = (admin / "ca.pem").read_bytes()
    assert controller_main(["init", "--state-dir", str(tmp_path), "--etcd", etcd.endpoints[0]]) == 0
    assert (admin / "ca.pem").read_bytes() == first_ca


def test_agent_without_identity_or_token_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert agent_main(["--state-dir", str(tmp_path), "--node", "node-a", "--controller", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--token" in err
