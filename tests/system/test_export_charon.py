"""A strongSwan charon configured only from `meshctl export` gets a working tunnel with a meshsec agent.

Real parts: etcd, a `meshsec-controller serve` process, the real `meshctl` (apply, export, status)
talking to it over its unix socket with the admin certificate, one `meshsec-agent` process in
namespace `a` (reconciler meshsec.agent.runtime.host:reconciler, enrolled with a token), and charon
(charon-systemd + kernel-libipsec) in namespace `b`, declared in mesh.yaml as `kind: external` with a
site LAN behind it (namespace `lan`, 198.19.2.0/24).  charon's swanctl.conf is exactly what
`meshctl export gw-b --format swanctl --show-secrets` printed; only strongswan.conf (plugins, log,
vici socket) comes from the harness.  Proves that the export's ids, proposals, selectors and the pair
PSK the controller derives agree with what the agent was compiled to: the IKE and Child SA come up,
ping passes both ways between the agent's subnet and the site LAN, charon lists the SA with the
profile's algorithms, and the agent reports it ESTABLISHED to the controller (`meshctl status`).
Also: without --show-secrets the export has placeholders and says on stderr how to get the key, and
the controller audit-logs each export without ever logging the key.  Both PSK and certificate auth
(the mesh CA from `meshctl export --dir`, the gateway's own certificate from the CA in its
externalCaPem).  A last test loads an export full of unusual constructs into a real charon.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.agent.runtime.harness import TestCa, wait
from tests.controller import harness as h
from tests.support.etcd import EtcdCluster, free_port
from tests.support.netns import Namespace, Topology
from tests.support.strongswan import Charon

pytestmark = pytest.mark.system

MESH = """\
apiVersion: meshsec.io/v1
kind: Mesh
sites:
  - name: branch              # the LAN behind the strongSwan gateway
    subnets: [198.19.2.0/24]
nodes:
  - name: node-a
    endpoints: ["198.18.0.1"]
    subnets: [198.19.1.0/24]
  - name: gw-b
    kind: external
    site: branch
    endpoints: ["198.18.0.2"]
    identity: "fqdn:gw-b.example.net"
    auth: psk
profiles:
  - name: partner
    ike:
      proposals: [aes256gcm16-prfsha256-ecp256]
    esp:
      proposals: [aes256gcm16]
      rekey: 20m
    dpd:
      interval: 10s
policies:
  - name: partner
    topology: pairs
    pairs: [[node-a, gw-b]]
    profile: partner
"""


def _run(coro, timeout: float = 15):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def lab() -> Iterator[tuple[Topology, Path, EtcdCluster]]:
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-export-", ignore_cleanup_errors=True) as d,
        EtcdCluster(1) as etcd,
        Topology("ex") as topo,
    ):
        yield topo, Path(d), etcd


def _meshctl(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real meshctl as an operator runs it, against the controller's unix socket."""
    admin = state / "admin"
    conn = [
        "--controller", f"unix://{state}/r1.sock",
        "--ca", str(admin / "ca.pem"),
        "--cert", str(admin / "admin.pem"),
        "--key", str(admin / "admin-key.pem"),
    ]  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "meshsec.controller.cli.main", *conn, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MESHSEC_", "MESHCTL_"))},
    )
    if check:
        assert r.returncode == 0, f"meshctl {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def _agent(ns: Namespace, node: str, state: Path, work: Path, address: str) -> Path:
    return h.runtime_agent_in(ns, node, state, work, address, tun="msex0")


def _ping(ns: Namespace, dst: str) -> None:
    r = ns.run("ping", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False)
    assert r.returncode == 0, f"ping {dst} from {ns.name}:\n{r.stdout}{r.stderr}"


def _sec1(key_pem: bytes) -> bytes:
    """The gateway's key as SEC1 "EC PRIVATE KEY", which charon's openssl plugin loads from ecdsa/."""
    key = serialization.load_pem_private_key(key_pem, None)
    return key.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _mesh(auth: str, partner_ca: TestCa) -> str:
    if auth == "psk":
        return MESH
    pem = "".join(f"      {line}\n" for line in partner_ca.pem.splitlines())
    return MESH.replace("    auth: psk\n", f"    auth: certificate\n    externalCaPem: |\n{pem}")


