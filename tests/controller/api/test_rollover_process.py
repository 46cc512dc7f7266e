"""A CA rollover through the real processes: `meshsec-controller serve` (singleton jobs on, the default)
on a real etcd, a real `meshsec-agent`, and `meshctl ca rotate|status` as commands.

With 6 s node certificates and a 1 s propagation time the whole rollover takes seconds: the agent
learns both CAs from Sync, renews from the new CA after the switch (its schedule says "now" once the
signing CA differs from its issuer), and keeps syncing through the retirement of the old CA, also
over a new connection (controller restarted) that only the new CA can authenticate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from meshsec.agent.controlplane import DesiredStateCache
from meshsec.agent.controlplane.renewal import authority_key_id, signing_ca_key_id
from meshsec.api.v1 import config_pb2
from meshsec.controller.ca import fingerprint

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster, free_port

NODE_CERT_SECONDS = 6.0
AB = {"node-a": 1, "node-b": 2}
ABC = {"node-a": 1, "node-b": 2, "node-c": 3}


def _run(coro, timeout: float = 15):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _until(what: str, check: Callable[[], object], timeout: float, *logs: h.Proc) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.log_path.name}\n{p.log()[-4000:]}" for p in logs)
            raise AssertionError(f"not within {timeout}s: {what}\n{tails}")
        time.sleep(0.1)


def _controller(state: Path, etcd: list[str], port: int, enroll_port: int) -> h.Proc:
    args = [
        sys.executable, "-m", "meshsec.controller.main", "serve",
        "--state-dir", str(state),
        "--etcd", ",".join(etcd),
        "--listen", f"127.0.0.1:{port}",
        "--socket", str(state / "c.sock"),
        "--enroll-listen", f"127.0.0.1:{enroll_port}",
        "--enroll-socket", str(state / "enroll.sock"),
        "--replica", "r1",
        "--heartbeat", "0.5",
        "--agent-lease-ttl", "3",
        "--election-ttl", "2",
        "--node-cert-hours", str(NODE_CERT_SECONDS / 3600),
        "--ca-propagate", "1",
    ]  # fmt: skip
    return h.Proc(args, state / "r1.log")


def _meshctl(address: str, state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    admin = state / "admin"
    conn = ["--controller", address, "--ca", str(admin / "ca.pem")]
    conn += ["--cert", str(admin / "admin.pem"), "--key", str(admin / "admin-key.pem")]
    return subprocess.run(
        [sys.executable, "-m", "meshsec.controller.cli.main", *argv, *conn],
        capture_output=True,
        text=True,
        timeout=20,
    )


def _ca_status(address: str, state: Path) -> dict:  # type: ignore[type-arg]
    out = _meshctl(address, state, "ca", "status", "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _cached(agent_dir: Path) -> config_pb2.NodeConfig | None:
    try:
        return DesiredStateCache(agent_dir / "desired.pb").load()
    except Exception:  # mid-write: try again
        return None


def _cas(pem: str | bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode() if isinstance(pem, str) else pem)


def _server_leaf(*, port: int = 0, path: Path | None = None) -> x509.Certificate:
    """The certificate a server presents (read without verifying: only its issuer matters here)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    if path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(3)
        sock.connect(str(path))
    else:
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    with sock, ctx.wrap_socket(sock, server_hostname="meshsec-controller") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@contextlib.contextmanager
def _processes() -> Iterator[list[h.Proc]]:
    procs: list[h.Proc] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()


