"""Controller: one replica assembled: KEK, etcd (external or embedded), CA, desired state, gRPC servers.

Owns process-level wiring and lifecycle only.  TLS and the CA come from ReplicaCredentials
(replica_credentials.py): the replica's server certificate (key in memory only; SAN DNS
meshsec-controller, localhost, IP 127.0.0.1) is issued by the CA every agent can verify, re-issued
before it expires and on every CA rollover step, and sent with its issuer in the chain so an agent can
pin the CA by hash on first contact.  AgentService signs with the CA that signs now and AdminService
pins the server certificate's issuer in CreateToken; both are told of every change (set_ca).  One
RolloverPolicy, derived from the node certificate lifetime, serves RotateCA/GetCA and the CA rotation
job, so both agree on when each rollover step is due.

Two gRPC servers, because grpcio cannot make client certificates optional-but-verified on one port:
the main server (TCP --listen and unix --socket) requires a client certificate issued by the mesh CA
for every call; the enrollment server (--enroll-listen / --enroll-socket) asks for none and is only
useful for AgentService.Enroll (every other method there fails for lack of a certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc
from meshsec.controller.api.admin_service import AdminService
from meshsec.controller.api.agent_service import GRPC_MESSAGE_OPTIONS, AgentService, AgentSettings
from meshsec.controller.api.replica_credentials import ReplicaCredentials
from meshsec.controller.ca import CANotInitialized, CertificateAuthority, Sealer, load_ca, load_kek
from meshsec.controller.ca.kek import KEK_FILENAME
from meshsec.controller.ca.rollover import CurrentCA, RolloverError, RolloverPolicy, policy_for
from meshsec.controller.desired import DesiredState
from meshsec.controller.desired.contracts import using_standins
from meshsec.controller.observability.etcd import instrument_store
from meshsec.controller.observability.grpc_metrics import MetricsInterceptor
from meshsec.controller.observability.probes import ControllerProbes, start_endpoint
from meshsec.controller.store import Store, StoreError
from meshsec.controller.store.embedded import EmbeddedEtcd

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 4_000),
    ("grpc.http2.max_ping_strikes", 0),
]
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


@dataclass
class ControllerConfig:
    state_dir: Path
    etcd: list[str] = field(default_factory=list)  # empty: run an embedded etcd
    listen: str | None = "127.0.0.1:7443"
    socket: Path | None = None
    enroll_listen: str | None = "127.0.0.1:7444"
    enroll_socket: Path | None = None
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    heartbeat_seconds: float = 5.0
    agent_lease_ttl: int = 10
    node_cert_lifetime: dt.timedelta = dt.timedelta(days=30)
    etcd_client_port: int = 0
    etcd_peer_port: int = 0
    singleton_jobs: bool = True  # run controller/jobs (gc, CA rotation) under the etcd election
    election_ttl: int = 10  # seconds: lease TTL of the singleton-jobs election (takeover time)
    # How long a new CA is published (trusted everywhere) before it signs; the rest of the rollover
    # timing follows from node_cert_lifetime (rollover.policy_for).  Seconds only in tests.
    ca_propagate: dt.timedelta = dt.timedelta(minutes=10)
    metrics_listen: str | None = None  # HTTP /metrics /healthz /readyz (controller/observability)
    metrics_required: bool = False  # False: a taken port only disables the endpoint, with a warning
    # TLS to an external etcd (PEM files, e.g. a mounted Secret): CA to verify it, client cert and key.
    etcd_ca_file: Path | None = None
    etcd_cert_file: Path | None = None
    etcd_key_file: Path | None = None
    # More DNS names (or IP addresses) for this replica's server certificate, e.g. the Kubernetes
    # Service names meshsec-controller.<ns>.svc, so clients that check the name they dial verify.
    server_names: list[str] = field(default_factory=list)


async def open_store(cfg: ControllerConfig) -> tuple[Store, EmbeddedEtcd | None]:
    embedded = None
    endpoints = cfg.etcd
    if not endpoints:
        embedded = EmbeddedEtcd(
            cfg.state_dir / "etcd", client_port=cfg.etcd_client_port, peer_port=cfg.etcd_peer_port
        )
        await embedded.start()
        endpoints = [embedded.endpoint]
    return await Store(endpoints, **etcd_tls(cfg)).open(), embedded


def etcd_tls(cfg: ControllerConfig) -> dict[str, bytes | None]:
    """Store's TLS keyword arguments from the configured PEM files (none: plain TCP).

    Read once at start: etcd client certificates are long-lived; a rotated Secret takes a restart.
    """
    files = (cfg.etcd_ca_file, cfg.etcd_cert_file, cfg.etcd_key_file)
    if not any(files):
        return {}
    if cfg.etcd_ca_file is None:
        raise StoreError("--etcd-cert-file/--etcd-key-file need --etcd-ca-file (TLS to etcd)")
    if (cfg.etcd_cert_file is None) != (cfg.etcd_key_file is None):
        raise StoreError("--etcd-cert-file and --etcd-key-file go together")
    try:
        ca, cert, key = (f.read_bytes() if f is not None else None for f in files)
    except OSError as exc:
        raise StoreError(f"etcd TLS: cannot read {exc.filename}: {exc.strerror}") from None
    return {"ca_cert": ca, "cert": cert, "key": key}


async def wait_for_ca(store: Store, sealer: Sealer, timeout: float = 30.0) -> CertificateAuthority:
    """The CA from etcd, waiting out an etcd that is still starting (but not a missing init)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await load_ca(store, sealer)
        except StoreError as exc:
            if loop.time() > deadline:
                raise StoreError(f"etcd at {','.join(store.endpoints)} unreachable: {exc}") from None
            await asyncio.sleep(0.2)


