"""SPD lookup equals a brute-force reference (longest remote prefix, then longest local prefix, then a
specific protocol, then narrower ports, then insertion order) for IPv4 and IPv6, including removal."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st
from meshsec.agent.esp import Spd, TrafficSelector
from meshsec.agent.esp.spd import compile_inbound_check, parse_flow
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import raw

V4_BASE = int(ip_address("198.18.0.0"))
V6_BASE = int(ip_address("fd00::"))


def _net(family: int, offset: int, plen: int) -> IPv4Network | IPv6Network:
    if family == 4:
        return ip_network((V4_BASE + offset, plen), strict=False)
    return ip_network((V6_BASE + offset, plen + 96), strict=False)  # same shape, shifted into IPv6


offsets = st.integers(0, 1023)  # a small universe (198.18.0.0/22) so prefixes overlap a lot
_span = st.tuples(st.integers(0, 70), st.integers(0, 70)).map(lambda t: (min(t), max(t)))
ports = st.one_of(st.just((0, 65535)), _span)


@st.composite
def selectors(draw: st.DrawFn) -> TrafficSelector:
    fam = draw(st.sampled_from([4, 6]))
    return TrafficSelector(
        _net(fam, draw(offsets), draw(st.integers(21, 32))),
        _net(fam, draw(offsets), draw(st.integers(21, 32))),
        draw(st.sampled_from([0, 0, 6, 17, 1, 58])),
        draw(ports),
        draw(ports),
    )


@st.composite
def packets(draw: st.DrawFn) -> tuple[bytes, int, int, int, int, int, int]:
    fam = draw(st.sampled_from([4, 6]))
    src, dst = draw(offsets), draw(offsets)
    proto = draw(st.sampled_from([6, 17, 1]))
    sport, dport = draw(st.integers(0, 70)), draw(st.integers(0, 70))
    if proto == 1 and fam == 6:
        proto = 58
    l4 = {
        6: TCP(sport=sport, dport=dport),
        17: UDP(sport=sport, dport=dport),
        1: ICMP(),
        58: ICMPv6EchoRequest(),
    }
    l4 = l4[proto]
    if fam == 4:
        pkt = raw(IP(src=str(ip_address(V4_BASE + src)), dst=str(ip_address(V4_BASE + dst))) / l4)
        a, b = V4_BASE + src, V4_BASE + dst
    else:
        pkt = raw(IPv6(src=str(ip_address(V6_BASE + src)), dst=str(ip_address(V6_BASE + dst))) / l4)
        a, b = V6_BASE + src, V6_BASE + dst
    return pkt, fam, a, b, proto, sport, dport


def matches(ts: TrafficSelector, fam: int, src: int, dst: int, proto: int, sport: int, dport: int) -> bool:
    """Outbound sense: src in local, dst in remote."""
    if ts.local.version != fam:
        return False
    if ip_address(src) not in ts.local or ip_address(dst) not in ts.remote:
        return False
    if ts.protocol not in (0, proto):
        return False
    full = ts.local_ports == (0, 65535) and ts.remote_ports == (0, 65535)
    return full or (
        proto in (6, 17)
        and ts.local_ports[0] <= sport <= ts.local_ports[1]
        and ts.remote_ports[0] <= dport <= ts.remote_ports[1]
    )


def reference(entries: list[tuple[TrafficSelector, int]], pkt: tuple) -> int | None:
    _, fam, src, dst, proto, sport, dport = pkt
    cands = []
    for order, (ts, value) in enumerate(entries):
        if not matches(ts, fam, src, dst, proto, sport, dport):
            continue
        spread = ts.local_ports[1] - ts.local_ports[0] + ts.remote_ports[1] - ts.remote_ports[0]
        key = (-ts.remote.prefixlen, -ts.local.prefixlen, ts.protocol == 0, spread, order)
        cands.append((key, value))
    return min(cands)[1] if cands else None


@settings(max_examples=150, deadline=None)
@given(
    sels=st.lists(selectors(), max_size=40), pkts=st.lists(packets(), min_size=1, max_size=30), data=st.data()
)
def test_lookup_matches_brute_force(
    sels: list[TrafficSelector], pkts: list[tuple], data: st.DataObject
) -> None:
    spd: Spd[int] = Spd()
    entries = []
    for i, ts in enumerate(sels):
        value = data.draw(st.integers(0, max(0, i)))  # some values shared by several selectors
        spd.add(ts, value)
        entries.append((ts, value))
    assert len(spd) == len(entries)
    for p in pkts:
        assert spd.lookup(p[0]) == reference(entries, p)
        flow = parse_flow(p[0])
        assert flow is not None and spd.lookup_flow(flow) == reference(entries, p)
        # the inbound check of an SA with these selectors: the packet seen arriving (src in remote)
        inbound = compile_inbound_check(tuple(sels))
        _, fam, src, dst, proto, sport, dport = p
        expected = any(matches(ts, fam, dst, src, proto, dport, sport) for ts in sels)
        assert (inbound(p[0]) if inbound else True) == (expected if sels else True)
    if entries:
        gone = data.draw(st.sampled_from([v for _, v in entries]))
        removed = spd.remove(gone)
        entries = [e for e in entries if e[1] != gone]
        assert removed >= 1 and len(spd) == len(entries)
        for p in pkts:
            assert spd.lookup(p[0]) == reference(entries, p)


def test_many_sas_longest_prefix() -> None:
    """Thousands of /32 peers plus covering prefixes: the most specific remote prefix wins."""
    spd: Spd[str] = Spd()
    local = ip_network("198.18.0.0/24")
    spd.add(TrafficSelector(local, ip_network("198.19.0.0/16")), "wide")
    spd.add(TrafficSelector(local, ip_network("198.19.7.0/24")), "seven")
    for i in range(4000):
        spd.add(TrafficSelector(local, ip_network((int(ip_address("198.19.16.0")) + i, 32))), f"host{i}")
    spd.add(TrafficSelector(ip_network("fd00:1::/64"), ip_network("fd00:2::/48")), "v6")
    assert len(spd) == 4003

    def pkt(dst: str, src: str = "198.18.0.5") -> bytes:
        return raw(IP(src=src, dst=dst) / UDP())

    assert spd.lookup(pkt("198.19.16.0")) == "host0"
    assert spd.lookup(pkt(str(ip_address(int(ip_address("198.19.16.0")) + 3999)))) == "host3999"
    assert spd.lookup(pkt("198.19.7.9")) == "seven"
    assert spd.lookup(pkt("198.19.200.1")) == "wide"
    assert spd.lookup(pkt("198.19.200.1", src="198.18.1.1")) is None  # local selector does not match
    assert spd.lookup(raw(IPv6(src="fd00:1::5", dst="fd00:2:0:9::1") / UDP())) == "v6"
    assert spd.lookup(raw(IPv6(src="fd00:3::5", dst="fd00:2:0:9::1") / UDP())) is None
    assert spd.lookup(b"\x45\x00") is None and spd.lookup(b"") is None
    assert spd.remove("seven") == 1
    assert spd.lookup(pkt("198.19.7.9")) == "wide"


def test_non_first_fragment_has_no_ports() -> None:
    spd: Spd[str] = Spd()
    spd.add(TrafficSelector.of("198.18.0.0/24", "198.19.0.0/24", 17, remote_ports=(53, 53)), "dns")
    spd.add(TrafficSelector.of("198.18.0.0/24", "198.19.0.0/24"), "any")
    first = raw(IP(src="198.18.0.1", dst="198.19.0.1") / UDP(sport=999, dport=53))
    later = raw(IP(src="198.18.0.1", dst="198.19.0.1", frag=10, proto=17) / (b"\x00" * 16))
    assert spd.lookup(first) == "dns"
    assert spd.lookup(later) == "any"


def test_selector_validation() -> None:
    import pytest

    with pytest.raises(ValueError):
        TrafficSelector.of("198.18.0.0/24", "fd00::/64")
    with pytest.raises(ValueError):
        TrafficSelector.of("198.18.0.0/24", "198.19.0.0/24", 6, local_ports=(10, 5))
