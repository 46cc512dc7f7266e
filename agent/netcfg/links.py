"""Addresses, MTU, routes and policy-routing rules for the agent's TUN device, via pyroute2.

Owns every netlink change the agent makes and remembers each one so `close()` can undo exactly what
it created (and nothing else).  Must not open sockets for data or know about ESP.

Loop avoidance (needed for transport mode, where a peer's own address is routed into the TUN): the
tunnel routes live in their own table `table`, consulted by a rule "not fwmark `mark` -> table", the
way wg-quick does it.  The data plane sets SO_MARK=`mark` on its UDP sockets, so ESP/IKE datagrams
skip the tunnel table and use the main table, while everything else sees the tunnel routes first.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

FIB_RULE_INVERT = 0x2
DEFAULT_TABLE = 0x6D73  # "ms"
DEFAULT_MARK = 0x6D73
DEFAULT_RULE_PRIORITY = 5300
DEFAULT_TXQUEUELEN = 4096


class NetcfgError(OSError):
    """A netlink request the agent depends on failed."""


def _family(cidr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_network(cidr, strict=False).version == 6 else socket.AF_INET


@dataclass
class NetConfig:
    """Configures one TUN interface; a context manager that removes what it added."""

    ifname: str
    table: int = DEFAULT_TABLE
    mark: int = DEFAULT_MARK
    rule_priority: int = DEFAULT_RULE_PRIORITY
    _ipr: IPRoute = field(default_factory=IPRoute, init=False, repr=False)
    _undo: list[Callable[[], object]] = field(default_factory=list, init=False, repr=False)

    def __enter__(self) -> NetConfig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def index(self) -> int:
        found = self._ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise NetcfgError(errno.ENODEV, f"interface {self.ifname} not found")
        return int(found[0])

    def _do(self, what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except NetlinkError as exc:
            raise NetcfgError(exc.code, f"{what}: {exc}") from exc

    def set_up(self, mtu: int, txqueuelen: int = DEFAULT_TXQUEUELEN) -> None:
        """Set the MTU (computed by the caller from the SA transforms), the queue length, bring it up.

        The TUN's transmit ring drops (it does not push back) when the data plane falls behind for a
        moment; with the default 500 slots one TCP flow's burst (up to tcp_limit_output_bytes, ~700
        packets) overflows it and every drop costs a retransmission and a halved window.
        """
        self._do(f"set mtu {mtu} on {self.ifname}", lambda: self._ipr.link("set", index=self.index, mtu=mtu))
        self._do(
            f"set txqueuelen {txqueuelen} on {self.ifname}",
            lambda: self._ipr.link("set", index=self.index, txqlen=txqueuelen),
        )
        self._do(f"set {self.ifname} up", lambda: self._ipr.link("set", index=self.index, state="up"))

    def set_mtu(self, mtu: int) -> None:
        self._do(f"set mtu {mtu} on {self.ifname}", lambda: self._ipr.link("set", index=self.index, mtu=mtu))

    def add_address(self, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        idx = self.index
        kwargs: dict[str, object] = {
            "index": idx,
            "address": str(iface.ip),
            "prefixlen": iface.network.prefixlen,
        }
        if iface.version == 6:
            kwargs["flags"] = 0x02  # IFA_F_NODAD: the TUN is point-to-point, DAD only delays us
        self._do(f"add address {cidr}", lambda: self._ipr.addr("add", **kwargs))
        self._undo.append(
            lambda: self._ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        )

    def add_route(self, cidr: str, *, mtu: int | None = None, src: str | None = None) -> None:
        """Route `cidr` into the TUN in the tunnel table (only non-marked traffic sees it)."""
        net = ipaddress.ip_network(cidr, strict=False)
        spec: dict[str, object] = {
            "dst": str(net),
            "oif": self.index,
            "table": self.table,
            "family": _family(cidr),
        }
        if mtu:
            spec["metrics"] = {"mtu": mtu}
        if src:
            spec["prefsrc"] = src  # transport mode: keep the underlay address as the source
        self._do(
            f"add route {cidr} dev {self.ifname} table {self.table}", lambda: self._ipr.route("add", **spec)
        )
        self._undo.append(
            lambda: self._ipr.route("del", dst=str(net), table=self.table, family=_family(cidr))
        )

    def del_route(self, cidr: str) -> None:
        net = ipaddress.ip_network(cidr, strict=False)
        try:
            self._ipr.route("del", dst=str(net), table=self.table, family=_family(cidr))
        except NetlinkError as exc:
            if exc.code != errno.ESRCH:
                raise NetcfgError(exc.code, f"del route {cidr}: {exc}") from exc

    def underlay_mtu(self, dst: str) -> int:
        """MTU of the path our ESP datagrams to `dst` take (route lookup with our fwmark, so the
        tunnel table is bypassed): the route's mtu metric if set, else its output device's MTU."""
        fam = _family(dst)
        try:
            (route,) = self._ipr.route("get", dst=dst, family=fam, mark=self.mark)[:1]
        except (NetlinkError, ValueError) as exc:
            raise NetcfgError(errno.EHOSTUNREACH, f"no route to peer {dst}: {exc}") from exc
        metrics = route.get_attr("RTA_METRICS")
        if metrics is not None:
            mtu = metrics.get_attr("RTAX_MTU")
            if mtu:
                return int(mtu)
        oif = route.get_attr("RTA_OIF")
        (link,) = self._ipr.link("get", index=oif)[:1]
        return int(link.get_attr("IFLA_MTU"))

    def add_bypass_rules(self) -> None:
        """Install "not fwmark `mark` lookup `table`" for IPv4 and IPv6."""
        for fam in (socket.AF_INET, socket.AF_INET6):
            spec = {
                "family": fam,
                "table": self.table,
                "priority": self.rule_priority,
                "fwmark": self.mark,
                "fwmask": 0xFFFFFFFF,
                "flags": FIB_RULE_INVERT,
            }
            self._do(
                f"add rule not fwmark {self.mark:#x} table {self.table}",
                lambda spec=spec: self._ipr.rule("add", **spec),
            )
            self._undo.append(lambda spec=spec: self._ipr.rule("del", **spec))

    def close(self) -> None:
        """Undo every change in reverse order; changes already gone (device deleted) are fine."""
        while self._undo:
            undo = self._undo.pop()
            with contextlib.suppress(NetlinkError, OSError):
                undo()
        self._ipr.close()
