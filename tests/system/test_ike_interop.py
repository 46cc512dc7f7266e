"""IKEv2 interop in real namespaces: meshsec's engine (asyncio adapter, real UDP 500/4500) against
strongSwan charon (kernel-libipsec) in both roles, and against itself.

IKE-level success is the bar here: charon lists the IKE and CHILD SA as ESTABLISHED/INSTALLED and our
engine reports IkeSaEstablished + ChildSaEstablished with matching SPIs. Traffic needs the data plane.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import Namespace, Topology, wait_for
from tests.support.strongswan import Charon, psk_tunnel_conf

pytestmark = pytest.mark.system

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
NET_A, NET_B = "198.19.1.0/24", "198.19.2.0/24"
PSK = "meshsec-interop-psk-0123456789"
ROOT = Path(__file__).resolve().parents[2]


class Runner:
    """tests/system/ike_runner.py in a namespace; collects its JSON event lines."""

    def __init__(
        self, ns: Namespace, workdir: str, conf: dict[str, Any], charon: Charon | None = None
    ) -> None:
        self.charon = charon
        path = os.path.join(workdir, "meshsec-ike.json")
        with open(path, "w") as fh:
            json.dump(conf, fh)
        self.events: list[dict[str, Any]] = []
        self.stderr_path = os.path.join(workdir, "runner.stderr")
        with open(self.stderr_path, "wb") as err:  # the child keeps its own copy of the descriptor
            self.proc = ns.popen(
                [sys.executable, "-m", "tests.system.ike_runner", path],
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=str(ROOT),
            )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def wait(self, name: str, timeout: float = 15) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if e["event"] == name), None)

        try:
            return wait_for(found, timeout, what=f"{name} from meshsec")
        except AssertionError:
            with open(self.stderr_path) as fh:
                log = self.charon.log_tail(6000) if self.charon else ""
                raise AssertionError(
                    f"no {name}; events {self.names()}; stderr:\n{fh.read()[-3000:]}\n--- charon.log ---\n"
                    f"{log}"
                ) from None


@pytest.fixture
def lab(topology: Topology) -> Iterator[tuple[Namespace, Namespace, str]]:
    a, b = topology.add("a"), topology.add("b")
    topology.link(a, b, [f"{A_IP}/24"], [f"{B_IP}/24"])
    for ns, addr in ((a, "198.19.1.1"), (b, "198.19.2.1")):  # charon routes the remote site via a local
        ns.ip("addr", "add", f"{addr}/32", "dev", "lo")  # address inside its own site subnet
    with tempfile.TemporaryDirectory(prefix="meshsec-ike-") as tmp:
        yield a, b, tmp


def _ours(initiate: bool, **kw: Any) -> dict[str, Any]:
    return {
        "local_ip": A_IP,
        "remote_ip": B_IP,
        "local_id": "a.test",
        "remote_id": "b.test",
        "psk": PSK,
        "local_ts": [NET_A],
        "remote_ts": [NET_B],
        "initiate": initiate,
        **kw,
    }


def _charon(b: Namespace, tmp: str, **kw: Any) -> Charon:
    conf = psk_tunnel_conf(
        local_addr=B_IP,
        remote_addr=A_IP,
        local_id="b.test",
        remote_id="a.test",
        local_ts=NET_B,
        remote_ts=NET_A,
        psk=PSK,
        **kw,
    )
    return Charon(b, os.path.join(tmp, "charon"), conf, log_levels={"ike": 2, "cfg": 2})


def _check_charon_sas(charon: Charon, ours: dict[str, Any]) -> None:
    def installed() -> str | None:
        text = charon.list_sas()
        return text if "INSTALLED" in text else None

    sas = wait_for(installed, 10, what="charon SA")
    assert "ESTABLISHED" in sas and "INSTALLED" in sas, sas
    assert ours["spi_in"] in sas and ours["spi_out"] in sas, (ours, sas)


@pytest.mark.parametrize(
    ("ike", "esp"),
    [("aes128gcm16-prfsha256-x25519", "aes128gcm16"), ("aes256-sha256-modp2048", "aes256-sha256")],
)
def test_meshsec_initiates_to_charon(lab: tuple[Namespace, Namespace, str], ike: str, esp: str) -> None:
    a, b, tmp = lab
    with _charon(b, tmp, ike_proposals=ike, esp_proposals=esp) as charon:
        charon.load()
        runner = Runner(a, tmp, _ours(True, ike_proposals=[ike], esp_proposals=[esp]), charon)
        runner.wait("IkeSaEstablished")
        child = runner.wait("ChildSaEstablished")
        assert child["encap"] and child["local_port"] == 4500  # libipsec fakes NAT: float to 4500
        _check_charon_sas(charon, child)


def test_charon_initiates_to_meshsec(lab: tuple[Namespace, Namespace, str]) -> None:
    a, b, tmp = lab
    with _charon(
        b, tmp, ike_proposals="chacha20poly1305-prfsha256-ecp256", esp_proposals="chacha20poly1305"
    ) as charon:
        charon.load()
        runner = Runner(
            a,
            tmp,
            _ours(
                False, ike_proposals=["chacha20poly1305-prfsha256-ecp256"], esp_proposals=["chacha20poly1305"]
            ),
        )
        runner.wait("ready")
        charon.initiate("net", "lab")
        runner.wait("IkeSaEstablished")
        child = runner.wait("ChildSaEstablished")
        _check_charon_sas(charon, child)


def test_wrong_psk_against_charon(lab: tuple[Namespace, Namespace, str]) -> None:
    a, b, tmp = lab
    with _charon(b, tmp) as charon:
        charon.load()
        runner = Runner(a, tmp, _ours(True, psk="this is not the shared secret"), charon)
        failed = runner.wait("IkeSaFailed")
        assert "AUTHENTICATION_FAILED" in failed["reason"]
        assert "ESTABLISHED" not in charon.list_sas()


def test_meshsec_to_meshsec_over_real_sockets(lab: tuple[Namespace, Namespace, str]) -> None:
    a, b, tmp = lab
    os.makedirs(os.path.join(tmp, "b"))
    resp = Runner(
        b,
        os.path.join(tmp, "b"),
        {
            **_ours(False),
            "local_ip": B_IP,
            "remote_ip": A_IP,
            "local_id": "b.test",
            "remote_id": "a.test",
            "local_ts": [NET_B],
            "remote_ts": [NET_A],
        },
    )
    resp.wait("ready")
    init = Runner(a, tmp, _ours(True))
    c_init = init.wait("ChildSaEstablished")
    c_resp = resp.wait("ChildSaEstablished")
    assert (c_init["spi_in"], c_init["spi_out"]) == (c_resp["spi_out"], c_resp["spi_in"])
    assert not c_init["encap"] and c_init["local_port"] == 500  # no NAT between two meshsec peers: no float


@pytest.mark.parametrize("esp", ["aes128gcm16", "aes256gcm16-ecp256"])  # the second rekeys with PFS
def test_charon_rekeys_and_deletes(lab: tuple[Namespace, Namespace, str], esp: str) -> None:
    """charon drives CREATE_CHILD_SA (child rekey, IKE rekey) and INFORMATIONAL DELETE at our responder."""
    a, b, tmp = lab
    with _charon(b, tmp, esp_proposals=esp) as charon:
        charon.load()
        runner = Runner(a, tmp, _ours(False, esp_proposals=[esp]), charon)
        runner.wait("ready")
        charon.initiate("net", "lab")
        first = runner.wait("ChildSaEstablished")
        charon.swanctl("--rekey", "--child", "net")
        rekeyed = runner.wait("ChildSaRekeyed")
        runner.wait("ChildSaDeleted")
        rekey_line = next(
            ln for ln in charon.log_tail(200000).splitlines() if "CREATE_CHILD_SA response" in ln
        )
        assert ("KE" in rekey_line.split("[")[-1]) == esp.endswith("ecp256"), rekey_line  # PFS: our KE
        assert rekeyed["old_spi_in"] == int(first["spi_in"], 16)
        charon.swanctl("--rekey", "--ike", "lab")
        runner.wait("IkeSaRekeyed")
        sas = charon.list_sas()
        assert "ESTABLISHED" in sas and "INSTALLED" in sas, sas
        charon.swanctl("--terminate", "--ike", "lab")
        deleted = runner.wait("IkeSaDeleted")
        assert deleted["reason"] == "deleted by peer"


def test_meshsec_rekeys_and_deletes_towards_charon(lab: tuple[Namespace, Namespace, str]) -> None:
    """Our initiator drives child rekey, IKE rekey and DELETE; charon follows each step."""
    a, b, tmp = lab
    with _charon(b, tmp) as charon:
        charon.load()
        actions = [["rekey_child", 0.3], ["rekey_ike", 1.0], ["rekey_child", 1.7]]
        runner = Runner(a, tmp, _ours(True, actions=actions), charon)
        runner.wait("ChildSaEstablished")
        wait_for(lambda: runner.names().count("ChildSaRekeyed") == 2, 15, what="two child rekeys")
        runner.wait("IkeSaRekeyed")
        wait_for(lambda: runner.names().count("ChildSaDeleted") == 2, 15, what="old children deleted")
        sas = charon.list_sas()
        assert sas.count("INSTALLED") == 1 and "ESTABLISHED" in sas, sas
        last = [e for e in runner.events if e["event"] == "ChildSaRekeyed"][-1]
        assert last["spi_in"] in sas and last["spi_out"] in sas, (last, sas)


def test_invalid_ke_payload_retry_with_charon_both_ways(lab: tuple[Namespace, Namespace, str]) -> None:
    a, b, tmp = lab
    # charon's first KE is x25519, we only take ecp256: our INVALID_KE_PAYLOAD makes charon retry
    with _charon(b, tmp, ike_proposals="aes128gcm16-prfsha256-x25519-ecp256") as charon:
        charon.load()
        runner = Runner(a, tmp, _ours(False, ike_proposals=["aes128gcm16-prfsha256-ecp256"]), charon)
        runner.wait("ready")
        charon.initiate("net", "lab")
        _check_charon_sas(charon, runner.wait("ChildSaEstablished"))
        assert "requested ECP_256" in charon.log_tail(200000), charon.log_tail()
        runner.proc.kill()
    # now we lead with x25519 and charon only takes ecp256: we retry after its INVALID_KE_PAYLOAD
    os.makedirs(os.path.join(tmp, "second"))
    with _charon(b, os.path.join(tmp, "second"), ike_proposals="aes128gcm16-prfsha256-ecp256") as charon:
        charon.load()
        ours = _ours(True, ike_proposals=["aes128gcm16-prfsha256-x25519-ecp256"])
        runner = Runner(a, os.path.join(tmp, "second"), ours, charon)
        _check_charon_sas(charon, runner.wait("ChildSaEstablished"))


def test_certificate_authentication_with_charon(lab: tuple[Namespace, Namespace, str]) -> None:
    """ECDSA P-256 certificates from one CA, RFC 7427 signature AUTH, charon initiating to us."""
    import datetime as dt

    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from tests.agent.ike import pki_helpers as pk

    a, b, tmp = lab
    now = dt.datetime.now(dt.UTC)
    window = {"not_before": now - dt.timedelta(days=1), "not_after": now + dt.timedelta(days=1)}
    ca_key, a_key, b_key = pk.key("ec", 30), pk.key("ec", 31), pk.key("ec", 32)
    ca = pk.issue(pk.cn("interop CA"), ca_key, ca=True, **window)
    files = {
        "ca.pem": pk.pem(ca),
        "a.pem": pk.pem(pk.issue(pk.cn("a"), a_key, ca, ca_key, dns=["a.test"], **window)),
        "b.pem": pk.pem(pk.issue(pk.cn("b"), b_key, ca, ca_key, dns=["b.test"], **window)),
        "a.key": pk.key_pem(a_key),
        # SEC1 "EC PRIVATE KEY": charon's plugin set here (no pkcs8) reads that form
        "b.key": b_key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()),
    }
    for name, data in files.items():
        Path(tmp, name).write_bytes(data)
    # charon's side: swanctl --file loads keys and certificates from the folder of that file
    swan = Path(tmp, "charon")
    for sub, name in (("x509", "b.pem"), ("x509ca", "ca.pem"), ("ecdsa", "b.key")):
        (swan / sub).mkdir(parents=True, exist_ok=True)
        (swan / sub / name).write_bytes(files[name])
    conf = f"""connections {{
    lab {{
        version = 2
        local_addrs = {B_IP}
        remote_addrs = {A_IP}
        proposals = aes256gcm16-prfsha384-ecp384
        local {{
            auth = pubkey
            certs = b.pem
            id = b.test
        }}
        remote {{
            auth = pubkey
            id = a.test
            cacerts = ca.pem
        }}
        children {{
            net {{
                local_ts = {NET_B}
                remote_ts = {NET_A}
                esp_proposals = aes256gcm16
                start_action = none
            }}
        }}
    }}
}}
"""
    with Charon(b, os.path.join(tmp, "charon"), conf, log_levels={"ike": 2, "cfg": 2}) as charon:
        loaded = charon.load()
        assert "loaded ecdsa key" in loaded.lower() or "loaded ECDSA" in loaded, loaded
        cert = {"key": f"{tmp}/a.key", "cert": f"{tmp}/a.pem", "ca": f"{tmp}/ca.pem"}
        ours = _ours(False, ike_proposals=["aes256gcm16-prfsha384-ecp384"], esp_proposals=["aes256gcm16"])
        del ours["psk"]
        runner = Runner(a, tmp, {**ours, "cert": cert}, charon)
        runner.wait("ready")
        charon.initiate("net", "lab")
        _check_charon_sas(charon, runner.wait("ChildSaEstablished"))
        log = charon.log_tail(200000)
        # ECDSA_WITH_SHA256_DER is charon's name for RFC 7427 auth method 14 with ecdsa-with-sha256
        assert "authentication of 'a.test' with ECDSA_WITH_SHA256_DER successful" in log, log[-3000:]
        assert "authentication of 'b.test' (myself) with ECDSA_WITH_SHA256_DER successful" in log


@pytest.mark.parametrize("prober", ["charon", "meshsec"])
def test_liveness_checks_answered_both_ways_with_charon(
    lab: tuple[Namespace, Namespace, str], prober: str
) -> None:
    """Each side's liveness checks (RFC 7296 §2.4) get answers from the other.

    Both implementations only probe an IKE SA that has been idle for the interval, so with both probing
    at once whichever fires first keeps the other quiet: each direction is therefore shown on its own,
    with the other side's checks off.
    """
    a, b, tmp = lab
    conf = psk_tunnel_conf(
        local_addr=B_IP,
        remote_addr=A_IP,
        local_id="b.test",
        remote_id="a.test",
        local_ts=NET_B,
        remote_ts=NET_A,
        psk=PSK,
    )
    if prober == "charon":
        conf = conf.replace(
            "        rekey_time = 0\n        local {",
            "        rekey_time = 0\n        dpd_delay = 1s\n        local {",
        )
        assert "dpd_delay = 1s" in conf
    with Charon(b, os.path.join(tmp, "charon"), conf, log_levels={"ike": 2, "net": 2}) as charon:
        charon.load()
        ours = _ours(True, dpd_interval=1.0) if prober == "meshsec" else _ours(True)
        runner = Runner(a, tmp, ours, charon)
        runner.wait("ChildSaEstablished")
        if prober == "meshsec":
            wait_for(lambda: runner.names().count("DpdRtt") >= 2, 15, what="two answered liveness checks")
            rtt = next(e for e in runner.events if e["event"] == "DpdRtt")["rtt"]
            assert 0 <= rtt < 1.0
            log = charon.log_tail(400000)
            assert "parsed INFORMATIONAL request" in log, log[-2000:]
        else:

            def answered() -> bool:
                log = charon.log_tail(400000)
                return "sending DPD request" in log and log.count("parsed INFORMATIONAL response") >= 2

            wait_for(answered, 15, what="two of charon's liveness checks answered")
            assert "DpdRtt" not in runner.names()  # ours were off: the answers are what kept it alive
        assert "retransmit" not in charon.log_tail(400000)
        assert "ESTABLISHED" in charon.list_sas()
