"""ControlPlaneClient: keep this host's desired state in step with the controller, fail static.

Owns the Sync and Report streams.  Start-up: the cached desired state (if any) is applied at once, so a
host whose controller is down keeps its tunnels.  Then: connect, Sync resuming from the held version,
apply each snapshot/delta (persist first, then reconcile), report status; on any failure keep the
current state, log ONE line (at most every `log_every` seconds while it persists), and reconnect with
jittered exponential backoff.  A delta that does not start at the held version forces a snapshot.

Certificate renewal rides on each connection (renewal.CertificateRenewer: at two thirds of the
lifetime with a fresh key, at once when the CA that signs now -- the first CA of the last Sync's
``trusted_ca_pem`` -- is not the one that issued ours).  The next connection uses the new pair;
``on_renewed`` hands it to whoever runs IKE, for new IKE_AUTHs.  ca.pem (trust for the controller
channel) is learnt only from Renew/Enroll answers, never from Sync: ``trusted_ca_pem`` also carries
external peers' CAs, which must not vouch for the controller.

Several controller replicas: ``address`` may list targets separated by commas
("unix:///run/a.sock,unix:///run/b.sock"); after a failed or closed session the next one is tried
first, so the agent moves to a live replica within one backoff step (any replica serves any agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from meshsec.agent.controlplane.cache import DesiredStateCache
from meshsec.agent.controlplane.enroll import CHANNEL_OPTIONS, AgentIdentity, grpc_target
from meshsec.agent.controlplane.reconciler import Reconciler
from meshsec.agent.controlplane.renewal import (
    CertificateRenewer,
    OnRenewed,
    RenewalSchedule,
    Renewed,
    recover_pending,
)
from meshsec.api.v1 import agent_pb2, agent_pb2_grpc, config_pb2
from meshsec.controller.compiler import delta as delta_merge

log = logging.getLogger(__name__)

FAILOVER_AFTER = 1.0  # seconds a stream must have worked for its loss to skip the backoff


@dataclass(frozen=True)
class SyncEvent:
    """What the client received or did: "cached", "snapshot", "delta", "heartbeat" or "renewed"."""

    kind: str
    version: int
    from_version: int = 0


class DeltaMismatch(Exception):
    """A delta for a version we do not hold."""


def apply_delta(config: config_pb2.NodeConfig, delta: config_pb2.NodeConfigDelta) -> config_pb2.NodeConfig:
    """Pure: the config after the delta, which must start at exactly the version we hold.

    The merge itself is the compiler's (O(changed peers x log n)); this adds the strict version check
    that a streamed delta needs (the compiler also accepts unversioned deltas).
    """
    if delta.from_version != config.version:
        raise DeltaMismatch(f"delta from {delta.from_version} but we hold {config.version}")
    return delta_merge.apply_delta(config, delta)


def split_targets(address: str) -> list[str]:
    """The controller targets of a comma-separated address list, in order (at least one)."""
    targets = [t.strip() for t in address.split(",") if t.strip()]
    if not targets:
        raise ValueError(f"no controller address in {address!r}")
    return targets


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        detail = (exc.details() or "").splitlines()[0] if exc.details() else ""
        return f"{exc.code().name}: {detail}" if detail else exc.code().name
    if isinstance(exc, TimeoutError):
        return "no message within the idle timeout"
    return str(exc) or type(exc).__name__


class ControlPlaneClient:
    def __init__(
        self,
        *,
        address: str,
        node: str,
        identity: AgentIdentity,
        cache: DesiredStateCache,
        reconciler: Reconciler,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        idle_timeout: float = 20.0,
        report_interval: float = 10.0,
        log_every: float = 60.0,
        renew_check: float = 30.0,
        renewal_schedule: RenewalSchedule | None = None,
        on_renewed: OnRenewed | None = None,
    ) -> None:
        self.addresses = split_targets(address)
        self._target = 0  # index into addresses of the replica tried now
        self.node = node
        self._identity = identity
        self._cache = cache
        self._reconciler = reconciler
        self._backoff = (backoff_initial, backoff_max)
        self._idle_timeout = idle_timeout
        self._report_interval = report_interval
        self._log_every = log_every
        self._renew_check = renew_check  # longest sleep of the renewer: how soon a CA switch is seen
        self._schedule = renewal_schedule or RenewalSchedule()
        # Called (sync or async) with the new cert/key after each renewal; public so the agent runtime
        # can attach itself after the client is built.  Its errors are logged, never fatal.
        self.on_renewed: OnRenewed | None = on_renewed
        self.renewals = 0
        self.config: config_pb2.NodeConfig | None = None
        self.events: list[SyncEvent] = []
        self.connected = False
        self._force_snapshot = False
        self._report_now = asyncio.Event()
        self._changed = asyncio.Condition()
        self._last_failure_log = 0.0
        self._connected_since = 0.0  # time.monotonic() when the current stream delivered its first message
        # Subnets this node announces (e.g. its Kubernetes podCIDRs), sent with every Report.
        self.announced_subnets: list[str] = []

    def announce(self, subnets: list[str]) -> None:
        """Announce these subnets from the next Report on (sent at once when they changed)."""
        if list(subnets) != self.announced_subnets:
            self.announced_subnets = list(subnets)
            self._report_now.set()

    @property
    def address(self) -> str:
        """The controller target in use (or tried next)."""
        return self.addresses[self._target]

    @property
    def version(self) -> int:
        return self.config.version if self.config is not None else 0

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until predicate() holds (checked after every event); TimeoutError otherwise."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def _event(self, event: SyncEvent) -> None:
        self.events.append(event)
        async with self._changed:
            self._changed.notify_all()

    async def _install(self, config: config_pb2.NodeConfig) -> None:
        self._cache.save(config)  # persist before acting: a crash mid-reconcile restarts from here
        self.config = config
        await self._reconciler.apply(config)
        self._report_now.set()

    async def run(self) -> None:
        if recover_pending(self._identity):  # before anything reads node-key.pem / node.pem
            log.info("completed a certificate swap interrupted by a crash")
        cached = self._cache.load()
        if cached is not None:
            self.config = cached
            log.info(
                "starting from cached desired state version %d (%d peers)", cached.version, len(cached.peers)
            )
            await self._reconciler.apply(cached)
            await self._event(SyncEvent("cached", cached.version))
        attempt = 0
        while True:
            got_data = False
            try:
                got_data = await self._session()
                reason = "stream closed by controller"
            except DeltaMismatch as exc:
                self._force_snapshot = True
                reason = f"{exc}; asking for a snapshot"
            except (grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
                reason = _reason(exc)
            was_connected, self.connected = self.connected, False
            async with self._changed:
                self._changed.notify_all()
            if got_data or was_connected:  # a session that worked: start the backoff over
                attempt = 0
            now = time.monotonic()
            if was_connected or now - self._last_failure_log >= self._log_every:
                log.warning(
                    "controller %s unreachable (%s); keeping desired state version %d, retrying",
                    self.address,
                    reason,
                    self.version,
                )
                self._last_failure_log = now
            if len(self.addresses) > 1:
                # Another replica: try it at once after losing one that worked for a while (a replica
                # that drops every stream at once must not make us bounce without a pause).
                self._target = (self._target + 1) % len(self.addresses)
                if was_connected and now - self._connected_since >= FAILOVER_AFTER:
                    continue
            low, high = self._backoff
            await asyncio.sleep(min(high, low * 2**attempt) * random.uniform(0.5, 1.0))
            attempt = min(attempt + 1, 30)

    async def _session(self) -> bool:
        """One connection; returns whether anything was received."""
        got_data = False
        creds = self._identity.credentials()
        async with grpc.aio.secure_channel(
            grpc_target(self.address), creds, options=CHANNEL_OPTIONS
        ) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            resume = 0 if self._force_snapshot else self.version
            call = stub.Sync(agent_pb2.SyncRequest(node=self.node, resume_from_version=resume))
            reporter = asyncio.create_task(self._report(stub), name="report")
            renewer = asyncio.create_task(
                self._renewer().run(stub, max_sleep=self._renew_check), name="renew"
            )
            try:
                while True:
                    async with asyncio.timeout(self._idle_timeout):
                        resp = await call.read()
                    if resp is grpc.aio.EOF:
                        await call  # raises the stream's error status, if any
                        return got_data
                    if not got_data:
                        got_data = True
                        self.connected = True
                        self._connected_since = time.monotonic()
                        log.info("connected to controller %s (resumed from version %d)", self.address, resume)
                    await self._handle(resp)
            finally:
                reporter.cancel()
                renewer.cancel()
                call.cancel()
                for task in (reporter, renewer):
                    try:
                        await task
                    except (asyncio.CancelledError, grpc.aio.AioRpcError):
                        pass
                    except Exception:  # a helper's bug must not take the Sync loop down with it
                        log.exception("%s task failed", task.get_name())

    async def _handle(self, resp: agent_pb2.SyncResponse) -> None:
        kind = resp.WhichOneof("update")
        if kind == "snapshot":
            cfg = config_pb2.NodeConfig()
            cfg.CopyFrom(resp.snapshot)
            cfg.version = resp.version
            self._force_snapshot = False
            await self._install(cfg)
            log.info("sync: snapshot version %d (%d peers)", cfg.version, len(cfg.peers))
            await self._event(SyncEvent("snapshot", cfg.version))
        elif kind == "delta":
            if self.config is None:
                raise DeltaMismatch("delta before any snapshot")
            cfg = apply_delta(self.config, resp.delta)
            await self._install(cfg)
            log.info(
                "sync: delta %d -> %d (+%d -%d peers)",
                resp.delta.from_version,
                cfg.version,
                len(resp.delta.upsert_peers),
                len(resp.delta.remove_peers),
            )
            await self._event(SyncEvent("delta", cfg.version, resp.delta.from_version))
        elif kind == "heartbeat":
            if self.config is not None and resp.version > self.config.version:
                # The controller vouches that nothing changed for us up to resp.version.
                self.config.version = resp.version
                self._cache.save(self.config)
            await self._event(SyncEvent("heartbeat", resp.version))

    def _renewer(self) -> CertificateRenewer:
        """The renewer of one connection; the CA that signs now comes from the last NodeConfig."""
        return CertificateRenewer(
            self._identity,
            schedule=self._schedule,
            signing_ca=lambda: self.config.local.trusted_ca_pem if self.config else None,
            on_renewed=self._renewed,
        )

    async def _renewed(self, renewed: Renewed) -> None:
        self.renewals += 1
        if self.on_renewed is not None:
            try:
                result = self.on_renewed(renewed)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("on_renewed failed; the new certificate is on disk and used for the controller")
        await self._event(SyncEvent("renewed", self.version))

    async def _report(self, stub: agent_pb2_grpc.AgentServiceStub) -> None:
        async def statuses() -> AsyncIterator[agent_pb2.ReportRequest]:
            while True:
                status = self._reconciler.status()
                status.node = self.node
                status.announced_subnets[:] = self.announced_subnets
                yield agent_pb2.ReportRequest(status=status)
                self._report_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._report_now.wait(), self._report_interval)

        try:
            await stub.Report(statuses())
        except grpc.aio.AioRpcError as exc:
            log.debug("report stream ended: %s", _reason(exc))
