"""agent/k8s.py against a real HTTPS server on 127.0.0.1 (certificates made here): in-cluster settings,
the node GET with the ServiceAccount token, podCIDRs parsing, errors that help and never leak the token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from meshsec.agent.k8s import InCluster, KubernetesError, node_pod_cidrs, parse_pod_cidrs, poll_pod_cidrs

from tests.support.kube_api import FakeKubeAPI, node
from tests.support.pki import TestCA


@pytest.fixture
def api() -> FakeKubeAPI:
    with FakeKubeAPI(
        {
            "dual": node("dual", ["198.19.4.0/24", "fd00:4::/64"], "198.19.4.0/24"),
            "old": node("old", pod_cidr="198.19.5.0/24"),
            "none": node("none"),
            "bad": node("bad", ["198.19.6.1/24"]),
        }
    ) as server:
        yield server


def test_in_cluster_settings_come_from_env_and_the_mounted_service_account(
    api: FakeKubeAPI, tmp_path: Path
) -> None:
    cluster = InCluster.from_env(api.env, sa_dir=api.sa_dir)
    assert (cluster.host, cluster.port) == ("127.0.0.1", api.port)
    assert cluster.token_path == api.sa_dir / "token" and cluster.ca_path == api.sa_dir / "ca.crt"
    with pytest.raises(KubernetesError, match="KUBERNETES_SERVICE_HOST"):
        InCluster.from_env({}, sa_dir=api.sa_dir)
    with pytest.raises(KubernetesError, match="automountServiceAccountToken"):
        InCluster.from_env(api.env, sa_dir=tmp_path)
    assert InCluster("fd00::1", 443, Path("t"), Path("c")).server == "https://[fd00::1]:443"


def test_reads_pod_cidrs_with_the_service_account_token(api: FakeKubeAPI) -> None:
    cluster = InCluster.from_env(api.env, sa_dir=api.sa_dir)
    assert node_pod_cidrs(cluster, "dual") == ["198.19.4.0/24", "fd00:4::/64"]
    assert node_pod_cidrs(cluster, "old") == ["198.19.5.0/24"]  # before dual-stack: spec.podCIDR
    assert node_pod_cidrs(cluster, "none") == []
    assert api.requests[0] == ("/api/v1/nodes/dual", f"Bearer {api.token}")
    # The kubelet rotates bound tokens: every call reads the file again.
    api.token = "rotated-token-456"
    (api.sa_dir / "token").write_text(api.token + "\n")
    assert node_pod_cidrs(cluster, "old") == ["198.19.5.0/24"]
    assert api.requests[-1][1] == "Bearer rotated-token-456"


def test_errors_say_what_to_fix_and_never_contain_the_token(api: FakeKubeAPI, tmp_path: Path) -> None:
    cluster = InCluster.from_env(api.env, sa_dir=api.sa_dir)
    with pytest.raises(KubernetesError, match="not found") as nf:
        node_pod_cidrs(cluster, "missing")
    assert nf.value.retryable
    with pytest.raises(KubernetesError, match="not a CIDR"):
        node_pod_cidrs(cluster, "bad")  # host bits set: refused, not "fixed"
    api.token = "something-else"
    with pytest.raises(KubernetesError, match="needs `get` on nodes") as denied:
        node_pod_cidrs(cluster, "dual")
    assert "sa-token-123" not in str(denied.value)
    # An API server our CA did not issue is refused.
    other = tmp_path / "sa"
    other.mkdir()
    (other / "token").write_text("sa-token-123")
    (other / "ca.crt").write_bytes(TestCA("someone else").cert_pem)
    with pytest.raises(KubernetesError, match="not trusted") as untrusted:
        node_pod_cidrs(InCluster.from_env(api.env, sa_dir=other), "dual")
    assert not untrusted.value.retryable
    closed = InCluster("127.0.0.1", 1, api.sa_dir / "token", api.sa_dir / "ca.crt")
    with pytest.raises(KubernetesError, match="unreachable") as down:
        node_pod_cidrs(closed, "dual", timeout=1)
    assert down.value.retryable


def test_parse_pod_cidrs() -> None:
    assert parse_pod_cidrs({"spec": {"podCIDRs": ["fd00:1::/64", "198.19.1.0/24", "fd00:1::/64"]}}) == [
        "fd00:1::/64",
        "198.19.1.0/24",
    ]
    assert parse_pod_cidrs({"spec": {"podCIDR": "198.19.2.0/24"}}) == ["198.19.2.0/24"]
    assert parse_pod_cidrs({}) == [] and parse_pod_cidrs({"spec": None}) == []
    with pytest.raises(KubernetesError):
        parse_pod_cidrs({"spec": {"podCIDRs": "198.19.1.0/24"}})


def test_poll_announces_changes_only_and_keeps_the_last_on_errors(api: FakeKubeAPI) -> None:
    cluster = InCluster.from_env(api.env, sa_dir=api.sa_dir)
    seen: list[list[str]] = []

    async def body() -> None:
        task = asyncio.create_task(poll_pod_cidrs(cluster, "old", seen.append, interval=0.05, retry_max=0.05))
        try:
            while len(api.requests) < 3:
                await asyncio.sleep(0.02)
            api.nodes["old"] = node("old", ["198.19.5.0/24", "fd00:5::/64"])
            while len(seen) < 2:
                await asyncio.sleep(0.02)
            api.nodes.pop("old")  # a failing API: nothing new is announced
            n = len(api.requests)
            while len(api.requests) < n + 3:
                await asyncio.sleep(0.02)
        finally:
            task.cancel()

    asyncio.run(asyncio.wait_for(body(), 20))
    assert seen == [["198.19.5.0/24"], ["198.19.5.0/24", "fd00:5::/64"]]
