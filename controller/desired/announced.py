"""Subnets agents announce (a Kubernetes node's podCIDRs), and merging them into the compiled spec.

Owns the etcd keys announced/<node> (a JSON list of canonical CIDRs, written by AgentService.Report
when an agent's non-empty announcement changes; not lease-bound, so a restarting agent does not
withdraw routes) and the pure merge into the spec a NodeConfig is compiled from.  The merge is the
safety boundary: an agent's announcement counts only for a node whose spec says
acceptAnnouncedSubnets, and never when it overlaps another node's or a site's subnets, another node's
announcement, or contains a node's endpoint address (it could capture traffic that is not its own, or
route the underlay into the tunnel).  The stored spec (GetSpec, `meshctl get spec`) never contains
announced subnets.
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshsec.api.v1 import spec_pb2
from meshsec.controller.store import Keys, Store

log = logging.getLogger(__name__)

ANNOUNCED = Keys.ANNOUNCED
MAX_ANNOUNCED = 16  # per node: a podCIDR per family, with room; an agent cannot flood the spec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def announced_key(node: str) -> str:
    return ANNOUNCED + node


def is_compile_input(key: str) -> bool:
    """Kept for callers: announcements are compile inputs in Keys.is_compile_input itself."""
    return Keys.is_compile_input(key)


def normalize(subnets: Iterable[str]) -> tuple[str, ...]:
    """Canonical, sorted, deduplicated CIDRs (host bits must be zero); ValueError names a bad one."""
    nets = set()
    for s in subnets:
        try:
            nets.add(ipaddress.ip_network(s.strip(), strict=True))
        except ValueError:
            raise ValueError(f"announced subnet {s!r} is not a CIDR") from None
    if len(nets) > MAX_ANNOUNCED:
        raise ValueError(f"{len(nets)} announced subnets, at most {MAX_ANNOUNCED}")
    return tuple(str(n) for n in sorted(nets, key=lambda n: (n.version, n)))


async def record(store: Store, node: str, subnets: Iterable[str]) -> bool:
    """Store node's announcement if it differs from the stored one; True when written.  An empty
    announcement changes nothing (see status.proto: the last non-empty one stays in force)."""
    value = normalize(subnets)
    if not value:
        return False
    data = json.dumps(list(value)).encode()
    kv = await store.get(announced_key(node))
    if kv is not None and kv.value == data:
        return False
    await store.put(announced_key(node), data)
    return True


async def load(store: Store, revision: int) -> dict[str, tuple[tuple[str, ...], int]]:
    """Every stored announcement at `revision`: node -> (subnets, mod_revision of its key).  A corrupt
    one is skipped (it can only come from outside meshsec: record() writes normalized lists)."""
    kvs, _ = await store.get_prefix(ANNOUNCED, revision=revision)
    out: dict[str, tuple[tuple[str, ...], int]] = {}
    for kv in kvs:
        node = kv.key.removeprefix(ANNOUNCED)
        try:
            raw = json.loads(kv.value)
            if not isinstance(raw, list):
                raise ValueError("not a list")
            out[node] = (normalize(str(x) for x in raw), kv.mod_revision)
        except ValueError as exc:
            log.debug("ignoring the stored announcement of %r: %s", node, exc)
    return out


_last_rejected: frozenset[Rejected] = frozenset()


def merge_stored(
    spec: spec_pb2.MeshSpec, spec_revision: int, stored: Mapping[str, tuple[tuple[str, ...], int]]
) -> tuple[spec_pb2.MeshSpec, int]:
    """merge() of load()'s result: (spec to compile, the revision its content last changed at: the
    spec key's, or a later announcement of an accepting node).  Says once what it ignores, and why."""
    global _last_rejected
    effective, rejected = merge(spec, {n: subnets for n, (subnets, _) in stored.items()})
    if frozenset(rejected) != _last_rejected:
        _last_rejected = frozenset(rejected)
        for r in rejected:
            log.warning("announced subnet %s of node %r ignored: %s", r.subnet, r.node, r.reason)
    if effective is spec:
        return spec, spec_revision
    accepting = {n.name for n in spec.nodes if n.accept_announced_subnets}
    revs = [rev for n, (_, rev) in stored.items() if n in accepting]
    return effective, max([spec_revision, *revs])


@dataclass(frozen=True)
class Rejected:
    """An announced subnet the merge ignored, and why (for logs and tests)."""

    node: str
    subnet: str
    reason: str


