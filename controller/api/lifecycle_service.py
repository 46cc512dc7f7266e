"""AdminService handlers for the credential lifecycle: RevokeNode, RotateCA, GetCA.

Owns the gRPC side of `meshctl node revoke` and `meshctl ca rotate|status`; the work itself lives in
controller/ca/revocation.py and controller/ca/rollover.py.  Kept out of admin_service.py (another
engineer's file): ``mount(admin_servicer, LifecycleHandlers(...))`` puts these methods on the
AdminService instance before it is added to the server.  RotateCA only begins a rollover (one CAS txn,
safe from any replica); the switch and the retirement are due later and run as the singleton CA
rotation job (controller/jobs/rotation.py) on the elected replica.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import grpc
from google.protobuf import timestamp_pb2
from meshsec.api.v1 import admin_pb2
from meshsec.controller.api.auth import require_role
from meshsec.controller.ca import ROLE_ADMIN, fingerprint
from meshsec.controller.ca.kek import Sealer
from meshsec.controller.ca.revocation import NotEnrolled, revoke_node
from meshsec.controller.ca.rollover import (
    Action,
    Phase,
    RolloverError,
    RolloverPolicy,
    RolloverStore,
    Snapshot,
)
from meshsec.controller.store import Store, StoreError

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


def _ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(when)
    return t


def ca_status(snap: Snapshot, policy: RolloverPolicy) -> admin_pb2.CAStatus:
    """What GetCA reports for a snapshot (pure)."""
    st = snap.state
    out = admin_pb2.CAStatus(phase=str(st.phase), reason=st.reason if st.phase is not Phase.STABLE else "")
    if st.since is not None and st.phase is not Phase.STABLE:
        out.phase_since.CopyFrom(_ts(st.since))
    due = st.deadline(policy) or (snap.bundle[0].not_valid_after_utc - policy.rotate_before)
    out.next_step_at.CopyFrom(_ts(due))
    for i, cert in enumerate(snap.bundle):
        out.cas.append(
            admin_pb2.CACertificate(
                sha256=fingerprint(cert),
                subject=cert.subject.rfc4514_string(),
                not_after=_ts(cert.not_valid_after_utc),
                signing=i == 0,
            )
        )
    return out


class LifecycleHandlers:
    """The three RPCs; is_revoked is DesiredState.is_revoked (admin certificates can be revoked too)."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        is_revoked: Callable[[str], bool],
        *,
        policy: RolloverPolicy | None = None,
        clock: Clock = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._is_revoked = is_revoked
        self._clock = clock
        self.rollover = RolloverStore(store, sealer, policy or RolloverPolicy())

    async def _admin(self, context: grpc.aio.ServicerContext) -> None:
        await require_role(context, ROLE_ADMIN, self._is_revoked)

    @staticmethod
    async def _unavailable(context: grpc.aio.ServicerContext, exc: Exception) -> None:
        log.warning("admin call failed: %s", exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "controller storage (etcd) unavailable; retry")

    async def RevokeNode(
        self, request: admin_pb2.RevokeNodeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeNodeResponse:
        await self._admin(context)
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name: the node to revoke is required")
        try:
            done = await revoke_node(self._store, request.name, self._clock())
        except NotEnrolled as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except StoreError as exc:
            await self._unavailable(context, exc)
        log.info(
            "node %r revoked (%d certificates) at version %d",
            request.name,
            len(done.fingerprints),
            done.revision,
        )
        return admin_pb2.RevokeNodeResponse(fingerprints=done.fingerprints, version=done.revision)

    async def RotateCA(
        self, request: admin_pb2.RotateCARequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RotateCAResponse:
        await self._admin(context)
        started = False
        try:
            snap = await self.rollover.read()
            if snap.state.phase is Phase.STABLE:
                try:
                    await self.rollover.apply(snap, Action.BEGIN, self._clock(), reason="manual")
                    started = True
                except RolloverError:
                    pass  # someone else began one concurrently: report theirs
                snap = await self.rollover.read()
        except RolloverError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except StoreError as exc:
            await self._unavailable(context, exc)
        if started:
            log.info("CA rollover started by an operator: new CA %s", snap.state.new_fp[:16])
        return admin_pb2.RotateCAResponse(started=started, status=ca_status(snap, self.rollover.policy))

    async def GetCA(
        self, request: admin_pb2.GetCARequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CAStatus:
        await self._admin(context)
        try:
            snap = await self.rollover.read()
        except RolloverError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except StoreError as exc:
            await self._unavailable(context, exc)
        return ca_status(snap, self.rollover.policy)


def mount(admin_servicer: object, handlers: LifecycleHandlers) -> None:
    """Put the lifecycle RPCs on an AdminService instance; call before add_AdminServiceServicer_to_server."""
    for name in ("RevokeNode", "RotateCA", "GetCA"):
        setattr(admin_servicer, name, getattr(handlers, name))
