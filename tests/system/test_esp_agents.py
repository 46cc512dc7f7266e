"""Two of our data planes, statically keyed, between two namespaces: real TUNs, real ESP-in-UDP.

Proves: ping and a 100 MB iperf3 TCP transfer in both directions for tunnel and transport mode over
IPv4 and IPv6 (transport mode also proves the fwmark policy routing: the peer's own address is routed
into the TUN, yet our ESP datagrams to it do not loop); and that a replayed captured packet, a packet
with one flipped bit and a truncated one are each dropped and counted while traffic continues.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.support.netns import Namespace, Topology, wait_for
from tests.support.static_tunnel import (
    ADDRESSING,
    REPO_ROOT,
    Addressing,
    StaticTunnel,
    endpoint_config,
    sa_json,
    tunnel_pair_configs,
)

pytestmark = pytest.mark.system


def _pair(
    topo: Topology, workdir: str, family: int, mode: str, transform: str = "aes128gcm16", **kw: object
) -> tuple[Namespace, Namespace, StaticTunnel, StaticTunnel, Addressing, tuple[str, str]]:
    a, b = topo.add("a"), topo.add("b")
    cfg_a, cfg_b, addr = tunnel_pair_configs(family, mode, transform, tag=topo.prefix[-6:], **kw)
    ifs = topo.link(a, b, [f"{addr.underlay[0]}/{addr.prefix}"], [f"{addr.underlay[1]}/{addr.prefix}"])
    ta = StaticTunnel(a, cfg_a, workdir).start()
    tb = StaticTunnel(b, cfg_b, workdir).start()
    return a, b, ta, tb, addr, ifs


def _inner(addr: Addressing, mode: str) -> tuple[str, str]:
    if mode == "tunnel":
        return addr.overlay[0].split("/")[0], addr.overlay[1].split("/")[0]
    return addr.underlay


def _iperf(a: Namespace, b: Namespace, dst: str, reverse: bool) -> int:
    server = b.popen(["iperf3", "-s", "-1", "-B", dst], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: b.run("ss", "-ltn", check=False).stdout.count(":5201"), what="iperf3 server")
        args = ["iperf3", "-c", dst, "-n", "100M", "-J", *(["-R"] if reverse else [])]
        out = json.loads(a.run(*args, timeout=60).stdout)
        return int(out["end"]["sum_received"]["bytes"])
    finally:
        server.wait(timeout=10)


def _settled_counters(tun: StaticTunnel) -> dict:
    """Counters once the tunnel process has written its last update: it rewrites the file every
    0.25 s, and a 100 MB transfer at ~1 Gbit/s lasts under a second, so a read right after iperf3
    can miss a third of it."""
    last = tun.counters()
    for _ in range(20):
        time.sleep(0.3)
        now = tun.counters()
        if now == last:
            break
        last = now
    return last


@pytest.fixture
def lab() -> Iterator[tuple[Topology, str]]:
    """A topology and a scratch folder; the namespaces (and their processes) go first, then the files."""
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-esp-", ignore_cleanup_errors=True) as d,
        Topology("ea") as topo,
    ):
        yield topo, d


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
def test_ping_and_100mb_tcp_both_ways(lab: tuple[Topology, str], mode: str, family: int) -> None:
    topology, workdir = lab
    a, b, ta, tb, addr, _ = _pair(topology, workdir, family, mode)
    _src, dst = _inner(addr, mode)
    ping = a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert _iperf(a, b, dst, reverse=False) >= 100_000_000
    assert _iperf(a, b, dst, reverse=True) >= 100_000_000
    for tun in (ta, tb):
        c = _settled_counters(tun)
        assert c["internal_errors"] == 0, c["last_internal_error"]
        assert c["sas"]["out"]["packets_out"] > 60_000  # the data really went through ESP
        assert c["drops"] == {}, c["drops"]


CAPTURE = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.bind((sys.argv[1], 0))
s.settimeout(15)
print("ready", flush=True)
while True:
    d = s.recv(65535)
    ihl = (d[0] & 15) * 4
    if d[9] == 17 and struct.unpack("!H", d[ihl + 2 : ihl + 4])[0] == 4500 and len(d) > ihl + 8 + 40:
        print(d[ihl + 8 :].hex(), flush=True)
        break
"""

INJECT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for hexdata in sys.argv[2:]:
    s.sendto(bytes.fromhex(hexdata), (sys.argv[1], 4500))