def test_meshctl_ca_rotate_moves_a_real_agent_to_the_new_ca(etcd: EtcdCluster, tmp_path: Path) -> None:
    state, agent_dir = tmp_path / "ctl", tmp_path / "agent"
    _run(h.init_state(state, etcd.endpoints))
    port, enroll_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    with _processes() as procs:
        ctl = _controller(state, etcd.endpoints, port, enroll_port)
        procs.append(ctl)
        ctl.wait_log("serving on")
        v1 = _run(h.apply(address, state, h.mesh_yaml(AB)))
        tok = _run(h.token(address, state, "node-a"))
        env = {
            "MESHSEC_TOKEN": tok.token,
            "MESHSEC_CA_HASH": tok.ca_cert_sha256,
            "MESHSEC_ENROLL_ADDRESS": f"127.0.0.1:{enroll_port}",
        }
        agent = h.agent_proc(agent_dir, "node-a", address, env)
        procs.append(agent)
        _until("agent synced", lambda: (c := _cached(agent_dir)) and c.version >= v1, 10, agent)
        cert_a = x509.load_pem_x509_certificate((agent_dir / "node.pem").read_bytes())
        stable = _ca_status(address, state)
        assert stable["phase"] == "stable" and len(stable["cas"]) == 1
        ca_a = stable["cas"][0]["sha256"]

        rotate = _meshctl(address, state, "ca", "rotate")
        assert rotate.returncode == 0, rotate.stderr
        assert "published" in rotate.stdout

        # published: the agent trusts both CAs (for its peers' certificates) through Sync
        both = _until(
            "agent got both CAs",
            lambda: (c := _cached(agent_dir)) and len(_cas(c.local.trusted_ca_pem)) == 2 and c,
            10,
            agent,
            ctl,
        )
        assert isinstance(both, config_pb2.NodeConfig)
        assert fingerprint(_cas(both.local.trusted_ca_pem)[0]) == ca_a  # A still signs

        # switched (by the singleton rotation job on the elected replica): B signs
        switched = _until(
            "switch", lambda: (s := _ca_status(address, state))["phase"] == "switched" and s, 15, ctl
        )
        assert isinstance(switched, dict) and switched["cas"][1]["sha256"] == ca_a
        # new admin credentials from the signing CA (the old admin.pem dies with A), as docs say
        _run(h.init_state(state, etcd.endpoints))

        def renewed_from_b() -> bool:
            c = _cached(agent_dir)
            if c is None or len(_cas(c.local.trusted_ca_pem)) != 2:
                return False
            signing = signing_ca_key_id(c.local.trusted_ca_pem)
            cert = x509.load_pem_x509_certificate((agent_dir / "node.pem").read_bytes())
            return authority_key_id(cert) == signing != authority_key_id(cert_a)

        _until("node renewal from the new CA", renewed_from_b, 10, agent, ctl)
        assert len(_cas((agent_dir / "ca.pem").read_bytes())) == 2  # learnt from RenewResponse

        # retired: only B trusted; the agent keeps syncing
        _until(
            "retirement",
            lambda: (s := _ca_status(address, state))["phase"] == "stable" and len(s["cas"]) == 1,
            15,
            ctl,
        )
        _until(
            "agent trusts only B",
            lambda: (c := _cached(agent_dir)) and len(_cas(c.local.trusted_ca_pem)) == 1,
            5,
            agent,
        )
        v2 = _run(h.apply(address, state, h.mesh_yaml(ABC)))
        _until("delta after retirement", lambda: (c := _cached(agent_dir)) and c.version >= v2, 5, agent)

        assert "renewal failed" not in agent.log()
        # every port of the running replica followed the CA without a restart (TCP and unix, each
        # with its own reloadable credentials): the server certificate now comes from B
        issuer_b = x509.load_pem_x509_certificate((agent_dir / "node.pem").read_bytes()).issuer
        assert _server_leaf(port=port).issuer == issuer_b
        assert _server_leaf(path=state / "c.sock").issuer == issuer_b

        # a new connection: the restarted controller presents a B certificate, refuses A certificates.
        # Certificates here live seconds: restart right after a renewal, so that the agent's is still
        # valid when the new replica is up (an expired one needs a new enrollment, by design).
        def fresh_certificate() -> bool:
            cert = x509.load_pem_x509_certificate((agent_dir / "node.pem").read_bytes())
            return cert.not_valid_after_utc.timestamp() - time.time() > NODE_CERT_SECONDS * 0.7

        _until("a freshly renewed certificate", fresh_certificate, NODE_CERT_SECONDS, agent)
        ctl.stop()
        mark = len(agent.log())
        ctl2 = _controller(state, etcd.endpoints, port, enroll_port)
        procs.append(ctl2)
        ctl2.wait_log("serving on")
        agent.wait_log("connected to controller", 10, start=mark)
        v3 = _run(h.apply(address, state, h.mesh_yaml(AB)))
        _until("delta after reconnect", lambda: (c := _cached(agent_dir)) and c.version >= v3, 5, agent)
        c = _cached(agent_dir)
        assert c is not None and [p.name for p in c.peers] == ["node-b"]


def test_serve_flags_for_jobs_and_rollover_timing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshsec.controller.main import build_parser, main

    monkeypatch.delenv("MESHSEC_SINGLETON_JOBS", raising=False)
    args = build_parser().parse_args(["serve"])
    assert args.singleton_jobs and args.election_ttl == 10 and args.ca_propagate == 600
    assert not build_parser().parse_args(["serve", "--no-singleton-jobs"]).singleton_jobs
    monkeypatch.setenv("MESHSEC_SINGLETON_JOBS", "0")
    assert not build_parser().parse_args(["serve"]).singleton_jobs
    for bad in (["--election-ttl", "1"], ["--ca-propagate", "0"], ["--node-cert-hours", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(["serve", *bad])
        assert exc.value.code == 2
        assert bad[0] in capsys.readouterr().err
