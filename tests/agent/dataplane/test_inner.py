"""Inner-packet surgery checked against Scapy's own parsing and checksums."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from meshsec.agent.dataplane.inner import checksum, clamp_mss, is_tcp_syn, too_big_reply
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6


def _ref_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum((data[i] << 8) | data[i + 1] for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@given(st.binary(max_size=3000))
def test_checksum_matches_rfc1071_loop(data: bytes) -> None:
    assert checksum(data) == _ref_checksum(data)


def test_mss_clamped_on_syn_v4_and_checksum_stays_valid() -> None:
    syn = bytes(
        IP(src="198.19.1.1", dst="198.19.2.1") / TCP(flags="S", options=[("MSS", 1460), ("SAckOK", b"")])
    )
    assert is_tcp_syn(syn)
    out = clamp_mss(syn, 1360)
    assert dict(IP(out)[TCP].options)["MSS"] == 1360
    ref = IP(out)
    del ref[TCP].chksum
    assert IP(bytes(ref))[TCP].chksum == IP(out)[TCP].chksum


def test_mss_clamped_on_syn_v6() -> None:
    syn = bytes(
        IPv6(src="fd00:1::1", dst="fd00:2::1") / TCP(flags="SA", options=[("NOP", None), ("MSS", 1440)])
    )
    out = clamp_mss(syn, 1300)
    ref = IPv6(out)
    assert dict(ref[TCP].options)["MSS"] == 1300
    del ref[TCP].chksum
    assert IPv6(bytes(ref))[TCP].chksum == IPv6(out)[TCP].chksum


def test_mss_left_alone_when_smaller_or_not_syn() -> None:
    syn = bytes(IP(src="198.19.1.1", dst="198.19.2.1") / TCP(flags="S", options=[("MSS", 1200)]))
    assert clamp_mss(syn, 1360) == syn
    ack = bytes(IP(src="198.19.1.1", dst="198.19.2.1") / TCP(flags="A", options=[("MSS", 1460)]))
    assert clamp_mss(ack, 1360) == ack
    assert clamp_mss(b"\x45" + b"\0" * 10, 1360) == b"\x45" + b"\0" * 10


def test_frag_needed_for_df_ipv4() -> None:
    big = bytes(IP(src="198.19.1.1", dst="198.19.2.1", flags="DF") / UDP(sport=1, dport=2) / (b"x" * 1500))
    reply = too_big_reply(big, 1400, bytes([198, 19, 1, 254]))
    assert reply is not None
    ip = IP(reply)
    assert (ip.src, ip.dst) == ("198.19.1.254", "198.19.1.1")
    assert (ip[ICMP].type, ip[ICMP].code, ip[ICMP].nexthopmtu) == (3, 4, 1400)
    assert ip[IPerror].dst == "198.19.2.1"
    assert len(reply) <= 576
    ref = IP(reply)
    del ref.chksum, ref[ICMP].chksum
    again = IP(bytes(ref))
    assert (again.chksum, again[ICMP].chksum) == (ip.chksum, ip[ICMP].chksum)


def test_no_frag_needed_without_df_or_for_icmp_errors() -> None:
    big = bytes(IP(src="198.19.1.1", dst="198.19.2.1") / UDP() / (b"x" * 1500))
    assert too_big_reply(big, 1400) is None
    err = bytes(IP(src="198.19.1.1", dst="198.19.2.1", flags="DF") / ICMP(type=3, code=1) / (b"x" * 1500))
    assert too_big_reply(err, 1400) is None


def test_packet_too_big_ipv6() -> None:
    big = bytes(IPv6(src="fd00:1::1", dst="fd00:2::1") / UDP(sport=1, dport=2) / (b"x" * 1500))
    reply = too_big_reply(big, 1380)
    assert reply is not None and len(reply) <= 1280
    ip = IPv6(reply)
    assert (ip.src, ip.dst) == ("fd00:2::1", "fd00:1::1")
    ptb = ip[ICMPv6PacketTooBig]
    assert ptb.mtu == 1380
    ref = IPv6(reply)
    del ref[ICMPv6PacketTooBig].cksum
    assert IPv6(bytes(ref))[ICMPv6PacketTooBig].cksum == ptb.cksum


@given(st.binary(max_size=200))
def test_surgery_never_raises_on_garbage(data: bytes) -> None:
    clamp_mss(data, 1000)
    too_big_reply(data, 1000)
    is_tcp_syn(data)
