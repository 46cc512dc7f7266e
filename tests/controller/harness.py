"""Helpers for control-plane tests: init a controller state dir, run replicas in-process, talk admin.

Everything runs against a real etcd (tests/support/etcd.py); nothing here mocks the controller.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from meshsec.agent.controlplane import (
    AgentIdentity,
    ControlPlaneClient,
    DesiredStateCache,
    RecordingReconciler,
    enroll,
)
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc
from meshsec.controller.api.server import Controller, ControllerConfig

if TYPE_CHECKING:
    from tests.support.netns import Namespace

SERVER_NAME = "meshsec-controller"


def mesh_yaml(nodes: dict[str, int]) -> str:
    """A valid mesh.yaml: the named nodes (value n → underlay 198.18.0.n, subnet 198.19.n.0/24), full mesh."""
    lines = ["apiVersion: meshsec.io/v1", "kind: Mesh", "nodes:"]
    for name, n in nodes.items():
        lines += [f"  - name: {name}", f'    endpoints: ["198.18.0.{n}"]', f"    subnets: [198.19.{n}.0/24]"]
    lines += ["policies:", "  - name: all", "    topology: full-mesh", "    members: {all: true}"]
    return "\n".join(lines) + "\n"


async def init_state(state_dir: Path, endpoints: list[str]) -> None:
    """`meshsec-controller init` against the given etcd (output swallowed)."""
    from meshsec.controller.main import build_parser, cmd_init

    args = build_parser().parse_args(
        [
            "init",
            "--state-dir",
            str(state_dir),
            "--etcd",
            ",".join(endpoints),
            "--socket",
            str(state_dir / "c.sock"),
        ]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        assert await cmd_init(args) == 0


def replica_config(state_dir: Path, endpoints: list[str], name: str, **kw: object) -> ControllerConfig:
    cfg = ControllerConfig(
        state_dir=state_dir,
        etcd=list(endpoints),
        listen="127.0.0.1:0",
        socket=state_dir / f"{name}.sock",
        enroll_listen="127.0.0.1:0",
        enroll_socket=state_dir / f"{name}-enroll.sock",
        replica=name,
        heartbeat_seconds=0.5,
        agent_lease_ttl=3,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@contextlib.asynccontextmanager
async def replica(
    state_dir: Path, endpoints: list[str], name: str = "r1", **kw: object
) -> AsyncIterator[Controller]:
    c = Controller(replica_config(state_dir, endpoints, name, **kw))
    await c.start()
    try:
        await c.state.ready.wait()  # type: ignore[union-attr]
        yield c
    finally:
        await c.stop(grace=0.1)


def channel(address: str, ca: bytes, cert: bytes | None = None, key: bytes | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.aio.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)])


def admin_channel(address: str, state_dir: Path) -> grpc.aio.Channel:
    admin = state_dir / "admin"
    return channel(
        address,
        (admin / "ca.pem").read_bytes(),
        (admin / "admin.pem").read_bytes(),
        (admin / "admin-key.pem").read_bytes(),
    )


def node_channel(address: str, identity: AgentIdentity) -> grpc.aio.Channel:
    return channel(
        address,
        identity.ca_path.read_bytes(),
        identity.cert_path.read_bytes(),
        identity.key_path.read_bytes(),
    )


async def apply(address: str, state_dir: Path, yaml_text: str) -> int:
    async with admin_channel(address, state_dir) as ch:
        resp = await admin_pb2_grpc.AdminServiceStub(ch).Apply(
            admin_pb2.ApplyRequest(spec_yaml=yaml_text, filename="mesh.yaml"), timeout=10
        )
    assert not resp.errors, resp.errors
    return resp.version


async def token(
    address: str, state_dir: Path, node: str = "", ttl: int = 600
) -> admin_pb2.CreateTokenResponse:
    async with admin_channel(address, state_dir) as ch:
        return await admin_pb2_grpc.AdminServiceStub(ch).CreateToken(
            admin_pb2.CreateTokenRequest(node=node, ttl_seconds=ttl), timeout=10
        )


async def enrolled(controller: Controller, state_dir: Path, agent_dir: Path, node: str) -> AgentIdentity:
    """A freshly enrolled agent identity (token from CreateToken, CA pinned by hash)."""
    tok = await token(controller.address, state_dir, node)
    identity = AgentIdentity(agent_dir)
    await enroll(controller.enroll_address, node, tok.token, identity, ca_sha256=tok.ca_cert_sha256)
    return identity


def client(
    address: str, node: str, identity: AgentIdentity, agent_dir: Path, **kw: object
) -> ControlPlaneClient:
    opts: dict[str, object] = {
        "backoff_initial": 0.05,
        "backoff_max": 0.3,
        "idle_timeout": 3.0,
        "report_interval": 0.5,
    }
    opts.update(kw)
    return ControlPlaneClient(
        address=address,
        node=node,
        identity=identity,
        cache=DesiredStateCache(agent_dir / "desired.pb"),
        reconciler=RecordingReconciler(),
        **opts,  # type: ignore[arg-type]
    )


class Proc:
    """A controller or agent as a real process (own session), output in a log file; kill() is SIGKILL."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        import os
        import subprocess

        self.log_path = log_path
        full_env = {**os.environ, **(env or {})}
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(args, stdout=log, stderr=log, env=full_env, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0, *, start: int = 0) -> re.Match[str]:
        """Wait until the log (from character `start`) matches the regex."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log()[start:])
            if m:
                return m
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"process exited ({self.popen.returncode}) before {pattern!r}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        import os
        import signal

        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 5 s; returns the exit code."""
        import signal
        import subprocess

        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode


