"""The per-packet fast paths (`OutboundSa.protect` inlined seal, `InboundSa.unprotect` inlined decap, the
per-flow cache of inbound selector checks) against the general code they shortcut."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_network

import pytest
from meshsec.agent.esp import (
    DropReason,
    EspDrop,
    InboundSa,
    Lifetime,
    OutboundSa,
    SoftExpired,
    TrafficSelector,
)
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import raw

from tests.agent.esp.helpers import make_params, tcp_packet, udp_packet

AEAD = [(20, 128, 0), (20, 256, 0), (28, 256, 0)]


def _same_iv_as_default(seq: int) -> bytes:
    """An injected IV equal to the default (the sequence number): forces the general `_seal` path."""
    return seq.to_bytes(8, "big")


@pytest.mark.parametrize("transform", AEAD)
@pytest.mark.parametrize("esn", [True, False])
def test_fast_protect_is_byte_identical_to_the_general_path(transform: tuple, esn: bool) -> None:
    # Two senders on one key exist only in this test: production must never do this (nonce reuse).
    params = make_params(transform, esn=esn)
    fast = OutboundSa(params, 0.0)
    slow = OutboundSa(params, 0.0, iv_source=_same_iv_as_default)
    assert fast._fast_seal is not None and slow._fast_seal is None
    inb = InboundSa(params, 0.0)
    for n in range(40):  # every inner length mod 4, both families, bytes / bytearray / memoryview
        pkt = (udp_packet if n % 3 else tcp_packet)(4 if n % 2 else 6, bytes(range(n % 7 + n)))
        buf = (bytes, bytearray, memoryview)[n % 3](pkt)
        a, b = fast.protect(buf, 0.0), slow.protect(pkt, 0.0)
        assert a == b
        assert inb.unprotect(a, 0.0) == pkt
    assert fast.counters == slow.counters and fast.seq == slow.seq == 40


def test_fast_protect_hands_thresholds_to_the_general_path() -> None:
    lifetime = Lifetime(soft_packets=3, hard_packets=5)
    out = OutboundSa(make_params((20, 128, 0), lifetime=lifetime), 0.0)
    pkt = udp_packet(4, b"x" * 100)
    for _ in range(5):
        out.protect(pkt, 0.0)
    with pytest.raises(EspDrop) as e:
        out.protect(pkt, 0.0)
    assert e.value.reason is DropReason.EXPIRED
    events = out.poll(0.0)
    assert [type(ev).__name__ for ev in events] == ["SoftExpired", "HardExpired"]
    assert isinstance(events[0], SoftExpired) and out.counters.packets_out == 5


def test_fast_protect_refuses_after_wipe() -> None:
    out = OutboundSa(make_params((20, 128, 0)), 0.0)
    out.wipe()
    assert out._fast_seal is None
    with pytest.raises(EspDrop):
        out.protect(udp_packet(4, b"late"), 0.0)


@pytest.mark.parametrize("transform", AEAD)
def test_fast_unprotect_drops_replay_and_forgery_like_the_general_path(transform: tuple) -> None:
    params = make_params(transform)
    out, inb = OutboundSa(params, 0.0), InboundSa(params, 0.0)
    first = out.protect(udp_packet(4, b"one"), 0.0)
    second = out.protect(udp_packet(4, b"two"), 0.0)
    assert inb.unprotect(second, 0.0) == udp_packet(4, b"two")
    assert inb.unprotect(first, 0.0) == udp_packet(4, b"one")  # out of order, inside the window
    third = out.protect(udp_packet(4, b"three"), 0.0)
    forged = third[:-1] + bytes([third[-1] ^ 1])  # not yet received: the ICV check catches it
    for bad, reason in ((first, DropReason.REPLAY), (forged, DropReason.ICV_FAILURE)):
        with pytest.raises(EspDrop) as e:
            inb.unprotect(bad, 0.0)
        assert e.value.reason is reason
    assert inb.unprotect(memoryview(third), 0.0) == udp_packet(4, b"three")  # traffic continues
    c = inb.counters
    assert (c.packets_in, c.replay_drops, c.icv_failures) == (3, 1, 1)


def test_cached_inbound_selector_check_answers_like_the_uncached_one() -> None:
    sel = TrafficSelector(ip_network("198.18.2.0/24"), ip_network("198.18.1.0/24"), protocol=6)
    params = make_params((20, 128, 0))
    inb = InboundSa(replace(params, selectors=(sel,)), 0.0)
    out = OutboundSa(params, 0.0)
    ok = tcp_packet(4, b"in policy")
    udp = udp_packet(4, b"wrong protocol")
    for _ in range(3):  # first answer computed, later ones from the cache: the same
        assert inb.unprotect(out.protect(ok, 0.0), 0.0) == ok
        with pytest.raises(EspDrop) as e:
            inb.unprotect(out.protect(udp, 0.0), 0.0)
        assert e.value.reason is DropReason.POLICY
    # more flows than the cache holds: it is cleared, never wrong
    for i in range(5000):
        src = f"198.18.{9 if i % 2 else 1}.{i % 250 + 1}"
        pkt = raw(IP(src=src, dst="198.18.2.1") / TCP(sport=1024 + i % 60000, dport=443) / b"x")
        pkt_out = out.protect(pkt, 0.0)
        if i % 2:
            with pytest.raises(EspDrop):
                inb.unprotect(pkt_out, 0.0)
        else:
            assert inb.unprotect(pkt_out, 0.0) == pkt
    # uncached shapes (fragments) are still checked: a first TCP fragment passes, a UDP one does not
    frag = raw(IP(src="198.18.1.7", dst="198.18.2.1", flags="MF") / TCP(sport=1, dport=2) / b"frag")
    assert inb.unprotect(out.protect(frag, 0.0), 0.0) == frag
    frag_udp = raw(IP(src="198.18.1.7", dst="198.18.2.1", flags="MF") / UDP(sport=1, dport=2) / b"frag")
    with pytest.raises(EspDrop):
        inb.unprotect(out.protect(frag_udp, 0.0), 0.0)