def _endpoint_ip(endpoint: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of an endpoint ("198.18.0.1", "198.18.0.1:4500", "[fd00::1]:4500"); None for names."""
    host = endpoint.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _nets(cidrs: Iterable[str]) -> list[Network]:
    out = []
    for c in cidrs:
        try:
            out.append(ipaddress.ip_network(c, strict=False))
        except ValueError:
            continue  # the spec loader validated these; a stand-in spec may not have
    return out


class _Index:
    """Who holds which address space: (kind, owner) per CIDR, for overlap queries in O(log n + 128)
    (a 10,000-node cluster where every node announces its podCIDR is merged in milliseconds)."""

    def __init__(self) -> None:
        self._exact: dict[tuple[int, int, int], list[tuple[str, str]]] = {}
        self._starts: list[tuple[int, int, int, str, str]] = []  # (version, first, prefixlen, kind, owner)
        self._sorted = True

    def add(self, net: Network, kind: str, owner: str) -> None:
        key = (net.version, int(net.network_address), net.prefixlen)
        self._exact.setdefault(key, []).append((kind, owner))
        self._starts.append((*key, kind, owner))
        self._sorted = False

    def overlapping(self, net: Network) -> list[tuple[str, str]]:
        """(kind, owner) of every indexed CIDR that overlaps net (contains it or lies in it)."""
        if not self._sorted:
            self._starts.sort()
            self._sorted = True
        first, bits = int(net.network_address), net.max_prefixlen
        out: list[tuple[str, str]] = []
        for plen in range(net.prefixlen):  # strict supernets
            mask = ((1 << plen) - 1) << (bits - plen)
            out += self._exact.get((net.version, first & mask, plen), [])
        last = int(net.broadcast_address)
        i = bisect.bisect_left(self._starts, (net.version, first, -1))
        while i < len(self._starts) and self._starts[i][:2] <= (net.version, last):
            out.append(self._starts[i][3:])  # starts inside net: net itself or a subnet of it
            i += 1
        return out


def merge(
    spec: spec_pb2.MeshSpec, announced: Mapping[str, Iterable[str]]
) -> tuple[spec_pb2.MeshSpec, list[Rejected]]:
    """The spec to compile: each accepting agent node's subnets plus its admissible announcements.

    Pure and deterministic (every replica, and a replay at an old revision, computes the same).
    Returns `spec` itself when nothing is merged (no copy of a large spec for nothing)."""
    accepting = sorted(
        n.name
        for n in spec.nodes
        if n.accept_announced_subnets and n.kind != spec_pb2.NODE_KIND_EXTERNAL and announced.get(n.name)
    )
    if not accepting:
        return spec, []
    index = _Index()
    for n in spec.nodes:
        for net in _nets(n.subnets):
            index.add(net, "node", n.name)
        for e in n.endpoints:
            ip = _endpoint_ip(e)
            if ip is not None:
                index.add(ipaddress.ip_network(ip), "endpoint", n.name)
    for site in spec.sites:
        for net in _nets(site.subnets):
            index.add(net, "site", site.name)
    wanted = set(accepting)
    own = {n.name: _nets(n.subnets) for n in spec.nodes if n.name in wanted}
    candidates: dict[str, list[Network]] = {}
    for name in accepting:
        candidates[name] = [
            net
            for net in _nets(announced[name])  # minus what its own subnets already route to it:
            if not any(o.version == net.version and net.subnet_of(o) for o in own[name])  # type: ignore[arg-type]
        ]
    for name, nets in candidates.items():
        for net in nets:
            index.add(net, "announced", name)
    rejected: list[Rejected] = []
    merged: dict[str, list[str]] = {}
    for name in accepting:
        keep = []
        for net in candidates[name]:
            hits = index.overlapping(net)
            reason = ""
            if any(k == "node" and o != name for k, o in hits):
                reason = "overlaps another node's subnets"
            elif any(k == "site" for k, _ in hits):
                reason = "overlaps a site's subnets"
            elif any(k == "announced" and o != name for k, o in hits):
                reason = "overlaps another node's announced subnets"
            elif any(k == "endpoint" for k, _ in hits):
                reason = "contains a node's endpoint address"  # its own too: IKE would loop into ESP
            if reason:
                rejected.append(Rejected(name, str(net), reason))
            else:
                keep.append(str(net))
        if keep:
            merged[name] = keep
    if not merged:
        return spec, rejected
    out = spec_pb2.MeshSpec()
    out.CopyFrom(spec)
    for node in out.nodes:
        if node.name in merged:
            node.subnets.extend(merged[node.name])
    return out, rejected
