"""The agent's TUN network state, driven from the event loop: link up + MTU, the bypass policy rules
and the routes of remote traffic selectors into the TUN (via meshsec.agent.netcfg).

Every pyroute2 call runs on ONE worker thread: pyroute2's synchronous API cannot be used inside a
running asyncio loop, and one thread keeps the changes in order.  Owns the set of routes it believes
installed (the plan's view of "actual"); must not touch SAs or sockets.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from meshsec.agent.runtime import plan
from meshsec.api.v1 import config_pb2

log = logging.getLogger("meshsec.agent.runtime")


class TunRoutes:
    """Netlink state of one TUN.  `on_error(line)` is called on the event loop when a change fails."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_error: Callable[[str], None]) -> None:
        self._loop = loop
        self._on_error = on_error
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netcfg")
        self._net: Any = None
        self.routes: set[str] = set()

    @property
    def mark(self) -> int:
        """The fwmark the data plane must put on its sockets so its datagrams bypass the TUN."""
        return int(self._net.mark)

    async def setup(self, ifname: str, mtu: int) -> None:
        self._net = await self._loop.run_in_executor(self._ex, _setup, ifname, mtu)

    def add(self, cidr: str, desired: config_pb2.NodeConfig) -> None:
        """Route `cidr` into the TUN; counted as installed at once (so the plan does not ask twice)
        and forgotten again if the kernel refuses."""
        if self._net is None:
            return
        self.routes.add(cidr)
        fut = self._ex.submit(_add_route, self._net, cidr, desired)
        fut.add_done_callback(lambda f: self._done(cidr, f))

    def delete(self, cidr: str) -> None:
        self.routes.discard(cidr)
        if self._net is not None:
            self._ex.submit(self._net.del_route, cidr)

    async def close(self) -> None:
        """Undo everything (routes, rules) on the worker thread, then stop it."""
        if self._net is not None:
            await self._loop.run_in_executor(self._ex, self._net.close)
            self._net = None
        self._ex.shutdown(wait=True)

    def _done(self, cidr: str, fut: Future[None]) -> None:
        exc = fut.exception()
        if exc is not None:
            self._loop.call_soon_threadsafe(self._failed, cidr, str(exc))

    def _failed(self, cidr: str, why: str) -> None:
        self.routes.discard(cidr)
        self._on_error(f"route {cidr}: {why}")


def _setup(ifname: str, mtu: int) -> Any:
    from meshsec.agent.netcfg.links import NetcfgError, NetConfig

    net = NetConfig(ifname)
    try:
        net.set_up(mtu)
        try:
            net.add_bypass_rules()
        except NetcfgError as exc:  # left behind by a killed agent: the same rule is fine
            if exc.errno != errno.EEXIST:
                raise
    except Exception:
        net.close()
        raise
    return net


def _add_route(net: Any, cidr: str, desired: config_pb2.NodeConfig) -> None:
    from meshsec.agent.netcfg.links import NetcfgError

    try:
        net.add_route(cidr, src=route_src(cidr, desired, local_addresses()))
    except NetcfgError as exc:
        if exc.errno != errno.EEXIST:
            raise


def route_src(cidr: str, desired: config_pb2.NodeConfig, addrs: list[str]) -> str | None:
    """A local address inside one of the local selectors paired with `cidr`, so the kernel picks a
    source the SA's selectors cover (the TUN itself has no address); None lets the kernel choose."""
    for peer in desired.peers:
        for child in peer.children:
            if cidr not in {plan.normalize_cidr(t) for t in child.remote_ts}:
                continue
            for ts in child.local_ts:
                net = ipaddress.ip_network(ts, strict=False)
                for a in addrs:
                    if ipaddress.ip_address(a) in net:
                        return a
    return None


def local_addresses() -> list[str]:
    """Addresses configured on this host (a read-only netlink query; call on the worker thread)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr() if a.get_attr("IFA_ADDRESS")]
