"""Our data plane against Scapy's ESP on the wire: statically keyed, ESP-in-UDP between two namespaces.

Host a runs our data plane (TUN + UDP 4500); host b runs Scapy (tests/support/scapy_peer.py) on a
plain UDP 4500 socket.  Per case, a UDP datagram from an application on a goes through our TUN and
ESP, must decrypt in Scapy to exactly what was sent (with a valid inner UDP checksum), and Scapy's
ESP reply must come out of our TUN to the application.  Every transform, tunnel and transport mode,
IPv4 and IPv6 outer/inner.  (ESP codec interop in-process is covered by tests/agent/esp.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from tests.support.netns import Topology
from tests.support.static_tunnel import ADDRESSING, REPO_ROOT, StaticTunnel, tunnel_pair_configs

pytestmark = pytest.mark.system

TRANSFORMS = ["aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha256", "aes256-sha256"]
ESN = {"aes256gcm16", "chacha20poly1305", "aes256-sha256"}  # ESN on for these, off for the others

SENDER = r"""
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.settimeout(0.5)
for _ in range(20):
    s.sendto(sys.argv[3].encode(), (sys.argv[2], 7777))
    try:
        data, addr = s.recvfrom(2000)
    except TimeoutError:
        continue
    print(data.decode(), addr[0])
    break
"""


class ScapyPeer:
    def __init__(self, ns, workdir: str) -> None:  # type: ignore[no-untyped-def]
        self.proc = ns.popen(
            [sys.executable, "-m", "tests.support.scapy_peer"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(f"{workdir}/scapy.stderr", "w"),  # noqa: SIM115
            text=True,
        )
        line = self.proc.stdout.readline()
        assert json.loads(line)["ready"], line

    def command(self, cmd: dict) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        return json.loads(self.proc.stdout.readline())


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple]:
    """Hosts a and b with v4 and v6 underlay addresses, Scapy serving on b (module scope: startup is slow)."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as workdir, Topology("sc") as topo:
        a, b = topo.add("a"), topo.add("b")
        v4, v6 = ADDRESSING[4], ADDRESSING[6]
        topo.link(
            a,
            b,
            [f"{v4.underlay[0]}/{v4.prefix}", f"{v6.underlay[0]}/{v6.prefix}"],
            [f"{v4.underlay[1]}/{v4.prefix}", f"{v6.underlay[1]}/{v6.prefix}"],
        )
        peer = ScapyPeer(b, workdir)
        yield topo, a, b, peer, workdir


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_scapy_decrypts_ours_and_we_decrypt_scapys(lab, transform: str, mode: str, family: int) -> None:  # type: ignore[no-untyped-def]
    _topo, a, _b, peer, workdir = lab
    esn = transform in ESN
    tag = f"{transform[:5]}{mode[:2]}{family}".replace("-", "")
    cfg_a, _cfg_b, addr = tunnel_pair_configs(family, mode, transform, tag="x", esn=esn)
    cfg_a["tun"]["name"] = f"t{tag}"[:15]
    tunnel = StaticTunnel(a, cfg_a, workdir).start()
    try:
        if mode == "tunnel":
            a_in, b_in = addr.overlay[0].split("/")[0], addr.overlay[1].split("/")[0]
        else:
            a_in, b_in = addr.underlay
        ping, pong = f"ping-{tag}", f"pong-{tag}"
        peer.command(
            {
                "op": "exchange",
                "family": family,
                "mode": mode,
                "sa_in": cfg_a["outbound"]["sa"],
                "sa_out": cfg_a["inbound"]["sa"],
                "local_ul": addr.underlay[1],
                "remote_ul": addr.underlay[0],
                "local_in": b_in,
                "remote_in": a_in,
                "expect": ping,
                "reply": pong,
                "timeout": 10,
            }
        )
        out = a.run(sys.executable, "-c", SENDER, a_in, b_in, ping, timeout=30).stdout.split()
        result = peer.result()
        assert result["ok"], result
        assert (result["inner_src"], result["inner_dst"]) == (a_in, b_in)
        assert result["udp_checksum_ok"], "inner UDP checksum wrong after our transport-mode handling"
        assert out == [pong, b_in], f"Scapy reply did not come out of our TUN: {out} {tunnel.counters()}"
        counters = tunnel.counters()
        assert counters["drops"] == {}, counters
    finally:
        tunnel.stop()
