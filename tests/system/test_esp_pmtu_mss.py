"""Path MTU and MSS handling of our data plane, between two namespaces with static keys.

The TUNs are deliberately given MTU 1500, above what one ESP-in-UDP packet over the 1500-byte veth can
carry, so oversized packets reach the data plane: it must answer an IPv4 DF packet with ICMP
"fragmentation needed" and an IPv6 packet with "packet too big" carrying the SA's real limit (which
the sender's kernel then caches as the path MTU), and clamp the MSS of TCP SYNs entering the tunnel
to the value computed from the SA overhead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest
from meshsec.agent.esp import Mode
from meshsec.agent.esp.mtu import max_inner_packet
from meshsec.agent.esp.transforms import transform_spec

from tests.support.netns import Topology, wait_for
from tests.support.static_tunnel import StaticTunnel, tunnel_pair_configs

pytestmark = pytest.mark.system

PMTU_PROBE = r"""
import errno, socket, sys, time
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14  # linux/in.h (not in Python's socket module)
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO, IPV6_MTU = 23, 2, 24  # linux/in6.h
v6 = ":" in sys.argv[1]
fam = socket.AF_INET6 if v6 else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
else:
    s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
s.connect((sys.argv[1], 9))
size = 1500 - (48 if v6 else 28)
s.send(b"x" * size)  # fits the TUN's MTU 1500, not the tunnel: the data plane answers with ICMP
for _ in range(50):
    time.sleep(0.1)
    try:
        s.send(b"x" * size)
    except OSError as exc:  # EMSGSIZE once the kernel learned the smaller path MTU
        if exc.errno != errno.EMSGSIZE:
            raise
    level, opt = (socket.IPPROTO_IPV6, IPV6_MTU) if v6 else (socket.IPPROTO_IP, IP_MTU)
    mtu = s.getsockopt(level, opt)
    if mtu < 1500:
        break
print(mtu)
"""

MSS_SERVER = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5555))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
print(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), flush=True)
"""

MSS_CLIENT = r"""
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
c = socket.create_connection((sys.argv[1], 5555), timeout=10)
time.sleep(0.2)
"""


@pytest.fixture
def lab() -> Iterator[tuple[Topology, str]]:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as d, Topology("pm") as topo:
        yield topo, d


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_too_big_and_mss_clamp(lab: tuple[Topology, str], family: int) -> None:
    import subprocess
    import sys

    topo, workdir = lab
    a, b = topo.add("a"), topo.add("b")
    cfg_a, cfg_b, addr = tunnel_pair_configs(
        family, "tunnel", "aes256-sha256", tag=topo.prefix[-6:], tun_mtu=1500
    )
    topo.link(a, b, [f"{addr.underlay[0]}/{addr.prefix}"], [f"{addr.underlay[1]}/{addr.prefix}"])
    ta = StaticTunnel(a, cfg_a, workdir).start()
    StaticTunnel(b, cfg_b, workdir).start()
    _a_in, b_in = (x.split("/")[0] for x in addr.overlay)
    limit = max_inner_packet(
        1500, transform_spec(12, 256, 12), mode=Mode.TUNNEL, outer_family=family, inner_family=family
    )
    assert limit < 1500

    # MSS first: once the PMTU probe taught the sender's kernel the small MTU, SYNs need no clamp.
    server = b.popen([sys.executable, "-c", MSS_SERVER, b_in], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    a.run(sys.executable, "-c", MSS_CLIENT, b_in, timeout=30)
    maxseg = int(server.stdout.readline())
    mss = limit - (20 if family == 4 else 40) - 20
    # TCP_MAXSEG is the MSS minus the timestamp option (12 bytes) that Linux negotiates by default;
    # without clamping it would be 1500 - IP - TCP - 12.
    assert maxseg in (mss, mss - 12), f"MSS seen by the server {maxseg}, clamp {mss}"
    wait_for(lambda: ta.counters()["mss_clamped"] >= 1, timeout=3, what="MSS clamp counter")
    out = a.run(sys.executable, "-c", PMTU_PROBE, b_in, timeout=30).stdout.strip()
    assert int(out) == limit, f"sender's path MTU {out}, SA limit {limit}"
    wait_for(lambda: ta.counters()["icmp_too_big_sent"] >= 1, timeout=3, what="ICMP too-big counter")
