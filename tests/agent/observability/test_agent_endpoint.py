"""A real `meshsec-agent` process against a real controller process and etcd: its probes and metrics.

/healthz answers while the agent is still trying to enroll; /readyz is 503 "not enrolled yet" until it
has enrolled and received its desired state, then 200 — and stays 200 when the controller goes away
(fail static); /metrics shows its peers and the control-plane connection.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.controller import harness
from tests.controller.observability.support import http, sample, serve, wait_for
from tests.support.etcd import EtcdCluster, free_port


def test_agent_probes_and_metrics_through_enrollment_sync_and_a_lost_controller(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    state = tmp_path / "controller"
    asyncio.run(harness.init_state(state, etcd.endpoints))
    cport = free_port()
    controller, port, enroll_port = serve(state, etcd.endpoints, cport)
    agent = None
    try:
        wait_for("controller ready", lambda: http(f"http://127.0.0.1:{cport}/readyz")[0] == 200, controller)
        address = f"127.0.0.1:{port}"
        asyncio.run(harness.apply(address, state, harness.mesh_yaml({"a": 1, "b": 2})))
        tok = asyncio.run(harness.token(address, state, "a"))
        assert controller.stop() == 0  # the agent starts while no controller answers

        aport = free_port()
        base = f"http://127.0.0.1:{aport}"
        env = {
            "MESHSEC_TOKEN": tok.token,
            "MESHSEC_CA_HASH": tok.ca_cert_sha256,
            "MESHSEC_ENROLL_ADDRESS": f"127.0.0.1:{enroll_port}",
            "MESHSEC_METRICS_LISTEN": f"127.0.0.1:{aport}",
        }
        agent = harness.agent_proc(tmp_path / "a", "a", address, env)
        wait_for("agent /healthz", lambda: http(base + "/healthz")[0] == 200, agent)
        assert http(base + "/readyz") == (503, "not enrolled yet\n")
        assert sample(base, "meshsec_agent_ready") == 0

        controller, _, _ = _restart(state, etcd, cport, port, enroll_port)
        wait_for("agent /readyz 200", lambda: http(base + "/readyz")[0] == 200, agent, timeout=20)
        assert sample(base, "meshsec_agent_ready") == 1
        wait_for("agent connected", lambda: sample(base, "meshsec_agent_controller_connected") == 1, agent)
        assert sample(base, "meshsec_agent_peers") == 1  # b
        assert (sample(base, "meshsec_agent_applied_version") or 0) > 0
        assert sample(base, "meshsec_agent_info", node="a", version="0.1.0") == 1
        assert sample(base, "meshsec_agent_scrape_errors_total") == 0
        controller_base = f"http://127.0.0.1:{cport}"
        wait_for(
            "controller sees the agent",
            lambda: sample(controller_base, "meshsec_controller_connected_agents") == 1,
            controller,
        )

        controller.kill()
        wait_for("agent disconnected", lambda: sample(base, "meshsec_agent_controller_connected") == 0, agent)
        assert http(base + "/readyz")[0] == 200  # fail static: still ready, tunnels kept
        assert http(base + "/healthz")[0] == 200

        assert agent.stop() == 0
        assert http(base + "/healthz")[0] == 0
    finally:
        controller.kill()
        if agent is not None:
            agent.kill()


def _restart(
    state: Path, etcd: EtcdCluster, cport: int, port: int, enroll_port: int
) -> tuple[harness.Proc, int, int]:
    """The controller again on the same ports (the agent was told those)."""
    import sys

    args = [
        sys.executable, "-m", "meshsec.controller.main", "serve",
        "--state-dir", str(state),
        "--etcd", ",".join(etcd.endpoints),
        "--listen", f"127.0.0.1:{port}",
        "--socket", "",
        "--enroll-listen", f"127.0.0.1:{enroll_port}",
        "--enroll-socket", "",
        "--heartbeat", "0.5",
        "--agent-lease-ttl", "3",
        "--metrics-listen", f"127.0.0.1:{cport}",
    ]  # fmt: skip
    proc = harness.Proc(args, state / "controller2.log")
    deadline = time.monotonic() + 15
    while http(f"http://127.0.0.1:{cport}/readyz")[0] != 200:
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.1)
    return proc, port, enroll_port
