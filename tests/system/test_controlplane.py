"""Control plane as real processes against a real etcd: kill the controller, restart the agent,
restart etcd, let the embedded etcd die.  No namespaces needed (no data plane yet); every server
listens on 127.0.0.1 or a unix socket, and every process and temp dir is removed, pass or fail."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshsec.agent.controlplane import DesiredStateCache
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster, free_port

pytestmark = pytest.mark.system

AB = {"node-a": 1, "node-b": 2}
ABC = {"node-a": 1, "node-b": 2, "node-c": 3}


def run(coro, timeout: float = 15):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.contextmanager
def processes() -> Iterator[list[h.Proc]]:
    procs: list[h.Proc] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()


def apply_retrying(address: str, state: Path, nodes: dict[str, int], timeout: float = 10) -> int:
    """Apply, retrying while a controller or etcd is still coming back."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return run(h.apply(address, state, h.mesh_yaml(nodes)))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def cached(agent_dir: Path):  # type: ignore[no-untyped-def]
    cfg = DesiredStateCache(agent_dir / "desired.pb").load()
    assert cfg is not None
    return cfg


def test_controller_killed_agent_stays_static_then_resumes_with_a_delta(tmp_path: Path) -> None:
    state, agent_dir = tmp_path / "ctl", tmp_path / "agent"
    with EtcdCluster(1) as etcd, processes() as procs:
        run(h.init_state(state, etcd.endpoints))
        p1, e1, p2, e2 = (free_port() for _ in range(4))
        r1 = h.controller_proc(state, etcd.endpoints, "r1", p1, e1)
        r2 = h.controller_proc(state, etcd.endpoints, "r2", p2, e2)
        procs += [r1, r2]
        r1.wait_log("serving on")
        r2.wait_log("serving on")
        a1, a2 = f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"
        v1 = run(h.apply(a2, state, h.mesh_yaml(AB)))
        tok = run(h.token(a2, state, "node-a"))
        env = {
            "MESHSEC_TOKEN": tok.token,
            "MESHSEC_CA_HASH": tok.ca_cert_sha256,
            "MESHSEC_ENROLL_ADDRESS": f"127.0.0.1:{e1}",
        }
        agent = h.agent_proc(agent_dir, "node-a", a1, env)
        procs.append(agent)
        agent.wait_log(rf"sync: snapshot version {v1}\b")
        secret = tok.token.split(".")[1]
        assert secret not in agent.log() + r1.log() + r2.log()  # tokens are never logged

        r1.kill()  # the agent's controller dies; r2 lives on and takes a change the agent cannot get
        agent.wait_log("unreachable")
        v2 = run(h.apply(a2, state, h.mesh_yaml(ABC)))
        time.sleep(1.0)
        cfg = cached(agent_dir)
        assert cfg.version == v1 and [p.name for p in cfg.peers] == ["node-b"]  # kept its config

        agent.kill()  # agent restarted while its controller is down: starts from the cache
        agent2 = h.agent_proc(agent_dir, "node-a", a1, log_name="agent2.log")
        procs.append(agent2)
        agent2.wait_log(rf"starting from cached desired state version {v1}\b")
        agent2.wait_log("unreachable")

        r1 = h.controller_proc(state, etcd.endpoints, "r1", p1, e1)  # controller back, same address
        procs.append(r1)
        m = agent2.wait_log(rf"sync: delta {v1} -> (\d+)", timeout=15)
        assert int(m.group(1)) >= v2
        log = agent2.log()
        assert f"resumed from version {v1}" in log
        assert "sync: snapshot" not in log  # resumed without a full resync
        assert "Traceback" not in log + agent.log()
        assert len(re.findall("unreachable", log)) <= 2  # one line, not a flood
        cfg = cached(agent_dir)  # written before the log line
        assert cfg.version >= v2 and [p.name for p in cfg.peers] == ["node-b", "node-c"]
        assert agent2.stop() == 0  # SIGTERM: clean exit


def test_etcd_restarted_under_a_running_controller(tmp_path: Path) -> None:
    state, agent_dir = tmp_path / "ctl", tmp_path / "agent"
    with EtcdCluster(1) as etcd, processes() as procs:
        run(h.init_state(state, etcd.endpoints))
        port, enroll = free_port(), free_port()
        ctl = h.controller_proc(state, etcd.endpoints, "r1", port, enroll)
        procs.append(ctl)
        ctl.wait_log("serving on")
        address = f"unix://{state / 'r1.sock'}"  # the agent uses the unix socket this time
        v1 = run(h.apply(address, state, h.mesh_yaml(AB)))
        tok = run(h.token(address, state, "node-a"))
        env = {"MESHSEC_TOKEN": tok.token, "MESHSEC_CA_HASH": tok.ca_cert_sha256}
        env["MESHSEC_ENROLL_ADDRESS"] = f"unix://{state / 'r1-enroll.sock'}"  # not the default enroll.sock
        agent = h.agent_proc(agent_dir, "node-a", address, env)
        procs.append(agent)
        agent.wait_log(rf"sync: snapshot version {v1}\b")

        etcd.restart_member(0)
        etcd.wait_healthy()
        v2 = apply_retrying(address, state, ABC)
        agent.wait_log(rf"sync: delta {v1} -> {v2}\b", timeout=10)
        assert "Traceback" not in ctl.log()
        assert ctl.stop() == 0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _etcd_child(pid: int, not_pid: int = 0, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in _children(pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "etcd" and child != not_pid:
                    return child
        time.sleep(0.05)
    raise AssertionError("no embedded etcd child")


def test_embedded_etcd_is_started_supervised_and_stopped(tmp_path: Path) -> None:
    state = tmp_path / "ctl"
    from meshsec.controller.main import main as controller_main

    with contextlib.redirect_stdout(open(os.devnull, "w")):
        assert controller_main(["init", "--state-dir", str(state), "--socket", ""]) == 0  # embedded etcd
    assert (state / "admin" / "meshctl.yaml").exists()
    with processes() as procs:
        port, enroll = free_port(), free_port()
        ctl = h.controller_proc(state, [], "solo", port, enroll)
        procs.append(ctl)
        ctl.wait_log("serving on")
        address = f"127.0.0.1:{port}"
        v1 = run(h.apply(address, state, h.mesh_yaml(AB)))
        first = _etcd_child(ctl.popen.pid)
        os.kill(first, signal.SIGKILL)  # etcd dies under the controller
        second = _etcd_child(ctl.popen.pid, not_pid=first)
        v2 = apply_retrying(address, state, ABC)
        assert v2 > v1

        async def spec() -> admin_pb2.GetSpecResponse:
            async with h.admin_channel(address, state) as ch:
                return await admin_pb2_grpc.AdminServiceStub(ch).GetSpec(admin_pb2.GetSpecRequest())

        got = run(spec())
        assert got.version == v2 and len(got.spec.nodes) == 3
        assert ctl.stop() == 0
        time.sleep(0.2)
        assert (
            not Path(f"/proc/{second}").exists()
            or "zombie" in Path(f"/proc/{second}/status").read_text().lower()
        )
