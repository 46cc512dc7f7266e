"""netcfg against a real kernel: TUN, address, MTU, tunnel-table route and fwmark rules appear while the
agent holds them and are all gone after `close()` (and the TUN with the process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.netns import Topology
from tests.support.static_tunnel import REPO_ROOT

pytestmark = pytest.mark.system

HOLD = r"""
import sys
from meshsec.agent.netcfg.links import NetConfig
from meshsec.agent.netcfg.tun import open_tun
tun = open_tun("mstest0", vnet_hdr=True)
net = NetConfig(tun.name)
net.set_up(1422)
net.add_address("198.19.7.1/24")
net.add_address("fd00:19:7::1/64")
net.add_route("198.19.8.0/24")
net.add_route("fd00:19:8::/64")
net.add_bypass_rules()
print("UP", net.underlay_mtu("198.18.9.2"), flush=True)
sys.stdin.readline()
net.close()
print("CLOSED", flush=True)
sys.stdin.readline()
"""


def test_netcfg_creates_and_removes_everything(topology: Topology) -> None:
    ns, peer = topology.add("n"), topology.add("p")
    topology.link(ns, peer, ["198.18.9.1/24"], ["198.18.9.2/24"], mtu=1380)
    proc = ns.popen(
        [sys.executable, "-c", HOLD], cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().split() == ["UP", "1380"]  # underlay MTU found by route lookup
    link = ns.ip("link", "show", "mstest0").stdout
    assert "mtu 1422" in link and "UP" in link
    assert "198.19.7.1/24" in ns.ip("addr", "show", "mstest0").stdout
    assert "198.19.8.0/24 dev mstest0" in ns.ip("route", "show", "table", "28019").stdout
    assert "fd00:19:8::/64 dev mstest0" in ns.ip("-6", "route", "show", "table", "28019").stdout
    for fam in ("-4", "-6"):
        rules = ns.ip(fam, "rule", "show").stdout
        assert "not from all fwmark 0x6d73 lookup 28019" in rules, rules
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "CLOSED"
    for fam in ("-4", "-6"):
        assert "fwmark 0x6d73" not in ns.ip(fam, "rule", "show").stdout
    assert ns.ip("route", "show", "table", "28019").stdout.strip() == ""
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=10)
    assert ns.ip("link", "show", "mstest0", check=False).returncode != 0, "TUN must vanish with its fd"
