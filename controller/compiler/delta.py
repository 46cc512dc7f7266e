"""NodeConfig deltas: `diff(old, new)` and `apply_delta(config, delta)`, pure and shared with the agent.

Imports nothing but the generated config messages, so the agent can use it without pulling in
controller code.  Peers are compared whole (by serialized bytes); a changed peer is sent whole.
"""

from __future__ import annotations

from meshsec.api.v1 import config_pb2

__all__ = ["DeltaMismatch", "apply_delta", "diff", "peer_bytes"]


class DeltaMismatch(ValueError):
    """The delta was computed against a different version than the config it is applied to."""


def peer_bytes(peer: config_pb2.PeerConfig) -> bytes:
    return peer.SerializeToString(deterministic=True)


def diff(old: config_pb2.NodeConfig, new: config_pb2.NodeConfig) -> config_pb2.NodeConfigDelta:
    """The delta that turns `old` into `new` (versions copied from both)."""
    delta = config_pb2.NodeConfigDelta(from_version=old.version, to_version=new.version)
    if old.local.SerializeToString(deterministic=True) != new.local.SerializeToString(deterministic=True):
        delta.local.CopyFrom(new.local)
    before = {p.name: p for p in old.peers}
    after = set()
    for peer in new.peers:
        after.add(peer.name)
        prev = before.get(peer.name)
        if prev is None or prev.digest != peer.digest or peer_bytes(prev) != peer_bytes(peer):
            delta.upsert_peers.append(peer)
    delta.remove_peers.extend(sorted(name for name in before if name not in after))
    return delta


def apply_delta(config: config_pb2.NodeConfig, delta: config_pb2.NodeConfigDelta) -> config_pb2.NodeConfig:
    """A new NodeConfig = `config` with `delta` applied; `config` is left untouched.

    A delta with from_version 0 applies to any version (the compiler's unversioned deltas); the result
    carries the delta's to_version.
    """
    if delta.from_version and delta.from_version != config.version:
        raise DeltaMismatch(f"delta is from version {delta.from_version}, config is at {config.version}")
    out = config_pb2.NodeConfig(version=delta.to_version)
    out.local.CopyFrom(delta.local if delta.HasField("local") else config.local)
    removed = set(delta.remove_peers)
    peers = {p.name: p for p in config.peers if p.name not in removed}
    for peer in delta.upsert_peers:
        peers[peer.name] = peer
    out.peers.extend(peers[name] for name in sorted(peers))
    return out
