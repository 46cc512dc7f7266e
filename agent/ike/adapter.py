"""Thin asyncio adapter: UDP 500/4500 sockets, RFC 3948 framing and one timer around an IkeResponder.

Owns only I/O: binding the two ports, adding the 4-octet non-ESP marker to every IKE datagram sent
from 4500 and stripping it from every one received there (the engine never sees the marker), handing
ESP-in-UDP on 4500 to `on_esp` (the data plane), dropping NAT keepalives, and re-arming a single
loop timer from get_timer(). Time is loop.time() (monotonic). Protocol decisions stay in the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from meshsec.agent.dataplane.udp import KIND_ESP, KIND_IKE, NAT_KEEPALIVE, NON_ESP_MARKER, classify

from .config import IkeConfig
from .constants import IKE_PORT, NATT_PORT
from .events import Addr, Event
from .responder import IkeResponder
from .session import IkeSession

log = logging.getLogger(__name__)


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, adapter: IkeAdapter, engine_port: int) -> None:
        self.adapter = adapter
        self.engine_port = engine_port  # 500 or 4500 as the engine knows it (the bound port may differ)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self.adapter._received(data, (addr[0], addr[1]), self.engine_port)

    def error_received(self, exc: Exception) -> None:
        log.debug("IKE socket error on %d: %s", self.engine_port, exc)


class IkeAdapter:
    """Drives one host's IkeResponder from asyncio. Call `await start()`, then `initiate(config)`."""

    def __init__(
        self,
        responder: IkeResponder,
        local_ip: str,
        *,
        ike_port: int = IKE_PORT,
        natt_port: int = NATT_PORT,
        on_event: Callable[[IkeSession, Event], None] | None = None,
        on_esp: Callable[[bytes, Addr], None] | None = None,
        keepalive_interval: float | None = 20.0,
    ) -> None:
        self.responder = responder
        self.local_ip = local_ip
        self.ports = {IKE_PORT: ike_port, NATT_PORT: natt_port}
        self.on_event = on_event
        self.on_esp = on_esp
        self._ep: dict[int, _Endpoint] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.keepalive_interval = keepalive_interval
        self._keepalive: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for engine_port, bound in self.ports.items():
            _, proto = await self._loop.create_datagram_endpoint(
                lambda p=engine_port: _Endpoint(self, p), local_addr=(self.local_ip, bound)
            )
            self._ep[engine_port] = proto
        if self.keepalive_interval:
            self._keepalive = self._loop.call_later(self.keepalive_interval, self._send_keepalives)

    def close(self) -> None:
        for handle in (self._timer, self._keepalive):
            if handle is not None:
                handle.cancel()
        for ep in self._ep.values():
            if ep.transport is not None:
                ep.transport.close()

    @property
    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def initiate(self, config: IkeConfig) -> IkeSession:
        session = self.responder.initiate(config, self.now)
        self._flush()
        return session

    def kick(self, session: IkeSession) -> None:
        """After calling rekey_child/rekey_ike/delete(now=adapter.now) on a session: send what it queued."""
        self.responder.sync(session)
        self._flush()

    def _received(self, data: bytes, addr: Addr, engine_port: int) -> None:
        if engine_port == NATT_PORT:
            kind = classify(data)
            if kind == KIND_ESP:
                if self.on_esp is not None:
                    self.on_esp(data, addr)
                return
            if kind != KIND_IKE:
                return  # NAT keepalive or runt
            data = data[len(NON_ESP_MARKER) :]
        try:
            self.responder.receive(data, addr, self.now, local_port=engine_port)
        except Exception:  # a bug must cost one datagram, not the daemon; fuzzing keeps this path cold
            self.responder.stats["internal_error"] += 1
            log.exception("IKE: internal error on a datagram from %s:%d (dropped)", addr[0], addr[1])
        self._flush()

    def _flush(self) -> None:
        for data, addr, engine_port in self.responder.datagrams_to_send(self.now):
            ep = self._ep.get(engine_port)
            if ep is None or ep.transport is None:
                continue
            if engine_port == NATT_PORT:
                data = NON_ESP_MARKER + data
            ep.transport.sendto(data, addr)
        while (item := self.responder.next_event()) is not None:
            if self.on_event is not None:
                self.on_event(*item)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.responder.get_timer()
        if when is not None and self._loop is not None:
            self._timer = self._loop.call_at(when, self._fire)

    def _send_keepalives(self) -> None:
        """RFC 3948 §2.3: a host behind a NAT keeps its 4500 mapping alive with one 0xFF octet."""
        ep = self._ep.get(NATT_PORT)
        for s in self.responder.sessions:
            if s.established and s.nat_local and s.remote is not None and ep and ep.transport:
                ep.transport.sendto(NAT_KEEPALIVE, s.remote)
        assert self._loop is not None and self.keepalive_interval
        self._keepalive = self._loop.call_later(self.keepalive_interval, self._send_keepalives)

    def _fire(self) -> None:
        self._timer = None
        self.responder.handle_timer(self.now)
        self._flush()
