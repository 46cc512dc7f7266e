"""Processes the demo starts: the controller (root namespace) and agents, ping, iperf3 (in namespaces).

Owns their lifecycle only: start with output to a log file, in their own session (so Ctrl-C reaches
the demo alone and the demo stops them in order: agents first, so they can send IKE DELETEs, then the
controller, which stops its etcd), wait for a log line, stop (SIGTERM, then SIGKILL).  Every process
gets PR_SET_PDEATHSIG through the nsexec launcher (or, in the root namespace, through the same
launcher with no namespace switch), so none outlives a demo killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .nsexec import ROOT

PY = sys.executable


class ProcessFailed(Exception):
    """A process exited or did not reach an expected state; `log` is its log file."""

    def __init__(self, message: str, log: Path | None) -> None:
        super().__init__(message)
        self.log = log


def in_namespace(namespace: str | None, cmd: Sequence[str]) -> list[str]:
    """The argv that runs `cmd` inside `namespace` (None: the root one) via the launcher (see nsexec)."""
    return [PY, "-m", "meshsec.controller.demo.nsexec", namespace or ROOT, str(os.getpid()), "--", *cmd]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without MESHSEC_*/MESHCTL_* settings, plus `extra`.

    The controller, agents and meshctl read their defaults from such variables; one left over in the
    user's shell (MESHSEC_ETCD, say) must not point the demo at a real deployment.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHSEC_", "MESHCTL_"))}
    env.update(extra or {})
    return env


class Proc:
    """One long-running child; output (stdout and stderr) goes to `log`."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.log = log
        full_env = clean_env(env)
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def last_line(self) -> str:
        lines = [ln for ln in self.text().splitlines() if ln.strip()]
        return lines[-1].strip() if lines else "(no output)"

    def wait_log(self, pattern: str, timeout: float, what: str) -> re.Match[str]:
        """Wait for a log line; fail naming `what` if the process exits or the time runs out."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            m = regex.search(self.text())
            if m:
                return m
            if not self.alive():
                raise ProcessFailed(
                    f"{self.name} exited with code {self.popen.returncode} before {what}: {self.last_line()}",
                    self.log,
                )
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{self.name}: no {what} within {timeout:.0f}s", self.log)
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def reap(self, timeout: float) -> bool:
        """Wait up to `timeout` for exit; True if it has exited."""
        try:
            self.popen.wait(timeout=max(timeout, 0))
            return True
        except subprocess.TimeoutExpired:
            return False


def stop_all(procs: Sequence[Proc], grace: float) -> list[str]:
    """SIGTERM all at once, SIGKILL what is left after `grace` seconds; returns what had to be killed."""
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    killed = []
    for p in procs:
        if not p.reap(deadline - time.monotonic()):
            p.signal(signal.SIGKILL)
            p.reap(5)
            killed.append(p.name)
    return killed


def run_in(namespace: str, cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a short command (ping, iperf3 client) in a namespace and capture its output."""
    return subprocess.run(
        in_namespace(namespace, cmd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
        check=False,
    )
