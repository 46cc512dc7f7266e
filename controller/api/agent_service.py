"""AgentService: Enroll (token + CSR), Sync (snapshot or resume, then deltas, heartbeats), Report, Renew.

Owns the per-stream logic.  While a Sync stream is open, connected/<node> exists (agent liveness);
while a Report stream is open, status/<node> holds its last report.  Both kinds of keys are bound to
ONE etcd lease per replica (`SharedLease`), deleted when their last stream ends and expired with the
lease when the replica dies: keepalives cost O(1), not one per agent.  Versions sent are
DesiredState versions (etcd revisions); an agent resuming from a version gets a delta when this
replica can reconstruct what it holds, else a snapshot.

Scale: a stream never holds or diffs its agent's whole config.  On a change every stream wakes once,
asks DesiredState for the per-node delta since the version its agent holds (for a one-node change in
a full mesh: one upserted peer) and sends only that; whole snapshots are built on demand, a few at a
time.  Large snapshots need a raised max message size on both ends (MAX_MESSAGE_BYTES).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from meshsec.api.v1 import agent_pb2, agent_pb2_grpc, config_pb2, spec_pb2
from meshsec.controller.api.auth import caller_revoked, peer_not_before, require_node
from meshsec.controller.ca import CertificateAuthority, CsrInvalid, TokenRefused, consume_token, fingerprint
from meshsec.controller.ca.revocation import covers, issued_until
from meshsec.controller.desired import DesiredState, announced
from meshsec.controller.observability import metrics
from meshsec.controller.store import Keys, Store, StoreError

log = logging.getLogger(__name__)

# A 10,000-node full-mesh snapshot is ~2.6 MB, above gRPC's 4 MiB default only from ~15,000 peers, but a
# NodeStatus reporting one SA per peer grows the same way.  Servers and agent channels should set
# grpc.max_send_message_length / grpc.max_receive_message_length to this.
MAX_MESSAGE_BYTES = 64 << 20
GRPC_MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass
class AgentSettings:
    heartbeat_seconds: float = 5.0
    agent_lease_ttl: int = 10
    node_cert_lifetime: dt.timedelta = dt.timedelta(days=30)
    replica: str = "controller"
    concurrent_snapshots: int = 4  # snapshots built or in flight at once (each up to megabytes)


def _is_empty(delta: config_pb2.NodeConfigDelta) -> bool:
    return not (delta.HasField("local") or delta.upsert_peers or delta.remove_peers)


class SharedLease:
    """Keys that exist while some stream needs them, all bound to one etcd lease of this replica.

    A lease per stream costs a keepalive per agent every ttl/3 (3,000 a second for 10,000 agents);
    one lease costs one.  A key is deleted when the last stream that entered it leaves (two streams
    of one node may overlap during a reconnect), and expires with the lease if the replica dies.
    When etcd loses the lease (an outage longer than the TTL), a new one is granted and every key
    written again.  Best effort: it never raises into the stream it serves.
    """

    def __init__(self, store: Store, ttl: int) -> None:
        self._store = store
        self._ttl = max(2, ttl)
        self._values: dict[str, bytes] = {}
        self._refs: collections.Counter[str] = collections.Counter()
        self._lease = 0
        self._grant = asyncio.Lock()
        self._dirty = False  # a write failed: rewrite every key once etcd answers
        self._task: asyncio.Task[None] | None = None

    def enter(self, key: str) -> None:
        self._refs[key] += 1
        if self._task is None:
            self._task = asyncio.create_task(self._keepalive(), name="shared-lease")

    async def put(self, key: str, value: bytes) -> None:
        self._values[key] = value
        try:
            await self._store.put(key, value, lease=await self._lease_id())
        except StoreError:
            self._dirty = True

    async def leave(self, key: str) -> None:
        self._refs[key] -= 1
        if self._refs[key] > 0:
            return
        del self._refs[key]
        self._values.pop(key, None)
        if not self._refs:  # nothing left to keep alive: stop, and let the next stream grant anew
            task, lease, self._task, self._lease = self._task, self._lease, None, 0
            if task is not None:
                task.cancel()
            with contextlib.suppress(StoreError):
                if lease:
                    await self._store.revoke(lease)  # deletes the key with it
                else:
                    await self._store.delete(key)
            return
        with contextlib.suppress(StoreError):
            await self._store.delete(key)

    async def _lease_id(self) -> int:
        async with self._grant:
            if not self._lease:
                self._lease = await self._store.grant(self._ttl)
            return self._lease

    async def _keepalive(self) -> None:
        failing = False
        while True:
            try:
                if self._lease and await self._store.keepalive_once(self._lease) <= 0:
                    self._lease, self._dirty = 0, True  # etcd lost it: grant anew, rewrite the keys
                if self._dirty:
                    lease = await self._lease_id()
                    self._dirty = False
                    for key, value in list(self._values.items()):
                        if key in self._values:
                            await self._store.put(key, value, lease=lease)
                if failing:
                    log.info("shared lease %x: etcd reachable again", self._lease)
                failing, delay = False, self._ttl / 3
            except StoreError as exc:
                if not failing:
                    log.warning("shared lease: %s (retrying)", exc)
                failing, delay, self._dirty = True, 0.5, True
            await asyncio.sleep(delay)


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self, store: Store, state: DesiredState, ca: CertificateAuthority, settings: AgentSettings
    ) -> None:
        self._store = store
        self._state = state
        self._ca = ca
        self._s = settings
        self._snapshots = asyncio.Semaphore(settings.concurrent_snapshots)
        self._lease = SharedLease(store, settings.agent_lease_ttl)

    def set_ca(self, ca: CertificateAuthority) -> None:
        """Sign from now on with `ca` (the CA that signs after a rollover step; ReplicaCredentials)."""
        self._ca = ca

    # -- enrollment ------------------------------------------------------------------------------
    async def _record_cert(self, node: str, cert: x509.Certificate) -> None:
        fp = fingerprint(cert)
        record = {
            "fingerprint": fp,
            "not_after": cert.not_valid_after_utc.timestamp(),
            "serial": format(cert.serial_number, "x"),
            "issued_at": time.time(),
        }
        await self._store.txn(
            [],
            [
                self._store.op_put(Keys.node(node), json.dumps(record).encode()),
                self._store.op_put(Keys.issued(fp), json.dumps({"node": node, **record}).encode()),
            ],
        )

    def _extra_dns(self, node: str) -> list[str]:
        for n in self._state.spec.nodes:
            if n.name == node and n.identity.startswith("fqdn:"):
                return [n.identity.removeprefix("fqdn:")]
        return []

    async def Enroll(
        self, request: agent_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.EnrollResponse:
        node = request.node
        if not NODE_NAME.match(node):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node must be a DNS label (a-z, 0-9, '-')")
        spec_node = next((n for n in self._state.spec.nodes if n.name == node), None)
        if spec_node is not None and spec_node.kind == spec_pb2.NODE_KIND_EXTERNAL:
            # External gear authenticates with its own CA or a PSK; a mesh certificate in its name would
            # let whoever holds a token impersonate it towards every agent.
            log.warning("enrollment of %r refused: it is an external node", node)
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"node {node!r} is external (no agent); it cannot enroll"
            )
        try:
            # Check the CSR before spending the token, so a bad CSR does not burn it.
            cert = self._ca.sign_node_csr(
                request.csr_pem, node, self._s.node_cert_lifetime, self._extra_dns(node)
            )
        except CsrInvalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid CSR: {exc}")
        try:
            in_spec = spec_node is not None
            await consume_token(self._store, request.token, node, node_in_spec=in_spec)
        except TokenRefused as exc:
            log.warning("enrollment of %r refused: token %s", node, exc)  # the reason, never the token
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "bootstrap token refused (unknown, used or expired)"
            )
        except StoreError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "controller storage unavailable; retry")
        await self._record_cert(node, cert)
        log.info("enrolled node %r (certificate %s)", node, fingerprint(cert)[:16])
        return agent_pb2.EnrollResponse(
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM), ca_bundle_pem=self._ca.bundle_pem
        )

    async def _revoked_since(self, node: str, fp: str, not_before: dt.datetime | None) -> bool:
        """Read from etcd itself (not this replica's watched view, which may lag): is the caller's
        certificate revoked now?  Renew asks after recording its new certificate; revoke_node writes
        the node-level key before its last read of certs/issued, so one of the two sees the other."""
        node_kv, fp_kv = await asyncio.gather(
            self._store.get(Keys.revoked_node(node)), self._store.get(Keys.revoked(fp))
        )
        if fp_kv is not None or not_before is None:
            return True
        return node_kv is not None and covers(issued_until(node_kv.value), not_before)

    async def Renew(
        self, request: agent_pb2.RenewRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.RenewResponse:
        ident = await require_node(context, None, self._state.is_revoked)
        try:
            cert = self._ca.sign_node_csr(
                request.csr_pem, ident.name, self._s.node_cert_lifetime, self._extra_dns(ident.name)
            )
        except CsrInvalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid CSR: {exc}")
        try:
            await self._record_cert(ident.name, cert)
            revoked = await self._revoked_since(ident.name, ident.fingerprint, peer_not_before(context))
        except StoreError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "controller storage unavailable; retry")
        if revoked:  # revoked while we signed: the new certificate never leaves this replica
            log.warning(
                "renewal of %r refused: the node was revoked while its certificate was signed", ident.name
            )
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"certificate of {ident.name} is revoked")
        return agent_pb2.RenewResponse(
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM), ca_bundle_pem=self._ca.bundle_pem
        )

    # -- sync ------------------------------------------------------------------------------------
    async def _snapshot(self, node: str, why: str) -> AsyncIterator[agent_pb2.SyncResponse]:
        """Build and send the whole NodeConfig.  The semaphore is held until the snapshot is sent, so a
        reconnect storm of a large mesh never holds thousands of multi-megabyte snapshots at once."""
        async with self._snapshots:
            cfg = await self._state.snapshot(node)
            log.info("sync %s: snapshot at version %d (%s)", node, cfg.version, why)
            yield agent_pb2.SyncResponse(version=cfg.version, snapshot=cfg)

    async def Sync(
        self, request: agent_pb2.SyncRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.SyncResponse]:
        ident = await require_node(context, request.node, self._state.is_revoked)
        node = ident.name
        not_before = peer_not_before(context)
        await self._state.ready.wait()
        connected = Keys.connected(node)
        self._lease.enter(connected)
        await self._lease.put(
            connected, json.dumps({"replica": self._s.replica, "since": time.time()}).encode()
        )
        try:
            resume = request.resume_from_version
            delta = await self._state.delta_since(node, resume)
            if delta is None:
                why = f"asked to resume from {resume}"
                async with contextlib.aclosing(self._snapshot(node, why)) as snapshot:
                    async for resp in snapshot:
                        agent_version = resp.version
                        yield resp
                resp = None  # an idle stream must not pin its snapshot (megabytes in a large mesh)
            elif _is_empty(delta):
                agent_version = delta.to_version
                log.info("sync %s: resumed at %d, up to date", node, agent_version)
                yield agent_pb2.SyncResponse(version=agent_version, heartbeat=agent_pb2.Heartbeat())
            else:
                agent_version = delta.to_version
                log.info("sync %s: resumed from %d with a delta to %d", node, resume, agent_version)
                yield agent_pb2.SyncResponse(version=agent_version, delta=delta)
            while True:
                changed = await self._state.wait_change(agent_version, self._s.heartbeat_seconds)
                if caller_revoked(ident, not_before, self._state.is_revoked):
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED, f"certificate of {node} was revoked"
                    )
                if not changed:
                    yield agent_pb2.SyncResponse(version=agent_version, heartbeat=agent_pb2.Heartbeat())
                    continue
                delta = await self._state.delta_since(node, agent_version)
                if delta is None:  # the history no longer reaches our version (the state was rebuilt)
                    why = f"the history no longer reaches version {agent_version}"
                    async with contextlib.aclosing(self._snapshot(node, why)) as snapshot:
                        async for resp in snapshot:
                            agent_version = resp.version
                            yield resp
                    resp = None
                    continue
                if _is_empty(delta):  # another node's change: the agent's config holds at this version
                    resp = agent_pb2.SyncResponse(version=delta.to_version, heartbeat=agent_pb2.Heartbeat())
                else:
                    resp = agent_pb2.SyncResponse(version=delta.to_version, delta=delta)
                agent_version = resp.version
                yield resp
                if not resp.HasField("heartbeat"):
                    seen = self._state.seen_at(resp.version)
                    if seen is not None:
                        metrics.observe_push(seen)
                resp = delta = None  # (a fleet-wide change makes every delta as large as a snapshot)
        finally:
            await self._lease.leave(connected)

    # -- report ----------------------------------------------------------------------------------
    async def _record_announced(self, node: str, subnets: list[str]) -> bool:
        """Keep the node's announced subnets (announced.py decides whether they are routed).
        False: etcd failed, try again with the next report."""
        try:
            if await announced.record(self._store, node, subnets):
                log.info("node %r announces %s", node, ", ".join(announced.normalize(subnets)))
        except ValueError as exc:
            log.warning("node %r: announcement refused: %s", node, exc)
        except StoreError as exc:
            log.warning("node %r: cannot store its announcement: %s", node, exc)
            return False
        return True

    async def Report(
        self, request_iterator: AsyncIterator[agent_pb2.ReportRequest], context: grpc.aio.ServicerContext
    ) -> agent_pb2.ReportResponse:
        ident = await require_node(context, None, self._state.is_revoked)
        not_before = peer_not_before(context)
        key = Keys.status(ident.name)
        self._lease.enter(key)
        last_announced: list[str] = []
        try:
            async for req in request_iterator:
                if caller_revoked(ident, not_before, self._state.is_revoked):  # revoked mid-stream
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED, f"certificate of {ident.name} was revoked"
                    )
                status = req.status
                if status.node and status.node != ident.name:
                    log.warning("node %r tried to report as %r: refused", ident.name, status.node)
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"certificate of node {ident.name!r} cannot report as node {status.node!r}",
                    )
                status.node = ident.name
                if not status.HasField("reported_at"):
                    status.reported_at.GetCurrentTime()
                await self._lease.put(key, status.SerializeToString(deterministic=True))
                subnets = list(status.announced_subnets)
                if (
                    subnets
                    and subnets != last_announced
                    and await self._record_announced(ident.name, subnets)
                ):
                    last_announced = subnets
        finally:
            await self._lease.leave(key)
        return agent_pb2.ReportResponse()