@pytest.mark.parametrize("auth", ["psk", "certificate"])
def test_charon_configured_from_meshctl_export(lab: tuple[Topology, Path, EtcdCluster], auth: str) -> None:
    started = time.monotonic()
    topo, work, etcd = lab
    state = work / "ctl"
    partner_ca = TestCa("partner CA")  # the operator's own PKI for the third-party gateway
    _run(h.init_state(state, etcd.endpoints))
    ctl = h.controller_proc(state, etcd.endpoints, "r1", free_port(), free_port())
    charon: Charon | None = None
    try:
        ctl.wait_log("serving on")
        address = ctl.popen.args[ctl.popen.args.index("--listen") + 1]  # type: ignore[union-attr]
        (work / "mesh.yaml").write_text(_mesh(auth, partner_ca))
        _meshctl(state, "apply", "-f", str(work / "mesh.yaml"))

        a, b, lan = topo.add("a"), topo.add("b"), topo.add("lan")
        topo.link(a, b, ["198.18.0.1/24"], ["198.18.0.2/24"])
        topo.link(b, lan, ["198.19.2.1/24"], ["198.19.2.10/24"])
        a.ip("addr", "add", "198.19.1.1/32", "dev", "lo")
        lan.ip("route", "add", "default", "via", "198.19.2.1")
        b.run("sysctl", "-qw", "net.ipv4.ip_forward=1")

        swan = work / "swanctl"  # charon's swanctl directory (x509ca/, x509/, ecdsa/ beside swanctl.conf)
        key = ""
        plain = _meshctl(state, "export", "gw-b", "--format", "swanctl")
        if auth == "psk":
            # Without the explicit request: placeholders, and stderr says how to get the key.
            assert 'secret = "REPLACE-WITH-THE-PAIR-PSK"' in plain.stdout and "--show-secrets" in plain.stderr
            shown = _meshctl(state, "export", "gw-b", "--format", "swanctl", "--show-secrets")
            assert shown.stderr == "" and "REPLACE-WITH" not in shown.stdout
            (key,) = re.findall(r"secret = 0x([0-9a-f]{64})", shown.stdout)
            conf = shown.stdout
        else:
            # stdout is the config; stderr names the CA file it needs and how to get it.
            assert "auth = pubkey" in plain.stdout and "secrets {" not in plain.stdout
            assert "x509ca/meshsec-ca.pem" in plain.stderr and "--dir" in plain.stderr
            written = _meshctl(state, "export", "gw-b", "--format", "swanctl", "--dir", str(swan))
            assert (written.stdout, written.stderr) == ("", "")
            conf = (swan / "swanctl.conf").read_text()
            assert conf == plain.stdout and (swan / "swanctl.conf").stat().st_mode & 0o777 == 0o600
            mesh_ca = (swan / "x509ca" / "meshsec-ca.pem").read_text()
            assert mesh_ca == (state / "admin" / "ca.pem").read_text()  # the CA the agents' certs chain to
            # The operator's part: the gateway's own certificate and key, from its CA (externalCaPem).
            key_pem, cert_pem = partner_ca.issue("gw-b.example.net")
            (swan / "x509").mkdir()
            (swan / "x509" / "gw-b.pem").write_bytes(cert_pem)
            (swan / "ecdsa").mkdir()
            (swan / "ecdsa" / "gw-b-key.pem").write_bytes(_sec1(key_pem))
        charon = Charon(b, str(swan), conf, log_levels={"ike": 1, "cfg": 1}).start()
        loaded = charon.load()
        assert "loaded connection 'meshsec-node-a'" in loaded, loaded
        assert ("loaded ike secret" if auth == "psk" else "loaded certificate") in loaded, loaded

        log_a = _agent(a, "node-a", state, work, address)
        try:
            wait(lambda: "installed (in" in log_a.read_text(errors="replace"), 20, "the agent's child SA")
            wait(lambda: "INSTALLED" in charon.list_sas(), 5, "charon's CHILD_SA")  # type: ignore[union-attr]
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- agent ---\n{log_a.read_text()[-3000:]}\n--- charon ---\n{charon.log_tail()}"
            ) from None

        _ping(a, "198.19.2.10")  # agent host -> a host on the site LAN behind charon
        _ping(lan, "198.19.1.1")  # site LAN -> agent host
        _ping(b, "198.19.1.1")  # the gateway itself (source: its LAN address, inside local_ts)

        sas = charon.list_sas()
        assert re.search(r"meshsec-node-a: #\d+, ESTABLISHED, IKEv2", sas), sas
        assert (
            "local  'gw-b.example.net' @ 198.18.0.2" in sas and "remote 'node-a.meshsec' @ 198.18.0.1" in sas
        )
        assert "AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256" in sas, sas  # the profile's IKE proposal
        assert re.search(r"partner: #\d+, reqid \d+, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256", sas), sas
        assert "local  198.19.2.0/24" in sas and "remote 198.19.1.0/24" in sas, sas

        def established() -> bool:  # the agent's report, through the controller
            out = json.loads(_meshctl(state, "status", "node-a", "-o", "json").stdout)
            peers = out["nodes"][0].get("peers", [])
            return any(p["peer"] == "gw-b" and p.get("ikeState") == "IKE_SA_STATE_ESTABLISHED" for p in peers)

        wait(established, 5, "node-a to report gw-b ESTABLISHED")

        text = ctl.log()
        who = "requested by meshsec-admin 'admin'"
        assert f"export of 'gw-b' (swanctl, secrets withheld) {who}" in text, text[-2000:]
        if auth == "psk":
            assert f"export of 'gw-b' (swanctl, secrets INCLUDED) {who}" in text, text[-2000:]
            for where in (text, log_a.read_text(errors="replace"), charon.log_tail(10**7)):
                assert key not in where.lower()  # never logged
        assert "Traceback" not in log_a.read_text(errors="replace")
    finally:
        if charon is not None:
            charon.stop()
        ctl.kill()
    assert time.monotonic() - started < 45


