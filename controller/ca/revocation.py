"""Revocation of node certificates: the set of revoked SHA-256 fingerprints kept in etcd.

Owns writes to ``certs/revoked/<sha256>`` (JSON {node, at, not_after, reason}) made on an operator's
`meshctl node revoke` and the rule for pruning them.  Readers already exist: load_inputs feeds the set
to Credentials.revoked_fingerprints (so every peer's NodeConfig lists it and refuses the node's IKE
attempts) and the API refuses the node's Sync/Report/Renew.  Revoking leaves the node in the spec: it
comes back only by enrolling again with a new bootstrap token (a new key, a new certificate).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from meshsec.controller.store import Keys, Store


class NotEnrolled(Exception):
    """The node has no certificate that is still valid: nothing to revoke."""


@dataclass(frozen=True)
class Revoked:
    fingerprints: list[str]
    revision: int


def _live_certs(node: str, issued: list[tuple[str, dict[str, object]]], now: float) -> list[str]:
    """Fingerprints of the node's certificates that have not expired (pure: unit-testable)."""
    out = []
    for fp, rec in issued:
        try:
            not_after = float(rec.get("not_after", 0))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            not_after = float("inf")  # unknown expiry: revoke to be safe
        if rec.get("node") == node and not_after > now:
            out.append(fp)
    return sorted(out)


async def revoke_node(store: Store, node: str, now: dt.datetime, reason: str = "operator") -> Revoked:
    """Revoke every still-valid certificate of the node in one txn; NotEnrolled when there is none."""
    issued_kvs, _ = await store.get_prefix(Keys.CERTS_ISSUED)
    issued: list[tuple[str, dict[str, object]]] = []
    for kv in issued_kvs:
        try:
            rec = json.loads(kv.value)
        except ValueError:
            continue
        if isinstance(rec, dict):
            issued.append((kv.key.removeprefix(Keys.CERTS_ISSUED), rec))
    fps = set(_live_certs(node, issued, now.timestamp()))
    enrolled = await store.get(Keys.node(node))
    if enrolled is not None:
        try:
            rec = json.loads(enrolled.value)
            if float(rec.get("not_after", 0)) > now.timestamp() and rec.get("fingerprint"):
                fps.add(str(rec["fingerprint"]))
        except (ValueError, TypeError, AttributeError):
            pass
    if not fps:
        raise NotEnrolled(f"node {node!r} holds no valid certificate (not enrolled, or all expired)")
    by_fp = dict(issued)
    ops = []
    for fp in sorted(fps):
        record = {
            "node": node,
            "at": now.timestamp(),
            "not_after": by_fp.get(fp, {}).get("not_after", 0),
            "reason": reason,
        }
        ops.append(store.op_put(Keys.revoked(fp), json.dumps(record, sort_keys=True).encode()))
    res = await store.txn([], ops)
    return Revoked(sorted(fps), res.revision)


def prunable(record: dict[str, object], now: float, grace: float) -> bool:
    """A revoked entry may go once its certificate expired more than `grace` seconds ago (no
    validator accepts an expired certificate anyway); entries with an unknown expiry stay."""
    try:
        not_after = float(record.get("not_after", 0))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return 0 < not_after < now - grace
