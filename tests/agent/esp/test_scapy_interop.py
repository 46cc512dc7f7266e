"""Interoperability with Scapy's ESP (scapy.layers.ipsec), an independent implementation, in process.

For every transform, tunnel and transport mode, IPv4 and IPv6 inner packets, with and without ESN, and
ESP-in-UDP on 4500 (RFC 3948, Scapy's nat_t_header): our packets decrypt in Scapy to the original inner
packet, Scapy's packets unprotect in ours, and — given the same IV and sequence number — both produce the
same bytes. Sequence numbers start just below a 2^32 boundary with ESN so the high bits (in the ICV, not
on the wire) change during the exchange.

Scapy facts this relies on (scapy 2.6+): `esn_en` covers AEAD AAD and HMAC ICV input; Scapy has no replay
window and does not infer high bits, so the test sets `sa.esn` (the high 32 bits) per packet; Scapy
treats an explicit `seq_num=0` as "not given" (`seq_num or self.seq_num`), so the test sets `sa.seq_num`
instead of passing it (a low half of 0 occurs at every 2^32 crossing); transport
mode with nat_t_header rebuilds the IP header from the outer one (proto/next header = ESP next header).
"""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from meshsec.agent.esp import InboundSa, Mode, OutboundSa, transform_spec
from meshsec.agent.esp.sa import SaParams, TransportAddresses
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw, raw

from .helpers import ADDR, TRANSFORM_IDS, TRANSFORMS, make_params, tcp_packet, udp_packet

SCAPY_NAMES = {20: ("AES-GCM", None), 21: ("AES-NULL-GMAC", None), 28: ("CHACHA20-POLY1305", None)}
OUTER = {4: ("198.18.0.1", "198.18.0.2"), 6: ("fd00:1::1", "fd00:1::2")}
NAT_T = UDP(sport=4500, dport=4500)
START = (3 << 32) - 3  # the first packets cross from high bits 2 to 3


def _scapy_sa(params: SaParams, mode: Mode, outer: int) -> SecurityAssociation:
    if params.encr_id == 12:
        crypt, auth = "AES-CBC", "SHA2-256-128"
    else:
        crypt, auth = SCAPY_NAMES[params.encr_id]
    tunnel = None
    if mode is Mode.TUNNEL:
        src, dst = OUTER[outer]
        tunnel = IP(src=src, dst=dst) if outer == 4 else IPv6(src=src, dst=dst)
    return SecurityAssociation(
        ESP,
        spi=params.spi,
        crypt_algo=crypt,
        crypt_key=params.enc_key,
        auth_algo=auth,
        auth_key=params.integ_key or None,
        tunnel_header=tunnel,
        nat_t_header=UDP(sport=4500, dport=4500),
        esn_en=params.esn,
    )


def _ours(params: SaParams, mode: Mode, family: int) -> tuple[SaParams, SaParams]:
    if mode is Mode.TUNNEL:
        return params, params
    a, b = (ip_address(x) for x in ADDR[family])
    fields = {f: getattr(params, f) for f in SaParams.__dataclass_fields__}
    return (
        SaParams(**{**fields, "transport": TransportAddresses(local=a, remote=b)}),
        SaParams(**{**fields, "transport": TransportAddresses(local=b, remote=a)}),
    )


def _wire(esp: bytes, mode: Mode, family: int, outer: int) -> IP | IPv6:
    """Our ESP packet in a UDP/4500 datagram, as a receiver's socket would see it (parsed by Scapy)."""
    src, dst = OUTER[outer] if mode is Mode.TUNNEL else ADDR[family]
    fam = outer if mode is Mode.TUNNEL else family
    if fam == 4:
        return IP(
            raw(IP(src=src, dst=dst, id=0, flags="DF", ttl=64) / UDP(sport=4500, dport=4500) / Raw(esp))
        )
    return IPv6(raw(IPv6(src=src, dst=dst, hlim=64) / UDP(sport=4500, dport=4500) / Raw(esp)))


CASES = [
    pytest.param(t, m, f, esn, outer, id=f"{name}-{m.value}-v{f}{'-esn' if esn else ''}-outer{outer}")
    for t, name in zip(TRANSFORMS, TRANSFORM_IDS, strict=True)
    for m in (Mode.TUNNEL, Mode.TRANSPORT)
    for f in (4, 6)
    for esn in (False, True)
    for outer in ((4, 6) if m is Mode.TUNNEL and f == 4 else (f if m is Mode.TRANSPORT else 4,))
]


def _inner(family: int, i: int) -> bytes:
    build = tcp_packet if i % 2 else udp_packet
    return build(family, bytes(range(256))[: (i * 37) % 200] + b"meshsec")


@pytest.mark.parametrize(("transform", "mode", "family", "esn", "outer"), CASES)
def test_ours_to_scapy(transform: tuple, mode: Mode, family: int, esn: bool, outer: int) -> None:
    params = make_params(transform, esn=esn, mode=mode)
    out_p, _ = _ours(params, mode, family)
    start = START if esn else 0xFFFF_FFFF - 5
    ours = OutboundSa(out_p, 0.0, initial_seq=start)
    theirs = _scapy_sa(params, mode, outer)
    for i in range(4):
        inner = _inner(family, i)
        esp = bytes(ours.protect(inner, 0.0))
        seq = start + 1 + i
        theirs.esn = seq >> 32
        wire = _wire(esp, mode, family, outer)
        assert wire.haslayer(ESP)
        assert raw(theirs.decrypt(wire)) == inner
        # same IV and sequence number -> Scapy builds exactly our bytes
        iv = esp[8 : 8 + transform_spec(*transform).iv_len]
        theirs.seq_num = seq & 0xFFFF_FFFF
        again = theirs.encrypt(IP(inner) if family == 4 else IPv6(inner), iv=iv)
        assert raw(again[UDP].payload) == esp


@pytest.mark.parametrize(("transform", "mode", "family", "esn", "outer"), CASES)
def test_scapy_to_ours(transform: tuple, mode: Mode, family: int, esn: bool, outer: int) -> None:
    params = make_params(transform, esn=esn, mode=mode)
    _, in_p = _ours(params, mode, family)
    start = START if esn else 0xFFFF_FFFF - 5
    ours = InboundSa(in_p, 0.0, replay_highest=start)
    theirs = _scapy_sa(params, mode, outer)
    sent = []
    for i in range(4):
        inner = _inner(family, i)
        seq = start + 1 + i
        theirs.esn = seq >> 32
        theirs.seq_num = seq & 0xFFFF_FFFF
        enc = theirs.encrypt(IP(inner) if family == 4 else IPv6(inner))  # Scapy's random IV
        sent.append((raw(enc[UDP].payload), inner))
    for esp, inner in reversed(sent):  # out of order, inside the window
        assert ours.unprotect(esp, 0.0) == inner
    assert ours.replay.highest == start + 4
    assert ours.counters.packets_in == 4
