"""Our agent against strongSwan's charon (kernel-libipsec: charon's own user-space ESP), one charon per test.

Proves interoperability of the whole agent (IKE engine + runtime + ESP data plane) with an independent
IKEv2/ESP implementation: our agent as initiator and as responder with PSK; certificates (ECDSA,
RFC 7427) made in the test; the proposals aes128gcm16/x25519, chacha20poly1305/ecp256 and
aes256-sha256/modp2048 (DH 31, 19, 14); ping and TCP both through our ESP and charon's; Child SA and
IKE SA rekeys started from each side under a 100 pps ping with zero lost; DPD noticing a charon that
vanished; and charon behind a MASQUERADE NAT with port remapping connecting to our agent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization

from tests.agent.runtime.harness import PSK, AgentProc, TestCa, node, peer, wait
from tests.support.netns import Namespace, Topology
from tests.support.strongswan import Charon, psk_tunnel_conf
from tests.support.traffic import iperf_tcp

pytestmark = pytest.mark.system

US_UL, SW_UL = "198.18.0.1", "198.18.0.2"
US_NET, SW_NET = "198.19.1.0/24", "198.19.2.0/24"
US_IN, SW_IN = "198.19.1.1", "198.19.2.1"
PSK_TEXT = PSK.decode()


@pytest.fixture
def lab() -> Iterator[tuple[Topology, str]]:
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-interop-", ignore_cleanup_errors=True) as d,
        Topology("sw") as topo,
    ):
        yield topo, d


def _hosts(topo: Topology) -> tuple[Namespace, Namespace]:
    us, sw = topo.add("us"), topo.add("sw")
    topo.link(us, sw, [f"{US_UL}/24"], [f"{SW_UL}/24"])
    us.ip("addr", "add", f"{US_IN}/32", "dev", "lo")
    sw.ip("addr", "add", f"{SW_IN}/32", "dev", "lo")
    return us, sw


def _ping(ns: Namespace, dst: str, count: int = 3) -> None:
    r = ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", dst, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def _tcp(client: Namespace, server: Namespace, dst: str, nbytes: str = "5M") -> int:
    return iperf_tcp(client, server, dst, nbytes)


def _our_peer(initiate: bool, **kw: object) -> object:
    return peer(
        "sw",
        endpoint=SW_UL,
        local_ts=[US_NET],
        remote_ts=[SW_NET],
        initiate=initiate,
        external=True,
        **kw,  # type: ignore[arg-type]
    )


def _start(
    topo: Topology,
    workdir: str,
    *,
    we_initiate: bool,
    ike: str = "aes128gcm16-prfsha256-x25519",
    esp: str = "aes128gcm16",
    **kw: object,
) -> tuple[Namespace, Namespace, AgentProc, Charon]:
    us, sw = _hosts(topo)
    charon = Charon(
        sw,
        f"{workdir}/charon",
        psk_tunnel_conf(
            local_addr=SW_UL,
            remote_addr=US_UL,
            local_id="sw.meshsec",
            remote_id="us.meshsec",
            local_ts=SW_NET,
            remote_ts=US_NET,
            psk=PSK_TEXT,
            ike_proposals=ike,
            esp_proposals=esp,
        ),
        log_levels={"ike": 2, "chd": 2, "knl": 1},
    ).start()
    charon.load()
    cfg = node("us", [_our_peer(we_initiate, ike_proposals=[ike], esp_proposals=[esp], **kw)])  # type: ignore[list-item]
    agent = AgentProc(us, workdir, "us", cfg).start()
    if not we_initiate:
        charon.initiate("net", "lab")
    _wait_both(agent, charon)
    return us, sw, agent, charon


def _wait_both(agent: AgentProc, charon: Charon, timeout: float = 15.0) -> None:
    try:
        agent.wait_up("sw", timeout)
        wait(lambda: "INSTALLED" in charon.list_sas(), timeout, "charon's CHILD_SA")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- charon.log ---\n{charon.log_tail()}") from None


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "charon-initiates"])
def test_psk_tunnel_ping_and_tcp(lab: tuple[Topology, str], we_initiate: bool) -> None:
    topo, workdir = lab
    us, sw, agent, charon = _start(topo, workdir, we_initiate=we_initiate)
    _ping(us, SW_IN)
    _ping(sw, US_IN)
    assert _tcp(us, sw, SW_IN) >= 5_000_000  # our ESP out, charon's ESP back (ACKs)
    assert _tcp(sw, us, US_IN) >= 5_000_000  # charon's ESP out, ours back

    def through_our_esp() -> bool:  # the status file is rewritten every 0.25 s
        c = agent.children("sw")[0]["counters"]
        return int(c["packetsIn"]) > 1000 and int(c["packetsOut"]) > 1000

    wait(through_our_esp, 3.0, f"ESP counters; {agent.status()}\n{charon.list_sas()}")


@pytest.mark.parametrize(
    ("ike", "esp"),
    [
        ("chacha20poly1305-prfsha256-ecp256", "chacha20poly1305"),
        ("aes256-sha256-modp2048", "aes256-sha256"),
    ],
    ids=["chacha20poly1305-ecp256", "aes256-sha256-modp2048"],
)
def test_algorithms(lab: tuple[Topology, str], ike: str, esp: str) -> None:
    topo, workdir = lab
    us, sw, agent, _charon = _start(topo, workdir, we_initiate=True, ike=ike, esp=esp)
    assert agent.children("sw")[0]["transform"] == esp
    _ping(us, SW_IN)
    assert _tcp(sw, us, US_IN, "2M") >= 2_000_000


def _cert_conf(workdir: str, ca: TestCa) -> str:
    """swanctl.conf for charon with an ECDSA certificate; its key goes to ecdsa/ beside swanctl.conf,
    where `swanctl --load-all --file` looks for private keys."""
    key_pem, cert_pem = ca.issue("sw.meshsec")
    key = serialization.load_pem_private_key(key_pem, None)
    sec1 = key.private_bytes(  # SEC1 "EC PRIVATE KEY": charon's openssl plugin loads it as is
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    os.makedirs(f"{workdir}/charon/ecdsa", exist_ok=True)
    paths = {"sw-key.pem": f"{workdir}/charon/ecdsa/sw-key.pem"}
    for name, data in (("sw-key.pem", sec1), ("sw.pem", cert_pem), ("ca.pem", ca.pem.encode())):
        paths.setdefault(name, f"{workdir}/{name}")
        with open(paths[name], "wb") as fh:
            fh.write(data)
    return f"""connections {{
    lab {{
        version = 2
        local_addrs = {SW_UL}
        remote_addrs = {US_UL}
        proposals = aes128gcm16-prfsha256-ecp256
        rekey_time = 0
        local {{
            auth = pubkey
            certs = {paths["sw.pem"]}
            id = sw.meshsec
        }}
        remote {{
            auth = pubkey
            cacerts = {paths["ca.pem"]}
            id = us.meshsec
        }}
        children {{
            net {{
                local_ts = {SW_NET}
                remote_ts = {US_NET}
                esp_proposals = aes128gcm16
                rekey_time = 0
                start_action = none
            }}
        }}
    }}
}}
"""


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "charon-initiates"])
def test_certificates(lab: tuple[Topology, str], we_initiate: bool) -> None:
    topo, workdir = lab
    us, sw = _hosts(topo)
    ca = TestCa()
    ca.install(f"{workdir}/us", "us.meshsec")
    charon = Charon(sw, f"{workdir}/charon", _cert_conf(workdir, ca))
    charon.start()
    charon.load()
    cfg = node(
        "us",
        [_our_peer(we_initiate, psk=None, ike_proposals=["aes128gcm16-prfsha256-ecp256"])],  # type: ignore[list-item]
        trusted_ca_pem=ca.pem,
    )
    agent = AgentProc(us, workdir, "us", cfg).start()
    if not we_initiate:
        charon.initiate("net", "lab")
    _wait_both(agent, charon)
    auth_lines = [
        ln for ln in charon.log_tail(200_000).splitlines() if "authentication of 'us.meshsec'" in ln
    ]
    assert auth_lines and "ECDSA" in auth_lines[0], charon.log_tail()  # our RFC 7427 signature verified
    _ping(us, SW_IN)
    _ping(sw, US_IN)


def test_rekeys_from_both_sides_under_100pps_ping(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    us, sw, agent, charon = _start(topo, workdir, we_initiate=True)
    spi0 = agent.children("sw")[0]["spiIn"]
    ping = us.popen(["ping", "-c", "700", "-i", "0.01", "-W", "1", SW_IN], stdout=subprocess.PIPE, text=True)
    steps = [
        lambda: agent.signal(signal.SIGUSR1),  # our Child SA rekey
        lambda: charon.swanctl("--rekey", "--child", "net"),  # charon's Child SA rekey
        lambda: agent.signal(signal.SIGUSR2),  # our IKE SA rekey
        lambda: charon.swanctl("--rekey", "--ike", "lab"),  # charon's IKE SA rekey
    ]
    for step in steps:
        time.sleep(1.2)
        step()
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out[-400:] + "\n" + agent.log_tail() + charon.log_tail()
    st = agent.peer_status("sw")
    assert st["ikeState"] == "IKE_SA_STATE_ESTABLISHED"
    assert int(st.get("rekeys", 0)) >= 4, st
    assert agent.children("sw")[0]["spiIn"] != spi0
    _ping(sw, US_IN)  # still good both ways after everything
    assert "INSTALLED" in charon.list_sas()


def test_dpd_notices_vanished_charon(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    _us, sw, agent, charon = _start(topo, workdir, we_initiate=True, dpd=1, dpd_timeout=4)
    wait(lambda: int(agent.peer_status("sw").get("dpdRttUs", 0)) > 0, 5.0, "a DPD round trip")
    assert charon.proc is not None
    charon.proc.kill()  # vanishes without DELETE
    sw.run("pkill", "-9", "-f", "charon-systemd", check=False)
    wait(lambda: "dead" in agent.peer_status("sw").get("lastError", ""), 12.0, "DPD to declare charon dead")


def _nat_lab(topo: Topology, inside: str, outside: str) -> tuple[Namespace, Namespace]:
    """`inside` (198.18.1.2) behind a MASQUERADE NAT (198.18.0.2 outside, ports remapped to
    31000-32000) towards `outside` (198.18.0.1)."""
    ins, nat, out = topo.add(inside), topo.add("nat"), topo.add(outside)
    nat_out, _ = topo.link(nat, out, ["198.18.0.2/24"], ["198.18.0.1/24"])
    topo.link(ins, nat, ["198.18.1.2/24"], ["198.18.1.1/24"])
    ins.ip("route", "add", "default", "via", "198.18.1.1")
    nat.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    nat.run(
        "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", nat_out, "-p", "udp",
        "-j", "MASQUERADE", "--to-ports", "31000-32000",
    )  # fmt: skip
    return ins, out


def test_charon_behind_nat_connects_to_us(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    sw, us = _nat_lab(topo, "sw", "us")
    us.ip("addr", "add", f"{US_IN}/32", "dev", "lo")
    sw.ip("addr", "add", f"{SW_IN}/32", "dev", "lo")
    charon = Charon(
        sw,
        f"{workdir}/charon",
        psk_tunnel_conf(
            local_addr="198.18.1.2",
            remote_addr=US_UL,
            local_id="sw.meshsec",
            remote_id="us.meshsec",
            local_ts=SW_NET,
            remote_ts=US_NET,
            psk=PSK_TEXT,
        ),
    ).start()
    charon.load()
    cfg = node(
        "us",
        [
            peer(
                "sw",
                endpoint=None,
                local_ts=[US_NET],
                remote_ts=[SW_NET],
                initiate=False,
                behind_nat=True,
                external=True,
            )
        ],
    )
    agent = AgentProc(us, workdir, "us", cfg).start()
    charon.initiate("net", "lab")
    _wait_both(agent, charon)
    st = agent.peer_status("sw")
    assert st["natDetected"] is True
    host, port = st["remoteEndpoint"].rsplit(":", 1)
    assert host == "198.18.0.2" and 31000 <= int(port) <= 32000, st  # the NAT's remapped port
    _ping(sw, US_IN)
    _ping(us, SW_IN)
    assert _tcp(sw, us, US_IN, "2M") >= 2_000_000


def test_we_behind_nat_connect_to_charon(lab: tuple[Topology, str]) -> None:
    """Our agent behind the NAT (LocalConfig.behind_nat) initiates; NAT-T floats to 4500 through it."""
    topo, workdir = lab
    us, sw = _nat_lab(topo, "us", "sw")
    us.ip("addr", "add", f"{US_IN}/32", "dev", "lo")
    sw.ip("addr", "add", f"{SW_IN}/32", "dev", "lo")
    charon = Charon(
        sw,
        f"{workdir}/charon",
        psk_tunnel_conf(
            local_addr="198.18.0.1",
            remote_addr="198.18.0.2",
            local_id="sw.meshsec",
            remote_id="us.meshsec",
            local_ts=SW_NET,
            remote_ts=US_NET,
            psk=PSK_TEXT,
        ),
    ).start()
    charon.load()
    p = peer(
        "sw", endpoint="198.18.0.1", local_ts=[US_NET], remote_ts=[SW_NET], initiate=False, external=True
    )
    agent = AgentProc(us, workdir, "us", node("us", [p], behind_nat=True)).start()
    _wait_both(agent, charon)
    st = agent.peer_status("sw")
    assert st["natDetected"] is True and st["remoteEndpoint"] == "198.18.0.1:4500", st
    _ping(us, SW_IN)
    _ping(sw, US_IN)
