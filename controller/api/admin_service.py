"""AdminService: what meshctl calls.  Every RPC needs an admin client certificate.

Owns spec apply (validate → plan → one compare-and-swap txn on the spec key), node listing/deletion
(deletion also revokes the node's certificate), status reads, token minting, the event stream, and the
export of external nodes' configuration (the only call that can reveal pre-shared keys: audit-logged,
never logging a key).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf import timestamp_pb2
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc, spec_pb2, status_pb2
from meshsec.controller.api.auth import require_role
from meshsec.controller.ca import ROLE_ADMIN, CertificateAuthority, create_token
from meshsec.controller.ca.tokens import MAX_USES
from meshsec.controller.desired import DesiredState, SpecInvalid, load_spec, plan
from meshsec.controller.desired.contracts import compiler_credentials, spec_errors
from meshsec.controller.store import Compacted, Keys, Store, StoreError

log = logging.getLogger(__name__)


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromSeconds(int(seconds))
    return t


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, store: Store, state: DesiredState, ca: CertificateAuthority) -> None:
        self._store = store
        self._state = state
        self._ca = ca

    def set_ca(self, ca: CertificateAuthority) -> None:
        """CreateToken pins `ca` from now on: the issuer of the server certificate this replica presents
        (the old CA until a rollover retires it), so a new agent's pin matches the chain it is shown."""
        self._ca = ca

    async def _admin(self, context: grpc.aio.ServicerContext) -> None:
        await require_role(context, ROLE_ADMIN, self._state.is_revoked)

    async def _unavailable(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        log.warning("admin call failed: %s", exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "controller storage (etcd) unavailable; retry")

    async def Apply(
        self, request: admin_pb2.ApplyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ApplyResponse:
        await self._admin(context)
        try:
            spec = load_spec(request.spec_yaml, request.filename or "mesh.yaml")
        except SpecInvalid as exc:
            return admin_pb2.ApplyResponse(errors=spec_errors(exc))
        try:
            current = await self._store.get(Keys.SPEC)
            old_spec = spec_pb2.MeshSpec()
            if current is not None:
                old_spec.ParseFromString(current.value)
            creds = self._state.creds
            if creds is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "controller is starting; retry")
            steps = plan(old_spec, spec, creds)
            if request.dry_run:
                return admin_pb2.ApplyResponse(plan=steps)
            expected = current.mod_revision if current else 0
            res = await self._store.txn(
                [self._store.mod_revision_is(Keys.SPEC, expected)],
                [self._store.op_put(Keys.SPEC, spec.SerializeToString(deterministic=True))],
            )
        except StoreError as exc:
            await self._unavailable(context, exc)
        if not res.succeeded:
            await context.abort(grpc.StatusCode.ABORTED, "the spec changed concurrently; apply again")
        await self._state.wait_revision(res.revision, 1.0)  # read-your-writes on this replica
        log.info("spec applied at version %d (%d nodes changed)", res.revision, len(steps))
        return admin_pb2.ApplyResponse(plan=steps, version=res.revision)

    async def GetSpec(
        self, request: admin_pb2.GetSpecRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetSpecResponse:
        await self._admin(context)
        try:
            kv = await self._store.get(Keys.SPEC)
        except StoreError as exc:
            await self._unavailable(context, exc)
        spec = spec_pb2.MeshSpec()
        if kv is not None:
            spec.ParseFromString(kv.value)
        return admin_pb2.GetSpecResponse(spec=spec, version=kv.mod_revision if kv else 0)

    async def _views(self) -> list[admin_pb2.NodeView]:
        kv = await self._store.get(Keys.SPEC)
        spec = spec_pb2.MeshSpec()
        if kv is not None:
            spec.ParseFromString(kv.value)
        enrolled = {
            k.key.removeprefix(Keys.NODES): json.loads(k.value)
            for k in (await self._store.get_prefix(Keys.NODES))[0]
        }
        connected = {
            k.key.removeprefix(Keys.CONNECTED) for k in (await self._store.get_prefix(Keys.CONNECTED))[0]
        }
        statuses = await self._statuses()
        views = []
        for node in spec.nodes:
            view = admin_pb2.NodeView(node=node, connected=node.name in connected)
            if node.name in enrolled:
                view.cert_fingerprint = str(enrolled[node.name].get("fingerprint", ""))
                view.cert_not_after.CopyFrom(_ts(float(enrolled[node.name].get("not_after", 0))))
            if node.name in statuses:
                view.applied_version = statuses[node.name].applied_version
            views.append(view)
        return views

    async def _statuses(self) -> dict[str, status_pb2.NodeStatus]:
        out = {}
        for kv in (await self._store.get_prefix(Keys.STATUS))[0]:
            st = status_pb2.NodeStatus()
            try:
                st.ParseFromString(kv.value)
            except Exception:
                continue
            out[kv.key.removeprefix(Keys.STATUS)] = st
        return out

    async def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListNodesResponse:
        await self._admin(context)
        try:
            return admin_pb2.ListNodesResponse(nodes=await self._views())
        except StoreError as exc:
            await self._unavailable(context, exc)
        raise AssertionError

    async def GetNode(
        self, request: admin_pb2.GetNodeRequest, context: grpc.aio.ServicerContext
    ) -> spec_pb2.Node:
        await self._admin(context)
        for node in self._state.spec.nodes:
            if node.name == request.name:
                return node
        await context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.name!r} is not in the spec")
        raise AssertionError

    async def DeleteNode(
        self, request: admin_pb2.DeleteNodeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DeleteNodeResponse:
        await self._admin(context)
        try:
            kv = await self._store.get(Keys.SPEC)
            spec = spec_pb2.MeshSpec()
            if kv is not None:
                spec.ParseFromString(kv.value)
            keep = [n for n in spec.nodes if n.name != request.name]
            if len(keep) == len(spec.nodes):
                await context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.name!r} is not in the spec")
            del spec.nodes[:]
            spec.nodes.extend(keep)
            ops = [
                self._store.op_put(Keys.SPEC, spec.SerializeToString(deterministic=True)),
                self._store.op_delete(Keys.node(request.name)),
            ]
            enrolled = await self._store.get(Keys.node(request.name))
            if enrolled is not None:
                fp = str(json.loads(enrolled.value).get("fingerprint", ""))
                if fp:
                    revoked = json.dumps({"node": request.name, "at": dt.datetime.now(dt.UTC).timestamp()})
                    ops.append(self._store.op_put(Keys.revoked(fp), revoked.encode()))
            res = await self._store.txn(
                [self._store.mod_revision_is(Keys.SPEC, kv.mod_revision if kv else 0)], ops
            )
        except StoreError as exc:
            await self._unavailable(context, exc)
        if not res.succeeded:
            await context.abort(grpc.StatusCode.ABORTED, "the spec changed concurrently; retry")
        await self._state.wait_revision(res.revision, 1.0)
        log.info("node %r deleted at version %d", request.name, res.revision)
        return admin_pb2.DeleteNodeResponse(version=res.revision)

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetStatusResponse:
        await self._admin(context)
        try:
            statuses = await self._statuses()
            connected = {
                k.key.removeprefix(Keys.CONNECTED) for k in (await self._store.get_prefix(Keys.CONNECTED))[0]
            }
        except StoreError as exc:
            await self._unavailable(context, exc)
        out = []
        for name in sorted(statuses.keys() | connected):
            if request.node and name != request.node:
                continue
            st = statuses.get(name) or status_pb2.NodeStatus(node=name)
            st.connected = name in connected
            out.append(st)
        return admin_pb2.GetStatusResponse(nodes=out)

    async def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateTokenResponse:
        await self._admin(context)
        if request.uses > MAX_USES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"uses: at most {MAX_USES}")
        try:
            token, expires = await create_token(
                self._store, node=request.node, ttl=request.ttl_seconds or 3600, uses=request.uses or 1
            )
        except StoreError as exc:
            await self._unavailable(context, exc)
        log.info(
            "bootstrap token created (node %r, %d use(s), expires %s)",
            request.node or "*",
            request.uses or 1,
            expires.isoformat(),
        )
        return admin_pb2.CreateTokenResponse(
            token=token, expires_at=_ts(expires.timestamp()), ca_cert_sha256=self._ca.sha256
        )

    async def WatchEvents(
        self, request: admin_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.Event]:
        await self._admin(context)
        start = request.since_version + 1 if request.since_version else 0
        try:
            start = start or await self._store.revision() + 1
            async for _revision, events in self._store.watch_prefix(Keys.ROOT, start):
                for e in events:
                    ev = admin_pb2.Event(version=e.revision, time=_ts(dt.datetime.now(dt.UTC).timestamp()))
                    if e.key == Keys.SPEC and not e.deleted:
                        ev.spec_changed.SetInParent()
                    elif e.key.startswith(Keys.STATUS) and not e.deleted:
                        ev.status_changed.ParseFromString(e.value)
                    elif e.key.startswith(Keys.NODES) and e.deleted:
                        ev.node_deleted = e.key.removeprefix(Keys.NODES)
                    else:
                        continue
                    yield ev
        except Compacted:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE, f"version {request.since_version} is compacted; watch from 0"
            )
        except StoreError as exc:
            await self._unavailable(context, exc)

    async def Export(
        self, request: admin_pb2.ExportRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ExportResponse:
        """An external node's configuration from the compiled inputs this replica serves agents (the
        spec with accepted announced subnets, this PSK master), so both ends agree by construction."""
        ident = await require_role(context, ROLE_ADMIN, self._state.is_revoked)
        from meshsec.controller.compiler.export import ExportError, export_swanctl

        if request.format not in (admin_pb2.EXPORT_FORMAT_UNSPECIFIED, admin_pb2.EXPORT_FORMAT_SWANCTL):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"format: unknown value {request.format}")
        inputs = self._state.inputs
        if inputs is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "controller is starting; retry")
        assert inputs is not None
        secrets = request.include_secrets
        # Audit before anything is revealed; the key itself is never logged.
        log.info(
            "export of %r (swanctl, secrets %s) requested by %s %r",
            request.name,
            "INCLUDED" if secrets else "withheld",
            ident.role,
            ident.name,
        )
        try:  # off the event loop: indexing a 10,000-node spec takes a while
            out = await asyncio.to_thread(
                export_swanctl, inputs.spec, compiler_credentials(inputs.creds), request.name, secrets=secrets
            )
        except ExportError as exc:
            missing = "not found" in str(exc)
            code = grpc.StatusCode.NOT_FOUND if missing else grpc.StatusCode.FAILED_PRECONDITION
            await context.abort(code, str(exc))
            raise AssertionError from None
        return admin_pb2.ExportResponse(
            config=out.config,
            files=[admin_pb2.ExportFile(path=k, content=v) for k, v in sorted(out.files.items())],
            has_secrets=out.has_secrets,
            has_placeholders=out.has_placeholders,
            version=inputs.revision,
        )
