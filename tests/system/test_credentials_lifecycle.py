"""The credential lifecycle across real agents in namespaces: renewal, CA rollover and revocation.

Real parts only: etcd, a `meshsec-controller serve` process (unix sockets, 9 s node certificates, a
1 s CA propagation time, singleton jobs on as by default), and three `meshsec-agent` processes with the
IKE/ESP runtime, each in its own namespace on one test bridge (198.18.0.1-3), full mesh, certificate
auth, IKE SAs rekeyed every few seconds.  The third node is called edge-c so that its name sorts
first: it is the IKE initiator towards both others, so after a restart it sets up new IKE SAs with
both, and after its revocation its attempts are real new IKE_SA_INITs + IKE_AUTHs that node-a and
node-b must refuse.  What an established SA does on renewal, rollover and revocation is decided in
agent/runtime/credentials.py.

- Renewal: a 100 pps ping node-a -> node-b loses nothing while both nodes renew twice, and their SA is
  never replaced; new IKE SAs (edge-c restarted) authenticate with the renewed certificates (the
  serials each agent logs for its peers).
- Rollover: `meshctl ca rotate` during the stream loses nothing through publish, switch, the renewals
  from the new CA, the old CA's retirement and IKE rekeys after it, and the SA is never replaced; a new
  IKE SA after the retirement (edge-c restarted) authenticates with new-CA certificates, checked
  against the new CA alone.
- Revocation: `meshctl node revoke edge-c` makes node-a and node-b DELETE their SAs with edge-c within
  a Sync round trip, their status shows the SA gone and why, a ping to edge-c fails, and edge-c's new
  IKE attempts are refused with AUTHENTICATION_FAILED (counted); node-a <-> node-b, resting on expired
  certificates the list cannot name, is re-authenticated and stays up.

The tests share one mesh (module fixture, torn down even on failure) and run in file order; each also
works alone.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from meshsec.agent.controlplane import DesiredStateCache
from meshsec.agent.controlplane.renewal import authority_key_id, signing_ca_key_id
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc, config_pb2, status_pb2

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster, free_port
from tests.support.netns import Namespace, Topology

pytestmark = pytest.mark.system

NODE_CERT_SECONDS = 9.0  # short, yet well above an agent start on two busy cores (up to ~5 s)
NODES = {"node-a": 1, "node-b": 2, "edge-c": 3}  # n: underlay 198.18.0.n, overlay 198.19.n.1
CHUNK = 200  # packets per ping run (2 s at 100 pps); loss is exact per run: ping waits for the last


def _overlay(node: str) -> str:
    return f"198.19.{NODES[node]}.1"


def _mesh_yaml() -> str:
    lines = ["apiVersion: meshsec.io/v1", "kind: Mesh", "nodes:"]
    for name, n in NODES.items():
        lines += [f"  - name: {name}", f'    endpoints: ["198.18.0.{n}"]', f"    subnets: [198.19.{n}.0/24]"]
    lines += [
        "profiles:",
        "  - name: fast",  # IKE SAs rekey every few seconds, also after the old CA is gone
        "    ike: {rekey: 5s, life: 8s}",
        "policies:",
        "  - name: all",
        "    topology: full-mesh",
        "    members: {all: true}",
        "    profile: fast",
    ]
    return "\n".join(lines) + "\n"


def _run(coro, timeout: float = 15):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _until(what: str, check: Callable[[], object], timeout: float, *agents: Agent) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {a.node}\n{a.log()[-3000:]}" for a in agents)
            raise AssertionError(f"not within {timeout}s: {what}\n{tails}")
        time.sleep(0.1)


def _stamp(line: str) -> float:
    """Wall time of a log line (the logging module's local asctime)."""
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _logged_at(log: str, text: str) -> float:
    """Wall time of the first log line containing `text`."""
    return _stamp(next(x for x in log.splitlines() if text in x))


def _cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):  # mid-swap during a renewal: read again
        return None


