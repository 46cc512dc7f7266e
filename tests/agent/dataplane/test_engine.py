"""The data plane's loops and API on loopback, with a SOCK_DGRAM socketpair standing in for the TUN.

The socketpair keeps packet boundaries like a TUN does, so these tests exercise the real threads,
UDP sockets, RFC 3948 demultiplexing, GSO batching and ESP (the real core) in milliseconds; the TUN
itself and policy routing are covered across namespaces in tests/system/test_esp_*.py.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
from collections.abc import Iterator

import pytest
from meshsec.agent.dataplane import Dataplane
from meshsec.agent.esp import InboundSa, OutboundSa, SaParams, TrafficSelector
from meshsec.agent.netcfg.tun import TunDevice
from scapy.layers.inet import IP, UDP

from tests.support.netns import wait_for

KEY_OUT = bytes(range(20))
KEY_IN = bytes(range(20, 40))


def _params(spi: int, key: bytes) -> SaParams:
    return SaParams(spi=spi, encr_id=20, key_bits=128, integ_id=0, enc_key=key, esn=True)


def _inner(payload: bytes, dst: str = "198.19.2.1") -> bytes:
    return bytes(IP(src="198.19.1.1", dst=dst) / UDP(sport=1000, dport=2000) / payload)


class Harness:
    def __init__(self) -> None:
        self.host, tun_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.host.settimeout(5)
        self.tun = TunDevice(fd=tun_side.detach(), name="fake", vnet_hdr=False, tso=False)
        self.dp = Dataplane(self.tun, listen=["127.0.0.1"], port=0, ike_port=None, mark=None)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: a 200-packet burst fits
        self.peer.bind(("127.0.0.1", 0))
        self.peer.settimeout(5)
        self.port = self.dp.ports[socket.AF_INET]
        self.ike: queue.Queue[tuple[bytes, tuple, int]] = queue.Queue()
        self.dp.set_ike_handler(lambda msg, addr, port: self.ike.put((msg, addr, port)))
        self.dp.set_peer("p", self.peer.getsockname())
        self.dp.add_outbound_sa(
            "out", _params(0x2001, KEY_OUT), [TrafficSelector.of("198.19.1.0/24", "198.19.2.0/24")], "p"
        )
        self.dp.add_inbound_sa(_params(0x2002, KEY_IN))
        self.dp.start()

    def close(self) -> None:
        self.dp.close()
        self.host.close()
        self.peer.close()


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()


def test_outbound_packet_is_protected_and_sent_to_the_peer(h: Harness) -> None:
    h.host.send(_inner(b"hello"))
    esp, addr = h.peer.recvfrom(2000)
    assert addr[1] == h.port
    assert struct.unpack("!I", esp[:4])[0] == 0x2001
    assert InboundSa(_params(0x2001, KEY_OUT), 0).unprotect(esp, 0) == _inner(b"hello")


def test_burst_is_batched_and_every_packet_arrives_in_order(h: Harness) -> None:
    for i in range(200):
        h.host.send(_inner(b"%04d" % i + b"x" * 1000))
    rx = InboundSa(_params(0x2001, KEY_OUT), 0)
    got = [rx.unprotect(h.peer.recv(2000), 0) for _ in range(200)]
    assert got == [_inner(b"%04d" % i + b"x" * 1000) for i in range(200)]
    c = h.dp.counters
    assert c.esp_out == 200 and c.udp_sends_failed == 0


def test_inbound_esp_is_written_to_the_tun(h: Harness) -> None:
    tx = OutboundSa(_params(0x2002, KEY_IN), 0)
    h.peer.sendto(bytes(tx.protect(_inner(b"from peer", dst="198.19.1.1"), 0)), ("127.0.0.1", h.port))
    assert h.host.recv(2000) == _inner(b"from peer", dst="198.19.1.1")


def test_ike_keepalive_and_junk_are_demultiplexed(h: Harness) -> None:
    h.peer.sendto(b"\0\0\0\0" + b"IKE-MESSAGE-BYTES", ("127.0.0.1", h.port))
    msg, addr, port = h.ike.get(timeout=5)
    assert msg == b"IKE-MESSAGE-BYTES" and addr == h.peer.getsockname() and port == h.port
    h.peer.sendto(b"\xff", ("127.0.0.1", h.port))
    h.peer.sendto(b"\x01\x02", ("127.0.0.1", h.port))
    wait_for(lambda: h.dp.counters.keepalives_in == 1 and h.dp.counters.invalid_datagrams == 1, what="counts")


def test_send_ike_adds_the_non_esp_marker(h: Harness) -> None:
    h.dp.send_ike(b"IKE_SA_INIT", h.peer.getsockname())
    assert h.peer.recv(2000) == b"\0\0\0\0IKE_SA_INIT"


def test_garbage_never_stops_the_loop(h: Harness) -> None:
    rng = os.urandom
    for n in (0, 1, 3, 4, 7, 8, 9, 16, 40, 100, 1500):
        for _ in range(5):
            h.peer.sendto(rng(n), ("127.0.0.1", h.port))
    h.peer.sendto(struct.pack("!II", 0x2002, 1) + rng(60), ("127.0.0.1", h.port))  # known SPI, forged
    h.host.send(b"\x45")  # runts and non-IP from the host side too
    h.host.send(b"")
    h.host.send(b"\x50" + rng(199))
    h.host.send(b"\x45" + rng(199))
    h.host.send(b"\x60" + rng(199))
    tx = OutboundSa(_params(0x2002, KEY_IN), 0)
    h.peer.sendto(bytes(tx.protect(_inner(b"still alive", dst="198.19.1.1"), 0)), ("127.0.0.1", h.port))
    assert h.host.recv(2000) == _inner(b"still alive", dst="198.19.1.1")
    c = h.dp.counters
    assert c.internal_errors == 0, c.last_internal_error
    assert c.drops.get("icv_failure", 0) >= 1


def test_peer_endpoint_update_moves_traffic(h: Harness) -> None:
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(5)
    try:
        h.dp.update_peer_endpoint("p", other.getsockname())
        h.host.send(_inner(b"moved"))
        esp = other.recv(2000)
        assert InboundSa(_params(0x2001, KEY_OUT), 0).unprotect(esp, 0) == _inner(b"moved")
    finally:
        other.close()


def test_no_policy_and_sa_removal_are_counted(h: Harness) -> None:
    h.host.send(_inner(b"nowhere", dst="198.19.99.1"))
    wait_for(lambda: h.dp.counters.no_policy >= 1, what="no_policy")
    h.dp.remove_outbound_sa("out")
    h.host.send(_inner(b"gone"))
    wait_for(lambda: h.dp.counters.no_policy >= 2, what="no_policy after removal")
    h.dp.remove_inbound_sa(0x2002)
    tx = OutboundSa(_params(0x2002, KEY_IN), 0)
    h.peer.sendto(bytes(tx.protect(_inner(b"late", dst="198.19.1.1"), 0)), ("127.0.0.1", h.port))
    wait_for(lambda: h.dp.counters.drops.get("unknown_spi", 0) == 1, what="unknown_spi")


def test_bare_ike_on_the_ike_port() -> None:
    """Port 500 carries IKE without the non-ESP marker, in both directions."""
    host, tun_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun = TunDevice(fd=tun_side.detach(), name="fake", vnet_hdr=False, tso=False)
    dp = Dataplane(tun, listen=["127.0.0.1"], port=0, ike_port=0, mark=None)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    got: queue.Queue[tuple[bytes, tuple, int]] = queue.Queue()
    try:
        dp.set_ike_handler(lambda msg, addr, port: got.put((msg, addr, port)))
        dp.start()
        ike_port = dp.ike_ports[socket.AF_INET]
        peer.sendto(b"\0\0\0\0bare-ike-starts-with-zero-spi", ("127.0.0.1", ike_port))
        msg, addr, port = got.get(timeout=5)
        assert (msg, addr, port) == (b"\0\0\0\0bare-ike-starts-with-zero-spi", peer.getsockname(), ike_port)
        dp.send_ike(b"IKE_SA_INIT", peer.getsockname(), nat_t=False)
        data, src = peer.recvfrom(2000)
        assert data == b"IKE_SA_INIT" and src[1] == ike_port
    finally:
        dp.close()
        host.close()
        peer.close()
