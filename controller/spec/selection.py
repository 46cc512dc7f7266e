"""Which nodes a Selector picks, and which node pairs a Policy connects.

Shared by validation (a policy selecting nothing) and the compiler (peers of a node).  Indexes nodes
by name, site and label so that a selection costs the size of its result, not the size of the fleet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from meshsec.api.v1 import spec_pb2

__all__ = ["NodeIndex", "PolicyMembers"]


class NodeIndex:
    """Nodes by name, by site and by (label, value)."""

    def __init__(self, nodes: Iterable[spec_pb2.Node]) -> None:
        self.by_name: dict[str, spec_pb2.Node] = {}
        self.by_site: dict[str, set[str]] = defaultdict(set)
        self.by_label: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.agents: set[str] = set()
        for node in nodes:
            if not node.name or node.name in self.by_name:
                continue  # duplicates are reported by validation; the first one wins
            self.by_name[node.name] = node
            if node.site:
                self.by_site[node.site].add(node.name)
            if node.labels:  # (upb map views are slow to create; skip the common empty case)
                for item in dict(node.labels).items():
                    self.by_label[item].add(node.name)
            if node.kind != spec_pb2.NODE_KIND_EXTERNAL:
                self.agents.add(node.name)

    def select(self, selector: spec_pb2.Selector) -> set[str]:
        """A node matches if it matches any criterion; labels must all match."""
        out: set[str] = set(self.agents) if selector.all else set()
        out.update(n for n in selector.nodes if n in self.by_name)
        for site in selector.sites:
            out |= self.by_site.get(site, set())
        if selector.labels:
            sets = sorted((self.by_label.get(item, set()) for item in selector.labels.items()), key=len)
            out |= sets[0].intersection(*sets[1:])
        return out


class PolicyMembers:
    """The resolved node sets of one policy: members (or spokes), hubs, and explicit partners."""

    __slots__ = ("hubs", "members", "partners", "policy")

    def __init__(self, policy: spec_pb2.Policy, index: NodeIndex) -> None:
        self.policy = policy
        self.members: frozenset[str] = frozenset()
        self.hubs: frozenset[str] = frozenset()
        self.partners: dict[str, set[str]] = {}
        if policy.topology == spec_pb2.TOPOLOGY_PAIRS:
            partners: dict[str, set[str]] = defaultdict(set)
            for pair in policy.pairs:
                if pair.a != pair.b and pair.a in index.by_name and pair.b in index.by_name:
                    partners[pair.a].add(pair.b)
                    partners[pair.b].add(pair.a)
            self.partners = dict(partners)
            self.members = frozenset(partners)
        elif policy.topology == spec_pb2.TOPOLOGY_HUB_AND_SPOKE:
            self.hubs = frozenset(index.select(policy.hubs))
            self.members = frozenset(index.select(policy.members) - self.hubs)
        else:
            self.members = frozenset(index.select(policy.members))

    def involved(self) -> frozenset[str]:
        return self.members | self.hubs

    def peers_of(self, name: str) -> set[str] | frozenset[str]:
        """Nodes this policy connects `name` with (may include external nodes)."""
        topo = self.policy.topology
        if topo == spec_pb2.TOPOLOGY_PAIRS:
            return self.partners.get(name, set())
        if topo == spec_pb2.TOPOLOGY_HUB_AND_SPOKE:
            if name in self.hubs:
                return self.members
            return self.hubs if name in self.members else frozenset()
        if name in self.members:
            return self.members - {name}
        return frozenset()

    def connects(self, a: str, b: str) -> bool:
        topo = self.policy.topology
        if topo == spec_pb2.TOPOLOGY_PAIRS:
            return b in self.partners.get(a, ())
        if topo == spec_pb2.TOPOLOGY_HUB_AND_SPOKE:
            return (a in self.hubs and b in self.members) or (b in self.hubs and a in self.members)
        return a != b and a in self.members and b in self.members