@dataclass
class Agent:
    """One `meshsec-agent` process with the runtime in namespace `ns`."""

    ns: Namespace
    node: str
    dir: Path
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dir / "agent.log").open("ab") as log:
            self.proc = self.ns.popen(self.argv, stdout=log, stderr=log, cwd=os.getcwd())

    def stop(self) -> None:
        """SIGTERM: the runtime sends DELETE for its IKE SAs before it exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(8)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self, start: int = 0) -> str:
        return (self.dir / "agent.log").read_text(errors="replace")[start:]

    def mark(self) -> int:
        return len(self.log())

    def cert(self) -> x509.Certificate | None:
        return _cert(self.dir / "node.pem")

    def desired(self) -> config_pb2.NodeConfig | None:
        try:
            return DesiredStateCache(self.dir / "desired.pb").load()
        except Exception:  # mid-write: read again
            return None

    def renewed_serials(self, start: int = 0) -> list[int]:
        return [
            int(s, 16) for s in re.findall(r"certificate renewed \(serial 0x([0-9a-f]+)\)", self.log(start))
        ]

    def peer_serials(self, peer: str, start: int = 0) -> list[int]:
        """Serials of the certificates `peer` authenticated with in the IKE SAs set up since `start`."""
        pattern = rf"peer {peer}: IKE SA established \([^;]*; peer certificate serial 0x([0-9a-f]+)\)"
        return [int(x, 16) for x in re.findall(pattern, self.log(start))]

    def cert_age(self) -> float:
        """Seconds since the agent last wrote its certificate (enrollment or renewal)."""
        try:
            return time.time() - (self.dir / "node.pem").stat().st_mtime
        except OSError:
            return math.inf

    def ike_failures(self, reason: str) -> int:
        """The agent's own counter, read from its metrics endpoint (loopback inside its namespace)."""
        url = "http://127.0.0.1:9451/metrics"
        code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=3).read().decode())"
        out = self.ns.run(sys.executable, "-c", code, check=False).stdout
        m = re.search(
            rf'meshsec_agent_ike_failures(?:_total)?\{{[^}}]*reason="{reason}"[^}}]*\}} ([0-9.e+]+)', out
        )
        return int(float(m.group(1))) if m else 0


