"""Real traffic between the demo's namespaces: parallel pings and one iperf3 run.

Owns running the standard tools (iputils ping, iperf3) in namespaces and collecting their output;
judging that output is `checks`' job.  Pings run all at once so the matrix takes as long as one pair.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from . import checks
from .procs import Proc, in_namespace, run_in


def ping_all(jobs: Sequence[tuple[str, str]], count: int, timeout: float = 30.0) -> list[str]:
    """Ping `addr` from namespace `ns` for each (ns, addr), in parallel; each run's output, in order."""
    started = []
    for ns, addr in jobs:
        cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", addr]
        started.append(
            subprocess.Popen(
                in_namespace(ns, cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    outputs = []
    deadline = time.monotonic() + timeout
    for p in started:
        try:
            out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outputs.append(out or "")
    return outputs


def iperf(
    client_ns: str, server_ns: str, addr: str, seconds: int, log: Path, helpers: list[Proc]
) -> checks.IperfResult:
    """One TCP iperf3 run from client_ns to a one-shot server on addr in server_ns.

    The server is appended to `helpers` at once, so the caller's teardown stops it whatever happens.
    """
    server = Proc("iperf3 server", in_namespace(server_ns, ["iperf3", "-s", "-1", "-B", addr]), log)
    helpers.append(server)
    cmd = ["iperf3", "-c", addr, "-t", str(seconds), "-J", "--connect-timeout", "2000"]
    deadline = time.monotonic() + 10
    while True:
        result = checks.iperf_result(run_in(client_ns, cmd, timeout=seconds + 20).stdout)
        if result.ok or time.monotonic() > deadline or "refused" not in result.error:
            return result
        time.sleep(0.3)  # the server is not listening yet
