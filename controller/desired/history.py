"""Per-node change history: what each change did to each node's config, as small per-peer deltas.

Owns `NodeDelta` (one node's change, as canonical bytes: the new LocalConfig if it changed, the
PeerConfigs upserted by name, the peer names removed), its composition, and `History`, a bounded
list of changes that answers "what must an agent holding version v receive to be current".  Holding
deltas instead of whole NodeConfigs is what lets a replica serve a 10,000-node full mesh: a one-node
change costs one or two peer entries per affected node here, not 10,000.  Pure data; no I/O, no
compiler, no gRPC.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshsec.api.v1 import config_pb2

__all__ = ["History", "NodeDelta"]

_ENTRY_OVERHEAD = 96  # rough bytes of dict slot + key per stored peer entry, for the memory budget


@dataclass(frozen=True, slots=True)
class NodeDelta:
    """One node's change between two versions; values are canonical serialized messages."""

    local: bytes | None = None  # the new LocalConfig, when it changed
    upserts: Mapping[str, bytes] = field(default_factory=dict)  # peer name -> PeerConfig bytes
    removes: frozenset[str] = frozenset()
    # The compiler found the change too large for a delta (a profile every node uses): this node needs
    # a snapshot, built on demand.  Nodes the change did not touch stay answerable with deltas.
    snapshot: bool = False

    def __bool__(self) -> bool:
        return self.local is not None or bool(self.upserts) or bool(self.removes) or self.snapshot

    def size(self) -> int:
        """Approximate bytes held (the history's memory budget counts this)."""
        return (
            len(self.local or b"")
            + sum(len(v) + _ENTRY_OVERHEAD for v in self.upserts.values())
            + _ENTRY_OVERHEAD * len(self.removes)
        )

    @staticmethod
    def compose(deltas: Iterable[NodeDelta]) -> NodeDelta:
        """The single delta equal to applying `deltas` in order (later entries win); a snapshot if
        any of them is one."""
        local: bytes | None = None
        upserts: dict[str, bytes] = {}
        removes: set[str] = set()
        for d in deltas:
            if d.snapshot:
                return _SNAPSHOT
            if d.local is not None:
                local = d.local
            for name in d.removes:
                upserts.pop(name, None)
                removes.add(name)
            for name, data in d.upserts.items():
                removes.discard(name)
                upserts[name] = data
        return NodeDelta(local, upserts, frozenset(removes))

    def to_message(self, from_version: int, to_version: int) -> config_pb2.NodeConfigDelta:
        """The wire message; only this node's changed peers are parsed, never its whole peer list."""
        msg = config_pb2.NodeConfigDelta(from_version=from_version, to_version=to_version)
        if self.local is not None:
            msg.local.MergeFromString(self.local)
        for name in sorted(self.upserts):
            msg.upsert_peers.add().MergeFromString(self.upserts[name])
        msg.remove_peers.extend(sorted(self.removes))
        return msg


_SNAPSHOT = NodeDelta(snapshot=True)


@dataclass(frozen=True, slots=True)
class _Change:
    version: int
    nodes: dict[str, NodeDelta]
    size: int


class History:
    """Changes after version `since`, oldest first, bounded by count and by approximate bytes.

    An agent holding any version >= `since` is answered from here; older versions need the caller's
    fallback (etcd MVCC history or a snapshot).  Dropping the oldest change moves `since` to it.
    """

    def __init__(self, max_changes: int = 64, max_bytes: int = 64 << 20) -> None:
        self.max_changes = max(1, max_changes)
        self.max_bytes = max_bytes
        self.since = 0
        self.bytes = 0
        self._changes: collections.deque[_Change] = collections.deque()

    def __len__(self) -> int:
        return len(self._changes)

    def reset(self, version: int) -> None:
        """Forget everything: the state at `version` is the new base."""
        self._changes.clear()
        self.bytes = 0
        self.since = version

    def append(self, version: int, nodes: dict[str, NodeDelta]) -> bool:
        """Record a change; False when it alone exceeds the byte budget (a fleet-wide change in a large
        mesh: its deltas are as large as every snapshot) and was dropped with everything before it,
        so every agent behind `version` gets a snapshot, built on demand."""
        size = sum(d.size() for d in nodes.values()) + _ENTRY_OVERHEAD * len(nodes)
        if size > self.max_bytes:
            self.reset(version)
            return False
        self._changes.append(_Change(version, nodes, size))
        self.bytes += size
        while len(self._changes) > self.max_changes or self.bytes > self.max_bytes:
            old = self._changes.popleft()
            self.bytes -= old.size
            self.since = old.version
        return True

    def covers(self, version: int) -> bool:
        return version >= self.since

    def delta_since(self, node: str, version: int) -> NodeDelta | None:
        """What `node` must receive to go from `version` to the newest change; None if not covered;
        a delta with `snapshot` set when a change on the way was too large for deltas.
        Cost: the changes newer than `version` (usually one), not the node's peer count."""
        if version < self.since:
            return None
        newer: list[NodeDelta] = []
        for change in reversed(self._changes):
            if change.version <= version:
                break
            d = change.nodes.get(node)
            if d is not None:
                newer.append(d)
        if len(newer) == 1:
            return newer[0]
        return NodeDelta.compose(reversed(newer))
