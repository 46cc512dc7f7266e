"""protect -> unprotect round trips for every transform, mode, family and length; bad input is an EspDrop.

Properties: any inner packet survives the round trip byte for byte (transport mode: the receiver rebuilds
a canonical header, which the test packets already have); a flipped bit anywhere is ICV_FAILURE or
MALFORMED (REPLAY too when the flip lands in the sequence number and makes it an old one); truncation at
any length and random garbage are EspDrop and never another exception; every drop is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address, ip_network
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshsec.agent.esp import DropReason, EspDrop, InboundSa, Mode, OutboundSa, TrafficSelector
from meshsec.agent.esp.cipher import make_engine
from meshsec.agent.esp.sa import SaParams, TransportAddresses
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from .helpers import TRANSFORM_IDS, TRANSFORMS, make_params, sa_pair, tcp_packet, udp_packet

MODES = [Mode.TUNNEL, Mode.TRANSPORT]
combos = st.tuples(
    st.sampled_from(TRANSFORMS), st.sampled_from(MODES), st.sampled_from([4, 6]), st.booleans()
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


BUFFERS = [bytes, bytearray, lambda b: memoryview(b"\xee" * 7 + b + b"\xee")[7:-1]]  # data plane hands any


@SETTINGS
@given(combo=combos, payload=st.binary(max_size=1500), tcp=st.booleans(), buf=st.sampled_from(BUFFERS))
def test_round_trip(combo: tuple, payload: bytes, tcp: bool, buf: Callable[[bytes], Any]) -> None:
    transform, mode, family, esn = combo
    out, inb = sa_pair(transform, mode, family, esn=esn)
    packet = (tcp_packet if tcp else udp_packet)(family, payload)
    esp = out.protect(buf(packet), 1.0)
    spec = out.spec
    assert (len(esp) - 8 - spec.iv_len - spec.icv_len) % spec.block == 0
    assert inb.unprotect(buf(esp), 1.0) == packet
    assert out.counters.packets_out == inb.counters.packets_in == 1
    assert out.counters.bytes_out == inb.counters.bytes_in == len(packet)


@pytest.mark.parametrize("transform", TRANSFORMS, ids=TRANSFORM_IDS)
def test_many_packets_out_of_order(transform: tuple) -> None:
    out, inb = sa_pair(transform, window=64)
    packets = [udp_packet(4, bytes([i]) * i) for i in range(100)]
    esps = [out.protect(p, 0.0) for p in packets]
    order = list(range(100))
    order[10:20] = reversed(order[10:20])  # reordering inside the window is accepted
    for i in order:
        assert inb.unprotect(esps[i], 0.0) == packets[i]
    with pytest.raises(EspDrop) as e:
        inb.unprotect(esps[50], 0.0)
    assert e.value.reason is DropReason.REPLAY
    assert inb.counters.replay_drops == 1
    # counter IVs for AEAD: the explicit IV is the sequence number, unique per key
    if out.spec.aead:
        assert [bytes(x[8:16]) for x in esps[:3]] == [i.to_bytes(8, "big") for i in (1, 2, 3)]
    else:
        assert len({bytes(x[8:24]) for x in esps}) == 100


@SETTINGS
@given(combo=combos, payload=st.binary(max_size=200), data=st.data())
def test_flipped_bit_is_dropped(combo: tuple, payload: bytes, data: st.DataObject) -> None:
    transform, mode, family, esn = combo
    out, inb = sa_pair(transform, mode, family, esn=esn)
    esp = bytearray(out.protect(udp_packet(family, payload), 0.0))
    bit = data.draw(st.integers(0, len(esp) * 8 - 1))
    esp[bit // 8] ^= 0x80 >> (bit % 8)
    with pytest.raises(EspDrop) as e:
        inb.unprotect(esp, 0.0)
    allowed = {DropReason.ICV_FAILURE, DropReason.MALFORMED}
    if 32 <= bit < 64:
        allowed.add(DropReason.REPLAY)  # seq 1 flipped to 0 is never valid
    assert e.value.reason in allowed
    assert inb.counters.packets_in == 0
    assert inb.replay.highest == 0  # nothing forged moved the window


@SETTINGS
@given(combo=combos, payload=st.binary(max_size=100), data=st.data())
def test_truncation_is_dropped(combo: tuple, payload: bytes, data: st.DataObject) -> None:
    transform, mode, family, esn = combo
    out, inb = sa_pair(transform, mode, family, esn=esn)
    esp = out.protect(udp_packet(family, payload), 0.0)
    cut = data.draw(st.integers(0, len(esp) - 1))
    with pytest.raises(EspDrop) as e:
        inb.unprotect(esp[:cut], 0.0)
    assert e.value.reason in {DropReason.MALFORMED, DropReason.ICV_FAILURE}


@SETTINGS
@given(transform=st.sampled_from(TRANSFORMS), mode=st.sampled_from(MODES), garbage=st.binary(max_size=300))
def test_garbage_is_dropped(transform: tuple, mode: Mode, garbage: bytes) -> None:
    _, inb = sa_pair(transform, mode)
    with pytest.raises(EspDrop):
        inb.unprotect(garbage, 0.0)
    c = inb.counters
    assert c.malformed + c.icv_failures + c.replay_drops == 1


def _craft(transform: tuple, plaintext: bytes, *, seq: int = 1, mode: Mode = Mode.TUNNEL) -> tuple:
    """An authentic ESP packet around an arbitrary plaintext (payload||padding||trailer chosen freely)."""
    params = make_params(transform, mode=mode)
    if mode is Mode.TRANSPORT:
        a, b = ip_address("198.18.1.1"), ip_address("198.18.2.1")
        params = SaParams(**{**_fields(params), "transport": TransportAddresses(local=b, remote=a)})
    engine = make_engine(params.spec, bytearray(params.enc_key), bytearray(params.integ_key), params.esn)
    return InboundSa(params, 0.0), engine.seal(params.spi, seq, None, plaintext)


def _fields(p: SaParams) -> dict:
    return {f: getattr(p, f) for f in SaParams.__dataclass_fields__}


@pytest.mark.parametrize("transform", TRANSFORMS, ids=TRANSFORM_IDS)
def test_bad_padding_is_malformed(transform: tuple) -> None:
    block = make_params(transform).spec.block
    inner = udp_packet(4, b"x" * 30)
    body = inner + b"\x01\x03"  # pad bytes must be 1, 2
    body += b"\x00" * ((-(len(body) + 2)) % block)
    bad_len = len(body) - len(inner)
    inb, esp = _craft(transform, body + bytes([bad_len, 4]))
    with pytest.raises(EspDrop) as e:
        inb.unprotect(esp, 0.0)
    assert e.value.reason is DropReason.MALFORMED
    assert inb.counters.malformed == 1
    # authentic, so the window moved even though the packet was dropped after the ICV
    assert inb.replay.highest == 1


@pytest.mark.parametrize("transform", TRANSFORMS, ids=TRANSFORM_IDS)
def test_pad_length_beyond_payload_is_malformed(transform: tuple) -> None:
    block = make_params(transform).spec.block
    body = b"\x01" * (block * 2 - 2)
    inb, esp = _craft(transform, body + bytes([255, 4]))
    with pytest.raises(EspDrop) as e:
        inb.unprotect(esp, 0.0)
    assert e.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize("transform", TRANSFORMS, ids=TRANSFORM_IDS)
def test_dummy_packet_dropped_and_counted(transform: tuple) -> None:
    out, inb = sa_pair(transform)
    with pytest.raises(EspDrop) as e:
        inb.unprotect(out.encapsulate(b"\x00" * 40, 59, 0.0), 0.0)
    assert e.value.reason is DropReason.DUMMY
    assert inb.counters.dummy_packets == 1
    assert inb.counters.packets_in == 0
    assert inb.counters.malformed == 0
    packet = udp_packet(4, b"after dummy")
    assert inb.unprotect(out.protect(packet, 0.0), 0.0) == packet


@pytest.mark.parametrize("family", [4, 6])
def test_tfc_padding_trimmed_in_tunnel_mode(family: int) -> None:
    out, inb = sa_pair((20, 128, 0), family=family)
    packet = udp_packet(family, b"hello")
    nh = 4 if family == 4 else 41
    esp = out.encapsulate(packet + b"\x00" * 64, nh, 0.0)  # RFC 4303 §2.7 TFC padding after the packet
    assert inb.unprotect(esp, 0.0) == packet


def test_inner_length_beyond_payload_is_malformed() -> None:
    out, inb = sa_pair((20, 128, 0))
    packet = udp_packet(4, b"hello")
    with pytest.raises(EspDrop) as e:
        inb.unprotect(out.encapsulate(packet[:-3], 4, 0.0), 0.0)
    assert e.value.reason is DropReason.MALFORMED


def test_non_ip_next_header_in_tunnel_mode_is_policy() -> None:
    out, inb = sa_pair((20, 128, 0))
    with pytest.raises(EspDrop) as e:
        inb.unprotect(out.encapsulate(b"\x00" * 40, 17, 0.0), 0.0)
    assert e.value.reason is DropReason.POLICY
    assert inb.counters.policy_drops == 1


def test_inbound_selectors_enforced() -> None:
    sel = TrafficSelector(ip_network("198.18.2.0/24"), ip_network("198.18.1.0/24"))  # from B's view
    params = make_params((20, 128, 0))
    inb = InboundSa(SaParams(**{**_fields(params), "selectors": (sel,)}), 0.0)
    out = OutboundSa(params, 0.0)
    ok = udp_packet(4, b"in policy")
    assert inb.unprotect(out.protect(ok, 0.0), 0.0) == ok
    spoofed = udp_packet(4, b"spoofed", src="198.18.9.9")
    with pytest.raises(EspDrop) as e:
        inb.unprotect(out.protect(spoofed, 0.0), 0.0)
    assert e.value.reason is DropReason.POLICY
    v6 = udp_packet(6, b"wrong family")
    with pytest.raises(EspDrop):
        inb.unprotect(out.protect(v6, 0.0), 0.0)


@pytest.mark.parametrize("bad", [b"", b"\x45" * 19, b"\x75" + b"\x00" * 40])
def test_protect_rejects_non_ip(bad: bytes) -> None:
    out, _ = sa_pair((20, 128, 0))
    with pytest.raises(EspDrop) as e:
        out.protect(bad, 0.0)
    assert e.value.reason is DropReason.MALFORMED
    assert out.seq == 0


def test_transport_refuses_fragments_and_wrong_family() -> None:
    out, _ = sa_pair((20, 128, 0), Mode.TRANSPORT, 4)
    frag = bytes(IP(src="198.18.1.1", dst="198.18.2.1", flags="MF") / UDP() / (b"x" * 20))
    with pytest.raises(EspDrop) as e:
        out.protect(frag, 0.0)
    assert e.value.reason is DropReason.POLICY
    with pytest.raises(EspDrop) as e:
        out.protect(udp_packet(6, b"v6"), 0.0)
    assert e.value.reason is DropReason.POLICY


def test_transport_ipv6_extension_header_refused() -> None:
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt

    out, _ = sa_pair((20, 128, 0), Mode.TRANSPORT, 6)
    pkt = bytes(IPv6(src="fd00::a", dst="fd00::b") / IPv6ExtHdrDestOpt() / UDP() / b"x")
    with pytest.raises(EspDrop) as e:
        out.protect(pkt, 0.0)
    assert e.value.reason is DropReason.POLICY


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_transport_checksum_fixed_behind_nat(family: int, proto: str) -> None:
    """RFC 3948 §3.1.2: A (private address) sends via a NAT; B sees A's public address, and the L4
    checksum A computed over its private pseudo-header must be valid for B's rebuilt header."""
    if family == 4:
        a_priv, a_pub, b = "198.18.5.5", "198.19.0.1", "198.18.2.1"
    else:
        a_priv, a_pub, b = "fd00:5::5", "fd00:99::1", "fd00::b"
    params = make_params((28, 256, 0), mode=Mode.TRANSPORT)
    out = OutboundSa(
        SaParams(**{**_fields(params), "transport": TransportAddresses(ip_address(a_priv), ip_address(b))}),
        0.0,
    )
    inb = InboundSa(
        SaParams(
            **{
                **_fields(params),
                "transport": TransportAddresses(
                    local=ip_address(b),
                    remote=ip_address(a_pub),
                    peer_src=ip_address(a_priv),
                    peer_dst=ip_address(b),
                ),
            }
        ),
        0.0,
    )
    build = udp_packet if proto == "udp" else tcp_packet
    for payload in (b"", b"a", b"hello world, odd length!", bytes(range(256)) * 5):
        got = inb.unprotect(out.protect(build(family, payload, src=a_priv, dst=b), 0.0), 0.0)
        cls = IP if family == 4 else IPv6
        pkt = cls(bytes(got))
        assert pkt.src == a_pub and pkt.dst == b
        l4 = pkt[UDP] if proto == "udp" else pkt[TCP]
        received = l4.chksum
        del l4.chksum
        assert cls(bytes(pkt))[UDP if proto == "udp" else TCP].chksum == received
        if family == 4:
            received_ip = pkt.chksum
            del pkt.chksum
            assert IP(bytes(pkt)).chksum == received_ip


