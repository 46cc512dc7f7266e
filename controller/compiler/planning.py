"""`plan(old, new, creds)`: what applying a spec changes, per node, for `meshctl apply --dry-run`.

Built on MeshCompiler's change records so it costs what an incremental update costs.
"""

from __future__ import annotations

from collections.abc import Mapping

from meshsec.api.v1 import admin_pb2, config_pb2, spec_pb2

from .incremental import DELTA_PEERS, MeshCompiler, NodeChange
from .model import Credentials

__all__ = ["plan", "plan_configs", "plan_from_changes"]


def _children(data: bytes) -> list[str]:
    return sorted(c.name for c in config_pb2.PeerConfig.FromString(data).children)


def _node_plan(name: str, change: NodeChange) -> admin_pb2.NodePlan:
    p = admin_pb2.NodePlan(node=name)
    p.peers_added.extend(sorted(change.added))
    p.peers_changed.extend(sorted(change.changed))
    p.peers_removed.extend(sorted(change.removed))
    added, removed = [], []
    for peer, data in change.added.items():
        added += [f"{peer}/{c}" for c in _children(data)]
    for peer, data in change.removed.items():
        removed += [f"{peer}/{c}" for c in _children(data)]
    for peer, (before, after) in change.changed.items():
        old_c, new_c = set(_children(before)), set(_children(after))
        added += [f"{peer}/{c}" for c in new_c - old_c]
        removed += [f"{peer}/{c}" for c in old_c - new_c]
    p.sas_added.extend(sorted(added))
    p.sas_removed.extend(sorted(removed))
    return p


def _config(compiler: MeshCompiler, name: str) -> config_pb2.NodeConfig:
    try:
        return config_pb2.NodeConfig.FromString(compiler.config_bytes(name))
    except KeyError:
        return config_pb2.NodeConfig()


def _peers(cfg: config_pb2.NodeConfig) -> dict[str, bytes]:
    return {p.name: p.SerializeToString(deterministic=True) for p in cfg.peers}


def plan_from_changes(compiler: MeshCompiler, before: MeshCompiler | None = None) -> list[admin_pb2.NodePlan]:
    """Plans for the compiler's last update, sorted by node name; nodes with only local changes are
    listed with empty peer lists.  Nodes the update only marked for snapshots (a change too large for
    deltas) are compared one at a time with `before` (a compiler at the old spec), so memory stays
    that of one node's peers; nodes without any difference are left out."""
    out = []
    for name in sorted(compiler.changes):
        change = compiler.changes[name]
        if change.snapshot:
            if before is None:
                raise ValueError("a change marked for snapshots needs the compiler at the old spec")
            old_cfg, new_cfg = _config(before, name), _config(compiler, name)
            if old_cfg == new_cfg:
                continue
            old, new = _peers(old_cfg), _peers(new_cfg)
            change = NodeChange(
                added={k: v for k, v in new.items() if k not in old},
                changed={k: (old[k], v) for k, v in new.items() if k in old and old[k] != v},
                removed={k: v for k, v in old.items() if k not in new},
            )
        elif change.node_added and not (change.added or change.changed or change.removed):
            # first compile of a node: everything it has is new
            cfg = compiler.config(name)
            change = NodeChange(added={p.name: p.SerializeToString(deterministic=True) for p in cfg.peers})
        out.append(_node_plan(name, change))
    return out


def plan(
    old: spec_pb2.MeshSpec | Mapping[str, config_pb2.NodeConfig] | None,
    new: spec_pb2.MeshSpec | Mapping[str, config_pb2.NodeConfig],
    creds: Credentials | None = None,
    delta_peers: int | None = DELTA_PEERS,
) -> list[admin_pb2.NodePlan]:
    """Per-node plan between two specs (compiled incrementally with `creds`), or between two already
    compiled meshes ({name: NodeConfig}); nodes without changes are left out.  A spec change above
    `delta_peers` is planned node by node (CPU as for every affected snapshot, memory of one node)."""
    if isinstance(new, Mapping):
        return plan_configs(old or {}, new)  # type: ignore[arg-type]
    base = old if isinstance(old, spec_pb2.MeshSpec) else spec_pb2.MeshSpec()
    compiler = MeshCompiler(creds or Credentials(), cache_peers=0, delta_peers=delta_peers)
    compiler.update(base)
    compiler.update(new)
    before = None
    if any(c.snapshot for c in compiler.changes.values()):
        before = MeshCompiler(creds or Credentials(), cache_peers=0)
        before.update(base)
    return plan_from_changes(compiler, before)


def plan_configs(
    old: Mapping[str, config_pb2.NodeConfig], new: Mapping[str, config_pb2.NodeConfig]
) -> list[admin_pb2.NodePlan]:
    out = []
    for name in sorted(old.keys() | new.keys()):
        before = (
            {p.name: p.SerializeToString(deterministic=True) for p in old[name].peers} if name in old else {}
        )
        after = (
            {p.name: p.SerializeToString(deterministic=True) for p in new[name].peers} if name in new else {}
        )
        change = NodeChange(
            added={k: v for k, v in after.items() if k not in before},
            changed={k: (before[k], v) for k, v in after.items() if k in before and before[k] != v},
            removed={k: v for k, v in before.items() if k not in after},
        )
        if change.added or change.changed or change.removed:
            out.append(_node_plan(name, change))
    return out
