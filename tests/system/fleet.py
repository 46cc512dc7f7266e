"""A whole meshsec fleet for system tests: 3-member etcd, 2 controller replicas, N agents in namespaces.

Owns every part it starts and removes all of them on ``close()``, pass or fail: the etcd members
(tests/support/etcd.py), the ``meshsec-controller serve`` replicas (one state dir, each replica with its
own unix sockets for the Agent API and enrollment, admin/metrics on 127.0.0.1 random ports), one
network namespace per host joined by a bridge in a "switch" namespace (tests/support/netns.py), and
one ``meshsec-agent --reconciler meshsec.agent.runtime.host:reconciler`` per host, reaching the
controllers over their unix sockets (a comma-separated target list, so it fails over between them).
The mesh is applied with the real ``meshctl apply``.  Must not touch anything it did not create.

Addresses (network rule): host i has underlay 198.18.0.i/24 on its eth0 and the overlay address
198.19.i.1/32 on lo, inside its subnet 198.19.i.0/24; the hosts are a full mesh in tunnel mode, so
``ping 198.19.j.1`` from host i goes through the i-j tunnel.  Health is read from each agent's own
/metrics endpoint (127.0.0.1:9451 inside its namespace, reached by a socket opened in that namespace),
which works with every controller down; ``status_json()`` is ``meshctl status -o json``.

Agents and replicas are started through the demo's launcher (controller/demo/nsexec.py): it enters
the namespace and execs (so a pid is the agent's own) with PR_SET_PDEATHSIG, so none outlives a test
process killed before its teardown.

Start-up is parallel where it can be (controllers boot while the namespaces are built; agents start
together) because every test that builds a fleet pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from meshsec.controller.demo.nsexec import ROOT

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster, free_port
from tests.support.netns import Namespace, Topology
from tests.system.fleet_parts import (
    AGENT_METRICS_PORT,
    ESTABLISHED,
    INSTALLED,
    MESHCTL,
    PY,
    RUNTIME,
    Agent,
    Controller,
    FleetError,
    Member,
    PingResult,
    PingStream,
    ns_connect,
    parse_metrics,
    wait_until,
)

__all__ = [
    "AGENT_METRICS_PORT",
    "ESTABLISHED",
    "INSTALLED",
    "MESHCTL",
    "Agent",
    "Controller",
    "Fleet",
    "FleetError",
    "Member",
    "PingResult",
    "PingStream",
    "ns_connect",
    "parse_metrics",
    "wait_until",
]


def _run(coro, timeout: float = 15):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -------------------------------------------------------------------------------------------- fleet


class Fleet:
    """The fleet; ``with Fleet(4) as f:`` or ``start()`` / ``close()``.  See the module docstring."""

    def __init__(
        self,
        nodes: int = 4,
        *,
        replicas: int = 2,
        etcd_members: int = 3,
        spec_extra: str = "",
        policy_extra: Iterable[str] = (),
        tag: str = "fl",
    ) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="meshsec-fleet-"))
        self.state = self.work / "ctl"
        self.etcd = EtcdCluster(etcd_members)
        self.topo = Topology(tag)
        self.switch: Namespace | None = None
        self.controllers: dict[str, Controller] = {
            f"r{i}": Controller(f"r{i}", self.state, free_port(), free_port(), free_port())
            for i in range(1, replicas + 1)
        }
        self.members: dict[str, Member] = {f"node-{i}": Member(f"node-{i}", i) for i in range(1, nodes + 1)}
        self.agents: dict[str, Agent] = {}
        self.spec_extra = spec_extra  # top-level YAML appended to mesh.yaml (e.g. a profiles: section)
        self.policy_extra = list(policy_extra)  # more lines of the full-mesh policy, e.g. "profile: fast"
        self.version = 0  # etcd revision of the last apply
        self.started_in = 0.0  # seconds from start() to every SA up
        self.apply_started = 0.0  # time.monotonic() when the last successful `meshctl apply` was run
        self.apply_returned = 0.0  # ... and when it returned
        self._tokens: dict[str, tuple[str, str]] = {}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self, timeout: float = 30.0) -> Fleet:
        """etcd → init → replicas (booting while the network is built) → apply → agents → every SA up."""
        t0 = time.monotonic()
        self.etcd.start()
        _run(h.init_state(self.state, self.etcd.endpoints))
        for c in self.controllers.values():
            self._spawn_controller(c)
        self.switch = self.topo.add("sw")
        self.switch.ip("link", "add", "br0", "type", "bridge")
        self.switch.ip("link", "set", "br0", "up")
        for name in self.members:
            self.new_host(name)
        for c in self.controllers.values():
            self._wait_controller(c)
        self.apply()
        for name in self.members:
            self.start_agent(name)
        self.wait_all_sas_up(timeout)
        self.started_in = time.monotonic() - t0
        return self

    def close(self) -> None:
        """Stop every agent (SIGKILL: fast, the namespaces go anyway), replica and etcd member; remove
        the namespaces and the work dir."""
        for a in self.agents.values():
            self._kill(a)
        for c in self.controllers.values():
            if c.proc is not None:
                with contextlib.suppress(Exception):
                    c.proc.kill()
        with contextlib.suppress(Exception):
            self.topo.close()
        with contextlib.suppress(Exception):
            self.etcd.close()
        shutil.rmtree(self.work, ignore_errors=True)

    # ------------------------------------------------------------------ mesh.yaml and meshctl
    def mesh_yaml(self) -> str:
        lines = ["apiVersion: meshsec.io/v1", "kind: Mesh", "nodes:"]
        for m in self.members.values():
            lines += m.yaml()
        lines += ["policies:", "  - name: all", "    topology: full-mesh", "    members: {all: true}"]
        lines += [f"    {x}" for x in self.policy_extra]
        text = "\n".join(lines) + "\n"
        return text + (self.spec_extra.rstrip() + "\n" if self.spec_extra else "")

    def live_controller(self) -> Controller:
        for c in self.controllers.values():
            if c.alive():
                return c
        raise FleetError("no controller replica is running")

    def meshctl(
        self, *args: str, check: bool = True, timeout: float = 30, controller: Controller | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the real meshctl against a live replica's admin port (127.0.0.1)."""
        c = controller or self.live_controller()
        admin = self.state / "admin"
        argv = [
            *MESHCTL, "--controller", c.admin,
            "--ca", str(admin / "ca.pem"),
            "--cert", str(admin / "admin.pem"),
            "--key", str(admin / "admin-key.pem"),
            *args,
        ]  # fmt: skip
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise FleetError(f"meshctl {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
        return res

    def apply(self, yaml_text: str | None = None, retry_for: float = 10.0) -> int:
        """``meshctl apply -f mesh.yaml`` of the fleet's members (or `yaml_text`); returns the new
        version (read back with GetSpec).  Retries while no replica answers yet (etcd/replica restarts)."""
        path = self.work / "mesh.yaml"
        path.write_text(self.mesh_yaml() if yaml_text is None else yaml_text)
        deadline = time.monotonic() + retry_for
        while True:
            try:
                self.apply_started = time.monotonic()
                self.meshctl("apply", "-f", str(path))
                self.apply_returned = time.monotonic()
                break
            except (FleetError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        self.version = self.spec_version()
        return self.version

    def spec_version(self) -> int:
        from meshsec.api.v1 import admin_pb2, admin_pb2_grpc

        async def get() -> int:
            async with h.admin_channel(self.live_controller().admin, self.state) as ch:
                resp = await admin_pb2_grpc.AdminServiceStub(ch).GetSpec(
                    admin_pb2.GetSpecRequest(), timeout=10
                )
                return int(resp.version)

        return int(_run(get()))

    def status_json(self) -> dict:  # type: ignore[type-arg]
        """``meshctl status -o json``, parsed."""
        return json.loads(self.meshctl("status", "-o", "json").stdout)  # type: ignore[no-any-return]

    def status_problems(self, status: dict) -> list[str]:  # type: ignore[type-arg]
        """What in a ``meshctl status -o json`` is not "every member pair established with its child
        SAs installed, every node connected" (empty = all well)."""
        problems = []
        nodes = {n["node"]: n for n in status.get("nodes", [])}
        for name in self.members:
            n = nodes.get(name)
            if n is None:
                problems.append(f"{name}: no status")
                continue
            if not n.get("connected"):
                problems.append(f"{name}: not connected")
            peers = {p["peer"]: p for p in n.get("peers", [])}
            for peer in sorted(self.expected_peers(name)):
                p = peers.get(peer, {})
                children = [c.get("state") for c in p.get("children", [])]
                if p.get("ikeState") != ESTABLISHED or not children or set(children) != {INSTALLED}:
                    problems.append(f"{name}->{peer}: {p.get('ikeState', 'missing')} {children}")
        return problems

    def wait_status_up(self, timeout: float = 10.0) -> dict:  # type: ignore[type-arg]
        """Poll ``meshctl status -o json`` until it shows every pair up; returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status_json()
            problems = self.status_problems(status)
            if not problems:
                return status
            if time.monotonic() > deadline:
                raise FleetError(f"`meshctl status` not all up after {timeout:.0f}s: {'; '.join(problems)}")
            time.sleep(0.3)

    # ------------------------------------------------------------------ hosts and agents
    def new_host(self, name: str, *, attach: bool = True) -> Namespace:
        """The namespace of member `name`: overlay address on lo and (attach) eth0 on the switch.

        With attach=False the caller wires the underlay itself (e.g. behind a NAT namespace)."""
        m = self.members[name]
        ns = self.topo.add(name)
        ns.ip("addr", "add", f"{m.overlay}/32", "dev", "lo")
        if attach:
            assert self.switch is not None
            sw_if, _ = self.topo.link(self.switch, ns, [], [f"{m.underlay}/24"])
            self.switch.ip("link", "set", sw_if, "master", "br0")
        c = list(self.controllers.values())
        k = (m.index - 1) % len(c)  # spread the agents over the replicas
        order = c[k:] + c[:k]
        self.agents[name] = Agent(
            name,
            ns,
            self.work / "agents" / name,
            [x.target for x in order],
            "",
        )
        return ns

    def token(self, name: str) -> tuple[str, str]:
        if name not in self._tokens:
            tok = _run(h.token(self.live_controller().admin, self.state, name))
            self._tokens[name] = (tok.token, tok.ca_cert_sha256)
        return self._tokens[name]

    def start_agent(self, name: str) -> Agent:
        """Start (or restart, same state dir) the agent of `name` in its namespace."""
        a = self.agents[name]
        assert not a.alive(), f"agent {name} already running"
        a.dir.mkdir(parents=True, exist_ok=True)
        enroll = a.enroll or f"unix://{self.live_controller().enroll_socket}"
        env = {"MESHSEC_AGENT_STATE_DIR": str(a.dir), "MESHSEC_ENROLL_ADDRESS": enroll}
        if not (a.dir / "node.pem").exists():
            token, ca_hash = self.token(name)
            env |= {"MESHSEC_TOKEN": token, "MESHSEC_CA_HASH": ca_hash}  # environment, never argv
        argv = [
            *_launcher(a.ns.name),
            PY, "-m", "meshsec.agent.main",
            "--controller", ",".join(a.targets),
            "--node", name,
            "--state-dir", str(a.dir),
            "--reconciler", RUNTIME,
            "--metrics-listen", f"127.0.0.1:{AGENT_METRICS_PORT}",
            "--backoff-max", "0.5",
            "--idle-timeout", "3",
            "--report-interval", "1",
        ]  # fmt: skip
        with a.log_path.open("ab") as log:
            a.starts += 1
            log.write(f"==== fleet: start #{a.starts} at {time.time():.3f}\n".encode())
            log.flush()
            a.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**_clean_env(), **env},
            )
        return a

    def kill_agent(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Signal the agent and wait for it to exit; returns its exit code."""
        a = self.agents[name]
        if a.proc is None:
            return None
        if a.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(a.proc.pid, sig)
            try:
                a.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill(a)
        code = a.proc.returncode
        a.proc = None
        return code

    def _kill(self, a: Agent) -> None:
        if a.proc is not None and a.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(a.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                a.proc.wait(5)

    def add_node(self, name: str, *, start: bool = True, wait_connected: float = 15.0) -> Member:
        """A new member with the next free index: its namespace and agent first (the agent enrolls and
        holds a Sync stream before the spec names it, as a provisioned host does), then
        ``meshctl apply``.  Returns the member; ``fleet.version`` is the applied version."""
        index = max(m.index for m in self.members.values()) + 1
        m = Member(name, index)
        self.members[name] = m
        self.new_host(name)
        if start:
            a = self.start_agent(name)
            wait_until(
                lambda: "connected to controller" in a.log() or not a.alive(),
                wait_connected,
                f"agent {name} connected",
            )
            if not a.alive():
                raise FleetError(f"agent {name} exited:\n{a.log()[-3000:]}")
        self.apply()
        return m

    def remove_node(self, name: str, *, stop: bool = True) -> None:
        """Drop the member from mesh.yaml and apply; (stop) then stop its agent and delete its namespace."""
        del self.members[name]
        self.apply()
        if stop:
            self.discard_host(name)

    def discard_host(self, name: str) -> None:
        a = self.agents.pop(name)
        self._kill(a)
        ns = self.topo.namespaces.pop(name)
        ns.kill_all()
        subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True)

    # ------------------------------------------------------------------ controllers and etcd
    def _spawn_controller(self, c: Controller) -> None:
        c.proc = h.Proc([*_launcher(None), *c.argv(self.etcd.endpoints)], c.log_path)

    def _wait_controller(self, c: Controller, timeout: float = 20.0) -> None:
        assert c.proc is not None
        wait_until(
            lambda: "serving on" in c.proc.log() or _dead(c),  # type: ignore[union-attr]
            timeout,
            f"controller {c.name} serving",
        )
        if _dead(c):
            raise FleetError(f"controller {c.name} exited: {c.proc.log()[-2000:]}")

    def kill_controller(self, name: str, sig: int = signal.SIGKILL) -> None:
        c = self.controllers[name]
        if c.proc is not None and c.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.proc.popen.pid, sig)
            c.proc.popen.wait(10)

    def start_controller(self, name: str, timeout: float = 20.0) -> Controller:
        """Start a replica again (same ports, sockets, log) and wait until it serves."""
        c = self.controllers[name]
        assert not c.alive(), f"controller {name} already running"
        before = c.log_path.read_text(errors="replace").count("serving on") if c.log_path.exists() else 0
        c.socket.unlink(missing_ok=True)
        c.enroll_socket.unlink(missing_ok=True)
        self._spawn_controller(c)
        assert c.proc is not None
        wait_until(
            lambda: c.proc.log().count("serving on") > before or _dead(c),  # type: ignore[union-attr]
            timeout,
            f"controller {name} serving again",
        )
        if _dead(c):
            raise FleetError(f"controller {name} exited: {c.proc.log()[-2000:]}")
        return c

    def kill_etcd(self, i: int) -> None:
        self.etcd.stop_member(i)

    def start_etcd(self, i: int, timeout: float = 15.0) -> None:
        self.etcd.start_member(i)
        self.etcd.wait_healthy(timeout)

    def _live_etcd(self) -> list[str]:
        return [m.endpoint for m in self.etcd.members if m.proc is not None and m.proc.poll() is None]

    def etcdctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """etcdctl (v3 API) against the running members."""
        return subprocess.run(
            ["etcdctl", f"--endpoints={','.join(self._live_etcd())}", *args],
            capture_output=True, timeout=10, check=False, env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip

    def etcd_leader(self) -> int:
        """Index (in fleet.etcd.members) of the current raft leader."""
        res = self.etcdctl("endpoint", "status", "-w", "json")
        for st in json.loads(res.stdout or b"[]"):
            if st["Status"]["leader"] == st["Status"]["header"]["member_id"]:
                return next(i for i, m in enumerate(self.etcd.members) if st["Endpoint"].endswith(m.endpoint))
        raise FleetError(f"no etcd leader: {res.stdout[:500]!r} {res.stderr[:500]!r}")

    def connected_replicas(self) -> dict[str, str]:
        """node → the replica holding its Sync stream, as the replicas record it in etcd."""
        res = self.etcdctl("get", "--prefix", "/meshsec/v1/connected/")
        lines = res.stdout.decode(errors="replace").splitlines()
        out = {}
        for key, value in zip(lines[::2], lines[1::2], strict=False):
            with contextlib.suppress(ValueError, KeyError):
                out[key.rsplit("/", 1)[1]] = json.loads(value)["replica"]
        return out

    def agent_targets(self) -> dict[str, str]:
        """node → the controller target its agent last logged "connected to" (the agent's view)."""
        out = {}
        for name, a in self.agents.items():
            found = re.findall(r"connected to controller (\S+)", a.log())
            if found:
                out[name] = found[-1]
        return out

    # ------------------------------------------------------------------ health and traffic
    def expected_peers(self, name: str) -> set[str]:
        return {n for n in self.members if n != name}

    def sa_matrix(self) -> dict[str, set[str] | None]:
        """node → peers it has up (None: its agent does not answer)."""
        return {name: a.peers_up() for name, a in self.agents.items() if name in self.members}

    def missing_sas(self) -> list[str]:
        out = []
        for name, up in self.sa_matrix().items():
            if up is None:
                out.append(f"{name}: agent not answering")
                continue
            missing = self.expected_peers(name) - up
            if missing:
                out.append(f"{name}: {sorted(missing)} not up")
        return out

    def wait_all_sas_up(self, timeout: float = 20.0) -> float:
        """Wait until every member's agent has every other member up; returns the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            dead = [n for n, a in self.agents.items() if n in self.members and a.proc and not a.alive()]
            if dead:
                raise FleetError(f"agent {dead[0]} exited:\n{self.agents[dead[0]].log()[-3000:]}")
            missing = self.missing_sas()
            if not missing:
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise FleetError(f"SAs not up after {timeout:.0f}s: {'; '.join(missing)}")
            time.sleep(0.1)

    def ping_stream(self, src: str, dst: str, pps: int = 100, seconds: float = 5.0) -> PingStream:
        """Start a background ping from `src`'s overlay address to `dst`'s (through their tunnel)."""
        return PingStream(
            self.agents[src].ns, self.members[src].overlay, self.members[dst].overlay, pps, seconds
        )

    def ping(self, src: str, dst: str, count: int = 3) -> PingResult:
        return self.ping_stream(src, dst, pps=20, seconds=count / 20).result()

    # ------------------------------------------------------------------ diagnostics
    def dump_logs(self, tail: int = 4000) -> str:
        """The end of every log (agents, replicas, etcd), for a failed test's report."""
        parts = []
        for c in self.controllers.values():
            text = c.log_path.read_text(errors="replace") if c.log_path.exists() else ""
            parts.append(f"===== controller {c.name} ({c.log_path})\n{text[-tail:]}")
        for name, a in self.agents.items():
            parts.append(f"===== agent {name} ({a.log_path})\n{a.log()[-tail:]}")
        for i, m in enumerate(self.etcd.members):
            parts.append(f"===== etcd {m.name}\n{self.etcd.log(i)[-1000:]}")
        return "\n".join(parts)


def _clean_env() -> dict[str, str]:
    """Our environment without MESHSEC_*/MESHCTL_* settings (one left in a shell must not steer an agent)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MESHSEC_", "MESHCTL_"))}


def _launcher(namespace: str | None) -> list[str]:
    """The demo's launcher: enter `namespace` (None: stay), tie the child's life to this test process
    (PR_SET_PDEATHSIG), exec -- so the pid is the agent's or controller's own, and nothing outlives a
    test run killed before its teardown."""
    return [PY, "-m", "meshsec.controller.demo.nsexec", namespace or ROOT, str(os.getpid()), "--"]


def _dead(c: Controller) -> bool:
    return c.proc is not None and c.proc.popen.poll() is not None
