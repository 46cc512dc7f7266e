"""EmbeddedEtcd: the single-member etcd a controller runs for itself when given no --etcd endpoints.

Owns the etcd child process: data under <state-dir>/etcd, client and peer URLs on 127.0.0.1 only
(configured or random ports, kept across restarts so clients reconnect), restarted with backoff when
it dies.  It must not touch keys: the Store does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
from pathlib import Path

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the controller dies, so a killed controller leaves no etcd behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EmbeddedEtcd:
    """start() waits until etcd answers; stop() kills it; in between a supervisor restarts it."""

    def __init__(
        self, data_dir: Path, *, client_port: int = 0, peer_port: int = 0, binary: str | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self.client_port = client_port or _free_port()
        self.peer_port = peer_port or _free_port()
        self.binary = binary or shutil.which("etcd") or "/usr/bin/etcd"
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def _args(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            "--name=meshsec",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=meshsec={peer}",
            "--logger=zap",
            "--log-level=error",
            # Keep a day of history so agents can resume with deltas after an outage.
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=24h",
        ]

    async def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_file = (self.data_dir.parent / "etcd.log").open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.binary,
                *self._args(),
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log_file.close()
        await self._wait_ready()

    async def _wait_ready(self, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                raise RuntimeError(
                    f"embedded etcd exited with {self._proc.returncode}; see {self.data_dir.parent}/etcd.log"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.client_port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"embedded etcd did not start within {timeout:.0f}s")

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="etcd-supervisor")
        log.info("embedded etcd on %s, data in %s", self.endpoint, self.data_dir)

    async def _supervise(self) -> None:
        delay = 0.2
        while True:
            assert self._proc is not None
            code = await self._proc.wait()
            log.warning("embedded etcd exited (%s); restarting", code)
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                self.restarts += 1
                delay = 0.2
            except (OSError, RuntimeError) as exc:
                log.warning("embedded etcd restart failed: %s", exc)
                delay = min(delay * 2, 5.0)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        self._proc = None
