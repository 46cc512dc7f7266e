"""IKE fragmentation (RFC 7383) between our agent and strongSwan's charon across a router that drops IP
fragments, as NATs and firewalls do.

Both sides authenticate with RSA 4096 certificates (ours with an intermediate CA in the chain), so
each IKE_AUTH is well over 1500 octets.  The router namespace drops every IPv4 fragment
(`iptables -A FORWARD -f -j DROP`), so only RFC 7383 fragments (at most 1280 octets each, charon's
and our default) get IKE_AUTH through.  Proves, in both roles: charon's log shows it split its own
IKE_AUTH and reassembled ours (so both engines sent and received fragments), the SAs come up, pings
cross the Child SA, and no IP fragment ever reached the router.  The control case proves the lab
is hostile: charon with `fragmentation = no` cannot bring its IKE_AUTH across (the router counts
dropped IP fragments) and no SA forms.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.agent.runtime.harness import AgentProc, node, peer, wait
from tests.support.netns import Namespace, Topology
from tests.support.strongswan import STRONGSWAN_CONF, Charon, CharonError

pytestmark = pytest.mark.system

US_UL, RT_US, SW_UL, RT_SW = "198.18.1.2", "198.18.1.1", "198.18.2.2", "198.18.2.1"
US_NET, SW_NET = "198.19.1.0/24", "198.19.2.0/24"
US_IN, SW_IN = "198.19.1.1", "198.19.2.1"
PROPOSAL = "aes128gcm16-prfsha256-x25519"
# charon signs RFC 7427 RSA signatures with RSASSA-PSS (we refuse PKCS#1 v1.5 by default), with the
# hash it picks for the key by itself: SHA-384 for these RSA 4096 keys
SW_CONF = STRONGSWAN_CONF.replace("    load_modular = no\n", "    load_modular = no\n    rsa_pss = yes\n")


# ------------------------------------------------------------------------------------------- PKI
@dataclass(frozen=True)
class Pki:
    root_pem: bytes
    mid_pem: bytes
    us_key: bytes
    us_cert: bytes
    sw_key: bytes  # PKCS#1 "RSA PRIVATE KEY", what charon's rsa/ folder takes
    sw_cert: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshsec"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> Pki:
    """RSA 4096 everywhere: root -> intermediate -> us.meshsec; root -> sw.meshsec."""
    keys = [rsa.generate_private_key(65537, 4096) for _ in range(4)]
    root_k, mid_k, us_k, sw_k = keys
    root = _cert("meshsec fragmentation root", root_k, None, root_k, ca=True)
    mid = _cert("meshsec fragmentation intermediate", mid_k, root, root_k, ca=True)
    us = _cert("us.meshsec", us_k, mid, mid_k, ca=False)
    sw = _cert("sw.meshsec", sw_k, root, root_k, ca=False)
    pem = serialization.Encoding.PEM
    return Pki(
        root.public_bytes(pem),
        mid.public_bytes(pem),
        us_k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        us.public_bytes(pem),
        sw_k.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()),
        sw.public_bytes(pem),
    )


# ------------------------------------------------------------------------------------------- lab
@dataclass
class Lab:
    us: Namespace
    rt: Namespace
    sw: Namespace
    workdir: str


@pytest.fixture
def lab() -> Iterator[Lab]:
    """us (198.18.1.2) -- rt -- sw (198.18.2.2); rt forwards but drops every IPv4 fragment."""
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-frag-", ignore_cleanup_errors=True) as d,
        Topology("fr") as topo,
    ):
        us, rt, sw = topo.add("us"), topo.add("rt"), topo.add("sw")
        topo.link(us, rt, [f"{US_UL}/24"], [f"{RT_US}/24"])
        topo.link(rt, sw, [f"{RT_SW}/24"], [f"{SW_UL}/24"])
        us.ip("route", "add", "default", "via", RT_US)
        sw.ip("route", "add", "default", "via", RT_SW)
        us.ip("addr", "add", f"{US_IN}/32", "dev", "lo")
        sw.ip("addr", "add", f"{SW_IN}/32", "dev", "lo")
        rt.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # filter table only: no conntrack here, so nothing reassembles the fragments before the rule
        rt.run("iptables", "-A", "FORWARD", "-f", "-j", "DROP")
        yield Lab(us, rt, sw, d)


def _dropped_fragments(rt: Namespace) -> int:
    out = rt.run("iptables", "-L", "FORWARD", "-v", "-n", "-x").stdout
    line = next(ln for ln in out.splitlines() if "DROP" in ln)
    return int(line.split()[0])


def _charon(lab: Lab, pki: Pki, *, fragmentation: str = "yes") -> Charon:
    base = f"{lab.workdir}/charon"
    os.makedirs(f"{base}/rsa", exist_ok=True)
    files = {"rsa/sw-key.pem": pki.sw_key, "sw.pem": pki.sw_cert, "root.pem": pki.root_pem}
    for rel, data in files.items():
        with open(f"{base}/{rel}", "wb") as fh:
            fh.write(data)
    conf = f"""connections {{
    lab {{
        version = 2
        local_addrs = {SW_UL}
        remote_addrs = {US_UL}
        proposals = {PROPOSAL}
        fragmentation = {fragmentation}
        rekey_time = 0
        local {{
            auth = pubkey
            certs = {base}/sw.pem
            id = sw.meshsec
        }}
        remote {{
            auth = pubkey
            cacerts = {base}/root.pem
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
    charon = Charon(lab.sw, base, conf, strongswan_conf=SW_CONF, log_levels={"enc": 1, "net": 1, "ike": 1})
    charon.start()
    charon.load()
    return charon


def _agent(lab: Lab, pki: Pki, *, initiate: bool) -> AgentProc:
    state = os.path.join(lab.workdir, "us")
    os.makedirs(state, exist_ok=True)
    with open(os.path.join(state, "node-key.pem"), "wb") as fh:
        fh.write(pki.us_key)
    os.chmod(os.path.join(state, "node-key.pem"), 0o600)
    with open(os.path.join(state, "node.pem"), "wb") as fh:
        fh.write(pki.us_cert + pki.mid_pem)  # leaf, then the intermediate: both go in CERT payloads
    p = peer(
        "sw",
        endpoint=SW_UL,
        local_ts=[US_NET],
        remote_ts=[SW_NET],
        initiate=initiate,
        external=True,
        psk=None,
        ike_proposals=[PROPOSAL],
    )
    return AgentProc(lab.us, lab.workdir, "us", node("us", [p], trusted_ca_pem=pki.root_pem.decode())).start()


def _sizes(log: str, pattern: str) -> list[int]:
    return [int(m) for m in re.findall(pattern, log)]


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "charon-initiates"])
def test_ike_auth_with_rsa4096_chain_crosses_a_fragment_dropping_router(
    lab: Lab, pki: Pki, we_initiate: bool
) -> None:
    charon = _charon(lab, pki)
    agent = _agent(lab, pki, initiate=we_initiate)
    if not we_initiate:
        charon.initiate("net", "lab")
    try:
        agent.wait_up("sw", 15.0)
        wait(lambda: "INSTALLED" in charon.list_sas(), 10.0, "charon's CHILD_SA")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- charon.log ---\n{charon.log_tail(8000)}") from None
    log = charon.log_tail(400_000)
    split = _sizes(log, r"splitting IKE message \((\d+) bytes\) into \d+ fragments")
    joined = _sizes(log, r"reassembled fragmented IKE message \((\d+) bytes\)")
    # charon fragmented its IKE_AUTH (our engine reassembled it) and reassembled ours (our engine sent
    # fragments); both messages are far beyond what one 1500-octet datagram could carry
    assert split and max(split) > 1500, log[-6000:]
    assert joined and max(joined) > 1500, log[-6000:]
    assert re.search(r"parsed IKE_AUTH (request|response) 1 \[ EF\(\d+/\d+\) \]", log), log[-6000:]
    assert re.search(r"authentication of 'us\.meshsec' with RSA_EMSA_PSS\S* successful", log), log[-6000:]
    assert re.search(r"authentication of 'sw\.meshsec' \(myself\) with RSA_EMSA_PSS_SHA2_384", log), log[
        -6000:
    ]
    assert 'received issuer cert "O=meshsec, CN=meshsec fragmentation intermediate"' in log
    r = lab.us.run("ping", "-c", "3", "-i", "0.2", "-W", "2", SW_IN, check=False)
    assert r.returncode == 0, r.stdout + r.stderr + agent.log_tail()
    r = lab.sw.run("ping", "-c", "3", "-i", "0.2", "-W", "2", US_IN, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    child = agent.children("sw")[0]
    assert int(child["counters"]["packetsIn"]) >= 3 and int(child["counters"]["packetsOut"]) >= 3, child
    assert _dropped_fragments(lab.rt) == 0  # nothing was ever IP-fragmented


def test_control_without_rfc7383_ike_auth_is_lost(lab: Lab, pki: Pki) -> None:
    """charon with fragmentation = no: its IKE_AUTH leaves as IP fragments, which the router drops."""
    charon = _charon(lab, pki, fragmentation="no")
    agent = _agent(lab, pki, initiate=False)
    with pytest.raises(CharonError):
        charon.initiate("net", "lab", timeout=4)
    assert _dropped_fragments(lab.rt) > 0
    assert agent.peer_status("sw").get("ikeState") != "IKE_SA_STATE_ESTABLISHED"
    assert "splitting IKE message" not in charon.log_tail(400_000)
