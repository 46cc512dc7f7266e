"""Revocation of node certificates: revoked SHA-256 fingerprints, and node-level revocations, in etcd.

Owns writes to ``certs/revoked/<sha256>`` (JSON {node, at, not_after, reason}) and
``certs/revoked-nodes/<node>`` (JSON {at, issued_until, reason}) made on an operator's
`meshctl node revoke`, the rule for pruning the former and the rule a node-level revocation applies
(`covers`).  Readers already exist: load_inputs feeds both to DesiredState (so every peer's NodeConfig
lists the fingerprints and refuses the node's IKE attempts) and the API refuses the node's
Sync/Report/Renew.

Why node-level too: the list names only certificates that were unexpired (and recorded) when it was
written, while TLS checks validity only at the handshake.  A connection set up with a certificate that
has expired since, or a Renew signing while the revoke ran, would otherwise leave the node a way back.
The node-level record refuses every certificate of the node issued at or before the revocation;
certificates issued later (a re-enrollment with a new bootstrap token) are not affected.

Revoking leaves the node in the spec: it comes back only by enrolling again with a new bootstrap token
(a new key, a new certificate).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from meshsec.controller.ca.authority import BACKDATE
from meshsec.controller.store import Keys, Store

# The CA backdates notBefore by this much (clock skew): a certificate was issued at notBefore + BACKDATE.


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


async def _issued_to(store: Store, node: str) -> list[tuple[str, dict[str, object]]]:
    issued_kvs, _ = await store.get_prefix(Keys.CERTS_ISSUED)
    issued: list[tuple[str, dict[str, object]]] = []
    for kv in issued_kvs:
        try:
            rec = json.loads(kv.value)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("node") == node:
            issued.append((kv.key.removeprefix(Keys.CERTS_ISSUED), rec))
    return issued


def _revoked_records(
    node: str, fps: set[str], issued: list[tuple[str, dict[str, object]]], now: float, reason: str
) -> dict[str, bytes]:
    by_fp = dict(issued)
    out = {}
    for fp in sorted(fps):
        record = {
            "node": node,
            "at": now,
            "not_after": by_fp.get(fp, {}).get("not_after", 0),
            "reason": reason,
        }
        out[fp] = json.dumps(record, sort_keys=True).encode()
    return out


def node_record(now: dt.datetime, reason: str) -> bytes:
    """The value of certs/revoked-nodes/<node>: certificates issued up to `now` are revoked."""
    until = now - BACKDATE  # compared with notBefore, which the CA backdates
    record = {"at": now.timestamp(), "issued_until": until.timestamp(), "reason": reason}
    return json.dumps(record, sort_keys=True).encode()


def issued_until(value: bytes) -> float:
    """The notBefore (POSIX seconds) up to which a node-level record revokes; a record that cannot be
    read revokes every certificate of the node (fail closed)."""
    try:
        return float(json.loads(value)["issued_until"])
    except (ValueError, TypeError, KeyError):
        return float("inf")


def covers(issued_until_ts: float | None, not_before: dt.datetime) -> bool:
    """Whether a node-level revocation applies to a certificate of that node with this notBefore
    (pure: the rule the API applies on every call).  notBefore has whole seconds, so a certificate
    issued within the revoke's own second counts as issued before it (refused: the safe side)."""
    return issued_until_ts is not None and not_before.timestamp() <= issued_until_ts


async def revoke_node(store: Store, node: str, now: dt.datetime, reason: str = "operator") -> Revoked:
    """Revoke the node (every certificate issued up to `now`) and list every still-valid certificate
    of it; NotEnrolled (nothing written) when it holds none.

    Order matters against a concurrent Renew, which records its certificate and then reads the
    node-level key before answering: the node-level key is written first, then certs/issued is read
    again, so a certificate recorded before that key was visible is listed by the second pass, and a
    Renew that records later sees the key and refuses.
    """
    ts = now.timestamp()
    issued = await _issued_to(store, node)
    fps = set(_live_certs(node, issued, ts))
    enrolled = await store.get(Keys.node(node))
    if enrolled is not None:
        try:
            rec = json.loads(enrolled.value)
            if float(rec.get("not_after", 0)) > ts and rec.get("fingerprint"):
                fps.add(str(rec["fingerprint"]))
        except (ValueError, TypeError, AttributeError):
            pass
    if not fps:
        raise NotEnrolled(f"node {node!r} holds no valid certificate (not enrolled, or all expired)")
    ops = [
        store.op_put(Keys.revoked(fp), v) for fp, v in _revoked_records(node, fps, issued, ts, reason).items()
    ]
    ops.append(store.op_put(Keys.revoked_node(node), node_record(now, reason)))
    res = await store.txn([], ops)
    # second pass: certificates a Renew recorded between the first read and the write above
    issued = await _issued_to(store, node)
    late = set(_live_certs(node, issued, ts)) - fps
    if late:
        records = _revoked_records(node, late, issued, ts, reason)
        res = await store.txn([], [store.op_put(Keys.revoked(fp), v) for fp, v in records.items()])
        fps |= late
    return Revoked(sorted(fps), res.revision)


def prunable(record: dict[str, object], now: float, grace: float) -> bool:
    """A revoked entry may go once its certificate expired more than `grace` seconds ago (no
    validator accepts an expired certificate anyway); entries with an unknown expiry stay."""
    try:
        not_after = float(record.get("not_after", 0))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return 0 < not_after < now - grace