RICH = """\
apiVersion: meshsec.io/v1
nodes:
  - {name: gw-a, endpoints: ["198.18.0.1", "[fd00::1]:4500"], subnets: [198.19.1.0/24, "fd00:1::/64"]}
  - {name: roamer, behindNat: true, subnets: [198.19.7.7/32]}
  - name: fw
    kind: external
    endpoints: ["198.18.9.9"]
    identity: "keyid:#0a1b2c"
    auth: psk
    subnets: [198.19.9.0/24, "fd00:9::/64"]
profiles:
  - name: odd
    ike: {proposals: [aes256-sha256-modp2048, chacha20poly1305-prfsha256-x25519], rekey: 3601, life: 3961}
    esp: {proposals: [aes256-sha256-esn, aes128gcm16-ecp256], rekey: 90s, life: 100s, jitter: 5s,
          rekeyBytes: 1GiB, lifeBytes: 2GiB, rekeyPackets: 1000000, lifePackets: 2000000}
    dpd: {interval: 0}
policies:
  - {name: net, topology: pairs, pairs: [[gw-a, fw], [roamer, fw]], profile: odd}
  - {name: host, topology: pairs, pairs: [[gw-a, fw]], mode: transport}
"""


def test_real_swanctl_accepts_every_construct_the_export_writes(topology: Topology, tmp_path: Path) -> None:
    """Odd lifetimes (single-unit times), byte and packet limits, several proposals, PFS and ESN, IPv6,
    a transport child beside a tunnel child, an agent behind NAT (%any) and a binary key id: charon
    parses all of it and reads back the values the profile set."""
    from meshsec.controller.compiler.export import swanctl
    from meshsec.controller.spec import load_spec

    from tests.controller.compiler.helpers import CREDS

    conf = swanctl(load_spec(RICH, "mesh.yaml"), CREDS, "fw")
    with Charon(topology.add("sw"), str(tmp_path / "charon"), conf) as charon:
        loaded = charon.load()
        assert "successfully loaded 2 connections, 0 unloaded" in loaded, loaded
        assert "loaded ike secret 'ike-gw-a'" in loaded and "loaded ike secret 'ike-roamer'" in loaded
        conns = charon.swanctl("--list-conns").stdout
    gw, roamer = conns.split("meshsec-roamer:")
    # gw-a's IKE SA takes the profile of the first policy by name ('host': default), as its agent's does
    assert "meshsec-gw-a: IKEv2, no reauthentication, rekeying every 14400s, dpd delay 30s" in gw, conns
    assert " IKEv2, no reauthentication, rekeying every 3601s\n" in roamer, conns  # 'odd', no DPD
    assert "remote: 198.18.0.1\n  remote: fd00::1\n" in gw and "remote: %any" in roamer, conns
    assert "id: 0a:1b:2c" in gw and "id: gw-a.meshsec" in gw and "id: roamer.meshsec" in roamer, conns
    assert "net: TUNNEL, rekeying every 90s or 1073741824 bytes or 1000000 packets" in gw, conns
    assert "host: TRANSPORT, rekeying every 3600s" in gw, conns
    assert "local:  198.19.9.0/24 fd00:9::/64\n    remote: 198.19.1.0/24 fd00:1::/64" in gw, conns
    assert "local:  198.18.9.9/32\n    remote: 198.18.0.1/32 fd00::1/128" in gw, conns
