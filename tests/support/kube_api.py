"""A stand-in Kubernetes API server for tests: HTTPS on 127.0.0.1, GET /api/v1/nodes/<name> only.

Owns one server thread and its temp files (CA, ServiceAccount token dir), removed on close.  Checks the
bearer token like the real API server and records every request path.  Enough for the agent's one
call (agent/k8s.py); not a Kubernetes.
"""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from tests.support.pki import TestCA


class FakeKubeAPI:
    """nodes: name -> Node object (dict).  sa_dir holds `token` and `ca.crt` as a pod would see them."""

    def __init__(
        self, nodes: dict[str, dict[str, object]] | None = None, token: str = "sa-token-123"
    ) -> None:
        self.nodes = nodes or {}
        self.token = token
        self.requests: list[tuple[str, str]] = []  # (path, Authorization header)
        self._tmp = Path(tempfile.mkdtemp(prefix="meshsec-kube-"))
        self.ca = TestCA("meshsec test kube CA")
        self.sa_dir = self._tmp / "serviceaccount"
        self.sa_dir.mkdir()
        (self.sa_dir / "ca.crt").write_bytes(self.ca.cert_pem)
        (self.sa_dir / "token").write_text(token)
        crt, key = self.ca.issue("kube-apiserver", ["kubernetes.default.svc"], ["127.0.0.1"]).write(
            self._tmp, "apiserver"
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(crt), str(key))
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                api.requests.append((self.path, auth))
                if auth != f"Bearer {api.token}":
                    return self._send(401, {"kind": "Status", "reason": "Unauthorized"})
                prefix = "/api/v1/nodes/"
                name = self.path.removeprefix(prefix)
                if not self.path.startswith(prefix) or name not in api.nodes:
                    return self._send(404, {"kind": "Status", "reason": "NotFound"})
                return self._send(200, api.nodes[name])

            def _send(self, code: int, obj: object) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        """What the kubelet puts in every pod's environment."""
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port)}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FakeKubeAPI:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def node(name: str, pod_cidrs: list[str] | None = None, pod_cidr: str | None = None) -> dict[str, object]:
    """A Node object as the API returns it (only what the agent reads, plus some noise)."""
    spec: dict[str, object] = {"providerID": f"kind://{name}"}
    if pod_cidrs is not None:
        spec["podCIDRs"] = pod_cidrs
    if pod_cidr is not None:
        spec["podCIDR"] = pod_cidr
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name}, "spec": spec, "status": {}}