class Controller:
    """start() → serving; stop() → everything it started is gone (servers, etcd child, tasks)."""

    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self.port: int | None = None
        self.enroll_port: int | None = None
        self.store: Store | None = None
        self.state: DesiredState | None = None
        self.embedded: EmbeddedEtcd | None = None
        self._servers: list[grpc.aio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: object | None = None
        self.creds: ReplicaCredentials | None = None  # the CA state the services follow
        self._tls: list[ReplicaCredentials] = []  # creds, then one more when TCP and unix are both served
        self.policy: RolloverPolicy = policy_for(cfg.node_cert_lifetime, propagate=cfg.ca_propagate)
        self.probes = ControllerProbes(cfg.replica)
        self.metrics_server: object | None = None  # ObservabilityServer when cfg.metrics_listen
        self._health_servicer: health.aio.HealthServicer | None = None
        self._draining = False  # set_not_serving() called: health stays NOT_SERVING

    @property
    def address(self) -> str:
        """The main (mTLS) gRPC target of this replica: TCP when listening on TCP, else the socket."""
        if self.port:
            host = (self.cfg.listen or "127.0.0.1").rsplit(":", 1)[0]
            return f"{host}:{self.port}"
        return f"unix://{self.cfg.socket}"

    @property
    def enroll_address(self) -> str:
        if self.enroll_port:
            host = (self.cfg.enroll_listen or "127.0.0.1").rsplit(":", 1)[0]
            return f"{host}:{self.enroll_port}"
        return f"unix://{self.cfg.enroll_socket}"

    def _new_credentials(self, sealer: Sealer) -> ReplicaCredentials:
        assert self.store is not None
        return ReplicaCredentials(self.store, sealer, self.cfg.replica, server_names=self.cfg.server_names)

    def _bind(self, server: grpc.aio.Server, listen: str | None, sock: Path | None, *, main: bool) -> int:
        """Bind TCP and/or unix; each port gets credentials of its own ReplicaCredentials, because a
        ReloadableServerTLS hands each update to the first port that asks (tls_reload._fetch pops it)
        and grpc gives a credentials object's initial configuration to one port only."""
        port = 0
        for i, address in enumerate(a for a in (listen, sock and f"unix:{sock}") if a):
            tls = self._tls[i]
            creds = tls.main_credentials() if main else tls.enroll_credentials()
            if address.startswith("unix:"):
                assert sock is not None
                sock.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    sock.unlink()  # stale socket of a dead controller
                server.add_secure_port(address, creds)
            else:
                port = server.add_secure_port(address, creds)
        return port

    async def start(self) -> None:
        sealer = Sealer(load_kek(self.cfg.state_dir / KEK_FILENAME))
        if self.cfg.metrics_listen:  # first, so probes answer (503 "starting") while etcd comes up
            self.metrics_server = start_endpoint(
                self.cfg.metrics_listen, self.probes, required=self.cfg.metrics_required
            )
        try:
            self.store, self.embedded = await open_store(self.cfg)
        except BaseException:
            self._close_metrics()
            raise
        instrument_store(self.store)
        try:
            await wait_for_ca(self.store, sealer)  # waits out a starting etcd; says "run init" if need be
            self.creds = self._new_credentials(sealer)
            current = await self.creds.start()
            self._tls = [self.creds]
            if (self.cfg.listen and self.cfg.socket) or (self.cfg.enroll_listen and self.cfg.enroll_socket):
                self._tls.append(self._new_credentials(sealer))  # see _bind
                await self._tls[1].start()
        except (CANotInitialized, StoreError, RolloverError):
            await self.stop()
            raise
        standins = using_standins()
        if standins:
            log.info("using built-in stand-ins for %s", ", ".join(standins))
        self.state = DesiredState(self.store, sealer)
        self._tasks.append(asyncio.create_task(self.state.run(), name="desired-state"))

        settings = AgentSettings(
            heartbeat_seconds=self.cfg.heartbeat_seconds,
            agent_lease_ttl=self.cfg.agent_lease_ttl,
            node_cert_lifetime=self.cfg.node_cert_lifetime,
            replica=self.cfg.replica,
        )
        agent_service = AgentService(self.store, self.state, current.signing, settings)
        admin = AdminService(self.store, self.state, current.tls_issuer)

        def follow(cur: CurrentCA) -> None:
            """Node certificates from the CA that signs now; tokens pin the server certificate's CA."""
            agent_service.set_ca(cur.signing)
            admin.set_ca(cur.tls_issuer)

        self.creds.subscribe(follow)
        health_servicer = self._health_servicer = health.aio.HealthServicer()

        server = grpc.aio.server(
            options=SERVER_OPTIONS + GRPC_MESSAGE_OPTIONS, interceptors=[MetricsInterceptor()]
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(agent_service, server)
        self._mount_lifecycle(admin, sealer)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (AGENT_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        # Both credentials reload on a CA change or a server-certificate refresh (new handshakes only).
        self.port = self._bind(server, self.cfg.listen, self.cfg.socket, main=True)

        enroll_server = grpc.aio.server(
            options=SERVER_OPTIONS + GRPC_MESSAGE_OPTIONS, interceptors=[MetricsInterceptor()]
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(agent_service, enroll_server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, enroll_server)
        self.enroll_port = self._bind(
            enroll_server, self.cfg.enroll_listen, self.cfg.enroll_socket, main=False
        )

        for srv in (server, enroll_server):
            await srv.start()
            self._servers.append(srv)
        self._tasks.append(asyncio.create_task(self._health(health_servicer), name="health"))
        if self.cfg.singleton_jobs:
            from meshsec.controller.jobs import SingletonRunner, standard_jobs

            jobs = standard_jobs(self.store, sealer, rollover=self.policy)
            self._runner = SingletonRunner(self.store, self.cfg.replica, jobs, ttl=self.cfg.election_ttl)
            self._runner.start()  # type: ignore[attr-defined]
        # "serving on" should mean Apply and Sync answer: wait (bounded) for the first read of the
        # desired state; meanwhile the ports are up and health says NOT_SERVING.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.state.ready.wait(), 10.0)
        main = [a for a in (self.port and self.address, self.cfg.socket and f"unix://{self.cfg.socket}") if a]
        enr = [
            a
            for a in (
                self.enroll_port and self.enroll_address,
                self.cfg.enroll_socket and f"unix://{self.cfg.enroll_socket}",
            )
            if a
        ]
        log.info(
            "controller %s serving on %s, enrollment on %s (etcd %s%s)",
            self.cfg.replica,
            " and ".join(main) or "nothing",
            " and ".join(enr) or "nothing",
            ",".join(self.store.endpoints),
            ", embedded" if self.embedded else "",
        )

    async def _health(self, servicer: health.aio.HealthServicer) -> None:
        """SERVING once the desired state is loaded and while etcd answers a probe."""
        assert self.state is not None and self.store is not None
        serving = None
        while True:
            now = self.state.ready.is_set()
            if now:
                try:
                    await self.store.revision(timeout=1.0)
                except StoreError:
                    now = False
            self.probes.update(loaded=self.state.ready.is_set(), etcd_ok=now)
            if now != serving and not self._draining:  # set_not_serving() has the last word
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if now
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ("", AGENT_SERVICE, ADMIN_SERVICE):
                    await servicer.set(name, status)
                if serving is not None:
                    log.log(
                        logging.INFO if now else logging.WARNING,
                        "health: %s",
                        "serving" if now else "not serving (etcd unreachable)",
                    )
                serving = now
            if not self.state.ready.is_set():
                with contextlib.suppress(TimeoutError):  # turn SERVING the moment the first read is in
                    await asyncio.wait_for(self.state.ready.wait(), 0.5)
            else:
                await asyncio.sleep(1.0)

    async def set_not_serving(self) -> None:
        """Draining before stop (SIGTERM): gRPC health NOT_SERVING from now on; calls still served."""
        self._draining = True
        if self._health_servicer is not None:
            for name in ("", AGENT_SERVICE, ADMIN_SERVICE):
                await self._health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def _mount_lifecycle(self, admin: AdminService, sealer: Sealer) -> None:
        """RevokeNode/RotateCA/GetCA live in lifecycle_service.py (another module's job) when present."""
        try:
            from meshsec.controller.api.lifecycle_service import LifecycleHandlers, mount
        except ImportError:
            return
        assert self.store is not None and self.state is not None
        mount(admin, LifecycleHandlers(self.store, sealer, self.state.is_revoked, policy=self.policy))

    def _close_metrics(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()  # type: ignore[attr-defined]
            self.metrics_server = None

    async def stop(self, grace: float = 1.0) -> None:
        self.probes.stopping()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.close()  # type: ignore[attr-defined]
            self._runner = None
        for srv in self._servers:
            await srv.stop(grace)
        self._servers.clear()
        for tls in self._tls:
            await tls.close()
        self._tls.clear()
        self.creds = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None
        self._close_metrics()
