"""The reconcile plan: desired NodeConfig + a snapshot of what runs -> the actions that converge them.

Level-triggered like a Kubernetes controller: `diff` never looks at what changed, only at what is,
so the host calls it after every Sync update, IKE event and timer tick, and after a restart, and the
same inputs always give the same actions.  Pure: no I/O, no clock (time is an argument), no IKE or
ESP state, only names, digests and states.  The host (host.py) executes the actions and owns retries.

Rules, in words:
- a peer we should initiate to (we are behind NAT, or the controller chose us and the peer is not
  behind NAT; or once after our own start, see Actual.also_initiate) with no live session built from
  its current config gets StartIke, unless its retry time has not come;
- a session built from an older config is deleted once a session from the current config is
  established (make-before-break); a responder keeps a stale session until the initiator replaces it,
  but not forever: the initiator may have built its replacement before our config changed, so we
  answered it with the old one and neither end would ever replace that SA (its children carry the
  old selectors).  After STALE_GRACE with only stale sessions the responder replaces it itself
  (StartIke; or, when it cannot reach the peer, DeleteIke so that the peer initiates anew);
- two established sessions from the same config: if their set-ups overlapped (the newer one began
  before the older one was established) both ends initiated at once, and the one with the lowest
  SPIs stays, which both ends agree on; otherwise the peer restarted and the newest wins;
- the IKE initiator creates missing children and either end deletes children no longer desired;
- sessions with peers that are no longer desired are deleted;
- routes: every remote traffic selector of every desired child is routed into the TUN, whether or
  not its SA is up (packets without an SA are counted and dropped, never sent in the clear).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshsec.api.v1 import config_pb2


@dataclass(frozen=True)
class SessionView:
    """What the host knows about one IKE session, reduced to what the plan decides on."""

    sid: int
    peer: str
    digest: str  # session_digest() of the config the session was built from
    state: str  # "connecting" | "established" | "deleting"
    initiator: bool
    established_at: float | None = None
    created_at: float = 0.0
    spis: str = ""  # hex of SPIi || SPIr once known: the collision tie-break both ends can compute
    children: frozenset[str] = frozenset()  # names of installed children
    busy_children: frozenset[str] = frozenset()  # being created, or failed and waiting to retry


@dataclass(frozen=True)
class Actual:
    """A snapshot of what runs."""

    sessions: tuple[SessionView, ...] = ()
    routes: frozenset[str] = frozenset()  # normalized CIDRs routed into the TUN
    retry_at: Mapping[str, float] = field(default_factory=dict)  # peer -> do not initiate before
    # Peers we initiate to although they are the initiators: a restarted agent reaches its peers at
    # once instead of waiting for their DPD to notice that its SAs are gone.
    also_initiate: frozenset[str] = frozenset()
    # peer -> when its current configuration (session_digest) was first seen: how long a responder
    # has held only stale sessions with it.  A peer missing here is never replaced by the responder.
    config_since: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StartIke:
    peer: str


@dataclass(frozen=True)
class DeleteIke:
    sid: int
    peer: str
    reason: str


@dataclass(frozen=True)
class CreateChild:
    sid: int
    peer: str
    child: str


@dataclass(frozen=True)
class DeleteChild:
    sid: int
    peer: str
    child: str


@dataclass(frozen=True)
class AddRoute:
    cidr: str


@dataclass(frozen=True)
class DelRoute:
    cidr: str


Action = StartIke | DeleteIke | CreateChild | DeleteChild | AddRoute | DelRoute

#: Seconds a responder waits, once its config changed, for the initiator's replacement SA before it
#: replaces a stale SA itself.  Both ends normally get a change within a Sync round trip (< 1 s).
STALE_GRACE = 3.0


def session_digest(peer: config_pb2.PeerConfig, local: config_pb2.LocalConfig) -> str:
    """Fingerprint of everything an IKE session is built from.

    Endpoints are left out (a moved peer keeps its SA; the next initiation uses the new list) and so
    is the controller's digest field; our own identity is in, because the peer checks it.
    """
    p = config_pb2.PeerConfig()
    p.CopyFrom(peer)
    p.ClearField("endpoints")
    p.ClearField("digest")
    h = hashlib.sha256(p.SerializeToString(deterministic=True))
    h.update(b"\0" + local.identity.encode())
    return h.hexdigest()


def should_initiate(peer: config_pb2.PeerConfig, local: config_pb2.LocalConfig) -> bool:
    """Whether this end starts the IKE SA (see the Initiation enum in config.proto)."""
    if not peer.endpoints or peer.behind_nat:
        return False
    if local.behind_nat:
        return True
    return peer.initiation != config_pb2.INITIATION_RESPOND


def desired_routes(config: config_pb2.NodeConfig) -> frozenset[str]:
    """Every remote traffic selector of every child, normalized ("198.19.2.0/24")."""
    out = set()
    for peer in config.peers:
        for child in peer.children:
            for ts in child.remote_ts:
                out.add(normalize_cidr(ts))
    return frozenset(out)


def normalize_cidr(text: str) -> str:
    return str(ipaddress.ip_network(text.strip(), strict=False))


def _winner(established: list[SessionView]) -> SessionView:
    ordered = sorted(established, key=lambda s: (s.established_at or 0.0, s.sid))
    newest = ordered[-1]
    overlapping = [s for s in ordered[:-1] if (s.established_at or 0.0) >= newest.created_at]
    if overlapping:  # simultaneous initiation: a choice both ends make alike
        return min([newest, *overlapping], key=lambda s: (s.spis, s.sid))
    return newest


def _stale_too_long(name: str, stale: list[SessionView], actual: Actual, now: float) -> bool:
    """Whether we have held only stale established sessions with `name` for STALE_GRACE."""
    since = actual.config_since.get(name)
    established = any(s.state == "established" for s in stale)
    return established and since is not None and now - since >= STALE_GRACE


def diff(desired: config_pb2.NodeConfig, actual: Actual, now: float) -> list[Action]:
    """The actions that move `actual` towards `desired`; empty when they already agree."""
    actions: list[Action] = []
    peers = {p.name: p for p in desired.peers}
    by_peer: dict[str, list[SessionView]] = {}
    for s in actual.sessions:
        by_peer.setdefault(s.peer, []).append(s)

    for name in sorted(by_peer):
        if name not in peers:
            for s in by_peer[name]:
                if s.state != "deleting":
                    actions.append(DeleteIke(s.sid, name, "peer removed from the desired state"))

    for name, peer in peers.items():
        live = [s for s in by_peer.get(name, []) if s.state != "deleting"]
        digest = session_digest(peer, desired.local)
        current = [s for s in live if s.digest == digest]
        stale = [s for s in live if s.digest != digest]
        established = [s for s in current if s.state == "established"]
        initiate = should_initiate(peer, desired.local) or (
            name in actual.also_initiate and bool(peer.endpoints) and not peer.behind_nat
        )
        if not current and initiate and now >= actual.retry_at.get(name, 0.0):
            actions.append(StartIke(name))
        elif not current and _stale_too_long(name, stale, actual, now):
            if peer.endpoints and not peer.behind_nat:
                if now >= actual.retry_at.get(name, 0.0):
                    actions.append(StartIke(name))
            else:
                for s in stale:
                    reason = "built from an older configuration; the peer re-initiates"
                    actions.append(DeleteIke(s.sid, name, reason))
        keep: SessionView | None = None
        if established:
            keep = _winner(established)
            for s in established:
                if s is not keep:
                    actions.append(DeleteIke(s.sid, name, "duplicate IKE SA with this peer"))
            for s in stale:
                actions.append(DeleteIke(s.sid, name, "replaced by an SA with the current configuration"))
        if keep is None:
            continue
        wanted = [c.name for c in peer.children]
        if keep.initiator:
            for child in wanted:
                if child not in keep.children and child not in keep.busy_children:
                    actions.append(CreateChild(keep.sid, name, child))
        for child in sorted(keep.children - set(wanted)):
            actions.append(DeleteChild(keep.sid, name, child))

    routes = desired_routes(desired)
    actions += [AddRoute(c) for c in sorted(routes - actual.routes)]
    actions += [DelRoute(c) for c in sorted(actual.routes - routes)]
    return actions