def test_transport_ipv4_udp_zero_checksum_left_alone() -> None:
    params = make_params((20, 128, 0), mode=Mode.TRANSPORT)
    a, pub, b = ip_address("198.18.5.5"), ip_address("198.19.0.1"), ip_address("198.18.2.1")
    out = OutboundSa(SaParams(**{**_fields(params), "transport": TransportAddresses(a, b)}), 0.0)
    inb = InboundSa(
        SaParams(**{**_fields(params), "transport": TransportAddresses(b, pub, peer_src=a, peer_dst=b)}), 0.0
    )
    pkt = bytearray(udp_packet(4, b"no checksum", src=str(a)))
    pkt[26:28] = b"\x00\x00"
    got = inb.unprotect(out.protect(pkt, 0.0), 0.0)
    assert got[26:28] == b"\x00\x00"


@SETTINGS
@given(mode=st.sampled_from(MODES), family=st.sampled_from([4, 6]), garbage=st.binary(max_size=200))
def test_protect_garbage_never_crashes(mode: Mode, family: int, garbage: bytes) -> None:
    """Whatever the TUN hands over, protect returns an ESP packet or raises EspDrop, nothing else."""
    out, inb = sa_pair((20, 128, 0), mode, family)
    try:
        esp = out.protect(garbage, 0.0)
    except EspDrop as e:
        assert e.reason in {DropReason.MALFORMED, DropReason.POLICY}
        return
    try:
        inb.unprotect(esp, 0.0)
    except EspDrop as e:  # the receiver may still refuse what it cannot parse
        assert e.reason in {DropReason.MALFORMED, DropReason.POLICY}


