"""Throw-away test hosts: network namespaces joined by veth pairs, removed even when a test fails.

Tests (not the agent) may shell out to `ip`: this module is the harness, not product code.  Every name
carries a per-process tag so that concurrent test runs on one machine never collide, and `close()`
kills every process started in a namespace before deleting it.  Addresses must come from
198.18.0.0/15 or fd00::/8 (the network rule for tests); `link()` refuses anything else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

_TEST_NETS = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd00::/8"))
_counter = itertools.count()


def _check_test_address(cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    if not any(iface.ip in net for net in _TEST_NETS if net.version == iface.version):
        raise ValueError(f"{cidr} is outside the test ranges 198.18.0.0/15 and fd00::/8")


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command in the root namespace (only `ip netns`/`ip link` plumbing uses this)."""
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Namespace:
    """One test host."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout)

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a long-running process in this namespace; it is killed on `close()`."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("ip", *args, check=check)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        pids = sh("ip", "netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


class Topology:
    """A set of namespaces for one test; use as a context manager (or call `close()` in a finally)."""

    def __init__(self, tag: str = "t") -> None:
        self.prefix = f"ms{os.getpid() % 100000}{tag}{next(_counter)}"
        self.namespaces: dict[str, Namespace] = {}
        self._veths = itertools.count()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, name: str) -> Namespace:
        ns = Namespace(f"{self.prefix}-{name}")
        sh("ip", "netns", "add", ns.name)
        self.namespaces[name] = ns
        ns.ip("link", "set", "lo", "up")
        ns.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", check=False)
        return ns

    def __getitem__(self, name: str) -> Namespace:
        return self.namespaces[name]

    def link(
        self,
        a: Namespace,
        b: Namespace,
        addrs_a: Sequence[str] = (),
        addrs_b: Sequence[str] = (),
        mtu: int | None = None,
    ) -> tuple[str, str]:
        """Join two namespaces with a veth pair; returns the interface names (in a, in b)."""
        for cidr in (*addrs_a, *addrs_b):
            _check_test_address(cidr)
        n = next(self._veths)
        tag = self.prefix[-8:]
        if_a, if_b = f"v{tag}a{n}"[-15:], f"v{tag}b{n}"[-15:]
        sh("ip", "link", "add", if_a, "netns", a.name, "type", "veth", "peer", "name", if_b, "netns", b.name)
        for ns, ifname, addrs in ((a, if_a, addrs_a), (b, if_b, addrs_b)):
            if mtu:
                ns.ip("link", "set", ifname, "mtu", str(mtu))
            for cidr in addrs:
                extra = ["nodad"] if ipaddress.ip_interface(cidr).version == 6 else []
                ns.ip("addr", "add", cidr, "dev", ifname, *extra)
            ns.ip("link", "set", ifname, "up")
        return if_a, if_b

    def close(self) -> None:
        for ns in self.namespaces.values():
            ns.kill_all()
        for ns in self.namespaces.values():
            sh("ip", "netns", "del", ns.name, check=False)
        self.namespaces.clear()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns a truthy value; raise AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
