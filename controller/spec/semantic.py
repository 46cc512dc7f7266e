"""Whole-document checks on a structurally loaded MeshSpec: names, references, overlaps, selections.

Runs after `loader` and reports through the same `Reader`, using the paths and lines it recorded.
Must stay O(n log n) in the number of nodes: it runs on every apply of a 10,000-node spec.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Sequence

from meshsec.api.v1 import spec_pb2

from .loader import Paths
from .selection import NodeIndex, PolicyMembers
from .values import parse_endpoint
from .yamltree import Reader

__all__ = ["check_spec", "default_identity"]


def default_identity(node: spec_pb2.Node) -> str:
    """Agents default to "fqdn:{name}.meshsec"; external gear to its first IP endpoint, as strongSwan does."""
    if node.identity:
        return node.identity
    if node.kind == spec_pb2.NODE_KIND_EXTERNAL and node.endpoints:
        ep = parse_endpoint(node.endpoints[0])
        if ep.is_ip:
            return f"ipv{ipaddress.ip_address(ep.host).version}:{ep.host}"
        return f"fqdn:{ep.host}"
    return f"fqdn:{node.name}.meshsec"


def check_spec(spec: spec_pb2.MeshSpec, paths: Paths, r: Reader) -> None:
    _unique(r, "node", spec.nodes, paths.nodes)
    _unique(r, "site", spec.sites, paths.sites)
    _unique(r, "profile", spec.profiles, paths.profiles)
    _unique(r, "policy", spec.policies, paths.policies)
    sites = {s.name: s for s in spec.sites}
    profiles = {p.name for p in spec.profiles}
    index = NodeIndex(spec.nodes)
    identities: dict[str, str] = {}
    names: set[str] = set()
    for node, path in zip(spec.nodes, paths.nodes, strict=True):
        if node.site and node.site not in sites:
            _dangling(r, f"{path}.site", "site", node.site, sites)
        if node.name in names:
            continue  # already reported as a duplicate name
        names.add(node.name)
        ident = default_identity(node)
        if ident in identities and node.name:
            r.error(
                f"{path}.identity",
                f"identity {ident!r} is also used by node {identities[ident]!r}",
                line=r.line(f"{path}.identity") or r.line(path),
            )
        identities.setdefault(ident, node.name)
    _overlaps(r, spec, paths, sites)
    for policy, path in zip(spec.policies, paths.policies, strict=True):
        if policy.profile not in profiles:
            _dangling(r, f"{path}.profile", "profile", policy.profile, profiles)
        _check_policy(r, policy, path, index, sites)


def _unique(r: Reader, what: str, items: Sequence, paths: list[str]) -> None:
    first: dict[str, str] = {}
    for item, path in zip(items, paths, strict=True):
        if not item.name:
            continue
        if item.name in first:
            r.error(
                f"{path}.name",
                f"duplicate {what} name {item.name!r} (first defined at line {r.line(first[item.name])})",
                line=r.line(f"{path}.name"),
            )
        else:
            first[item.name] = path


def _dangling(r: Reader, path: str, what: str, name: str, known) -> None:
    hint = difflib.get_close_matches(name, list(known), 1, 0.6)
    more = f"; did you mean {hint[0]!r}?" if hint else ""
    r.error(path, f"unknown {what} {name!r}{more}", line=r.line(path))


def _overlaps(r: Reader, spec: spec_pb2.MeshSpec, paths: Paths, sites: dict[str, spec_pb2.Site]) -> None:
    """CIDR blocks are nested or disjoint, so one sort plus a stack of enclosing blocks finds every overlap.

    Allowed: a node's subnet inside its own site's subnet (the gateway routes part of its site).
    """
    entries = []  # (version, start, prefixlen, end, owner, node_site, path)
    for node, path in zip(spec.nodes, paths.nodes, strict=True):
        for i, text in enumerate(node.subnets):
            net = ipaddress.ip_network(text)
            entries.append(
                (
                    net.version,
                    int(net.network_address),
                    net.prefixlen,
                    int(net.broadcast_address),
                    f"node {node.name!r}",
                    ("node", node.name, node.site),
                    f"{path}.subnets[{i}]",
                    text,
                )
            )
    for site, path in zip(spec.sites, paths.sites, strict=True):
        for i, text in enumerate(site.subnets):
            net = ipaddress.ip_network(text)
            entries.append(
                (
                    net.version,
                    int(net.network_address),
                    net.prefixlen,
                    int(net.broadcast_address),
                    f"site {site.name!r}",
                    ("site", site.name, ""),
                    f"{path}.subnets[{i}]",
                    text,
                )
            )
    entries.sort(key=lambda e: (e[0], e[1], e[2], r.line(e[6]), e[6]))
    stack: list[tuple] = []
    for entry in entries:
        while stack and (stack[-1][0] != entry[0] or stack[-1][3] < entry[1]):
            stack.pop()
        for outer in stack:
            if _allowed(outer[5], entry[5]) or _allowed(entry[5], outer[5]):
                continue
            first, second = sorted((outer, entry), key=lambda e: (r.line(e[6]), e[6]))
            same = first[5] == second[5]
            owner = "the same owner" if same else first[4]
            r.error(
                second[6],
                f"{second[7]} overlaps {first[7]} of {owner} (line {r.line(first[6])}); "
                "routed subnets must not overlap",
                line=r.line(second[6]),
            )
        stack.append(entry)


def _allowed(outer: tuple[str, str, str], inner: tuple[str, str, str]) -> bool:
    return outer[0] == "site" and inner[0] == "node" and inner[2] == outer[1]


def _check_policy(
    r: Reader, policy: spec_pb2.Policy, path: str, index: NodeIndex, sites: dict[str, spec_pb2.Site]
) -> None:
    for key, selector in (
        ("members" if policy.topology != spec_pb2.TOPOLOGY_HUB_AND_SPOKE else "spokes", policy.members),
        ("hubs", policy.hubs),
    ):
        sel_path = f"{path}.{key}"
        for i, name in enumerate(selector.nodes):
            if name not in index.by_name:
                _dangling(r, f"{sel_path}.nodes[{i}]", "node", name, index.by_name)
        for i, name in enumerate(selector.sites):
            if name not in sites:
                _dangling(r, f"{sel_path}.sites[{i}]", "site", name, sites)
    for i, pair in enumerate(policy.pairs):
        for side in ("a", "b"):
            name = getattr(pair, side)
            if name not in index.by_name:
                _dangling(r, f"{path}.pairs[{i}]", "node", name, index.by_name)
        if pair.a == pair.b:
            r.error(
                f"{path}.pairs[{i}]",
                f"a node cannot pair with itself ({pair.a!r})",
                line=r.line(f"{path}.pairs[{i}]"),
            )
    members = PolicyMembers(policy, index)
    topo = policy.topology
    if topo == spec_pb2.TOPOLOGY_FULL_MESH:
        _nonempty(r, f"{path}.members", members.members, 2, "a full mesh")
    elif topo == spec_pb2.TOPOLOGY_HUB_AND_SPOKE:
        _nonempty(r, f"{path}.hubs", members.hubs, 1, "hub-and-spoke")
        _nonempty(r, f"{path}.spokes", members.members, 1, "hub-and-spoke")
    _check_reachability(r, policy, path, index, members, sites)


def _nonempty(r: Reader, path: str, chosen: frozenset[str], need: int, what: str) -> None:
    if not chosen and r.lines.get(path):
        r.error(path, "selects no node", line=r.line(path))
    elif len(chosen) < need and r.lines.get(path):
        r.error(
            path, f"selects only {sorted(chosen)[0]!r}; {what} needs at least {need} nodes", line=r.line(path)
        )


def _check_reachability(
    r: Reader,
    policy: spec_pb2.Policy,
    path: str,
    index: NodeIndex,
    members: PolicyMembers,
    sites: dict[str, spec_pb2.Site],
) -> None:
    """Every connected node must have traffic to protect and a way to be reached by one side."""
    involved = sorted(members.involved())
    for name in involved:
        node = index.by_name[name]
        if policy.mode == spec_pb2.MODE_TUNNEL:
            site_nets = sites[node.site].subnets if policy.include_site_subnets and node.site in sites else []
            if not node.subnets and not site_nets:
                r.error(
                    path,
                    f"node {name!r} has no subnets (nor site subnets) to protect in tunnel mode",
                    line=r.line(f"{path}.mode") or r.line(path),
                )
        elif not any(parse_endpoint(ep).is_ip for ep in node.endpoints):
            r.error(
                path,
                f"node {name!r} needs an IP endpoint for transport mode (host-to-host)",
                line=r.line(f"{path}.mode") or r.line(path),
            )
    # A pair needs at least one side with an endpoint (the other side initiates to it).
    unreachable = [n for n in involved if not index.by_name[n].endpoints]
    if len(unreachable) >= 2:
        hidden = set(unreachable)
        for a in unreachable:
            others = [b for b in members.peers_of(a) if b in hidden and b > a]
            if others:
                r.error(
                    path,
                    f"nodes {a!r} and {sorted(others)[0]!r} are connected but neither has an endpoint",
                    line=r.line(path),
                )
                break
