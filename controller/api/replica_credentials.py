"""ReplicaCredentials: one replica's CA and TLS state, kept in step with etcd (rollover) and with time.

Owns the replica's TLS server certificate (issued in memory by the CA every agent can verify, with
the configured --server-name SANs besides the standard ones, re-issued
at two thirds of its lifetime and on every CA change), the two reloadable server credentials (main:
client certificate required, roots = the trusted bundle; enrollment: none asked), and the follow_ca
task.  Services that need the CA (AgentService signs with ``current.signing``; CreateToken pins
``current.tls_issuer``) subscribe and are told on every change.  It does not serve anything itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
from collections.abc import Callable, Sequence

import grpc
from cryptography import x509
from meshsec.controller.api.tls_reload import ReloadableServerTLS
from meshsec.controller.ca.authority import ROLE_CONTROLLER, SERVER_NAME
from meshsec.controller.ca.kek import Sealer
from meshsec.controller.ca.rollover import CurrentCA, follow_ca, load_current
from meshsec.controller.store import Store

log = logging.getLogger(__name__)

Listener = Callable[[CurrentCA], None]


def split_server_names(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of --server-name values: an address becomes an IP SAN, since TLS
    clients match a dialled IP only against IP SANs.  Raises ValueError for a name no SAN can hold."""
    dns: list[str] = []
    ips: list[str] = []
    for raw in names:
        name = raw.strip().rstrip(".").lower()
        if not name:
            continue
        try:
            ips.append(str(ipaddress.ip_address(name.strip("[]"))))
            continue
        except ValueError:
            pass
        labels = name.removeprefix("*.").split(".")
        if len(name) > 253 or not all(
            0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() for label in labels
        ):
            raise ValueError(f"--server-name {raw!r} is neither a DNS name nor an IP address")
        dns.append(name)
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


class ReplicaCredentials:
    """await start() before binding ports; close() stops the background tasks."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        replica: str,
        *,
        server_cert_lifetime: dt.timedelta = dt.timedelta(days=30),
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        server_names: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._dns, self._ips = split_server_names(server_names)
        self._sealer = sealer
        self._replica = replica
        self._lifetime = server_cert_lifetime
        self._clock = clock
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.current: CurrentCA | None = None
        self.main_tls: ReloadableServerTLS | None = None
        self.enroll_tls: ReloadableServerTLS | None = None
        self._refresh_at = clock()

    def subscribe(self, listener: Listener) -> None:
        """listener(current) now (if started) and after every CA change."""
        self._listeners.append(listener)
        if self.current is not None:
            listener(self.current)

    def _issue(self, cur: CurrentCA) -> tuple[bytes, bytes]:
        if self._dns or self._ips:  # the standard SANs (issue_server's) plus the configured names
            cert, key = cur.tls_issuer.issue_keypair(
                ROLE_CONTROLLER,
                self._replica,
                self._lifetime,
                [SERVER_NAME, "localhost", *self._dns],
                list(dict.fromkeys(["127.0.0.1", *self._ips])),
            )
        else:
            cert, key = cur.tls_issuer.issue_server(self._replica, self._lifetime)
        parsed = x509.load_pem_x509_certificate(cert)
        start = max(parsed.not_valid_before_utc, self._clock())
        self._refresh_at = start + (parsed.not_valid_after_utc - start) * 2 / 3
        return key, cert + cur.tls_issuer.cert_pem

    async def start(self) -> CurrentCA:
        cur = await load_current(self._store, self._sealer)
        key, chain = self._issue(cur)
        self.main_tls = ReloadableServerTLS(key, chain, cur.bundle_pem, require_client_auth=True)
        self.enroll_tls = ReloadableServerTLS(key, chain, b"", require_client_auth=False)
        self.current = cur
        self._tasks.append(asyncio.create_task(follow_ca(self._store, self._sealer, self._changed)))
        self._tasks.append(asyncio.create_task(self._refresh()))
        return cur

    def main_credentials(self) -> grpc.ServerCredentials:
        assert self.main_tls is not None, "start() first"
        return self.main_tls.credentials()

    def enroll_credentials(self) -> grpc.ServerCredentials:
        assert self.enroll_tls is not None, "start() first"
        return self.enroll_tls.credentials()

    def _install(self, cur: CurrentCA) -> None:
        assert self.main_tls is not None and self.enroll_tls is not None
        key, chain = self._issue(cur)
        self.main_tls.update(key, chain, cur.bundle_pem)
        self.enroll_tls.update(key, chain, b"")

    def _changed(self, cur: CurrentCA) -> None:
        if self.current is not None and (cur.bundle_pem, cur.signing.sha256, cur.tls_issuer.sha256) == (
            self.current.bundle_pem,
            self.current.signing.sha256,
            self.current.tls_issuer.sha256,
        ):
            return  # follow_ca's first report repeats what start() loaded
        self._install(cur)
        self.current = cur
        log.info(
            "CA changed: signing %s, server certificate from %s, %d CA(s) trusted",
            cur.signing.sha256[:16],
            cur.tls_issuer.sha256[:16],
            len(x509.load_pem_x509_certificates(cur.bundle_pem)),
        )
        for listener in self._listeners:
            listener(cur)

    async def _refresh(self) -> None:
        """Re-issue the server certificate before it expires (a replica may run for months)."""
        while True:
            wait = (self._refresh_at - self._clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, 3600.0))
                continue
            if self.current is not None:
                self._install(self.current)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
