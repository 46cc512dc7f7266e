"""Real etcd servers for tests: one member or a 3-member cluster on 127.0.0.1 random ports.

Owns only the etcd processes it starts and their temp data dirs; every member is killed and its data
removed on close, pass or fail.  Members can be stopped and started again on the same ports and data
(what "etcd restarted under a running controller" needs).  Uses Debian's /usr/bin/etcd (3.4).
With ``tls=True`` clients must speak TLS and present a certificate of the cluster's own test CA
(``EtcdCluster.tls``: ca.crt, client.crt/.key), like the Kubernetes chart's etcd.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (small race window, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    """One etcd member: fixed ports and data dir across restarts."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    tls: EtcdTLS | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def healthy(self) -> bool:
        ctx = None
        if self.tls is not None:
            ctx = ssl.create_default_context(cafile=str(self.tls.ca_file))
            ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=0.5, context=ctx) as r:
                return b'"health":"true"' in r.read()
        except OSError:
            return False


@dataclass(frozen=True)
class EtcdTLS:
    """PEM files of a TLS cluster: its CA, the members' server certificate, a client certificate."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @staticmethod
    def make(directory: Path) -> EtcdTLS:
        from tests.support.pki import TestCA

        ca = TestCA("meshsec test etcd CA")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(ca.cert_pem)
        server = ca.issue("etcd", ["localhost"], ["127.0.0.1"]).write(directory, "server")
        client = ca.issue("meshsec-controller").write(directory, "client")
        return EtcdTLS(directory / "ca.crt", *server, *client)


class EtcdCluster:
    """`size` members (1 or 3) started together; use as a context manager."""

    def __init__(self, size: int = 1, *, tls: bool = False) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="meshsec-etcd-"))
        self._token = f"meshsec-test-{uuid.uuid4().hex[:8]}"
        self.tls = EtcdTLS.make(self._tmp / "pki") if tls else None
        self.members = [
            Member(
                f"m{i}", free_port(), free_port(), self._tmp / f"m{i}", self._tmp / f"m{i}.log", tls=self.tls
            )
            for i in range(size)
        ]
        self._started_once: set[str] = set()

    @property
    def endpoints(self) -> list[str]:
        """Client endpoints "127.0.0.1:port" of every member (running or not)."""
        return [m.endpoint for m in self.members]

    def _args(self, m: Member) -> list[str]:
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        state = "existing" if m.name in self._started_once else "new"
        return [
            ETCD,
            f"--name={m.name}",
            f"--data-dir={m.data_dir}",
            f"--listen-client-urls={m.client_url}",
            f"--advertise-client-urls={m.client_url}",
            f"--listen-peer-urls={m.peer_url}",
            f"--initial-advertise-peer-urls={m.peer_url}",
            f"--initial-cluster={cluster}",
            f"--initial-cluster-state={state}",
            f"--initial-cluster-token={self._token}",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--logger=zap",
            "--log-level=warn",
            *self._tls_args(),
        ]

    def _tls_args(self) -> list[str]:
        """Client TLS with client-certificate authentication (peers stay plain on 127.0.0.1)."""
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls.server_cert}",
            f"--key-file={self.tls.server_key}",
            f"--trusted-ca-file={self.tls.ca_file}",
            "--client-cert-auth",
        ]

    def start_member(self, i: int) -> None:
        m = self.members[i]
        assert m.proc is None or m.proc.poll() is not None, f"{m.name} already running"
        log = m.log_path.open("ab")
        m.proc = subprocess.Popen(self._args(m), stdout=log, stderr=log, start_new_session=True)
        log.close()
        self._started_once.add(m.name)

    def stop_member(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill one member (SIGKILL by default: a crash, not a clean shutdown)."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(m.proc.pid, sig)
            m.proc.wait(timeout=10)
        m.proc = None

    def wait_healthy(self, timeout: float = 15.0, members: list[int] | None = None) -> None:
        idx = range(len(self.members)) if members is None else members
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.members[i].healthy() for i in idx):
                return
            for i in idx:
                p = self.members[i].proc
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"etcd {self.members[i].name} exited: {self.log(i)[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"etcd not healthy after {timeout}s: {[self.log(i)[-1000:] for i in idx]}")

    def log(self, i: int) -> str:
        p = self.members[i].log_path
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self) -> EtcdCluster:
        for i in range(len(self.members)):
            self.start_member(i)
        self.wait_healthy()
        return self

    def restart_member(self, i: int) -> None:
        """Kill a member and start it again on the same ports and data."""
        self.stop_member(i)
        self.start_member(i)

    def close(self) -> None:
        for i in range(len(self.members)):
            with contextlib.suppress(Exception):
                self.stop_member(i)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