def _checksum_ok(pkt: bytes, family: int) -> bool:
    """Scapy recomputes the L4 (and IPv4 header) checksum; the received ones must equal it."""
    cls = IP if family == 4 else IPv6
    parsed = cls(pkt)
    l4 = parsed[TCP] if parsed.haslayer(TCP) else parsed[UDP]
    got = l4.chksum
    del l4.chksum
    if family == 4:
        del parsed.chksum
    again = cls(bytes(parsed))
    ok = (again[TCP] if again.haslayer(TCP) else again[UDP]).chksum == got
    return ok and (family == 6 or again.chksum == cls(pkt).chksum)


v4_hosts = st.integers(0, (1 << 17) - 1).map(lambda i: str(ip_address(int(ip_address("198.18.0.0")) + i)))
v6_hosts = st.integers(1, (1 << 120) - 1).map(lambda i: str(ip_address(int(ip_address("fd00::")) + i)))


@SETTINGS
@given(data=st.data(), family=st.sampled_from([4, 6]), tcp=st.booleans(), payload=st.binary(max_size=300))
def test_transport_nat_fixup_property(data: st.DataObject, family: int, tcp: bool, payload: bytes) -> None:
    """Any addresses on either side of the NAT: the rebuilt packet's checksums are valid."""
    hosts = v4_hosts if family == 4 else v6_hosts
    a_priv, a_pub, b = (data.draw(hosts) for _ in range(3))
    params = make_params((20, 256, 0), mode=Mode.TRANSPORT)
    a_p, a_u, b_a = ip_address(a_priv), ip_address(a_pub), ip_address(b)
    out = OutboundSa(SaParams(**{**_fields(params), "transport": TransportAddresses(a_p, b_a)}), 0.0)
    addrs = TransportAddresses(local=b_a, remote=a_u, peer_src=a_p, peer_dst=b_a)
    inb = InboundSa(SaParams(**{**_fields(params), "transport": addrs}), 0.0)
    build = tcp_packet if tcp else udp_packet
    got = bytes(inb.unprotect(out.protect(build(family, payload, src=a_priv, dst=b), 0.0), 0.0))
    assert _checksum_ok(got, family)
    assert got[(12 if family == 4 else 8) :][: (4 if family == 4 else 16)] == a_u.packed
