"""Bootstrap tokens "<id>.<secret>" (kubeadm style) for agent enrollment, each good for N uses.

Owns token minting and consumption.  etcd stores only SHA-256(secret) and the uses left under
tokens/<id>, bound to a lease of the token's TTL.  Consuming is a compare-and-swap on the key's
mod_revision: the last use deletes the key, an earlier one writes uses-1 (same lease).  Of replicas
presented the same token at once, each CAS succeeds for exactly one of them per revision, so a token
is never accepted more than N times in total; a loser re-reads and tries again.  One token with
``uses`` = node count suits a DaemonSet, whose pods all read the same Secret.  Secrets are compared in
constant time and never logged.
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
MAX_USES = 100_000
_CAS_ATTEMPTS = 16  # concurrent uses of one token: each round lets at least one through


class TokenRefused(Exception):
    """The token is malformed, unknown, used, expired or bound to another node (one message for all)."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_token(
    store: Store, *, node: str = "", ttl: int = DEFAULT_TTL, uses: int = 1
) -> tuple[str, dt.datetime]:
    """Mint a token valid for ttl seconds and `uses` enrollments (0 = 1); returns (token, expires_at).
    The token is shown only here.  ValueError for uses above MAX_USES."""
    ttl = max(1, ttl or DEFAULT_TTL)
    uses = uses or 1
    if not 1 <= uses <= MAX_USES:
        raise ValueError(f"uses must be between 1 and {MAX_USES}")
    token_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    secret = secrets.token_urlsafe(24)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)
    record = {"sha256": _hash(secret), "node": node, "expires_at": expires.timestamp(), "uses": uses}
    lease = await store.grant(ttl)
    if not await store.create(Keys.token(token_id), json.dumps(record).encode(), lease=lease):
        raise RuntimeError("token id collision")  # 36^8 ids: practically unreachable
    return f"{token_id}.{secret}", expires


async def consume_token(store: Store, token: str, node: str, *, node_in_spec: bool = True) -> None:
    """Spend one use of the token for node, or raise TokenRefused.

    A token bound to a node admits only that name; an unbound one only a node already in the spec.
    """
    m = _TOKEN.match(token)
    if not m:
        raise TokenRefused("malformed")
    token_id, secret = m.groups()
    for _ in range(_CAS_ATTEMPTS):
        if await _consume_once(store, token_id, secret, node, node_in_spec):
            return
    raise TokenRefused("used concurrently")


async def _consume_once(store: Store, token_id: str, secret: str, node: str, node_in_spec: bool) -> bool:
    """One read and CAS; False when another use got in between (the caller re-reads)."""
    kv = await store.get(Keys.token(token_id))
    if kv is None:
        raise TokenRefused("unknown, used or expired")
    try:
        record = json.loads(kv.value)
        stored_hash, bound, expires = str(record["sha256"]), str(record["node"]), float(record["expires_at"])
        left = int(record.get("uses", 1))  # records written before multi-use tokens: one use
    except (ValueError, KeyError, TypeError, AttributeError):
        raise TokenRefused("corrupt record") from None
    if left < 1:
        raise TokenRefused("corrupt record")
    if not hmac.compare_digest(_hash(secret), stored_hash):
        raise TokenRefused("wrong secret")
    if dt.datetime.now(dt.UTC).timestamp() >= expires:
        raise TokenRefused("expired")
    if bound and bound != node:
        raise TokenRefused("bound to another node")
    if not bound and not node_in_spec:
        raise TokenRefused("unbound token and the node is not in the spec")
    if left <= 1:
        op = store.op_delete(kv.key)
    else:
        record["uses"] = left - 1
        op = store.op_put(kv.key, json.dumps(record).encode(), lease=kv.lease)
    res = await store.txn([store.mod_revision_is(kv.key, kv.mod_revision)], [op])
    return res.succeeded
