"""The deploy/ shell scripts: shellcheck clean, and the etcd TLS material fits the chart's names.

deploy/build-image.sh and deploy/test-cluster.sh are heavy (debootstrap, a Kubernetes build) and are
run by hand before a release; here they are only checked statically.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, container, env, find, render

SCRIPTS = sorted(DEPLOY.glob("*.sh"))


def test_scripts_exist() -> None:
    assert [p.name for p in SCRIPTS] == [
        "build-image.sh",
        "gen-etcd-tls.sh",
        "test-cluster-pods.sh",
        "test-cluster.sh",
    ]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is required (Debian package shellcheck)"
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"


def test_test_cluster_usage() -> None:
    """--help documents --pods (no longer a stated gap); an unknown argument is a usage error."""
    script = str(DEPLOY / "test-cluster.sh")
    result = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--pods" in result.stdout and "NOT YET" not in result.stdout
    result = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown argument --bogus" in result.stderr


def test_test_cluster_node_stays_in_the_test_ranges() -> None:
    """The --pods node (kubelet, containerd, pods) may only use 198.18.0.0/15: its node IP, pod
    bridge, cluster CIDR and Service range (the network rule); and it gets no default route."""
    import ipaddress
    import re

    text = (DEPLOY / "test-cluster-pods.sh").read_text() + (DEPLOY / "test-cluster.sh").read_text()
    test_net = ipaddress.ip_network("198.18.0.0/15")
    found = re.findall(r"\b(\d+\.\d+\.\d+\.\d+)(?:/\d+)?\b", text)
    assert len(found) >= 6
    for addr in found:
        ip = ipaddress.ip_address(addr)
        assert ip in test_net or ip.is_loopback or ip.is_unspecified, addr
    assert "route add default" not in text and "default via" not in text


def _verify(ca: Path, cert: Path, hostname: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), "-verify_hostname", hostname, str(cert)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(("release", "namespace"), [("meshsec", "meshsec"), ("edge", "vpn")])
def test_etcd_tls_secret_covers_every_member_the_chart_names(
    tmp_path: Path, release: str, namespace: str
) -> None:
    gen = DEPLOY / "gen-etcd-tls.sh"
    out = subprocess.run(
        ["bash", str(gen), "--release", release, "--namespace", namespace, str(tmp_path / "pki")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    secret = yaml.safe_load(out)
    objs = render.render({}, release=release, namespace=namespace)
    prefix = release if "meshsec" in release else f"{release}-meshsec"
    assert render.validate([secret], "1.30.0") == []
    assert secret["metadata"]["namespace"] == namespace
    sts = find(objs, "StatefulSet", f"{prefix}-etcd")
    vol = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert secret["metadata"]["name"] == vol["secret"]["secretName"]
    assert set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    assert (tmp_path / "pki" / "tls.key").stat().st_mode & 0o077 == 0
    ctrl = container(
        find(objs, "Deployment", f"{prefix}-controller")["spec"]["template"]["spec"], "controller"
    )
    for endpoint in env(ctrl)["MESHSEC_ETCD"]["value"].split(","):
        host = urlparse(endpoint).hostname
        assert host
        ok = _verify(tmp_path / "pki" / "ca.crt", tmp_path / "pki" / "tls.crt", host)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _verify(tmp_path / "pki" / "ca.crt", tmp_path / "pki" / "tls.crt", "etcd.elsewhere.svc")
    assert bad.returncode != 0
