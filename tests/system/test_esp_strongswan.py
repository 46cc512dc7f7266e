"""The strongSwan harness (tests/support/strongswan.py) brings up charon <-> charon with kernel-libipsec,
the reference our benchmark measures against: SAs are listed as installed and traffic flows."""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.support.netns import Topology
from tests.support.strongswan import Charon, psk_tunnel_conf

pytestmark = pytest.mark.system


def test_charon_pair_with_libipsec() -> None:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as workdir, Topology("ss") as topo:
        a, b = topo.add("a"), topo.add("b")
        topo.link(a, b, ["198.18.0.1/24"], ["198.18.0.2/24"])
        a.ip("addr", "add", "198.19.1.1/32", "dev", "lo")
        b.ip("addr", "add", "198.19.2.1/32", "dev", "lo")
        psk = "test-psk-" + os.urandom(8).hex()
        common = {"psk": psk, "esp_proposals": "aes128gcm16"}
        conf_a = psk_tunnel_conf(
            local_addr="198.18.0.1",
            remote_addr="198.18.0.2",
            local_id="a.lab",
            remote_id="b.lab",
            local_ts="198.19.1.0/24",
            remote_ts="198.19.2.0/24",
            **common,
        )
        conf_b = psk_tunnel_conf(
            local_addr="198.18.0.2",
            remote_addr="198.18.0.1",
            local_id="b.lab",
            remote_id="a.lab",
            local_ts="198.19.2.0/24",
            remote_ts="198.19.1.0/24",
            **common,
        )
        with Charon(a, f"{workdir}/a", conf_a) as ca, Charon(b, f"{workdir}/b", conf_b) as cb:
            ca.load()
            cb.load()
            ca.initiate("net", "lab")
            sas = cb.list_sas()
            assert "ESTABLISHED" in sas and "INSTALLED" in sas and "198.19.1.0/24" in sas, sas
            ping = a.run(
                "ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", "198.19.1.1", "198.19.2.1", check=False
            )
            assert ping.returncode == 0, ping.stdout + ca.log_tail()
        assert ca.proc is None and cb.proc is None  # stopped on exit
