"""TSO segmentation and GRO coalescing of inner TCP packets, checked with Scapy."""

from __future__ import annotations

import pytest
from meshsec.agent.dataplane import offload
from meshsec.agent.dataplane.inner import pseudo_header_sum
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6


def _partial(pkt: bytes, ip_len: int) -> bytes:
    """Make `pkt` look like the kernel's CHECKSUM_PARTIAL output: TCP checksum = pseudo-header sum."""
    out = bytearray(pkt)
    if pkt[0] >> 4 == 4:
        src, dst = pkt[12:16], pkt[16:20]
    else:
        src, dst = pkt[8:24], pkt[24:40]
    out[ip_len + 16 : ip_len + 18] = pseudo_header_sum(src, dst, 6, len(pkt) - ip_len).to_bytes(2, "big")
    return bytes(out)


def _tcp_ok(pkt: bytes) -> bool:
    cls = IP if pkt[0] >> 4 == 4 else IPv6
    ref = cls(pkt)
    del ref[TCP].chksum
    if cls is IP:
        del ref.chksum
    return bytes(cls(bytes(ref))) == pkt


@pytest.mark.parametrize("family", [4, 6])
def test_tso_super_packet_is_segmented_with_valid_checksums(family: int) -> None:
    payload = bytes(range(256)) * 20  # 5120 bytes
    ip = (
        IP(src="198.19.1.1", dst="198.19.2.1", flags="DF", id=100)
        if family == 4
        else IPv6(src="fd00::1", dst="fd00::2")
    )
    sup = bytes(
        ip
        / TCP(
            sport=5000,
            dport=5201,
            seq=1000,
            flags="PA",
            options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))],
        )
        / payload
    )
    ip_len = 20 if family == 4 else 40
    gso = offload.GSO_TCPV4 if family == 4 else offload.GSO_TCPV6
    hdr = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, gso, ip_len + 32, 1348, ip_len, 16)
    segs = offload.split_read(hdr + _partial(sup, ip_len))
    assert len(segs) == 4
    got = b""
    for i, seg in enumerate(segs):
        assert _tcp_ok(seg), f"segment {i} has a bad checksum"
        p = (IP if family == 4 else IPv6)(seg)
        assert p[TCP].seq == 1000 + i * 1348
        assert ("P" in str(p[TCP].flags)) == (i == 3)
        got += bytes(p[TCP].payload)
        if family == 4:
            assert p.id == 100 + i
    assert got == payload


def test_needs_csum_single_packet_is_completed() -> None:
    pkt = bytes(IP(src="198.19.1.1", dst="198.19.2.1") / UDP(sport=1, dport=2) / b"hello")
    out = bytearray(pkt)
    out[26:28] = pseudo_header_sum(pkt[12:16], pkt[16:20], 17, len(pkt) - 20).to_bytes(2, "big")
    hdr = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, offload.GSO_NONE, 0, 0, 20, 6)
    (done,) = offload.split_read(hdr + bytes(out))
    assert done == pkt


def test_garbage_reads_raise_only_offload_error() -> None:
    for buf in (b"", b"\0" * 12, offload.VNET_HDR.pack(0, 9, 0, 0, 0, 0) + b"\x45" + b"\0" * 40):
        with pytest.raises(offload.OffloadError):
            offload.split_read(buf)


def _segments(n: int, family: int = 4, seq: int = 7) -> list[bytes]:
    ip = (
        IP(src="198.19.1.1", dst="198.19.2.1", flags="DF")
        if family == 4
        else IPv6(src="fd00::1", dst="fd00::2")
    )
    return [
        bytes(ip / TCP(sport=5201, dport=5000, seq=seq + i * 1000, ack=9, flags="A") / (bytes([i]) * 1000))
        for i in range(n)
    ]


@pytest.mark.parametrize("family", [4, 6])
def test_gro_merges_consecutive_segments(family: int) -> None:
    segs = _segments(5, family)
    (write,) = offload.coalesce(segs)
    flags, gso_type, hdr_len, gso_size, start, off = offload.VNET_HDR.unpack_from(write)
    ip_len = 20 if family == 4 else 40
    assert (flags, gso_size, start, off, hdr_len) == (offload.F_NEEDS_CSUM, 1000, ip_len, 16, ip_len + 20)
    assert gso_type == (offload.GSO_TCPV4 if family == 4 else offload.GSO_TCPV6)
    sup = (IP if family == 4 else IPv6)(write[offload.VNET_HDR_LEN :])
    assert bytes(sup[TCP].payload) == b"".join(bytes([i]) * 1000 for i in range(5))


def test_gro_keeps_gaps_and_other_packets_apart() -> None:
    segs = _segments(3)
    other = bytes(IP(src="198.19.1.1", dst="198.19.2.1") / UDP() / b"x")
    writes = offload.coalesce([segs[0], other, segs[2]])  # segs[1] lost: no merge across the gap
    assert len(writes) == 3
    assert all(w[: offload.VNET_HDR_LEN] == offload.PLAIN_HDR for w in writes)
    assert writes[1][offload.VNET_HDR_LEN :] == other


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(("size", "mss"), [(1, 536), (1347, 1347), (4001, 1347), (2695, 7), (60001, 1400)])
def test_tso_segments_odd_sizes_id_wrap_and_flags(family: int, size: int, mss: int) -> None:
    """Odd payload and MSS lengths (RFC 1071 zero padding), the IPv4 id wrapping at 65535, FIN and PSH
    only on the last segment, CWR only on the first -- every checksum checked by Scapy."""
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    ip = (
        IP(src="198.19.1.1", dst="198.19.2.1", flags="DF", id=65534)
        if family == 4
        else IPv6(src="fd00::1", dst="fd00::2")
    )
    sup = bytes(ip / TCP(sport=5000, dport=5201, seq=0xFFFFFF00, flags="FPAC") / payload)
    ip_len = 20 if family == 4 else 40
    gso = offload.GSO_TCPV4 if family == 4 else offload.GSO_TCPV6
    hdr = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, gso, ip_len + 20, mss, ip_len, 16)
    segs = offload.split_read(hdr + _partial(sup, ip_len))
    assert len(segs) == -(-size // mss)
    got = b""
    for i, seg in enumerate(segs):
        assert _tcp_ok(seg), f"segment {i} has a bad checksum"
        p = (IP if family == 4 else IPv6)(seg)
        flags = str(p[TCP].flags)
        last = i == len(segs) - 1
        assert p[TCP].seq == (0xFFFFFF00 + i * mss) & 0xFFFFFFFF
        assert ("F" in flags, "P" in flags, "C" in flags) == (last, last, i == 0)
        if family == 4:
            assert p.id == (65534 + i) & 0xFFFF
        got += bytes(p[TCP].payload)
    assert got == payload
