"""The demo's network: named namespaces, one underlay bridge, site LANs, and their removal.

Owns every namespace and link the demo creates (pyroute2 over netlink; nothing shells out to `ip`)
and nothing else: processes are started by `procs`, which asks this module which pids still sit in
its namespaces.  Shape:

    host-1 eth0 198.18.0.1 ─┐                     lan-a eth0 198.19.1.10 ── lan0 198.19.1.1 host-1
    host-2 eth0 198.18.0.2 ─┼─ underlay (br0) ─…  lan-b eth0 198.19.2.10 ── lan0 198.19.2.1 host-2
    host-N eth0 198.18.0.N ─┘

No interface is ever created in the root namespace (each veth is created inside the underlay or
gateway namespace with its peer placed straight into the other), no namespace gets a default route,
and the LANs only route 198.19.0.0/16 to their gateway: nothing can reach the outside world.
Namespace names carry the demo's pid (`msdemo<pid>-<role>`) so a later demo can tell a SIGKILLed
demo's leftovers from a running one's and remove only those.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import signal
import threading
import time

from pyroute2 import NetNS, netns

from .nsexec import enter
from .plan import DemoPlan

PREFIX = "msdemo"
UNDERLAY_ROLE = "underlay"
LAN_ROUTE = "198.19.0.0/16"  # the LANs reach the other sites, and only them, through their gateway
_NAME = re.compile(rf"^{PREFIX}(\d+)-")


class NetworkError(Exception):
    """The demo network could not be built; the message names the namespace and the operation."""


def namespace_name(pid: int, role: str) -> str:
    return f"{PREFIX}{pid}-{role}"


def _sysctl_in(namespace: str, key: str, value: str) -> None:
    """Write a sysctl of another namespace from a short-lived thread (setns moves only that thread)."""
    failure: list[BaseException] = []

    def work() -> None:
        try:
            enter(namespace)
            with open(f"/proc/sys/{key.replace('.', '/')}", "w") as f:
                f.write(value)
        except OSError as exc:
            failure.append(exc)

    t = threading.Thread(target=work, name=f"sysctl-{namespace}")
    t.start()
    t.join()
    if failure:
        raise NetworkError(f"{namespace}: sysctl {key}={value}: {failure[0]}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns_inode(path: str) -> int | None:
    with contextlib.suppress(OSError):
        return os.stat(path).st_ino
    return None


def pids_in(namespaces: list[str]) -> list[int]:
    """Pids whose network namespace is one of these (what `ip netns pids` does, via /proc)."""
    inodes = {i for i in (_ns_inode(os.path.join(netns.NETNS_RUN_DIR, n)) for n in namespaces) if i}
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ns_inode(f"/proc/{entry}/ns/net") in inodes:
            out.append(int(entry))
    return out


def kill_and_remove(namespaces: list[str]) -> list[str]:
    """SIGKILL whatever still runs in the namespaces, then delete them; returns problems (empty = clean)."""
    problems = []
    for _ in range(3):
        pids = pids_in(namespaces)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for name in namespaces:
        try:
            netns.remove(name)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                problems.append(f"namespace {name}: {exc.strerror or exc}")
    return problems


def remove_stale() -> list[str]:
    """Remove namespaces left by demos that no longer run (killed with SIGKILL); returns their names."""
    stale = []
    for name in netns.listnetns():
        m = _NAME.match(name)
        if m and not pid_alive(int(m.group(1))):
            stale.append(name)
    kill_and_remove(stale)
    return stale


class DemoNetwork:
    """build() creates everything; destroy() removes what was created, however far build() got."""

    def __init__(self, plan: DemoPlan, pid: int | None = None) -> None:
        self.plan = plan
        self.pid = pid or os.getpid()
        self.created: list[str] = []

    def ns(self, role: str) -> str:
        """The namespace of a host (`host-1`), a LAN (`lan-a`) or the underlay."""
        return namespace_name(self.pid, role)

    def _create(self, role: str) -> str:
        name = self.ns(role)
        try:
            netns.create(name)
        except OSError as exc:
            raise NetworkError(f"cannot create namespace {name}: {exc.strerror or exc}") from None
        self.created.append(name)
        with NetNS(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return name

    @staticmethod
    def _address(name: str, ifname: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        with NetNS(name) as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ipr.link("set", index=idx, state="up")

    def build(self) -> None:
        try:
            self._build()
        except NetworkError:
            raise
        except Exception as exc:  # netlink errors: say where
            raise NetworkError(f"building the demo network: {type(exc).__name__}: {exc}") from None

    def _build(self) -> None:
        underlay = self._create(UNDERLAY_ROLE)
        with NetNS(underlay) as ul:
            ul.link("add", ifname="br0", kind="bridge")
            bridge = ul.link_lookup(ifname="br0")[0]
            ul.link("set", index=bridge, state="up")
        for i, host in enumerate(self.plan.hosts, start=1):
            name = self._create(host.name)
            with NetNS(underlay) as ul:
                port = f"h{i}"
                ul.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": name})
                ul.link("set", index=ul.link_lookup(ifname=port)[0], master=bridge, state="up")
            self._address(name, "eth0", f"{host.underlay}/{self.plan.prefixlen}")
        for lan in self.plan.lans:
            name = self._create(lan.name)
            gateway = self.ns(lan.gateway)
            with NetNS(gateway) as gw:
                gw.link("add", ifname="lan0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": name})
            self._address(gateway, "lan0", self.plan.host(lan.gateway).lan_address)
            self._address(name, "eth0", lan.address)
            with NetNS(name) as ipr:
                ipr.route("add", dst=LAN_ROUTE, gateway=lan.via)
            _sysctl_in(gateway, "net.ipv4.ip_forward", "1")

    def destroy(self) -> list[str]:
        problems = kill_and_remove(list(reversed(self.created)))
        self.created.clear()
        return problems
