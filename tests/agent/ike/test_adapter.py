"""The asyncio adapter's framing, without sockets: the engine never sees the non-ESP marker, every IKE
datagram leaving port 4500 carries it, ESP goes to the data plane and keepalives are dropped."""

from __future__ import annotations

import asyncio
from typing import Any

from meshsec.agent.ike.adapter import IkeAdapter, _Endpoint
from meshsec.agent.ike.events import ChildSaEstablished
from meshsec.agent.ike.message import parse_message
from meshsec.agent.ike.responder import IkeResponder

from .harness import A_IP, B_IP, make_configs

MARKER = b"\0\0\0\0"


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass


def _adapter(responder: IkeResponder, ip: str, **kw: Any) -> tuple[IkeAdapter, dict[int, FakeTransport]]:
    ad = IkeAdapter(responder, ip, **kw)
    ad._loop = asyncio.get_running_loop()
    wires = {}
    for port in (500, 4500):
        ep = _Endpoint(ad, port)
        ep.transport = wires.setdefault(port, FakeTransport())  # type: ignore[assignment]
        ad._ep[port] = ep
    return ad, wires


def _shuttle(src: dict[int, FakeTransport], dst: IkeAdapter, src_ip: str) -> int:
    moved = 0
    for port, wire in src.items():
        for data, addr in wire.sent:
            dst._received(data, (src_ip, port), addr[1])  # delivered to the socket of the destination port
            moved += 1
        wire.sent.clear()
    return moved


def test_marker_added_and_stripped_esp_and_keepalive_demuxed() -> None:
    async def run() -> None:
        a_cfg, b_cfg = make_configs()
        loop = asyncio.get_running_loop()
        events: list[Any] = []
        esp: list[bytes] = []
        a, a_wire = _adapter(IkeResponder(lambda addr: None, loop.time()), A_IP)
        b, b_wire = _adapter(
            IkeResponder(lambda addr: b_cfg, loop.time()),
            B_IP,
            on_event=lambda s, ev: events.append(ev),
            on_esp=lambda d, addr: esp.append(d),
        )
        a.initiate(a_cfg)
        seen_4500: list[bytes] = []
        for _ in range(10):
            seen_4500 += [d for d, _ in a_wire[4500].sent]
            # A's datagrams reach B from a NAT's address, so both detect the NAT and float to 4500
            if not (_shuttle(a_wire, b, "198.18.0.99") + _shuttle(b_wire, a, B_IP)):
                break
        assert seen_4500 and all(d.startswith(MARKER) for d in seen_4500)
        assert parse_message(seen_4500[0][4:]).exchange == 35  # the engine's bytes after the marker
        assert any(isinstance(ev, ChildSaEstablished) and ev.encap for ev in events)
        b._received(b"\xff", ("198.18.0.99", 4500), 4500)  # NAT keepalive: nothing happens
        b._received(b"\x01\x02\x03\x04" + bytes(20), ("198.18.0.99", 4500), 4500)  # ESP: to the data plane
        assert esp == [b"\x01\x02\x03\x04" + bytes(20)]
        assert b.responder.counters()["dropped_unparseable"] == 0
        a._send_keepalives()
        assert (b"\xff", (B_IP, 4500)) in a_wire[4500].sent
        a.close()
        b.close()

    asyncio.run(run())
