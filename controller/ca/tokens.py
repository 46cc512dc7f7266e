"""One-time bootstrap tokens "<id>.<secret>" (kubeadm style) for agent enrollment.

Owns token minting and consumption.  etcd stores only SHA-256(secret) under tokens/<id>, bound to a
lease of the token's TTL; consuming is a compare-and-delete txn on the key's mod_revision, so of two
replicas presented the same token at once exactly one accepts it.  Secrets are compared in constant
time and never logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets

from meshsec.controller.store import Keys, Store

_TOKEN = re.compile(r"^([a-z0-9]{8})\.([A-Za-z0-9_-]{16,64})$")
DEFAULT_TTL = 3600


class TokenRefused(Exception):
    """The token is malformed, unknown, used, expired or bound to another node (one message for all)."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_token(store: Store, *, node: str = "", ttl: int = DEFAULT_TTL) -> tuple[str, dt.datetime]:
    """Mint a token valid for ttl seconds; returns (token, expires_at).  The token is shown only here."""
    ttl = max(1, ttl or DEFAULT_TTL)
    token_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    secret = secrets.token_urlsafe(24)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)
    record = {"sha256": _hash(secret), "node": node, "expires_at": expires.timestamp()}
    lease = await store.grant(ttl)
    if not await store.create(Keys.token(token_id), json.dumps(record).encode(), lease=lease):
        raise RuntimeError("token id collision")  # 36^8 ids: practically unreachable
    return f"{token_id}.{secret}", expires


async def consume_token(store: Store, token: str, node: str, *, node_in_spec: bool = True) -> None:
    """Accept the token for node exactly once, or raise TokenRefused.

    A token bound to a node admits only that name; an unbound one only a node already in the spec.
    """
    m = _TOKEN.match(token)
    if not m:
        raise TokenRefused("malformed")
    token_id, secret = m.groups()
    kv = await store.get(Keys.token(token_id))
    if kv is None:
        raise TokenRefused("unknown, used or expired")
    try:
        record = json.loads(kv.value)
        stored_hash, bound, expires = str(record["sha256"]), str(record["node"]), float(record["expires_at"])
    except (ValueError, KeyError, TypeError):
        raise TokenRefused("corrupt record") from None
    if not hmac.compare_digest(_hash(secret), stored_hash):
        raise TokenRefused("wrong secret")
    if dt.datetime.now(dt.UTC).timestamp() >= expires:
        raise TokenRefused("expired")
    if bound and bound != node:
        raise TokenRefused("bound to another node")
    if not bound and not node_in_spec:
        raise TokenRefused("unbound token and the node is not in the spec")
    res = await store.txn([store.mod_revision_is(kv.key, kv.mod_revision)], [store.op_delete(kv.key)])
    if not res.succeeded:
        raise TokenRefused("used concurrently")