def controller_proc(state_dir: Path, etcd: list[str], name: str, port: int, enroll_port: int) -> Proc:
    args = [
        sys.executable, "-m", "meshsec.controller.main", "serve",
        "--state-dir", str(state_dir),
        "--etcd", ",".join(etcd),
        "--listen", f"127.0.0.1:{port}",
        "--socket", str(state_dir / f"{name}.sock"),
        "--enroll-listen", f"127.0.0.1:{enroll_port}",
        "--enroll-socket", str(state_dir / f"{name}-enroll.sock"),
        "--replica", name,
        "--heartbeat", "0.5",
        "--agent-lease-ttl", "3",
    ]  # fmt: skip
    return Proc(args, state_dir / f"{name}.log")


def agent_proc(
    agent_dir: Path,
    node: str,
    controller: str,
    env: dict[str, str] | None = None,
    log_name: str = "agent.log",
) -> Proc:
    agent_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "meshsec.agent.main",
        "--controller", controller,
        "--node", node,
        "--state-dir", str(agent_dir),
        "--backoff-max", "0.5",
        "--idle-timeout", "3",
        "--report-interval", "1",
        "--reconciler", "record",  # control plane only: no TUN or 500/4500 in the root namespace
    ]  # fmt: skip
    return Proc(args, agent_dir / log_name, env)


def runtime_agent_in(
    ns: Namespace,
    node: str,
    state_dir: Path,
    work: Path,
    address: str,
    *,
    tun: str,
    extra: Sequence[str] = (),
) -> Path:
    """Start a real meshsec-agent with the IKE/ESP runtime inside `ns`, enrolling with a fresh token over
    replica r1's unix sockets in `state_dir`; returns its log path (the process ends with the namespace)."""
    import asyncio

    tok = asyncio.run(asyncio.wait_for(token(address, state_dir, node), 15))
    d = work / node
    d.mkdir()
    env = {
        "MESHSEC_TOKEN": tok.token,
        "MESHSEC_CA_HASH": tok.ca_cert_sha256,
        "MESHSEC_ENROLL_ADDRESS": f"unix://{state_dir}/r1-enroll.sock",
    }
    args = [
        sys.executable, "-m", "meshsec.agent.main",
        "--controller", f"unix://{state_dir}/r1.sock",
        "--node", node,
        "--state-dir", str(d),
        "--report-interval", "1",
        "--tun-name", tun,
        *extra,
    ]  # fmt: skip
    log = (d / "agent.log").open("w")
    ns.popen(["env", *(f"{k}={v}" for k, v in env.items()), *args], stdout=log, stderr=log, cwd=os.getcwd())
    return d / "agent.log"
