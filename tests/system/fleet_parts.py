"""The parts of a test fleet (tests/system/fleet.py): mesh members, controller replicas, agents in
namespaces, ping streams, and reading an agent's /metrics from inside its namespace.

Owns only these small records and probes; starting, stopping and wiring the parts is fleet.py's job.
Nothing here creates a namespace or a process except PingStream (one `ping`, in a test namespace, to a
198.19.x.1 test address).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshsec.controller.demo.nsexec import enter

from tests.controller import harness as h
from tests.support.netns import Namespace

PY = sys.executable
AGENT_METRICS_PORT = 9451  # inside each host namespace, on its own loopback
RUNTIME = "meshsec.agent.runtime.host:reconciler"
MESHCTL = [PY, "-m", "meshsec.controller.cli.main"]  # the `meshctl` entry point, whatever PATH says
ESTABLISHED = "IKE_SA_STATE_ESTABLISHED"  # as `meshctl status -o json` spells the states
INSTALLED = "CHILD_SA_STATE_INSTALLED"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class FleetError(AssertionError):
    """A fleet part did not reach the state asked for; the message says which part and why."""


# --------------------------------------------------------------------------------------------- parts


@dataclass
class Member:
    """One node of the mesh.yaml the fleet applies.  ``index`` picks its addresses (see module doc)."""

    name: str
    index: int
    endpoints: list[str] | None = None  # None: ["198.18.0.<index>"]; [] = no endpoint (behind NAT)
    behind_nat: bool = False
    extra: list[str] = field(default_factory=list)  # more YAML lines of the node, indented 4
    more_subnets: list[str] = field(default_factory=list)  # beside `subnet`

    @property
    def underlay(self) -> str:
        return f"198.18.0.{self.index}"

    @property
    def overlay(self) -> str:
        return f"198.19.{self.index}.1"

    @property
    def subnet(self) -> str:
        return f"198.19.{self.index}.0/24"

    def yaml(self) -> list[str]:
        endpoints = [self.underlay] if self.endpoints is None else self.endpoints
        lines = [f"  - name: {self.name}", f"    subnets: [{', '.join([self.subnet, *self.more_subnets])}]"]
        if endpoints:
            lines.append("    endpoints: [" + ", ".join(f'"{e}"' for e in endpoints) + "]")
        if self.behind_nat:
            lines.append("    behindNat: true")
        return lines + [f"    {x}" for x in self.extra]


@dataclass
class Controller:
    """One ``meshsec-controller serve`` replica (same ports and sockets across restarts)."""

    name: str
    state: Path
    port: int  # admin + agent API on 127.0.0.1 (meshctl uses this)
    enroll_port: int
    metrics_port: int
    proc: h.Proc | None = None

    @property
    def socket(self) -> Path:
        return self.state / f"{self.name}.sock"

    @property
    def enroll_socket(self) -> Path:
        return self.state / f"{self.name}-enroll.sock"

    @property
    def target(self) -> str:
        """What an agent in a namespace dials."""
        return f"unix://{self.socket}"

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state / f"{self.name}.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def argv(self, etcd: list[str]) -> list[str]:
        return [
            PY, "-m", "meshsec.controller.main", "serve",
            "--state-dir", str(self.state),
            "--etcd", ",".join(etcd),
            "--listen", self.admin,
            "--socket", str(self.socket),
            "--enroll-listen", f"127.0.0.1:{self.enroll_port}",
            "--enroll-socket", str(self.enroll_socket),
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--replica", self.name,
            "--heartbeat", "0.5",
            "--agent-lease-ttl", "3",
        ]  # fmt: skip

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """This replica's Prometheus samples ({} when it does not answer)."""
        try:
            with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=2) as s:
                return parse_metrics(_http_get(s, "/metrics"))
        except OSError:
            return {}

    def connected_agents(self) -> int | None:
        """meshsec_controller_connected_agents, or None when the replica does not answer."""
        value = self.metrics().get(("meshsec_controller_connected_agents", ()))
        return None if value is None else int(value)


@dataclass
class Agent:
    """One host: its namespace, its agent process (None while stopped), state dir and log."""

    name: str
    ns: Namespace
    dir: Path
    targets: list[str]  # controller targets in the order this agent tries them
    enroll: str  # enrollment endpoint ("" = a running replica's enroll socket when it starts)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.dir / "agent.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The agent's own Prometheus samples, read inside its namespace ({} when it does not answer)."""
        try:
            s = ns_connect(self.ns.name, "127.0.0.1", AGENT_METRICS_PORT, timeout=2)
        except OSError:
            return {}
        with s:
            try:
                return parse_metrics(_http_get(s, "/metrics"))
            except OSError:
                return {}

    def peers_up(self) -> set[str] | None:
        """Peers whose IKE SA is established with a child SA installed, as this agent sees it
        (None: the agent does not answer)."""
        m = self.metrics()
        if not m:
            return None
        return {
            dict(labels)["peer"]
            for (name, labels), v in m.items()
            if name == "meshsec_agent_peer_up" and v == 1.0
        }

    def peers(self) -> set[str] | None:
        """Every peer in the agent's applied desired state (up or not)."""
        m = self.metrics()
        if not m:
            return None
        return {dict(labels)["peer"] for (name, labels), _ in m.items() if name == "meshsec_agent_peer_up"}


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    output: str

    @property
    def lost(self) -> int:
        return self.sent - self.received


class PingStream:
    """A background ``ping -i 1/pps -c pps*seconds`` from one host's overlay address to another's."""

    def __init__(self, ns: Namespace, src: str, dst: str, pps: int, seconds: float) -> None:
        self.count = max(1, int(pps * seconds))
        interval = f"{1 / pps:.3f}"
        self.expected_seconds = self.count / pps
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, "ping", "-n", "-q", "-I", src, "-i", interval,
             "-c", str(self.count), "-W", "1", dst],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip

    def result(self, timeout: float | None = None) -> PingResult:
        """Wait for the stream to finish and parse ping's summary."""
        wait = timeout if timeout is not None else self.expected_seconds + 15
        try:
            out, _ = self._proc.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            self.stop()
            out, _ = self._proc.communicate()
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out or "")
        if not m:
            raise FleetError(f"no ping summary: {out!r}")
        return PingResult(int(m.group(1)), int(m.group(2)), out)

    def stop(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(5)


# ------------------------------------------------------------------------------------------ helpers


def ns_connect(ns_name: str, host: str, port: int, timeout: float = 2.0) -> socket.socket:
    """A TCP connection opened inside a network namespace (a socket keeps the namespace it was made in,
    so a short thread enters the namespace, connects and hands the socket back)."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            enter(ns_name)
            box["sock"] = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            box["error"] = exc

    t = threading.Thread(target=work, name=f"ns-connect-{ns_name}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["sock"]  # type: ignore[return-value]


def _http_get(s: socket.socket, path: str) -> str:
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise OSError(f"HTTP {head[:40]!r}")
    return body.decode(errors="replace")


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text exposition → {(name, sorted labels): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
            with contextlib.suppress(ValueError):
                out[(m.group(1), labels)] = float(m.group(3))
    return out


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll until truthy; FleetError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise FleetError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)
