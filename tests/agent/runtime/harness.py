"""Test harness for whole agents: NodeConfig builders and an agent process in a test namespace.

`AgentProc` runs `python -m meshsec.agent.runtime --config ...` inside a tests.support.netns namespace
(killed with it), waits for READY, and reads the JSON NodeStatus the agent keeps rewriting.  Used by
tests/system/test_agent_*.py and tests/system/test_interop_strongswan*.py.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import json_format
from meshsec.api.v1 import config_pb2, spec_pb2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PSK = b"meshsec-test-psk-0123456789abcdef"


def peer(
    name: str,
    *,
    endpoint: str | None,
    local_ts: Sequence[str],
    remote_ts: Sequence[str],
    mode: str = "tunnel",
    initiate: bool = True,
    remote_identity: str | None = None,
    psk: bytes | None = PSK,
    ike_proposals: Sequence[str] = ("aes128gcm16-prfsha256-x25519",),
    esp_proposals: Sequence[str] = ("aes128gcm16",),
    dpd: int = 0,
    dpd_timeout: int = 0,
    child_rekey: int = 0,
    ike_rekey: int = 0,
    behind_nat: bool = False,
    external: bool = False,
    child_rekey_bytes: int = 0,
) -> config_pb2.PeerConfig:
    p = config_pb2.PeerConfig(
        name=name,
        kind=spec_pb2.NODE_KIND_EXTERNAL if external else spec_pb2.NODE_KIND_AGENT,
        endpoints=[endpoint] if endpoint else [],
        remote_identity=remote_identity or f"fqdn:{name}.meshsec",
        auth=spec_pb2.AUTH_METHOD_PSK if psk else spec_pb2.AUTH_METHOD_CERTIFICATE,
        psk=psk or b"",
        initiation=config_pb2.INITIATION_INITIATE if initiate else config_pb2.INITIATION_RESPOND,
        behind_nat=behind_nat,
    )
    p.ike.proposals.extend(ike_proposals)
    p.ike.dpd_interval_seconds = dpd
    p.ike.dpd_timeout_seconds = dpd_timeout
    if ike_rekey:
        p.ike.lifetime.rekey_seconds = ike_rekey
        p.ike.lifetime.life_seconds = ike_rekey * 3
        p.ike.lifetime.jitter_seconds = 1
    c = p.children.add(
        name="net" if mode == "tunnel" else "host",
        mode=spec_pb2.MODE_TRANSPORT if mode == "transport" else spec_pb2.MODE_TUNNEL,
        local_ts=list(local_ts),
        remote_ts=list(remote_ts),
        esp_proposals=list(esp_proposals),
    )
    if child_rekey_bytes:
        c.lifetime.rekey_bytes = child_rekey_bytes
        c.lifetime.life_bytes = child_rekey_bytes * 20
    if child_rekey:
        c.lifetime.rekey_seconds = child_rekey
        c.lifetime.life_seconds = child_rekey * 3
        c.lifetime.jitter_seconds = 1
    return p


def node(
    name: str,
    peers: Sequence[config_pb2.PeerConfig],
    *,
    identity: str | None = None,
    trusted_ca_pem: str = "",
    listen: Sequence[str] = (),
    behind_nat: bool = False,
) -> config_pb2.NodeConfig:
    cfg = config_pb2.NodeConfig(version=1)
    cfg.local.name = name
    cfg.local.identity = identity if identity is not None else f"fqdn:{name}.meshsec"
    cfg.local.listen_addresses.extend(listen)
    cfg.local.trusted_ca_pem = trusted_ca_pem
    cfg.local.behind_nat = behind_nat
    cfg.peers.extend(peers)
    return cfg


class AgentProc:
    """One agent process in namespace `ns`, its files under `workdir`/`name`."""

    def __init__(self, ns: Any, workdir: str, name: str, config: config_pb2.NodeConfig) -> None:
        self.ns = ns
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.config_path = os.path.join(self.dir, "node.json")
        self.status_path = os.path.join(self.dir, "status.json")
        self.log_path = os.path.join(self.dir, "agent.log")
        self.write_config(config)
        self.proc: subprocess.Popen[str] | None = None

    def write_config(self, config: config_pb2.NodeConfig) -> None:
        with open(self.config_path, "w") as fh:
            fh.write(json_format.MessageToJson(config))

    def start(self, timeout: float = 15.0, tun: str = "msrt0") -> AgentProc:
        cmd = [sys.executable, "-m", "meshsec.agent.runtime", "--config", self.config_path]
        cmd += ["--state-dir", self.dir, "--status-file", self.status_path, "--tun", tun]
        cmd += ["--log-level", "info"]
        self.proc = self.ns.popen(
            cmd,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "w"),  # noqa: SIM115 - lives with the process
            text=True,
        )
        deadline = time.monotonic() + timeout
        line = ""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY") or not line:
                break
        if not line.startswith("READY"):
            raise RuntimeError(f"agent {self.name} did not start:\n{self.log_tail()}")
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-chars:]
        except OSError:
            return "(no log)"

    def status(self) -> dict[str, Any]:
        try:
            with open(self.status_path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def peer_status(self, peer: str) -> dict[str, Any]:
        return next((p for p in self.status().get("peers", []) if p.get("peer") == peer), {})

    def children(self, peer: str) -> list[dict[str, Any]]:
        return self.peer_status(peer).get("children", [])

    def wait_up(self, peer: str, timeout: float = 15.0, children: int = 1) -> dict[str, Any]:
        """Wait until the IKE SA with `peer` is established with `children` installed child SAs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ps = self.peer_status(peer)
            installed = [c for c in ps.get("children", []) if c.get("state") == "CHILD_SA_STATE_INSTALLED"]
            if ps.get("ikeState") == "IKE_SA_STATE_ESTABLISHED" and len(installed) >= children:
                return ps
            time.sleep(0.1)
        raise AssertionError(
            f"agent {self.name}: no SA with {peer} after {timeout}s; status {self.peer_status(peer)}\n"
            f"{self.log_tail()}"
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


def wait(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


# ---------------------------------------------------------------------- a tiny PKI for certificate tests
def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshsec test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


class TestCa:
    """An ECDSA P-256 CA that issues node certificates with a DNS SAN (the FQDN identity)."""

    __test__ = False  # not a pytest class

    def __init__(self, cn: str = "meshsec test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, fqdn: str) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) for `fqdn`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(fqdn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(fqdn)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return key_pem, cert.public_bytes(serialization.Encoding.PEM)

    def install(self, directory: str, fqdn: str) -> None:
        """Write node-key.pem / node.pem (the agent state-dir layout) for `fqdn` into `directory`."""
        os.makedirs(directory, exist_ok=True)
        key_pem, cert_pem = self.issue(fqdn)
        with open(os.path.join(directory, "node-key.pem"), "wb") as fh:
            fh.write(key_pem)
        os.chmod(os.path.join(directory, "node-key.pem"), 0o600)
        with open(os.path.join(directory, "node.pem"), "wb") as fh:
            fh.write(cert_pem)
