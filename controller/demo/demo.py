"""The demo run, step by step: network, controller, mesh.yaml, agents, SAs, pings, iperf3, status, wait.

Owns the order of the steps, each step's success criterion and the teardown.  Each step either
reaches an explicit, checked state or raises StepFailed naming what is missing and whose log to read,
so a partially built stack stops at the first step it cannot pass instead of printing a green
matrix that proves nothing.  Teardown (`close`) undoes exactly what was created, in reverse order,
however far the run got, and is also what SIGTERM and Ctrl-C lead to.

Must not touch: anything outside its own namespaces, processes and temporary directory.  Servers in the
root namespace listen on unix sockets (controller) and 127.0.0.1 (the controller's embedded etcd) only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from meshsec.api.v1 import admin_pb2
from meshsec.controller.cli.client import Client
from meshsec.controller.cli.errors import CliError, Exit
from meshsec.controller.cli.settings import Settings

from . import checks, traffic
from .network import DemoNetwork, NetworkError, pid_alive
from .plan import DemoPlan, make_plan
from .procs import PY, Proc, ProcessFailed, clean_env, in_namespace, stop_all
from .ui import StepFailed, Ui

WORKDIR_PREFIX = "meshsec-demo-"  # + the demo's pid, so a later demo can tell a dead one's folder
PINGS = 3  # echo requests per pair
IPERF_SECONDS = 2
UNREACHABLE_GRACE = 10.0  # seconds an AdminService call retries while the controller is unreachable
SETTLE = 1.0  # seconds every SA must stay up, in fresh reports, before the SA step passes


def _runtime_reconciler() -> str:
    """The IKE + ESP runtime as a `meshsec-agent --reconciler`, or "" when this install lacks it.

    Without it the agent only records its desired state and the demo stops at "every IKE and child SA
    up", saying so.  Looked up by file, not imported: importing it here would load the whole IKE and
    data plane stack into the demo process for nothing.
    """
    spec = importlib.util.find_spec("meshsec.agent.runtime")
    locations = list(spec.submodule_search_locations or []) if spec else []
    found = any((Path(loc) / "host.py").exists() for loc in locations)
    return "meshsec.agent.runtime.host:reconciler" if found else ""


def remove_stale_workdirs() -> list[Path]:
    """Delete keys, certificates and etcd data left by demos that were SIGKILLed; keep their logs.

    A demo that fails removes those itself and keeps only its logs, so this is only for demos that
    could not clean up.  Returns the folders it cleaned.
    """
    cleaned = []
    for d in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        m = re.match(rf"{WORKDIR_PREFIX}(\d+)-", d.name)
        if not m or not d.is_dir() or pid_alive(int(m.group(1))):
            continue
        leftovers = [c for c in d.iterdir() if c.name != "logs"]
        for c in leftovers:
            shutil.rmtree(c, ignore_errors=True) if c.is_dir() else c.unlink(missing_ok=True)
        if leftovers:
            cleaned.append(d)
    return cleaned


def _reported(status: admin_pb2.GetStatusResponse) -> dict[str, float]:
    """node -> when it last reported (wall clock seconds)."""
    return {n.node: n.reported_at.ToSeconds() + n.reported_at.nanos / 1e9 for n in status.nodes}


def _free_port() -> int:
    """A free TCP port on 127.0.0.1 (for the controller's metrics; a second demo must not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass
class Options:
    nodes: int = 4
    duration: float | None = None  # None: until Ctrl-C / SIGTERM
    timeout: float = 60.0  # per waiting step (controller up, agents in sync, SAs up)
    keep_logs: bool = False


class Demo:
    """run() builds and checks the mesh, then waits; close() removes everything, pass or fail."""

    def __init__(self, opts: Options, ui: Ui) -> None:
        self.opts = opts
        self.ui = ui
        self.plan: DemoPlan = make_plan(opts.nodes)
        self.net = DemoNetwork(self.plan)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        self.logs = self.workdir / "logs"
        self.logs.mkdir()
        self.state = self.workdir / "controller"
        self.socket = self.state / "controller.sock"
        self.meshctl_config = self.state / "admin" / "meshctl.yaml"
        self.controller: Proc | None = None
        self.agents: dict[str, Proc] = {}
        self.helpers: list[Proc] = []
        self.client: Client | None = None
        self.version = 0
        self.metrics_port = _free_port()
        self.ready = False  # every check passed; the demo is just keeping the mesh up
        self.expected = self.plan.expected()

    # --- steps --------------------------------------------------------------------------------------

    def run(self) -> None:
        self.step_network()
        self.step_controller()
        self.step_apply()
        self.step_agents()
        self.step_sas()
        self.step_pings()
        self.step_iperf()
        self.step_status()
        self.wait()

    def step_network(self) -> None:
        with self.ui.step("network namespaces") as s:
            try:
                self.net.build()
            except NetworkError as exc:
                raise StepFailed(str(exc)) from None
            lans = ", ".join(f"{lan.subnet} behind {lan.gateway}" for lan in self.plan.lans)
            s.detail = f"{len(self.plan.hosts)} hosts on 198.18.0.0/24, site LANs {lans}"

    def step_controller(self) -> None:
        with self.ui.step("controller (embedded etcd, CA)") as s:
            log = self.logs / "controller.log"
            init = subprocess.run(
                in_namespace(None, self._controller_cmd("init")),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.opts.timeout,
                check=False,
                env=clean_env(),
            )
            log.write_text(init.stdout + init.stderr)
            if init.returncode != 0:
                last = (init.stderr.strip().splitlines() or ["no output"])[-1]
                raise StepFailed(f"meshsec-controller init exited {init.returncode}: {last}", log)
            self.controller = Proc(
                "meshsec-controller", in_namespace(None, self._controller_cmd("serve")), log
            )
            try:
                m = self.controller.wait_log(r"etcd ([0-9.:]+), embedded", self.opts.timeout, "'serving on'")
            except ProcessFailed as exc:
                raise StepFailed(str(exc), exc.log) from None
            try:
                self.client = Client(Settings(f"unix://{self.socket}", *self._admin_files()), 10.0)
            except CliError as exc:
                raise StepFailed(f"admin client: {exc.message}", log) from None
            s.detail = f"gRPC on unix://{self.socket}, etcd on {m.group(1)}"

    def _admin_files(self) -> tuple[Path, Path, Path]:
        """The admin CA, certificate and key that `meshsec-controller init` wrote."""
        admin = self.state / "admin"
        return admin / "ca.pem", admin / "admin.pem", admin / "admin-key.pem"

    def _controller_cmd(self, verb: str) -> list[str]:
        cmd = [
            PY, "-m", "meshsec.controller.main", verb,
            "--state-dir", str(self.state),
            "--etcd", "",  # embedded
            "--socket", str(self.socket),
        ]  # fmt: skip
        if verb == "serve":
            cmd += [
                "--listen", "",  # unix sockets only: nothing on TCP but etcd on 127.0.0.1
                "--enroll-listen", "",
                "--enroll-socket", str(self.state / "enroll.sock"),
                "--metrics-listen", f"127.0.0.1:{self.metrics_port}",  # not the fixed default port
                "--replica", "demo",
                "--heartbeat", "1",
                "--agent-lease-ttl", "5",
            ]  # fmt: skip
        return cmd

    def _admin(self, method: str, request: object) -> object:
        """One AdminService call; a controller that is briefly unreachable is retried, a dead one is not."""
        assert self.client is not None and self.controller is not None
        deadline = time.monotonic() + UNREACHABLE_GRACE
        while True:
            try:
                return self.client.call(getattr(self.client.admin, method), request)
            except CliError as exc:
                ctl = self.controller
                if not ctl.alive():
                    raise StepFailed(
                        f"meshsec-controller exited with code {ctl.popen.returncode}: {ctl.last_line()}",
                        ctl.log,
                    ) from None
                if exc.code != Exit.UNREACHABLE or time.monotonic() > deadline:
                    raise StepFailed(f"{method}: {exc.message}", ctl.log) from None
            time.sleep(0.3)

    def step_apply(self) -> None:
        with self.ui.step("meshctl apply -f mesh.yaml") as s:
            text = self.plan.mesh_yaml()
            (self.workdir / "mesh.yaml").write_text(text)
            resp = self._admin("Apply", admin_pb2.ApplyRequest(spec_yaml=text, filename="mesh.yaml"))
            assert isinstance(resp, admin_pb2.ApplyResponse)
            if resp.errors:
                e = resp.errors[0]
                raise StepFailed(f"the controller rejected the demo mesh: {e.field}: {e.reason}")
            self.version = resp.version
            ike, child = checks.count_sas(self.expected)
            s.detail = f"version {self.version}: {_n(ike, 'IKE SA')}, {_n(child, 'child SA')} to set up"

    def step_agents(self) -> None:
        with self.ui.step("agents enrolled and in sync") as s:
            for host in self.plan.hosts:
                tok = self._admin(
                    "CreateToken", admin_pb2.CreateTokenRequest(node=host.name, ttl_seconds=600)
                )
                assert isinstance(tok, admin_pb2.CreateTokenResponse)
                agent_dir = self.workdir / "agents" / host.name
                agent_dir.mkdir(parents=True)
                cmd = [
                    PY, "-m", "meshsec.agent.main",
                    "--controller", f"unix://{self.socket}",
                    "--node", host.name,
                    "--state-dir", str(agent_dir),
                    "--report-interval", "1",
                    "--backoff-max", "2",
                ]  # fmt: skip
                runtime = _runtime_reconciler()
                if runtime:
                    cmd += ["--reconciler", runtime]
                env = {
                    "MESHSEC_TOKEN": tok.token,  # in the environment, not in argv (ps shows argv)
                    "MESHSEC_CA_HASH": tok.ca_cert_sha256,
                    "MESHSEC_AGENT_STATE_DIR": str(agent_dir),  # where the runtime finds the node key
                }
                self.agents[host.name] = Proc(
                    f"agent {host.name}",
                    in_namespace(self.net.ns(host.name), cmd),
                    self.logs / f"{host.name}.log",
                    env,
                )
            self._wait_in_sync()
            s.detail = f"{len(self.agents)} agents connected over the unix socket, at version {self.version}"

    def _check_agents_alive(self) -> None:
        for proc in self.agents.values():
            if not proc.alive():
                raise StepFailed(
                    f"{proc.name} exited with code {proc.popen.returncode}: {proc.last_line()}", proc.log
                )

    def _wait_in_sync(self) -> None:
        deadline = time.monotonic() + self.opts.timeout
        while True:
            self._check_agents_alive()
            resp = self._admin("ListNodes", admin_pb2.ListNodesRequest())
            assert isinstance(resp, admin_pb2.ListNodesResponse)
            views = {v.node.name: v for v in resp.nodes}
            lagging = [
                n
                for n in self.agents
                if not (views.get(n) and views[n].connected and views[n].applied_version >= self.version)
            ]
            if not lagging:
                return
            if time.monotonic() > deadline:
                first = lagging[0]
                v = views.get(first)
                state = (
                    "not connected"
                    if not v or not v.connected
                    else f"at version {v.applied_version}, want {self.version}"
                )
                more = f" (and {len(lagging) - 1} more)" if len(lagging) > 1 else ""
                raise StepFailed(
                    f"{first} {state} after {self.opts.timeout:.0f}s{more}: {self.agents[first].last_line()}",
                    self.agents[first].log,
                )
            time.sleep(0.3)

    def _status(self) -> admin_pb2.GetStatusResponse:
        resp = self._admin("GetStatus", admin_pb2.GetStatusRequest())
        assert isinstance(resp, admin_pb2.GetStatusResponse)
        return resp

    def step_sas(self) -> None:
        ike, child = checks.count_sas(self.expected)
        with self.ui.step("every IKE and child SA up") as s:
            deadline = time.monotonic() + self.opts.timeout
            up_since: float | None = None  # wall clock when every SA was first seen up
            while True:
                self._check_agents_alive()
                status = self._status()
                problems = checks.sa_problems(self.expected, status, self.plan.modes())
                if problems:
                    up_since = None
                elif up_since is None:
                    up_since = time.time()
                elif min(_reported(status).values()) > up_since + SETTLE:
                    break  # still all up in reports made SETTLE seconds later: not a passing glimpse
                if time.monotonic() > deadline:
                    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                    first = problems[0]
                    raise StepFailed(
                        f"not up after {self.opts.timeout:.0f}s: {first.text}{more}",
                        self.agents[first.node].log,
                    )
                time.sleep(0.3)
            s.detail = (
                f"{_n(ike, 'IKE SA')}, {_n(child, 'child SA pair')}, as every agent reports them, "
                "each in its policy's mode"
            )
        for node, peer, children in checks.shared_ike_sas(status):
            kinds = " and ".join(f"{name} ({mode})" for name, mode in children)
            self.ui.line(f"  {node} ⇄ {peer}: one IKE SA carrying {kinds}")

    def _fresh_status(self, after: float, timeout: float = 6.0) -> admin_pb2.GetStatusResponse:
        """A status in which every node has reported since `after` (wall clock, seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self._status()
            reported = _reported(st)
            stale = [n for n in self.agents if reported.get(n, 0.0) < after]
            if not stale:
                return st
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"{stale[0]} has not reported its counters for {timeout:.0f}s", self.agents[stale[0]].log
                )
            time.sleep(0.3)

    def _sender_host(self, role: str) -> str:
        """The node whose child SA carries traffic from this namespace (a LAN's gateway, or the host)."""
        return next((lan.gateway for lan in self.plan.lans if lan.name == role), role)

    def step_pings(self) -> None:
        pairs = self.plan.ping_pairs()
        with self.ui.step("ping matrix") as s:
            before = checks.child_counters(self._status())
            outputs = traffic.ping_all([(self.net.ns(src), addr) for src, _, addr, _ in pairs], PINGS)
            after = checks.child_counters(self._fresh_status(time.time()))
            cells: dict[tuple[str, str], tuple[bool, str]] = {}
            failures = []
            for (src, dst, _, child), out in zip(pairs, outputs, strict=True):
                a, b = self._sender_host(src), self._sender_host(dst)
                _, got = checks.ping_received(out)
                if got < PINGS:
                    last = (out.strip().splitlines() or ["no output"])[-1]
                    extra = "" if "transmitted" in last else f" ({last})"  # e.g. "Network is unreachable"
                    cells[(src, dst)] = (False, f"✗ {got}/{PINGS}")
                    failures.append((a, f"{src} → {dst}: {got}/{PINGS} replies{extra}"))
                elif not checks.through_esp(before, after, a, b, child, PINGS):
                    cells[(src, dst)] = (False, "✗ clear")
                    why = f"answered, but not through ESP (child SA {child!r} {a} → {b} counted no packets)"
                    failures.append((a, f"{src} → {dst}: {why}"))
                else:
                    cells[(src, dst)] = (True, f"✓ {got}/{PINGS}")
            hosts = [h.name for h in self.plan.hosts]
            lans = [lan.name for lan in self.plan.lans]
            self.ui.matrix("hosts, transport mode (ESP between underlay addresses)", hosts, hosts, cells)
            self.ui.matrix("site LANs, tunnel mode (through the gateways)", lans, lans, cells)
            if failures:
                node, text = failures[0]
                more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
                raise StepFailed(
                    f"{len(failures)} of {len(pairs)} failed: {text}{more}", self.agents[node].log
                )
            s.detail = f"all {len(pairs)} pairs answered, every one through its ESP SA"

    def step_iperf(self) -> None:
        a, b = self.plan.lans[0], self.plan.lans[1]
        addr = b.address.split("/")[0]
        with self.ui.step(f"iperf3 {a.name} → {b.name}") as s:
            result = traffic.iperf(
                self.net.ns(a.name),
                self.net.ns(b.name),
                addr,
                IPERF_SECONDS,
                self.logs / "iperf3-server.log",
                self.helpers,
            )
            if not result.ok:
                raise StepFailed(f"iperf3: {result.error}", self.agents[a.gateway].log)
            s.detail = (
                f"{result.bits_per_second / 1e6:.0f} Mbit/s through the {a.gateway} ⇄ {b.gateway} tunnel "
                f"({result.bytes / 1e6:.0f} MB in {IPERF_SECONDS}s)"
            )

    def step_status(self) -> None:
        with self.ui.step("meshctl status"):
            ca, cert, key = self._admin_files()
            cmd = [
                PY, "-m", "meshsec.controller.cli.main",  # meshctl, whatever PATH sudo gives us
                "--controller", f"unix://{self.socket}",
                "--ca", str(ca), "--cert", str(cert), "--key", str(key),
                "status",
            ]  # fmt: skip
            res = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env=clean_env(),
            )
            if res.returncode != 0:
                raise StepFailed(f"meshctl status exited {res.returncode}: {res.stderr.strip()}")
        self.ui.block(res.stdout)

    def wait(self) -> None:
        self.ready = True
        lan_a = self.plan.lans[0]
        lan_b = self.plan.lans[1]
        self.ui.line("")
        self.ui.line("The mesh is up.  Try, as root, in another terminal:", "bold")
        self.ui.line(f"  MESHCTL_CONFIG={self.meshctl_config} meshctl status --watch")
        self.ui.line(f"  ip netns exec {self.net.ns(lan_a.name)} ping {lan_b.address.split('/')[0]}")
        self.ui.line(f"  curl -s http://127.0.0.1:{self.metrics_port}/metrics   # the controller's metrics")
        self.ui.line(f"  logs: {self.logs}")
        if self.opts.duration is None:
            self.ui.line("Ctrl-C stops the demo and removes everything it made.", "bold")
            deadline = float("inf")
        else:
            deadline = time.monotonic() + self.opts.duration
        while time.monotonic() < deadline:
            try:
                self._check_agents_alive()
                if self.controller is not None and not self.controller.alive():
                    raise StepFailed(
                        f"meshsec-controller exited with code {self.controller.popen.returncode}: "
                        f"{self.controller.last_line()}",
                        self.controller.log,
                    )
            except StepFailed as exc:
                exc.step = "running"
                self.ui.line(f"✗ running: {exc.reason}", "bold red")
                if exc.log:
                    self.ui.line(f"  log: {exc.log}", "red")
                raise
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))

    # --- teardown -----------------------------------------------------------------------------------

    def close(self, failed: bool) -> list[str]:
        """Stop every process, delete every namespace and the workdir (its logs are kept on failure).

        Returns what could not be cleaned up (empty = clean).
        """
        problems: list[str] = []
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        killed = stop_all([*self.helpers, *self.agents.values()], grace=5.0)
        if self.controller is not None:
            killed += stop_all([self.controller], grace=10.0)
        problems += [f"{name} did not stop on SIGTERM (killed)" for name in killed]
        problems += self.net.destroy()
        if failed or self.opts.keep_logs:
            etcd_log = self.state / "etcd.log"
            if etcd_log.exists():
                shutil.copy(etcd_log, self.logs / "etcd.log")
            for child in self.workdir.iterdir():  # keys, certificates, etcd data: never left behind
                if child != self.logs:
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.workdir.exists() and not (failed or self.opts.keep_logs):
            problems.append(f"could not remove {self.workdir}")
        return problems
