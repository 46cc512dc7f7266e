"""The data plane's tables: peers and their endpoints, outbound SAs with their selectors (SPD + a
per-flow cache), and the inbound SAD.

Owns SA installation, replacement (rekey), removal and the per-SA MTU/MSS limits, all computed by
`meshsec.agent.esp.mtu`.  Must not do I/O: `Dataplane` (engine.py) inherits these tables and its loops
read them.  Mutations come from the agent's thread while the loops read: each change is a single dict
assignment or pop, which the GIL makes atomic; a removed SA is wiped, so a loop still holding it
drops the packet with EspDrop instead of using stale keys.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshsec.agent.dataplane.inner import flow_key
from meshsec.agent.esp import InboundSa, Mode, OutboundSa, Sad, SaParams, Spd, TrafficSelector
from meshsec.agent.esp.mtu import max_inner_packet

SPD_CACHE_SIZE = 4096  # distinct flows remembered between SPD changes; cleared when full
_MISS = object()
_IP_HDR = {4: 20, 6: 40}
_TCP_HDR = 20


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@dataclass
class Peer:
    """Where a peer's ESP goes: its current (address, port); the IKE engine moves it (RFC 7296 §2.23)."""

    endpoint: tuple[str, int]
    link_mtu: int = 1500
    family: int = field(init=False)

    def __post_init__(self) -> None:
        self.family = family_of(self.endpoint[0])


@dataclass
class Outbound:
    """One installed outbound SA, where its packets go, and the size limits derived from its transform."""

    sa: OutboundSa
    params: SaParams
    peer: Peer
    selectors: tuple[TrafficSelector, ...]
    mtu: list[int]  # [inner IP version] -> largest inner packet that fits one outer packet
    mss: list[int]  # [inner IP version] -> TCP MSS to clamp SYNs to


class SaTables:
    """Peers, outbound SAs (by the agent's SA id) and inbound SAs (by SPI)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._spd: Spd[str] = Spd()
        self._spd_cache: dict[bytes, str | None] = {}
        self._out: dict[str, Outbound] = {}
        self._sad = Sad()
        self._peers: dict[str, Peer] = {}

    def set_peer(self, peer_id: str, endpoint: tuple[str, int], link_mtu: int = 1500) -> None:
        """Create a peer or move it to a new (address, port): NAT mobility / MOBIKE updates."""
        peer = self._peers.get(peer_id)
        if peer is None:
            self._peers[peer_id] = Peer(endpoint, link_mtu)
            return
        new_family = family_of(endpoint[0])
        peer.endpoint = endpoint
        peer.family = new_family
        if peer.link_mtu != link_mtu:
            peer.link_mtu = link_mtu
        for entry in self._out.values():
            if entry.peer is peer:
                entry.mtu, entry.mss = self._limits(entry.params, peer)

    def update_peer_endpoint(self, peer_id: str, endpoint: tuple[str, int]) -> None:
        peer = self._peers[peer_id]
        self.set_peer(peer_id, endpoint, peer.link_mtu)

    def remove_peer(self, peer_id: str) -> None:
        for sa_id in [k for k, v in self._out.items() if v.peer is self._peers.get(peer_id)]:
            self.remove_outbound_sa(sa_id)
        self._peers.pop(peer_id, None)

    def _limits(self, params: SaParams, peer: Peer) -> tuple[list[int], list[int]]:
        """Per inner IP version (list index = the version nibble, so any first byte indexes safely;
        versions other than 4 and 6 get 0 and take the slow path to a counted drop)."""
        outer = 6 if peer.family == socket.AF_INET6 else 4
        mtu = [0] * 16
        mss = [0] * 16
        for v in (4, 6):
            mtu[v] = max_inner_packet(
                peer.link_mtu, params.spec, mode=params.mode, outer_family=outer, inner_family=v
            )
            mss[v] = mtu[v] - _IP_HDR[v] - _TCP_HDR
        return mtu, mss

    def add_outbound_sa(
        self, sa_id: str, params: SaParams, selectors: Iterable[TrafficSelector], peer_id: str
    ) -> OutboundSa:
        """Install (or atomically replace, for a rekey) the outbound SA `sa_id` for `selectors`.

        Returns the OutboundSa so the agent can poll its lifetime events and counters.
        """
        peer = self._peers[peer_id]
        sa = OutboundSa(params, self.clock())
        sels = tuple(selectors)
        mtu, mss = self._limits(params, peer)
        entry = Outbound(sa, params, peer, sels, mtu, mss)
        old = self._out.get(sa_id)
        self._out[sa_id] = entry
        if old is None or old.selectors != sels:
            if old is not None:
                self._spd.remove(sa_id)
            for ts in sels:
                self._spd.add(ts, sa_id)
            self._spd_cache.clear()
        if old is not None:
            old.sa.wipe()
        return sa

    def remove_outbound_sa(self, sa_id: str) -> None:
        old = self._out.pop(sa_id, None)
        self._spd.remove(sa_id)
        self._spd_cache.clear()
        if old is not None:
            old.sa.wipe()

    def outbound_sa(self, sa_id: str) -> OutboundSa | None:
        entry = self._out.get(sa_id)
        return entry.sa if entry else None

    def add_inbound_sa(self, params: SaParams) -> InboundSa:
        sa = InboundSa(params, self.clock())
        self._sad.add(sa)
        return sa

    def remove_inbound_sa(self, spi: int) -> None:
        self._sad.remove(spi)

    def inbound_sa(self, spi: int) -> InboundSa | None:
        return self._sad.get(spi)

    def inbound_spis(self) -> list[int]:
        return [sa.spi for sa in self._sad]

    def sa_counters(self) -> dict[str, object]:
        """Per-SA counters (the ESP core's `Counters`): outbound by SA id, inbound by SPI."""
        out: dict[str, object] = {f"out:{k}": v.sa.counters for k, v in list(self._out.items())}
        out.update({f"in:{sa.spi:08x}": sa.counters for sa in self._sad})
        return out

    def sa_for(self, pkt: bytes) -> str | None:
        """SPD decision for an outbound packet, cached per flow (addresses, protocol, ports)."""
        key = flow_key(pkt)
        sa_id = self._spd_cache.get(key, _MISS)
        if sa_id is _MISS:
            sa_id = self._spd.lookup(pkt)
            if len(self._spd_cache) >= SPD_CACHE_SIZE:
                self._spd_cache.clear()
            self._spd_cache[key] = sa_id
        return sa_id  # type: ignore[return-value]

    def wipe_all(self) -> None:
        for entry in self._out.values():
            entry.sa.wipe()
        self._out.clear()
        self._spd_cache.clear()
        for sa in list(self._sad):
            self._sad.remove(sa.spi)

    def sa_mode(self, sa_id: str) -> Mode | None:
        entry = self._out.get(sa_id)
        return entry.params.mode if entry else None
