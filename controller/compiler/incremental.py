"""MeshCompiler: keeps the compiled mesh current across spec updates, recompiling only what a change touches.

Owns change detection: which resources changed (by serialized bytes), which nodes that touches, and
at which granularity — a whole node (its own spec, site or a policy it is in changed) or single peer
entries (a peer of it changed).  The cost of an update is one O(n) byte comparison of the resources
plus work proportional to the (node, peer) entries affected, not to the fleet.  Materialized
NodeConfigs are cached within a peer budget and patched in place by each update's deltas.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from meshsec.api.v1 import config_pb2, spec_pb2

from .model import Credentials, Model

__all__ = ["MeshCompiler", "NodeChange"]


@dataclass
class NodeChange:
    """What one update changed for one agent (peer values are canonical PeerConfig bytes)."""

    local: config_pb2.LocalConfig | None = None
    added: dict[str, bytes] = field(default_factory=dict)
    changed: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    removed: dict[str, bytes] = field(default_factory=dict)
    node_removed: bool = False
    node_added: bool = False

    def __bool__(self) -> bool:
        return bool(self.local is not None or self.added or self.changed or self.removed or self.node_removed)

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
    """Incremental compiler.  `update(spec)` returns the agents whose NodeConfig changed."""

    def __init__(self, creds: Credentials, cache_peers: int = 1_000_000) -> None:
        self.creds = creds
        self.model: Model | None = None
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
        """The change the last update made to `name` (versions 0: the caller sets them), or None."""
        change = self.changes.get(name)
        return change.to_delta() if change else None

    # --- updating ---------------------------------------------------------------------------------
    def update(self, spec: spec_pb2.MeshSpec, creds: Credentials | None = None) -> set[str]:
        """Take a new spec (and optionally new credentials); return the agents whose config changed,
        including agents that were removed."""
        self.last_nodes_compiled = self.last_peers_compiled = 0
        old = self.model
        spec = _copy(spec)  # the Model keeps references; the caller may mutate its spec afterwards
        if creds is not None:
            self.creds = creds
        new = Model(spec, self.creds)
        new_bytes = {
            "nodes": _resource_bytes(spec.nodes),
            "sites": _resource_bytes(spec.sites),
            "profiles": _resource_bytes(spec.profiles),
            "policies": _resource_bytes(spec.policies),
        }
        self.model, old_bytes, self._bytes = new, self._bytes, new_bytes
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
        if creds is not None and _creds_key(creds) != _creds_key(old.creds):
            full = set(old.agents()) | set(new.agents())
        else:
            full = self._touched_whole(old, new, changed_policies)
        full |= node_changed
        partial: dict[str, set[str]] = {}
        for n in node_changed:
            for m in (old, new):
                for y in _neighbours(m, n):
                    if y not in full:
                        partial.setdefault(y, set()).add(n)
        for name in sorted(full):
            if old.is_agent(name) or new.is_agent(name):
                self._recompile_whole(old, new, name)
        for name in sorted(partial):
            self._recompile_peers(old, new, name, partial[name])
        self.changes = {k: v for k, v in self.changes.items() if v}
        self._patch_cache()
        return set(self.changes)

    def _touched_whole(self, old: Model, new: Model, changed_policies: set[str]) -> set[str]:
        """Agents whose whole peer map must be recomputed because a policy (or its profile) changed."""
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
                    touched |= (om.hubs ^ nm.hubs) | om.members | nm.members
                if om.members != nm.members:
                    touched |= (om.members ^ nm.members) | om.hubs | nm.hubs
            elif om.members != nm.members:
                touched |= om.members | nm.members
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


def _neighbours(model: Model, name: str) -> set[str]:
    """Agents that have `name` as a peer in this model (external nodes included as `name`)."""
    if name not in model.nodes:
        return set()
    if model.is_agent(name):
        return model.peers_of(name)
    out: set[str] = set()
    for pm in model.node_policies.get(name, ()):
        out |= {y for y in pm.peers_of(name) if model.is_agent(y)}
    return out


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
