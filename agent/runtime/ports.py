"""The host's IKE and NAT-T ports (--ike-port, --natt-port) as the IKE engine sees them: 500 and 4500.

Why a mapping and not a port setting in the engine: the sans-I/O engine (meshsec.agent.ike) knows
RFC 7296's ports only.  It hashes its own port as 500 or 4500 into NAT_DETECTION_* and, after it
detects a NAT, floats to the peer's port 4500.  Handing it other bound ports as they are makes both
sides of a pair "detect" a NAT that is not there and float to a port nobody listens on.  So the
runtime shows the engine the RFC's ports and the wire the configured ones, for BOTH ends: every agent
of a mesh uses the same two ports (one chart value for the whole DaemonSet), so a peer's configured
port is shown as 500/4500 too and NAT detection stays truthful.  A NAT's mapped ports pass unchanged
(unless one happens to equal a configured port: the price of this mapping, fixed only by the engine
learning its ports from IkeConfig).

Owns only this translation, at the data plane's IKE and endpoint calls.  Must not parse IKE or ESP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshsec.agent.ike.constants import IKE_PORT, NATT_PORT

Addr = tuple[str, int]


@dataclass(frozen=True)
class PortMap:
    """The wire's IKE and NAT-T ports; the engine's are always IKE_PORT (500) and NATT_PORT (4500)."""

    ike: int = IKE_PORT
    natt: int = NATT_PORT

    @property
    def identity(self) -> bool:
        return (self.ike, self.natt) == (IKE_PORT, NATT_PORT)

    def to_wire(self, addr: Addr) -> Addr:
        """A remote address from the engine's world (port 500/4500) to the one to send to."""
        port = {IKE_PORT: self.ike, NATT_PORT: self.natt}.get(addr[1], addr[1])
        return (addr[0], port)

    def to_engine(self, addr: Addr) -> Addr:
        """A remote address as received to the engine's world."""
        port = {self.ike: IKE_PORT, self.natt: NATT_PORT}.get(addr[1], addr[1])
        return (addr[0], port)

    def local_to_engine(self, bound_port: int) -> int:
        """The engine's local port for a datagram that arrived on our socket bound at `bound_port`."""
        return NATT_PORT if bound_port == self.natt else IKE_PORT


class MappedDataplane:
    """A Dataplane whose IKE datagrams and peer endpoints are in the engine's ports; every other
    attribute is the Dataplane's own."""

    def __init__(self, dataplane: Any, ports: PortMap) -> None:
        self.dataplane = dataplane
        self.port_map = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataplane, name)

    def set_ike_handler(self, handler: Callable[[bytes, tuple, int], None] | None) -> None:
        if handler is None:
            self.dataplane.set_ike_handler(None)
            return
        pm = self.port_map

        def mapped(message: bytes, addr: tuple, local_port: int) -> None:
            handler(message, pm.to_engine((addr[0], addr[1])), pm.local_to_engine(local_port))

        self.dataplane.set_ike_handler(mapped)

    def send_ike(self, message: bytes, remote: Addr, *, nat_t: bool = True) -> None:
        self.dataplane.send_ike(message, self.port_map.to_wire(remote), nat_t=nat_t)

    def send_keepalive(self, remote: Addr) -> None:
        self.dataplane.send_keepalive(self.port_map.to_wire(remote))

    def set_peer(self, peer_id: str, endpoint: Addr, link_mtu: int = 1500) -> None:
        self.dataplane.set_peer(peer_id, self.port_map.to_wire(endpoint), link_mtu)

    def update_peer_endpoint(self, peer_id: str, endpoint: Addr) -> None:
        self.dataplane.update_peer_endpoint(peer_id, self.port_map.to_wire(endpoint))
