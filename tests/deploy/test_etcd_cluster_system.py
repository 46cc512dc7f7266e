"""The chart's etcd StatefulSet arguments form a real 3-member TLS cluster the controller can use.

Three network namespaces on one test bridge stand in for the three pods: each runs Debian's etcd with
the container args the chart renders (only kubelet's $(POD_NAME) expansion and the two mount paths
are substituted), with certificates from deploy/gen-etcd-tls.sh and the pods' DNS names in a per-
namespace /etc/hosts.  Then etcdctl, with the controller's client certificate and its MESHSEC_ETCD
endpoints, checks that the members formed one cluster and serve reads and writes; the readiness
probe's /health answers on the metrics port.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, container, env, find, render
from tests.support.netns import Namespace, Topology, wait_for

pytestmark = pytest.mark.system

SUBNET = "198.18.77"


@pytest.fixture
def etcd_hosts() -> Iterator[tuple[Topology, list[Namespace], Namespace]]:
    """Three member namespaces and a client namespace on one bridge; /etc/netns files removed after."""
    topo = Topology("etcd")
    try:
        hub = topo.add("hub")
        hub.ip("link", "add", "br0", "type", "bridge")
        hub.ip("link", "set", "br0", "up")
        hosts = [topo.add(f"m{i}") for i in range(3)] + [topo.add("client")]
        for i, ns in enumerate(hosts):
            _, hub_if = topo.link(ns, hub, [f"{SUBNET}.{i + 1}/24"], [])
            hub.ip("link", "set", hub_if, "master", "br0")
        yield topo, hosts[:3], hosts[3]
    finally:
        topo.close()


def _write_hosts(ns: Namespace, names: dict[str, str]) -> Path:
    """`ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts: the pods' DNS names."""
    d = Path("/etc/netns") / ns.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{ip} {n}\n" for n, ip in names.items()))
    return d


def test_chart_etcd_args_form_a_tls_cluster(
    etcd_hosts: tuple[Topology, list[Namespace], Namespace], tmp_path: Path
) -> None:
    assert shutil.which("etcd") and shutil.which("etcdctl"), "Debian etcd-server and etcd-client needed"
    _, members, client = etcd_hosts
    objs = render.render({})
    sts = find(objs, "StatefulSet", "meshsec-etcd")
    args = container(sts["spec"]["template"]["spec"], "etcd")["args"]
    ctrl_env = env(
        container(find(objs, "Deployment", "meshsec-controller")["spec"]["template"]["spec"], "controller")
    )
    endpoints = ctrl_env["MESHSEC_ETCD"]["value"]

    pki = tmp_path / "pki"
    subprocess.run(
        ["bash", str(DEPLOY / "gen-etcd-tls.sh"), str(pki)], check=True, capture_output=True, timeout=60
    )
    names = {f"meshsec-etcd-{i}.meshsec-etcd-peer.meshsec.svc": f"{SUBNET}.{i + 1}" for i in range(3)}
    etc_dirs = [_write_hosts(ns, names) for ns in [*members, client]]
    try:
        for i, ns in enumerate(members):
            pod = f"meshsec-etcd-{i}"
            argv = [
                a.replace("$(POD_NAME)", pod)
                .replace("/var/lib/etcd/data", str(tmp_path / pod))
                .replace("/etc/etcd/tls", str(pki))
                for a in args
            ]
            log = (tmp_path / f"{pod}.log").open("wb")
            ns.popen(["etcd", *argv, "--log-level=warn"], stdout=log, stderr=subprocess.STDOUT)

        def healthy(ns: Namespace, ip: str) -> bool:
            probe = "import urllib.request as u; print(u.urlopen('http://%s:2381/health', timeout=2).read())"
            r = ns.run("python3", "-c", probe % ip, check=False, timeout=10)
            return r.returncode == 0 and '"health":"true"' in r.stdout.replace(" ", "")

        for i, ns in enumerate(members):
            wait_for(
                lambda ns=ns, i=i: healthy(ns, f"{SUBNET}.{i + 1}"), timeout=30, what=f"etcd {i} /health"
            )

        etcdctl = [
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            f"--endpoints={endpoints}",
            f"--cacert={pki / 'ca.crt'}",
            f"--cert={pki / 'tls.crt'}",
            f"--key={pki / 'tls.key'}",
            "--command-timeout=5s",
        ]
        members_out = client.run(*etcdctl, "member", "list", timeout=30).stdout
        assert sorted(line.split(", ")[2] for line in members_out.splitlines()) == [
            f"meshsec-etcd-{i}" for i in range(3)
        ]
        client.run(*etcdctl, "put", "/meshsec/v1/probe", "ok", timeout=30)
        assert client.run(*etcdctl, "get", "--print-value-only", "/meshsec/v1/probe").stdout.strip() == "ok"
        # Client certificate authentication is on: without one the members refuse the client.
        anon = [a for a in etcdctl if not a.startswith(("--cert=", "--key="))]
        assert client.run(*anon, "get", "/meshsec/v1/probe", check=False, timeout=30).returncode != 0
    finally:
        for d in etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
