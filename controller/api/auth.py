"""Who is calling: the verified client certificate of a gRPC call, and the role checks built on it.

The TLS layer has already verified the chain against the mesh CA; here we read role (subject O) and
name (CN) from the leaf, refuse revoked certificates, and enforce "a node acts only as itself" and
"AdminService needs an admin certificate".  A node certificate is never an admin certificate.

Revoked means: its fingerprint is listed, or (node certificates) its node was revoked after it was
issued.  The second rule matters because TLS checks validity only at the handshake: a connection set
up with a certificate that has expired since (which no list names) stays open.  This module must not
read etcd; the ``is_revoked`` callable (DesiredState.is_revoked) knows the lists.
"""

from __future__ import annotations

import datetime as dt
import logging

import grpc
from cryptography import x509
from meshsec.controller.ca.authority import ROLE_ADMIN, ROLE_NODE, Identity, identity_of

log = logging.getLogger(__name__)


def peer_identity(context: grpc.aio.ServicerContext) -> Identity | None:
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        return identity_of(pems[0])
    except ValueError:
        return None


def peer_not_before(context: grpc.aio.ServicerContext) -> dt.datetime | None:
    """notBefore of the verified client certificate (what a node-level revocation is compared with)."""
    pems = context.auth_context().get("x509_pem_cert") or []
    try:
        return x509.load_pem_x509_certificate(pems[0]).not_valid_before_utc if pems else None
    except ValueError:
        return None


def caller_revoked(ident: Identity, not_before: dt.datetime | None, is_revoked: object) -> bool:
    """The revocation rule for a caller; long-lived streams re-check it on every wake-up."""
    if ident.role == ROLE_NODE:
        if not_before is None:  # cannot tell when it was issued: no node certificate without one
            return True
        return bool(is_revoked(ident.fingerprint, node=ident.name, not_before=not_before))  # type: ignore[operator]
    return bool(is_revoked(ident.fingerprint))  # type: ignore[operator]


async def require_role(context: grpc.aio.ServicerContext, role: str, is_revoked: object) -> Identity:
    ident = peer_identity(context)
    if ident is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required for this call")
    assert ident is not None
    if caller_revoked(ident, peer_not_before(context), is_revoked):
        log.info("refused %r: its certificate is revoked", ident.name)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"certificate of {ident.name} is revoked")
    if ident.role != role:
        what = "an admin certificate" if role == ROLE_ADMIN else "a node certificate"
        log.info("refused %s %r: needs %s", ident.role or "certificate", ident.name, what)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"this call needs {what}")
    return ident


async def require_node(context: grpc.aio.ServicerContext, node: str | None, is_revoked: object) -> Identity:
    """The calling node; aborts unless it acts as itself (node None: whatever its certificate says)."""
    ident = await require_role(context, ROLE_NODE, is_revoked)
    if node is not None and node != ident.name:
        log.warning("node %r tried to act as %r: refused", ident.name, node)
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"certificate of node {ident.name!r} cannot act as node {node!r}",
        )
    return ident
