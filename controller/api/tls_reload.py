"""Server TLS credentials that follow a CA rollover without restarting the gRPC server.

Owns nothing but the credentials object: grpc's dynamic SSL server credentials ask ``_fetch`` before
each new TLS handshake, and get a new configuration only when ``update`` changed it.  Needed because
during a rollover the replica must (a) accept client certificates of both CAs (roots = the bundle) and
(b) present a server certificate agents still trust after the old CA is retired.  Established
connections keep their session; only new handshakes see the change.
"""

from __future__ import annotations

import threading

import grpc


class ReloadableServerTLS:
    """credentials() once when binding the port; update() whenever the CA bundle or certificate change."""

    def __init__(
        self, key_pem: bytes, chain_pem: bytes, roots_pem: bytes, *, require_client_auth: bool = True
    ) -> None:
        self._lock = threading.Lock()  # _fetch runs on grpc's own threads
        self._require = require_client_auth
        self._config = self._make(key_pem, chain_pem, roots_pem)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.generation = 0

    def _make(self, key: bytes, chain: bytes, roots: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots or None)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config, self._fetch, require_client_authentication=self._require
        )

    def update(self, key_pem: bytes, chain_pem: bytes, roots_pem: bytes) -> None:
        config = self._make(key_pem, chain_pem, roots_pem)
        with self._lock:
            self._pending = config
            self.generation += 1

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            config, self._pending = self._pending, None
        return config
