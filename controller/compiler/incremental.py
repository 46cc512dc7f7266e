"""MeshCompiler: keeps the compiled mesh current across spec updates, recompiling only what a change touches.

Owns change detection: which resources changed (by serialized bytes), which nodes that touches, and
at which granularity — a whole node (its own spec, site or a policy it is in changed) or single peer
entries (a peer of it changed), all found through the indexes (which policies and pairs a resource is
in) before any peer entry is built.  The cost of an update is one O(n) byte comparison of the resources
plus work proportional to the (node, peer) entries affected, up to a price limit (`delta_peers`); a
larger change (a profile every node uses) only marks the nodes it touches for snapshots, built when
asked.  Materialized NodeConfigs are cached within a peer budget and patched by each update's deltas.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from meshsec.api.v1 import config_pb2, spec_pb2

from .model import Credentials, Model

__all__ = ["DELTA_PEERS", "MeshCompiler", "NodeChange"]

# Default price limit of an exact update, in peer entries built.  A one-node change in a 10,000-node full
# mesh builds ~40,000 (the node whole, old and new, and its entry at each peer); a fleet-wide profile
# change would build 2 x 10^8.  ~100,000 upserted entries (~35 MB) also fit the replica's delta history.
DELTA_PEERS = 100_000


@dataclass
class NodeChange:
    """What one update changed for one agent (peer values are canonical PeerConfig bytes)."""

    local: config_pb2.LocalConfig | None = None
    added: dict[str, bytes] = field(default_factory=dict)
    changed: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    removed: dict[str, bytes] = field(default_factory=dict)
    node_removed: bool = False
    node_added: bool = False
    # A change too large for a delta: nothing above was computed; the agent needs a snapshot.
    snapshot: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.local is not None
            or self.added
            or self.changed
            or self.removed
            or self.node_removed
            or self.snapshot
        )

    def to_delta(self) -> config_pb2.NodeConfigDelta:
        delta = config_pb2.NodeConfigDelta()
        if self.local is not None:
            delta.local.CopyFrom(self.local)
        upserts = {**{k: v for k, v in self.added.items()}, **{k: v[1] for k, v in self.changed.items()}}
        for name in sorted(upserts):
            delta.upsert_peers.add().MergeFromString(upserts[name])
        delta.remove_peers.extend(sorted(self.removed))
        return delta


def _resource_bytes(items) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for item in items:
        out.setdefault(item.name, item.SerializeToString(deterministic=True))
    return out


class MeshCompiler:
    """Incremental compiler.  `update(spec)` returns the agents whose NodeConfig changed (or, for a
    change above `delta_peers`, may have changed); `update_credentials(creds)` the same for new CA
    bundles and revocations; `config_bytes(name)` builds a NodeConfig when asked."""

    def __init__(
        self, creds: Credentials, cache_peers: int = 1_000_000, delta_peers: int | None = DELTA_PEERS
    ) -> None:
        self.creds = creds
        self.model: Model | None = None
        self._spec = spec_pb2.MeshSpec()
        # Peer entries an update may build to answer exactly with deltas (None: no limit, as for plans).
        self.delta_peers = delta_peers
        self.last_estimate = 0  # that price of the last update, from the indexes
        self._bytes: dict[str, dict[str, bytes]] = {}
        # name -> canonical peer bytes by peer name; bytes are several times smaller than message objects
        self._cache: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._cached_peers = 0
        self.cache_peers = cache_peers
        self.changes: dict[str, NodeChange] = {}
        # Counters the tests and benchmarks read: nodes whose config was (partly) recomputed, and
        # PeerConfigs built, in total and in the last update.
        self.nodes_compiled = 0
        self.peers_compiled = 0
        self.last_nodes_compiled = 0
        self.last_peers_compiled = 0

    # --- reading ----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return self.model.agents() if self.model else []

    def config(self, name: str) -> config_pb2.NodeConfig:
        """The NodeConfig (version 0) of an agent, a fresh object; KeyError if no such agent."""
        return config_pb2.NodeConfig.FromString(self.config_bytes(name))

    def config_bytes(self, name: str) -> bytes:
        """Canonical serialized NodeConfig (version 0): what config() parses, for callers sending bytes."""
        if self.model is None or not self.model.is_agent(name):
            raise KeyError(name)
        peers = self._cache.get(name)
        if peers is not None:
            self._cache.move_to_end(name)
        else:
            peers = self.model.peer_map(name)
            self._count(1, len(peers))
            self._remember(name, peers)
        return self.model.node_config_bytes(name, peers)

    def delta(self, name: str) -> config_pb2.NodeConfigDelta | None:
        """The change the last update made to `name` (versions 0: the caller sets them), or None when
        it made none or was too large for a delta (`changes[name].snapshot`: send a snapshot)."""
        change = self.changes.get(name)
        return change.to_delta() if change and not change.snapshot else None

    # --- updating ---------------------------------------------------------------------------------
    def update(self, spec: spec_pb2.MeshSpec, creds: Credentials | None = None) -> set[str]:
        """Take a new spec (and optionally new credentials); return the agents whose config changed,
        including agents that were removed.

        First, from the indexes only, which nodes a change touches and how many peer entries an exact
        answer would build.  Up to `delta_peers` entries, the changed entries are built and compared:
        the returned set is exact and `delta(name)` is a per-peer delta.  Above it (a profile or policy
        every node uses), nothing is built: the nodes the change may touch are returned, each marked
        `snapshot` (no delta; `config()` builds it when asked), and their cached peer maps dropped.
        """
        self.last_nodes_compiled = self.last_peers_compiled = 0
        old = self.model
        spec = _copy(spec)  # the Model keeps references; the caller may mutate its spec afterwards
        peers_creds = locals_creds = False
        if creds is not None:
            if old is not None and _peer_creds_key(creds) != _peer_creds_key(old.creds):
                peers_creds = True  # a new PSK master: every PSK peer entry changes
            elif old is not None and _creds_key(creds) != _creds_key(old.creds):
                locals_creds = True  # CA bundle or revocations: LocalConfigs only
            self.creds = creds
        new = Model(spec, self.creds)
        new_bytes = {
            "nodes": _resource_bytes(spec.nodes),
            "sites": _resource_bytes(spec.sites),
            "profiles": _resource_bytes(spec.profiles),
            "policies": _resource_bytes(spec.policies),
        }
        self.model, old_bytes, self._bytes, self._spec = new, self._bytes, new_bytes, spec
        self.changes = {}
        if old is None:
            self._cache.clear()
            self._cached_peers = 0
            for name in new.agents():
                self.changes[name] = NodeChange(node_added=True)
            self._count(len(self.changes), 0)
            return set(self.changes)
        changed_profiles = _changed_names(old_bytes["profiles"], new_bytes["profiles"])
        changed_policies = _changed_names(old_bytes["policies"], new_bytes["policies"])
        for m in (old, new):
            changed_policies |= {p.name for p in m.policies.values() if p.profile in changed_profiles}
        node_changed = _changed_names(old_bytes["nodes"], new_bytes["nodes"])
        for site in _changed_names(old_bytes["sites"], new_bytes["sites"]):
            node_changed |= old.index.by_site.get(site, set()) | new.index.by_site.get(site, set())
        new.inherit(old, node_changed, changed_policies, changed_profiles)
        groups: list[tuple[Collection[str], frozenset[str]]] = []
        if peers_creds:
            full = set(old.agents()) | set(new.agents())
        else:
            full = self._touched_whole(old, new, changed_policies, groups)
        full |= node_changed
        groups += _neighbour_groups(old, node_changed) + _neighbour_groups(new, node_changed)
        cost = sum(old.peer_count(n) + new.peer_count(n) for n in full)
        cost += sum(2 * len(targets) * len(peers) for targets, peers in groups)
        self.last_estimate = cost
        if self.delta_peers is not None and cost > self.delta_peers:
            self._mark_snapshots(old, new, full, groups)
        else:
            partial: dict[str, set[str]] = {}
            for targets, peers in groups:
                for y in targets:
                    if y not in full:
                        partial.setdefault(y, set()).update(peers)
            for name in sorted(full):
                if old.is_agent(name) or new.is_agent(name):
                    self._recompile_whole(old, new, name)
            for name in sorted(partial):
                partial[name].discard(name)
                self._recompile_peers(old, new, name, partial[name])
        if locals_creds:  # agents whose LocalConfig was not compared above (untouched or partial)
            self._recompile_locals(
                old, new, [n for n in new.agents() if n not in full and not self._marked(n)]
            )
        self.changes = {k: v for k, v in self.changes.items() if v}
        self._patch_cache()
        return set(self.changes)

    def update_credentials(self, creds: Credentials) -> set[str]:
        """New credentials, same spec: the agents whose config changed.  A new CA bundle or revocation
        list changes LocalConfigs only (peers depend on credentials only through the PSKs), so no peer
        entry is built and the cached peer maps stay valid.  A new PSK master (`psk_version`) is a
        whole update."""
        if self.model is None:
            self.creds = creds
            return set()
        if _peer_creds_key(creds) != _peer_creds_key(self.model.creds):
            return self.update(self._spec, creds)
        self.last_nodes_compiled = self.last_peers_compiled = 0
        self.changes = {}
        old = self.model
        self.model = new = old.with_creds(creds)
        self.creds = creds
        self._recompile_locals(old, new, new.agents())
        self.changes = {k: v for k, v in self.changes.items() if v}
        return set(self.changes)

    def _marked(self, name: str) -> bool:
        change = self.changes.get(name)
        return change is not None and change.snapshot

    def _recompile_locals(self, old: Model, new: Model, names: Iterable[str]) -> None:
        """LocalConfig-only changes of agents whose peers did not change."""
        for name in names:
            if not old.is_agent(name):
                continue
            local = new.local_config(name)
            if _local_bytes(old.local_config(name)) != _local_bytes(local):
                self.changes.setdefault(name, NodeChange()).local = local

    def _mark_snapshots(
        self, old: Model, new: Model, full: set[str], groups: list[tuple[Collection[str], frozenset[str]]]
    ) -> None:
        """A change too large for deltas: mark every agent it may touch (by index, building nothing)."""
        touched = set(full)
        for targets, _ in groups:
            touched.update(targets)
        for name in touched:
            if old.is_agent(name) or new.is_agent(name):
                self.changes[name] = NodeChange(
                    snapshot=True, node_added=not old.is_agent(name), node_removed=not new.is_agent(name)
                )
                peers = self._cache.pop(name, None)
                if peers is not None:
                    self._cached_peers -= len(peers)

    def _touched_whole(
        self,
        old: Model,
        new: Model,
        changed_policies: set[str],
        groups: list[tuple[Collection[str], frozenset[str]]],
    ) -> set[str]:
        """Agents whose whole peer map must be recomputed because a policy (or its profile) changed.
        A selection change alone recompiles only the nodes that joined or left; the members that stay
        get a group (targets, peers): recheck only their entries for those nodes."""
        touched: set[str] = set()
        for name in changed_policies:
            om, nm = old.members.get(name), new.members.get(name)
            if om is None or nm is None or _template(old, om.policy) != _template(new, nm.policy):
                touched |= (om.involved() if om else frozenset()) | (nm.involved() if nm else frozenset())
                continue
            if om.policy.topology == spec_pb2.TOPOLOGY_PAIRS:
                for n in set(om.partners) | set(nm.partners):
                    if om.partners.get(n, set()) != nm.partners.get(n, set()):
                        touched.add(n)
            elif om.policy.topology == spec_pb2.TOPOLOGY_HUB_AND_SPOKE:
                if om.hubs != nm.hubs:
                    moved = om.hubs ^ nm.hubs
                    touched |= moved
                    groups.append((om.members & nm.members, frozenset(moved)))
                if om.members != nm.members:
                    moved = om.members ^ nm.members
                    touched |= moved
                    groups.append((om.hubs & nm.hubs, frozenset(moved)))
            elif om.members != nm.members:
                moved = om.members ^ nm.members
                touched |= moved
                groups.append((om.members & nm.members, frozenset(moved)))
        return touched

    def _recompile_whole(self, old: Model, new: Model, name: str) -> None:
        change = self.changes.setdefault(name, NodeChange())
        before = self._old_peers(old, name)
        after = new.peer_map(name) if new.is_agent(name) else {}
        self._count(1, len(after))
        if not new.is_agent(name):
            change.node_removed = True
            change.removed.update(before)
            return
        if not old.is_agent(name):
            change.node_added = True
        local = new.local_config(name)
        if not old.is_agent(name) or _local_bytes(old.local_config(name)) != _local_bytes(local):
            change.local = local
        for peer, data in after.items():
            prev = before.get(peer)
            if prev is None:
                change.added[peer] = data
            elif prev != data:
                change.changed[peer] = (prev, data)
        change.removed.update({p: d for p, d in before.items() if p not in after})

    def _old_peers(self, old: Model, name: str) -> dict[str, bytes]:
        if not old.is_agent(name):
            return {}
        cached = self._cache.get(name)
        if cached is not None:
            return dict(cached)
        peers = old.peer_map(name)
        self._count(0, len(peers))
        return peers

    def _recompile_peers(self, old: Model, new: Model, name: str, peers: set[str]) -> None:
        if not new.is_agent(name):
            return
        change = self.changes.setdefault(name, NodeChange())
        self._count(1, 0)
        for peer in sorted(peers):
            prev = old.peer_bytes(name, peer) if old.connected(name, peer) else None
            data = new.peer_bytes(name, peer) if new.connected(name, peer) else None
            self._count(0, (prev is not None) + (data is not None))
            if prev is None and data is not None:
                change.added[peer] = data
            elif data is None and prev is not None:
                change.removed[peer] = prev
            elif prev != data:
                change.changed[peer] = (prev, data)  # type: ignore[assignment]
        if any(not new.is_agent(p) for p in peers if p in new.nodes) or any(
            not old.is_agent(p) for p in peers if p in old.nodes
        ):
            local = new.local_config(name)
            if _local_bytes(old.local_config(name)) != _local_bytes(local):
                change.local = local

    # --- bookkeeping ------------------------------------------------------------------------------
    def _count(self, nodes: int, peers: int) -> None:
        self.nodes_compiled += nodes
        self.last_nodes_compiled += nodes
        self.peers_compiled += peers
        self.last_peers_compiled += peers

    def _remember(self, name: str, peers: dict[str, bytes]) -> None:
        if len(peers) > self.cache_peers:
            return
        self._cache[name] = peers
        self._cached_peers += len(peers)
        while self._cached_peers > self.cache_peers and self._cache:
            _, dropped = self._cache.popitem(last=False)
            self._cached_peers -= len(dropped)

    def _patch_cache(self) -> None:
        for name, change in self.changes.items():
            peers = self._cache.pop(name, None)
            if peers is None:
                continue
            self._cached_peers -= len(peers)
            if change.node_removed:
                continue
            for peer in change.removed:
                peers.pop(peer, None)
            peers.update(change.added)
            peers.update({k: v[1] for k, v in change.changed.items()})
            self._remember(name, peers)


def _creds_key(creds: Credentials) -> tuple[str, list[str], str]:
    """What of the credentials can be compared (any object with Credentials' attributes will do)."""
    return creds.trusted_ca_pem, sorted(creds.revoked_fingerprints), str(getattr(creds, "psk_version", ""))


def _peer_creds_key(creds: Credentials) -> str:
    """What of the credentials PeerConfigs depend on: the PSK master, through `psk_version`."""
    return str(getattr(creds, "psk_version", ""))


def _neighbour_groups(model: Model, changed: set[str]) -> list[tuple[Collection[str], frozenset[str]]]:
    """(targets, peers): the nodes that may hold a changed node as a peer in this model, grouped per
    policy and role so that a fleet-wide policy costs one group, not one set copy per changed node.
    Targets may include the changed nodes themselves and external nodes (the caller skips them)."""
    acc: dict[tuple[str, str], tuple[Collection[str], set[str]]] = {}
    for n in changed:
        for pm in model.node_policies.get(n, ()):
            topo, name = pm.policy.topology, pm.policy.name
            if topo == spec_pb2.TOPOLOGY_PAIRS:
                key, targets = (name, "pair:" + n), pm.partners.get(n, set())
            elif topo == spec_pb2.TOPOLOGY_HUB_AND_SPOKE:
                if n in pm.hubs:
                    key, targets = (name, "hub"), pm.members
                else:
                    key, targets = (name, "spoke"), pm.hubs
            else:
                key, targets = (name, ""), pm.members
            acc.setdefault(key, (targets, set()))[1].add(n)
    return [(targets, frozenset(peers)) for targets, peers in acc.values()]


def _copy(spec: spec_pb2.MeshSpec) -> spec_pb2.MeshSpec:
    out = spec_pb2.MeshSpec()
    out.CopyFrom(spec)
    return out


def _changed_names(old: dict[str, bytes], new: dict[str, bytes]) -> set[str]:
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


def _template(model: Model, policy: spec_pb2.Policy) -> tuple:
    """Everything of a policy besides who it selects: if this changes, every member's children change."""
    prof = model.profiles.get(policy.profile)
    return (
        policy.mode,
        policy.include_site_subnets,
        policy.topology,
        prof.SerializeToString(deterministic=True) if prof else b"",
        policy.profile,
    )


def _local_bytes(local: config_pb2.LocalConfig) -> bytes:
    return local.SerializeToString(deterministic=True)
