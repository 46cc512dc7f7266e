"""Traffic probes for namespace tests: one bounded iperf3 TCP transfer between two test hosts."""

from __future__ import annotations

import json
import subprocess

from tests.support.netns import Namespace, wait_for


def iperf_tcp(client: Namespace, server: Namespace, dst: str, nbytes: str) -> int:
    """Send `nbytes` over TCP from `client` to an iperf3 server on `dst` in `server`; bytes sent.

    Bytes the client pushed through TCP are returned (iperf3 exits non-zero if the transfer breaks);
    the server's own count ends at its last report interval, so it reads a little low.
    """
    srv = server.popen(
        ["iperf3", "-s", "-1", "-B", dst], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: ":5201" in server.run("ss", "-ltn", check=False).stdout, what="iperf3 server")
        out = json.loads(client.run("iperf3", "-c", dst, "-n", nbytes, "-J", timeout=60).stdout)
        assert int(out["end"]["sum_received"]["bytes"]) > 0
        return int(out["end"]["sum_sent"]["bytes"])
    finally:
        srv.wait(timeout=10)