"""


def test_replayed_flipped_truncated_are_dropped_and_counted(lab: tuple[Topology, str]) -> None:
    topology, workdir = lab
    a, b, ta, tb, addr, (_if_a, if_b) = _pair(topology, workdir, 4, "tunnel")
    _src, dst = _inner(addr, "tunnel")
    cap = b.popen([sys.executable, "-c", CAPTURE, if_b], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert cap.stdout.readline().strip() == "ready"
    a.run("ping", "-c", "1", "-W", "2", dst)
    captured = bytes.fromhex(cap.stdout.readline().strip())
    assert int.from_bytes(captured[:4], "big") == 0x1000B  # our SPI: a real ESP packet from a to b
    before = tb.counters()["drops"]
    # One flipped bit in the sequence number: the new number is ahead of the replay window, so the
    # packet reaches the ICV check (a flip elsewhere in an already-received packet is a replay first).
    flipped = bytearray(captured)
    flipped[4] ^= 0x40
    truncated = captured[:12]

    def inject(*packets: bytes) -> None:
        a.run(sys.executable, "-c", INJECT, addr.underlay[1], *(p.hex() for p in packets))

    inject(captured)
    wait_for(lambda: tb.counters()["drops"].get("replay", 0) > before.get("replay", 0), what="replay drop")
    inject(bytes(flipped))
    wait_for(
        lambda: tb.counters()["drops"].get("icv_failure", 0) > before.get("icv_failure", 0), what="ICV drop"
    )
    inject(truncated)
    wait_for(
        lambda: tb.counters()["drops"].get("malformed", 0) > before.get("malformed", 0), what="malformed drop"
    )
    inject(
        b"\0\0\0", b"\0\0\0\0\0\0\0\0\x01", b"\xff\xff\xff\xff" + b"\0" * 60
    )  # short, bad IKE, unknown SPI
    wait_for(lambda: tb.counters()["drops"].get("unknown_spi", 0) >= 1, what="unknown SPI drop")
    c = tb.counters()
    assert c["internal_errors"] == 0, c["last_internal_error"]
    assert c["invalid_datagrams"] >= 1
    assert c["ike_in"] >= 1  # the non-ESP-marker datagram was handed to (absent) IKE, not to ESP
    ping = a.run("ping", "-c", "2", "-i", "0.2", "-W", "2", dst, check=False)
    assert ping.returncode == 0, "traffic must continue after the bad packets"
    assert ta.counters()["internal_errors"] == 0


def test_tso_super_packets_from_the_tun_are_segmented(lab: tuple[Topology, str]) -> None:
    """With TSO on, the kernel hands the sender 64 KB TCP super-packets that the data plane cuts into
    MTU-sized segments with correct checksums (the receiving kernel would drop bad ones)."""
    topology, workdir = lab
    a, b, ta, tb, addr, _ = _pair(topology, workdir, 4, "tunnel", vnet_hdr=True, tso=True)
    _src, dst = _inner(addr, "tunnel")
    assert _iperf(a, b, dst, reverse=False) >= 100_000_000
    c = ta.counters()
    assert c["offload_errors"] == 0 and c["internal_errors"] == 0, c
    assert c["tun_packets_in"] > 5 * c["tun_reads"], "expected TSO super-packets, got one packet per read"
    assert tb.counters()["drops"] == {}


def test_ipv6_inside_ipv4_outer(lab: tuple[Topology, str]) -> None:
    """Tunnel mode carries the other family: IPv6 overlay over an IPv4 underlay (and full-size TCP
    segments fit, so the TUN MTU was computed for the larger inner header)."""
    topology, workdir = lab
    a, b = topology.add("a"), topology.add("b")
    v4, v6 = ADDRESSING[4], ADDRESSING[6]
    topology.link(a, b, [f"{v4.underlay[0]}/24"], [f"{v4.underlay[1]}/24"])
    ab, ba = sa_json("aes256gcm16", 0x3000B, esn=True), sa_json("aes256gcm16", 0x3000A, esn=True)
    tag = topology.prefix[-6:]
    cfg_a = endpoint_config(
        tun=f"{tag}a",
        underlay=v4.underlay[0],
        peer_underlay=v4.underlay[1],
        sa_out=ab,
        sa_in=ba,
        overlay=v6.overlay[0],
        local_overlay_net=v6.overlay_nets[0],
        peer_overlay_net=v6.overlay_nets[1],
    )
    cfg_b = endpoint_config(
        tun=f"{tag}b",
        underlay=v4.underlay[1],
        peer_underlay=v4.underlay[0],
        sa_out=ba,
        sa_in=ab,
        overlay=v6.overlay[1],
        local_overlay_net=v6.overlay_nets[1],
        peer_overlay_net=v6.overlay_nets[0],
    )
    StaticTunnel(a, cfg_a, workdir).start()
    tb = StaticTunnel(b, cfg_b, workdir).start()
    dst = v6.overlay[1].split("/")[0]
    ping = a.run("ping", "-c", "2", "-i", "0.2", "-W", "2", dst, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert _iperf(a, b, dst, reverse=False) >= 100_000_000
    assert tb.counters()["drops"] == {}
