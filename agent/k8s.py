"""The agent's one Kubernetes API call: this node's podCIDR(s), with the pod's own ServiceAccount.

Owns the in-cluster connection settings (KUBERNETES_SERVICE_HOST/PORT, the mounted ServiceAccount
token and CA, all injectable for tests), the GET of /api/v1/nodes/<name>, the parsing of
spec.podCIDRs (fallback spec.podCIDR) and a slow poll that hands changes to a callback (podCIDRs are
set once when a node joins).  Nothing else: no watch, no client library, no writes; the
chart's RBAC grants `get nodes` and nothing more.  The token is read on every call (bound tokens are
rotated by the kubelet) and never logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import logging
import os
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_BODY = 4 << 20  # a Node object is a few KB; refuse anything absurd


class KubernetesError(Exception):
    """The API server could not tell us the podCIDRs; one line for the operator.  retryable: try later."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class InCluster:
    """Where the API server is and how this pod authenticates to it."""

    host: str
    port: int
    token_path: Path
    ca_path: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, sa_dir: Path = SA_DIR) -> InCluster:
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port:
            raise KubernetesError(
                "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT unset); "
                "--announce-pod-cidr needs the in-cluster API"
            )
        try:
            port_no = int(port)
        except ValueError:
            raise KubernetesError(f"KUBERNETES_SERVICE_PORT {port!r} is not a port") from None
        token, ca = sa_dir / "token", sa_dir / "ca.crt"
        for f in (token, ca):
            if not f.is_file():
                raise KubernetesError(
                    f"{f} missing: the agent's ServiceAccount token is not mounted "
                    "(automountServiceAccountToken must be true for --announce-pod-cidr)"
                )
        return cls(host, port_no, token, ca)

    @property
    def server(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def parse_pod_cidrs(node: Mapping[str, object]) -> list[str]:
    """spec.podCIDRs (dual-stack), else [spec.podCIDR]; canonical, deduplicated.  [] when unset."""
    spec = node.get("spec")
    if not isinstance(spec, dict):
        return []
    raw = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    if not isinstance(raw, list):
        raise KubernetesError("node spec.podCIDRs is not a list")
    out: list[str] = []
    for item in raw:
        try:
            out.append(str(ipaddress.ip_network(str(item), strict=True)))
        except ValueError:
            raise KubernetesError(f"node spec.podCIDRs has {item!r}, not a CIDR") from None
    return list(dict.fromkeys(out))


def node_pod_cidrs(cluster: InCluster, node: str, *, timeout: float = 5.0) -> list[str]:
    """GET /api/v1/nodes/<node> and return its podCIDRs (blocking: call it in a thread)."""
    try:
        token = cluster.token_path.read_text().strip()
        ctx = ssl.create_default_context(cafile=str(cluster.ca_path))
    except (OSError, ssl.SSLError) as exc:
        raise KubernetesError(f"ServiceAccount credentials unreadable: {exc}", retryable=True) from None
    path = "/api/v1/nodes/" + urllib.parse.quote(node, safe="")
    conn = http.client.HTTPSConnection(cluster.host, cluster.port, timeout=timeout, context=ctx)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(MAX_BODY + 1)
    except ssl.SSLCertVerificationError as exc:
        raise KubernetesError(
            f"API server {cluster.server} not trusted by {cluster.ca_path}: {exc.verify_message}"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise KubernetesError(f"API server {cluster.server} unreachable: {exc}", retryable=True) from None
    finally:
        conn.close()
    if resp.status in (401, 403):
        raise KubernetesError(
            f"API server refused GET nodes/{node} ({resp.status}): the agent's ServiceAccount needs "
            "`get` on nodes (chart: agent.announcePodCIDR=true creates that RBAC)",
            retryable=True,
        )
    if resp.status == 404:
        raise KubernetesError(
            f"node {node!r} not found in the API: --node (MESHSEC_NODE) must be the Kubernetes node name",
            retryable=True,
        )
    if resp.status != 200:
        raise KubernetesError(f"GET nodes/{node}: HTTP {resp.status}", retryable=True)
    if len(body) > MAX_BODY:
        raise KubernetesError(f"GET nodes/{node}: response larger than {MAX_BODY} bytes")
    try:
        obj = json.loads(body)
    except ValueError:
        raise KubernetesError(f"GET nodes/{node}: response is not JSON", retryable=True) from None
    if not isinstance(obj, dict):
        raise KubernetesError(f"GET nodes/{node}: response is not a Node object")
    return parse_pod_cidrs(obj)


async def poll_pod_cidrs(
    cluster: InCluster,
    node: str,
    on_change: Callable[[list[str]], None],
    *,
    interval: float = 300.0,
    retry_max: float = 60.0,
    log_every: float = 60.0,
) -> None:
    """Forever: read the podCIDRs, call on_change(cidrs) when they differ from the last non-empty
    read, sleep `interval`.  Errors keep the last announcement, are logged once per `log_every`
    seconds and retried with backoff; a non-retryable one (bad CA, malformed node) is too, more slowly."""
    last: list[str] | None = None
    delay, last_log = 1.0, -log_every
    while True:
        try:
            cidrs = await asyncio.to_thread(node_pod_cidrs, cluster, node)
        except KubernetesError as exc:
            if time.monotonic() - last_log >= log_every:
                log.warning("cannot read podCIDRs of node %r: %s; retrying", node, exc)
                last_log = time.monotonic()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, retry_max if exc.retryable else interval)
            continue
        delay = 1.0
        if not cidrs:
            if last is None:
                log.warning("node %r has no spec.podCIDR(s) yet: nothing to announce", node)
                last = []
        elif cidrs != last:
            log.info("announcing podCIDRs of node %r: %s", node, ", ".join(cidrs))
            last = cidrs
            on_change(cidrs)
        await asyncio.sleep(interval)
