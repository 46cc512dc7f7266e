"""CA rollover with an overlap: a new CA is trusted everywhere before it signs, and the old one stays
trusted until no certificate it signed can still be in use.

Owns the rollover state machine and its etcd keys; the CA engineer's authority.py keeps owning
certificate issuance and the ``ca/cert`` + ``ca/key`` format (``ca/cert`` is the trusted bundle, its
FIRST certificate is the signing CA whose key is ``ca/key``), which this module preserves in every phase.

=============  ======================  ===========  =============================================
phase          ca/cert (bundle)        ca/key       meaning
=============  ======================  ===========  =============================================
stable         [A]                     A            no rollover (``ca/rollover`` absent)
published      [A, B]                  A            B trusted by every agent and replica, A signs;
                                                    B's key sealed in ``ca/next-key``
switched       [B, A]                  B            B signs (renewals move every node to B), A is
                                                    still trusted for the certificates it issued;
                                                    A's key sealed in ``ca/previous-key``
stable         [B]                     B            A retired after the overlap
=============  ======================  ===========  =============================================

Timing (``RolloverPolicy``): ``propagate`` is how long B is published before it signs (at least a few
Sync round trips, so every agent trusts B before it meets a B certificate; the switch also waits, up
to ``max_wait``, while a reporting agent's applied version predates B's publication); ``overlap`` is
how long A stays trusted after the switch (at least the node certificate lifetime: A signs nothing
after the switch, so every A-signed node certificate has expired or been renewed by then); a rollover
starts by itself ``rotate_before`` the signing CA's expiry, or at once on ``meshctl ca rotate``.

Controller TLS: agents verify the controller with their ca.pem, which learns B only at their first
renewal after the switch (RenewResponse carries the bundle).  So until A is retired a replica presents
a server certificate issued by A (``CurrentCA.tls_issuer``, from ``ca/previous-key``) and pins A in
CreateToken; from the retirement on, B.  Clients of either CA are accepted (roots = the bundle).

Pure logic (``next_action``, ``RolloverState``) is separated from the etcd I/O (``RolloverStore``),
which writes each transition as one compare-and-swap txn (plus the caller's leadership guard), so two
replicas can never apply the same step twice.  Keys: ``ca/rollover`` (JSON state), ``ca/next-key``,
``ca/previous-key`` (both AES-GCM sealed with the KEK, like ``ca/key``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from meshsec.controller.ca.authority import CertificateAuthority, fingerprint
from meshsec.controller.ca.kek import Sealer
from meshsec.controller.store import Keys, Store
from meshsec.controller.store.client import Compare

CA_ROLLOVER = Keys.CA + "rollover"
CA_NEXT_KEY = Keys.CA + "next-key"
CA_PREVIOUS_KEY = Keys.CA + "previous-key"


class RolloverError(Exception):
    """A rollover step cannot be taken (malformed state, wrong phase, lost a race)."""


class Phase(enum.StrEnum):
    STABLE = "stable"
    PUBLISHED = "published"
    SWITCHED = "switched"


class Action(enum.StrEnum):
    BEGIN = "begin"  # create B, publish [A, B]
    SWITCH = "switch"  # [B, A], B signs
    RETIRE = "retire"  # [B]


@dataclass(frozen=True)
class RolloverPolicy:
    """Durations of a rollover; see the module docstring for what each must cover."""

    propagate: dt.timedelta = dt.timedelta(minutes=10)
    overlap: dt.timedelta = dt.timedelta(days=31)
    rotate_before: dt.timedelta = dt.timedelta(days=90)
    ca_lifetime: dt.timedelta = dt.timedelta(days=3650)
    # Longest wait in "published" for agents that report an older version than the new bundle's
    # (None: 10 x propagate); after it the switch happens anyway (those agents learn B on reconnect).
    propagate_max: dt.timedelta | None = None

    @property
    def max_wait(self) -> dt.timedelta:
        return self.propagate_max if self.propagate_max is not None else self.propagate * 10

    def __post_init__(self) -> None:
        if self.propagate <= dt.timedelta(0) or self.overlap <= dt.timedelta(0):
            raise ValueError("propagate and overlap must be positive")
        if self.rotate_before < self.propagate + self.overlap:
            raise ValueError(
                "rotate_before must cover propagate + overlap, or the old CA expires while still needed"
            )
        if self.ca_lifetime <= self.rotate_before:
            raise ValueError("ca_lifetime must exceed rotate_before, or every new CA is rotated at once")


def policy_for(
    node_cert_lifetime: dt.timedelta,
    *,
    propagate: dt.timedelta = dt.timedelta(minutes=10),
    ca_lifetime: dt.timedelta = dt.timedelta(days=3650),
) -> RolloverPolicy:
    """A consistent policy for a controller issuing node certificates of this lifetime: the old CA
    stays trusted for a whole node-certificate lifetime after the switch (plus propagate, the time a
    replica may take to notice the switch and stop signing with the old CA)."""
    overlap = node_cert_lifetime + propagate
    rotate_before = min(max(dt.timedelta(days=90), 2 * (propagate + overlap)), ca_lifetime / 2)
    return RolloverPolicy(propagate, overlap, rotate_before, ca_lifetime)


@dataclass(frozen=True)
class RolloverState:
    """The persisted state (``ca/rollover``); phase STABLE means no rollover in progress."""

    phase: Phase = Phase.STABLE
    since: dt.datetime | None = None  # when the current phase began (UTC)
    old_fp: str = ""  # SHA-256 (hex) of the CA being retired
    new_fp: str = ""  # SHA-256 (hex) of the CA being introduced
    reason: str = ""  # "scheduled" or "manual"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "phase": str(self.phase),
                "since": self.since.timestamp() if self.since else 0,
                "old": self.old_fp,
                "new": self.new_fp,
                "reason": self.reason,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RolloverState:
        try:
            raw = json.loads(data)
            since = float(raw["since"])
            return cls(
                Phase(raw["phase"]),
                dt.datetime.fromtimestamp(since, dt.UTC) if since else None,
                str(raw.get("old", "")),
                str(raw.get("new", "")),
                str(raw.get("reason", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise RolloverError(f"{CA_ROLLOVER} is malformed: {exc}") from None

    def deadline(self, policy: RolloverPolicy) -> dt.datetime | None:
        """When the next step is due (None when stable: that depends on the CA's expiry)."""
        if self.since is None or self.phase is Phase.STABLE:
            return None
        return self.since + (policy.propagate if self.phase is Phase.PUBLISHED else policy.overlap)


def next_action(
    state: RolloverState,
    signing_not_after: dt.datetime,
    now: dt.datetime,
    policy: RolloverPolicy,
    *,
    requested: bool = False,
    lagging: int = 0,
) -> Action | None:
    """The step to take now, if any.  requested: an operator asked for a rollover (`meshctl ca rotate`);
    lagging: connected agents that have not yet applied the bundle with the new CA (they would refuse a
    peer's new certificate in IKE), which holds the switch back for up to policy.max_wait."""
    if state.phase is Phase.STABLE:
        if requested or now >= signing_not_after - policy.rotate_before:
            return Action.BEGIN
        return None
    deadline = state.deadline(policy)
    if deadline is None or now < deadline:
        return None
    if state.phase is Phase.PUBLISHED:
        assert state.since is not None
        if lagging and now < state.since + policy.max_wait:
            return None
        return Action.SWITCH
    return Action.RETIRE


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def bundle_after(action: Action, bundle: list[x509.Certificate], new: x509.Certificate | None) -> bytes:
    """The trusted bundle (signing CA first) after a step; pure, so the phase table above is testable."""
    if action is Action.BEGIN:
        assert new is not None
        return b"".join(_pem(c) for c in [bundle[0], new])
    if len(bundle) != 2:
        raise RolloverError(f"{action} needs a bundle of two CAs, found {len(bundle)}")
    if action is Action.SWITCH:
        return _pem(bundle[1]) + _pem(bundle[0])
    return _pem(bundle[0])  # RETIRE keeps the signing CA only


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Snapshot:
    """ca/cert, ca/rollover and ca/next-key as read at one moment, with their mod revisions for CAS."""

    bundle: list[x509.Certificate]
    bundle_rev: int
    state: RolloverState
    state_rev: int
    next_key: bytes | None  # sealed
    key: bytes = b""  # ca/key, sealed (the signing CA's key)
    key_rev: int = 0


class RolloverStore:
    """The etcd side: read a Snapshot, apply one Action as one CAS txn (with an optional guard)."""

    def __init__(self, store: Store, sealer: Sealer, policy: RolloverPolicy) -> None:
        self._store = store
        self._sealer = sealer
        self.policy = policy

    async def read(self) -> Snapshot:
        """The four keys at ONE etcd revision: a step between two reads must not pair the new phase
        with the old bundle."""
        rev = await self._store.revision()
        cert_kv, state_kv, next_kv, key_kv = await asyncio.gather(
            *(self._store.get(k, revision=rev) for k in (Keys.CA_CERT, CA_ROLLOVER, CA_NEXT_KEY, Keys.CA_KEY))
        )
        if cert_kv is None:
            raise RolloverError("etcd holds no CA; run `meshsec-controller init` first")
        return Snapshot(
            x509.load_pem_x509_certificates(cert_kv.value),
            cert_kv.mod_revision,
            RolloverState.from_json(state_kv.value) if state_kv else RolloverState(),
            state_kv.mod_revision if state_kv else 0,
            next_kv.value if next_kv else None,
            key_kv.value if key_kv else b"",
            key_kv.mod_revision if key_kv else 0,
        )

    async def step(
        self,
        now: dt.datetime,
        *,
        requested: bool = False,
        reason: str = "scheduled",
        guard: Compare | None = None,
    ) -> tuple[Action | None, RolloverState]:
        """Take the due step (if any); returns it and the state after it.  RolloverError: lost a race."""
        snap = await self.read()
        lagging = 0
        deadline = snap.state.deadline(self.policy)
        if snap.state.phase is Phase.PUBLISHED and deadline is not None and now >= deadline:
            lagging = await self.lagging(snap.bundle_rev)
        action = next_action(
            snap.state,
            snap.bundle[0].not_valid_after_utc,
            now,
            self.policy,
            requested=requested,
            lagging=lagging,
        )
        if action is None:
            return None, snap.state
        new_state = await self.apply(snap, action, now, reason="manual" if requested else reason, guard=guard)
        return action, new_state

    async def lagging(self, revision: int) -> int:
        """Agents reporting now (live status/<name>) whose applied version predates `revision`."""
        from google.protobuf.message import DecodeError
        from meshsec.api.v1 import status_pb2

        kvs, _ = await self._store.get_prefix(Keys.STATUS)
        behind = 0
        for kv in kvs:
            st = status_pb2.NodeStatus()
            try:
                st.ParseFromString(kv.value)
            except DecodeError:  # a malformed status counts as not caught up
                behind += 1
                continue
            behind += st.applied_version < revision
        return behind

    async def apply(
        self,
        snap: Snapshot,
        action: Action,
        now: dt.datetime,
        *,
        reason: str = "scheduled",
        guard: Compare | None = None,
    ) -> RolloverState:
        s = self._store
        compares = [
            s.mod_revision_is(Keys.CA_CERT, snap.bundle_rev),
            s.mod_revision_is(CA_ROLLOVER, snap.state_rev),
            s.mod_revision_is(Keys.CA_KEY, snap.key_rev),
        ]
        if guard is not None:
            compares.append(guard)
        if action is Action.BEGIN:
            new = CertificateAuthority.generate(
                f"meshsec CA {now:%Y-%m-%dT%H:%M:%SZ}", lifetime=self.policy.ca_lifetime
            )
            state = RolloverState(Phase.PUBLISHED, now, fingerprint(snap.bundle[0]), new.sha256, reason)
            ops = [
                s.op_put(Keys.CA_CERT, bundle_after(action, snap.bundle, new.cert)),
                s.op_put(CA_NEXT_KEY, self._sealer.seal(_key_pem(new.key), CA_NEXT_KEY)),
                s.op_put(CA_ROLLOVER, state.to_json()),
            ]
        elif action is Action.SWITCH:
            if snap.next_key is None or len(snap.bundle) != 2:
                raise RolloverError("cannot switch: the new CA's key or certificate is missing")
            key_pem = self._sealer.open(snap.next_key, CA_NEXT_KEY)
            key = serialization.load_pem_private_key(key_pem, password=None)
            if _pem_pub(key) != _pem_pub(snap.bundle[1].public_key()):
                raise RolloverError("ca/next-key does not belong to the published CA")
            state = replace(snap.state, phase=Phase.SWITCHED, since=now)
            old_key = self._sealer.open(snap.key, Keys.CA_KEY)
            ops = [
                s.op_put(CA_PREVIOUS_KEY, self._sealer.seal(old_key, CA_PREVIOUS_KEY)),
                s.op_put(Keys.CA_CERT, bundle_after(action, snap.bundle, None)),
                s.op_put(Keys.CA_KEY, self._sealer.seal(key_pem, Keys.CA_KEY)),  # aad is the key's name
                s.op_delete(CA_NEXT_KEY),
                s.op_put(CA_ROLLOVER, state.to_json()),
            ]
        else:
            state = RolloverState()
            ops = [
                s.op_put(Keys.CA_CERT, bundle_after(action, snap.bundle, None)),
                s.op_delete(CA_ROLLOVER),
                s.op_delete(CA_PREVIOUS_KEY),
            ]
        res = await s.txn(compares, ops)
        if not res.succeeded:
            raise RolloverError(
                f"{action}: the CA changed concurrently (or this replica is no longer leader)"
            )
        return state


def _pem_pub(key: object) -> bytes:
    pub = key.public_key() if hasattr(key, "public_key") else key  # type: ignore[union-attr]
    return pub.public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class CurrentCA:
    """What a replica needs from the CA state: who signs node certificates, who issues its TLS
    server certificate (and is pinned in CreateToken), and the bundle every client may chain to."""

    signing: CertificateAuthority
    tls_issuer: CertificateAuthority

    @property
    def bundle_pem(self) -> bytes:
        return self.signing.bundle_pem


async def load_current(store: Store, sealer: Sealer, *, revision: int = 0) -> CurrentCA:
    from meshsec.controller.ca.authority import load_ca

    revision = revision or await store.revision()
    signing = await load_ca(store, sealer, revision=revision)
    prev = await store.get(CA_PREVIOUS_KEY, revision=revision)
    bundle = x509.load_pem_x509_certificates(signing.bundle_pem)
    if prev is None or len(bundle) != 2:
        return CurrentCA(signing, signing)
    key = serialization.load_pem_private_key(sealer.open(prev.value, CA_PREVIOUS_KEY), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _pem_pub(key) != _pem_pub(bundle[1].public_key()):
        raise RolloverError("ca/previous-key does not belong to the second CA of the bundle")
    return CurrentCA(signing, CertificateAuthority(bundle[1], key, signing.bundle_pem))


async def follow_ca(
    store: Store,
    sealer: Sealer,
    on_change: Callable[[CurrentCA], Awaitable[None] | None],
    *,
    retry: float = 0.5,
) -> None:
    """Call on_change with the CA state as etcd holds it now, and again after every change of it;
    runs until cancelled.  A replica uses it to sign with the CA that signs now, to trust the whole
    bundle and to present a server certificate every agent can verify (see ReloadableServerTLS)."""
    from meshsec.controller.store import StoreError

    seen: tuple[bytes, str, str] | None = None
    while True:
        try:
            revision = await store.revision()
            current = await load_current(store, sealer, revision=revision)
            key = (current.bundle_pem, current.signing.sha256, current.tls_issuer.sha256)
            if key != seen:
                seen = key
                result = on_change(current)
                if asyncio.iscoroutine(result):
                    await result
            watched = (Keys.CA_CERT, Keys.CA_KEY, CA_PREVIOUS_KEY)
            async for _rev, events in store.watch_prefix(Keys.CA, revision + 1):
                if any(e.key in watched for e in events):
                    break
        except StoreError:
            await asyncio.sleep(retry)