@dataclass
class PingStream:
    """100 pps ping in back-to-back runs of CHUNK packets until stop(); each run's loss count is exact."""

    ns: Namespace
    dst: str
    runs: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PingStream:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CHUNK * 0.01 + 20)

    def _loop(self) -> None:
        while not self._stop.is_set():
            p = self.ns.popen(
                # -w: wait for every reply of the run (a late one is latency, not loss), up to 10 s
                [
                    "ping",
                    "-n",
                    "-q",
                    "-c",
                    str(CHUNK),
                    "-i",
                    "0.01",
                    "-w",
                    str(int(CHUNK * 0.01) + 10),
                    self.dst,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            out, _ = p.communicate(timeout=CHUNK * 0.01 + 15)
            self.runs.append(out.decode(errors="replace"))

    def totals(self) -> tuple[int, int]:
        sent = received = 0
        for out in self.runs:
            m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
            assert m, out
            sent, received = sent + int(m.group(1)), received + int(m.group(2))
        return sent, received

    def assert_no_loss(self, seconds: float) -> int:
        """Every packet answered, and `seconds` of stream sent (at >= 50 pps: ping slows down when the
        two shared cores are busy, and the runs have gaps of a process start)."""
        sent, received = self.totals()
        assert sent == received, f"lost {sent - received} of {sent}: " + " | ".join(
            " / ".join(o.strip().splitlines()[-2:]) for o in self.runs if " 0% packet loss" not in o
        )
        assert sent >= 50 * seconds, (sent, seconds)
        return sent


@dataclass
class Mesh:
    topo: Topology
    state: Path
    address: str  # the controller's TCP admin address (127.0.0.1)
    etcd: list[str]
    agents: dict[str, Agent]
    ctl: h.Proc

    def meshctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        admin = self.state / "admin"
        conn = ["--controller", self.address, "--ca", str(admin / "ca.pem")]
        conn += ["--cert", str(admin / "admin.pem"), "--key", str(admin / "admin-key.pem")]
        return subprocess.run(
            [sys.executable, "-m", "meshsec.controller.cli.main", *argv, *conn],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def ca(self) -> admin_pb2.CAStatus:
        async def get() -> admin_pb2.CAStatus:
            async with h.admin_channel(self.address, self.state) as ch:
                return await admin_pb2_grpc.AdminServiceStub(ch).GetCA(admin_pb2.GetCARequest(), timeout=5)

        return _run(get())

    def peer_status(self, node: str, peer: str) -> status_pb2.PeerStatus | None:
        async def get() -> admin_pb2.GetStatusResponse:
            async with h.admin_channel(self.address, self.state) as ch:
                stub = admin_pb2_grpc.AdminServiceStub(ch)
                return await stub.GetStatus(admin_pb2.GetStatusRequest(node=node), timeout=5)

        for n in _run(get()).nodes:
            for p in n.peers:
                if p.peer == peer:
                    return p
        return None

    def ping(self, src: str, dst: str, count: int = 3) -> subprocess.CompletedProcess[str]:
        return self.agents[src].ns.run(
            "ping", "-c", str(count), "-i", "0.2", "-W", "1", _overlay(dst), check=False
        )

    def wait_pairs(self, pairs: list[tuple[str, str]], marks: dict[str, int], timeout: float = 20) -> None:
        """Each (node, peer): a child SA installed in node's log since marks[node]."""

        def up() -> bool:
            return all(
                re.search(rf"peer {peer}: child \S+ installed", self.agents[n].log(marks.get(n, 0)))
                for n, peer in pairs
            )

        _until(f"child SAs {pairs}", up, timeout, *self.agents.values())

    def restart(self, node: str) -> dict[str, int]:
        """Restart an agent right after its next renewal (its certificate must outlive the restart);
        returns the log marks of every agent taken while it was down."""
        agent = self.agents[node]
        old = agent.cert()
        _until(
            f"{node}: a renewal",
            lambda: (c := agent.cert()) is not None and c != old,
            1.5 * NODE_CERT_SECONDS,
            agent,
        )
        agent.stop()
        marks = {n: a.mark() for n, a in self.agents.items()}
        agent.start()
        return marks


def _controller(state: Path, etcd: list[str], port: int) -> h.Proc:
    args = [
        sys.executable, "-m", "meshsec.controller.main", "serve",
        "--state-dir", str(state),
        "--etcd", ",".join(etcd),
        "--listen", f"127.0.0.1:{port}",
        "--socket", str(state / "r1.sock"),
        "--enroll-listen", "",
        "--enroll-socket", str(state / "r1-enroll.sock"),
        "--metrics-listen", "",
        "--replica", "r1",
        "--heartbeat", "0.5",
        "--agent-lease-ttl", "3",
        "--election-ttl", "2",
        "--node-cert-hours", str(NODE_CERT_SECONDS / 3600),
        "--ca-propagate", "1",
    ]  # fmt: skip
    return h.Proc(args, state / "r1.log")


def _agent(ns: Namespace, node: str, state: Path, work: Path, address: str) -> Agent:
    tok = _run(h.token(address, state, node))
    d = work / node
    d.mkdir()
    env = {
        "MESHSEC_TOKEN": tok.token,
        "MESHSEC_CA_HASH": tok.ca_cert_sha256,
        "MESHSEC_ENROLL_ADDRESS": f"unix://{state}/r1-enroll.sock",
        "MESHSEC_AGENT_STATE_DIR": str(d),
        "MESHSEC_TUN": "mscred0",
    }
    argv = [
        "env", *(f"{k}={v}" for k, v in env.items()),
        sys.executable, "-m", "meshsec.agent.main",
        "--controller", f"unix://{state}/r1.sock",
        "--node", node,
        "--state-dir", str(d),
        "--reconciler", "meshsec.agent.runtime.host:reconciler",
        "--backoff-max", "0.5",
        "--idle-timeout", "3",
        "--report-interval", "1",
    ]  # fmt: skip
    agent = Agent(ns, node, d, argv)
    agent.start()
    return agent


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-cred-", ignore_cleanup_errors=True) as tmp,
        EtcdCluster(1) as etcd,
        Topology("cred") as topo,
    ):
        work = Path(tmp)
        state = work / "ctl"
        _run(h.init_state(state, etcd.endpoints))
        port = free_port()
        ctl = _controller(state, etcd.endpoints, port)
        try:
            ctl.wait_log("serving on", 20)
            address = f"127.0.0.1:{port}"
            _run(h.apply(address, state, _mesh_yaml()))
            sw = topo.add("sw")
            sw.ip("link", "add", "br0", "type", "bridge", "forward_delay", "0")
            sw.ip("link", "set", "br0", "up")
            agents = {}
            for node, n in NODES.items():
                ns = topo.add(node)
                if_sw, _ = topo.link(sw, ns, [], [f"198.18.0.{n}/24"])
                sw.ip("link", "set", if_sw, "master", "br0")
                ns.ip("addr", "add", f"{_overlay(node)}/32", "dev", "lo")
                agents[node] = _agent(ns, node, state, work, address)
            m = Mesh(topo, state, address, etcd.endpoints, agents, ctl)
            m.wait_pairs([(x, y) for x in NODES for y in NODES if x != y], {})
            yield m
        finally:
            ctl.kill()


def test_renewals_under_a_100pps_stream_lose_nothing_and_new_sas_use_the_new_certificates(mesh: Mesh) -> None:
    a, b, c = mesh.agents["node-a"], mesh.agents["node-b"], mesh.agents["edge-c"]
    ma, mb = a.mark(), b.mark()
    t0 = time.monotonic()
    with PingStream(a.ns, _overlay("node-b")) as stream:
        _until(
            "two renewals of node-a and of node-b during the stream",
            lambda: len(a.renewed_serials(ma)) >= 2 and len(b.renewed_serials(mb)) >= 2,
            4 * NODE_CERT_SECONDS,
            a,
            b,
        )
    sent = stream.assert_no_loss(time.monotonic() - t0 - 3)
    assert "Traceback" not in a.log() + b.log()
    # no flap: the SA node-a <-> node-b was never replaced (IKE rekeys do not re-authenticate)
    assert "peer node-b: IKE SA established" not in a.log(ma), a.log(ma)[-2000:]
    assert "peer node-a: IKE SA established" not in b.log(mb), b.log(mb)[-2000:]

    # A new IKE SA (edge-c restarted; it initiates to both) authenticates with renewed certificates
    marks = mesh.restart("edge-c")
    mesh.wait_pairs([("edge-c", "node-a"), ("edge-c", "node-b"), ("node-a", "edge-c")], marks)
    assert set(c.peer_serials("node-a", marks["edge-c"])) & set(a.renewed_serials(ma))
    assert set(c.peer_serials("node-b", marks["edge-c"])) & set(b.renewed_serials(mb))
    assert mesh.ping("node-a", "edge-c").returncode == 0
    during = len(a.renewed_serials(ma)), len(b.renewed_serials(mb))
    print(f"renewal: {sent} pings, 0 lost, while node-a renewed {during[0]}x and node-b {during[1]}x")


def test_ca_rollover_under_a_100pps_stream_loses_nothing_and_new_sas_use_the_new_ca(mesh: Mesh) -> None:
    agents = mesh.agents
    a, c = agents["node-a"], agents["edge-c"]
    old_ca = mesh.ca()
    assert old_ca.phase == "stable" and len(old_ca.cas) == 1
    ma = a.mark()
    t0 = time.monotonic()
    with PingStream(a.ns, _overlay("node-b")) as stream:
        # Best effort: rotate when no node renews around the switch (1-2 s later; renewals come at 2/3
        # of the lifetime plus jitter).  A renewal that straddles the switch gets an old-CA
        # certificate, and the agent's renewer then never retries (agent/controlplane/renewal.py,
        # reported), so that node's certificate runs out.  Phases may not allow it: after 10 s, rotate.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
            ag.cert_age() < NODE_CERT_SECONDS * 0.45 for ag in agents.values()
        ):
            time.sleep(0.05)
        rotate = mesh.meshctl("ca", "rotate")
        assert rotate.returncode == 0, rotate.stderr
        _until("switch to the new CA", lambda: mesh.ca().phase == "switched", 15, a)
        new_ca = mesh.ca()
        # new admin credentials from the signing CA (the old admin.pem dies with the old CA)
        _run(h.init_state(mesh.state, mesh.etcd))

        def from_new_ca(ag: Agent) -> bool:
            cfg, cert = ag.desired(), ag.cert()
            if cfg is None or cert is None:
                return False
            signing = signing_ca_key_id(cfg.local.trusted_ca_pem)
            return signing is not None and authority_key_id(cert) == signing

        _until("every agent renewed from the new CA", lambda: all(map(from_new_ca, agents.values())), 10, a)
        _until(
            "the old CA retired",
            lambda: (s := mesh.ca()).phase == "stable" and len(s.cas) == 1,
            NODE_CERT_SECONDS + 15,
            a,
        )

        def trusts_only_new(ag: Agent) -> bool:
            cfg = ag.desired()
            return (
                cfg is not None
                and len(x509.load_pem_x509_certificates(cfg.local.trusted_ca_pem.encode())) == 1
            )

        _until("agents trust only the new CA", lambda: all(map(trusts_only_new, agents.values())), 5, a)
        rekeys = mesh.peer_status("node-a", "node-b")
        assert rekeys is not None
        _until(
            "an IKE rekey node-a <-> node-b after the retirement (the SA set up under the old CA)",
            lambda: (p := mesh.peer_status("node-a", "node-b")) is not None and p.rekeys > rekeys.rekeys,
            10,
            a,
        )
    sent = stream.assert_no_loss(time.monotonic() - t0 - 3)
    assert "peer node-b: IKE SA established" not in a.log(ma), a.log(ma)[-2000:]  # never replaced
    assert new_ca.cas[0].sha256 != old_ca.cas[0].sha256
    assert mesh.ca().cas[0].sha256 == new_ca.cas[0].sha256
    p = mesh.peer_status("node-a", "node-b")
    assert p is not None and p.ike_state == status_pb2.IKE_SA_STATE_ESTABLISHED

    # A new IKE SA after the retirement: edge-c's certificate (new CA) checked against the new CA alone
    marks = mesh.restart("edge-c")
    mesh.wait_pairs([("edge-c", "node-a"), ("edge-c", "node-b"), ("node-a", "edge-c")], marks)
    cert_c, cfg_a = c.cert(), a.desired()
    assert cert_c is not None and cfg_a is not None
    assert authority_key_id(cert_c) == signing_ca_key_id(cfg_a.local.trusted_ca_pem)
    assert set(a.peer_serials("edge-c", marks["node-a"])) & {*c.renewed_serials(), cert_c.serial_number}
    assert mesh.ping("node-a", "edge-c").returncode == 0
    assert mesh.ping("node-b", "edge-c").returncode == 0
    print(f"rollover: {sent} pings, 0 lost")


def test_revoked_node_is_cut_off_within_a_sync_round_trip(mesh: Mesh) -> None:
    c = mesh.agents["edge-c"]
    peers = ("node-a", "node-b")
    # Revoke while edge-c's control connection and IKE SAs use the certificate it had at a restart
    # right after a renewal, before its next renewal: the revocation then lists that certificate, so
    # edge-c's IKE attempts are refused for the revocation (not for expiry), and no renewal races the
    # revocation.  The controller gets both wrong otherwise (reported: a connection set up with a
    # certificate that has expired since, or a renewal in flight, lets a revoked node renew).
    for _ in range(3):
        restarted = mesh.restart("edge-c")
        cert = c.cert()  # the one its control connection and IKE SAs use
        mesh.wait_pairs([("edge-c", "node-a"), ("edge-c", "node-b"), ("node-a", "edge-c")], restarted)
        if c.cert_age() < NODE_CERT_SECONDS * 2 / 3 - 1.5 and c.cert() == cert:  # its renewal: at 2/3
            break
    else:
        raise AssertionError("edge-c took too long to come up after a restart, three times")
    assert mesh.ping("node-a", "edge-c", count=1).returncode == 0
    before = {n: mesh.agents[n].ike_failures("AUTHENTICATION_FAILED") for n in peers}
    marks = {n: ag.mark() for n, ag in mesh.agents.items()}
    wall0 = time.time()
    revoke = mesh.meshctl("node", "revoke", "edge-c")
    assert revoke.returncode == 0, revoke.stderr
    assert "revoked edge-c certificate sha256:" in revoke.stdout
    for n in peers:
        _until(
            f"{n} deletes its SA with edge-c",
            lambda n=n: (
                "peer edge-c: deleting IKE SA: peer certificate revoked" in mesh.agents[n].log(marks[n])
            ),
            3,
            mesh.agents[n],
        )
    logs = [mesh.agents[n].log(marks[n]) for n in peers]
    cut_at = max(_logged_at(x, "deleting IKE SA: peer certificate revoked") for x in logs)
    revoked_at = _logged_at(mesh.ctl.log(), "node 'edge-c' revoked")  # the etcd write
    assert cut_at - revoked_at < 1.0, (revoked_at, cut_at)  # one Sync round trip (+ an IKE exchange)
    assert "deleted by peer" in c.log(marks["edge-c"])
    for n in peers:  # edge-c initiates again and both refuse it (AUTHENTICATION_FAILED, counted)
        _until(
            f"{n} refuses edge-c's new IKE attempt",
            lambda n=n: re.search(
                rf"peer {n}: AUTHENTICATION_FAILED: the responder rejected our AUTH", c.log(marks["edge-c"])
            ),
            6,
            mesh.agents[n],
            c,
        )
        assert re.search(
            r"peer edge-c: AUTHENTICATION_FAILED: certificate .* revoked", mesh.agents[n].log(marks[n])
        )
        assert mesh.agents[n].ike_failures("AUTHENTICATION_FAILED") > before[n]
    assert mesh.ping("node-a", "edge-c").returncode != 0
    for n in peers:

        def gone(n: str = n) -> bool:
            p = mesh.peer_status(n, "edge-c")
            return (
                p is not None
                and p.ike_state != status_pb2.IKE_SA_STATE_ESTABLISHED
                and "revoked" in p.last_error
            )

        _until(f"{n}'s status: no SA with edge-c, and why", gone, 5, mesh.agents[n])
    # edge-c stays out: until its renewal is refused (or its certificate ran out, after which it
    # cannot even connect) it gets no new certificate, and no SA with it comes up again
    assert cert is not None
    expiry = cert.not_valid_after_utc.timestamp()
    _until(
        "edge-c's renewal refused, or its certificate expired",
        lambda: "renewal failed (PERMISSION_DENIED" in c.log(marks["edge-c"]) or time.time() > expiry + 0.5,
        NODE_CERT_SECONDS,
        c,
    )
    got = [x for x in c.log(marks["edge-c"]).splitlines() if "certificate renewed (serial" in x]
    assert all(_stamp(x) < revoked_at for x in got), got
    for n in peers:
        assert "peer edge-c: IKE SA established" not in mesh.agents[n].log(marks[n]), mesh.agents[n].log()[
            -3000:
        ]
    # the SA node-a <-> node-b rested on long-expired certificates (seconds-long lifetimes), which the
    # revocation list cannot name: the new revocation had it re-authenticated, make-before-break
    assert "peer node-b: its certificate expired; re-authenticating" in mesh.agents["node-a"].log(
        marks["node-a"]
    )
    mesh.wait_pairs([("node-a", "node-b"), ("node-b", "node-a")], marks, 10)
    assert mesh.ping("node-a", "node-b").returncode == 0
    # which rule cut it depends on timing: the revoked fingerprint itself, or (the SA resting on an
    # expired certificate) the refusal of edge-c's current one; both are pinned in the unit tests
    how = "refused current cert" if any("refused now" in x for x in logs) else "fingerprint"
    print(
        f"revocation: both peers sent DELETE {cut_at - revoked_at:.2f}s after the controller stored it, "
        f"{cut_at - wall0:.2f}s after `meshctl node revoke` started ({how})"
    )
