"""An indexed, immutable view of one MeshSpec and the pure function (node, peer) -> PeerConfig bytes.

Owns the compile semantics: who peers with whom, traffic selectors, IKE settings, auth, initiation and
the digest.  A 10,000-node full mesh has 10^8 (node, peer) directions, far too many to keep, so nothing
per pair is stored: a PeerConfig is assembled from fragments cached per node, per policy and per
profile, directly in canonical protobuf wire order (what SerializeToString(deterministic=True) gives),
so a peer costs a few byte joins and one SHA-256.  Must not do I/O or hold mutable state besides caches.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshsec.api.v1 import config_pb2, spec_pb2
from meshsec.controller.spec import default_identity
from meshsec.controller.spec.selection import NodeIndex, PolicyMembers
from meshsec.controller.spec.values import parse_endpoint

__all__ = ["Credentials", "Model", "ld", "varint_field"]

_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Credentials:
    """What the compiler needs from the CA and key store; `psk_for(a, b)` must equal `psk_for(b, a)`.

    Functions cannot be compared, so a new PSK master must come with a new `psk_version` for
    MeshCompiler.update to notice it (anything that changes when the keys change: a revision, a hash).
    """

    trusted_ca_pem: str = ""
    revoked_fingerprints: list[str] = field(default_factory=list)
    psk_for: Callable[[str, str], bytes] = field(default=lambda a, b: b"", compare=False)
    psk_version: str = ""


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = tuple(_varint_slow(i) for i in range(1 << 14))


def _varint(n: int) -> bytes:
    return _SMALL[n] if n < 16384 else _varint_slow(n)


def ld(num: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, sub-message)."""
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def varint_field(num: int, value: int) -> bytes:
    """A varint field; proto3 omits zero."""
    return _varint(num << 3) + _varint(value) if value else b""


def _text(num: int, value: str) -> bytes:
    return ld(num, value.encode()) if value else b""


def _net_key(text: str) -> tuple[int, int, int]:
    net = ipaddress.ip_network(text)
    return net.version, int(net.network_address), net.prefixlen


def _host_prefix(endpoint: str) -> str | None:
    ep = parse_endpoint(endpoint)
    if not ep.is_ip:
        return None
    addr = ipaddress.ip_address(ep.host)
    return f"{addr}/{addr.max_prefixlen}"


_INITIATE = varint_field(9, config_pb2.INITIATION_INITIATE)
_RESPOND = varint_field(9, config_pb2.INITIATION_RESPOND)
_BEHIND_NAT = varint_field(10, 1)
_CHILD_TAG = _varint(8 << 3 | 2)
_DIGEST_FIELD = _varint(11 << 3 | 2) + _varint(64)  # a hex SHA-256 is always 64 bytes


class Model:
    """One spec, indexed; `peer_bytes(a, b)` is the canonical PeerConfig of b as node a sees it."""

    def __init__(self, spec: spec_pb2.MeshSpec, creds: Credentials) -> None:
        self.creds = creds
        self.index = NodeIndex(spec.nodes)
        self.nodes = self.index.by_name
        self.sites = {s.name: s for s in spec.sites}
        self.profiles = {p.name: p for p in spec.profiles}
        self.policies = {p.name: p for p in spec.policies}
        self.members: dict[str, PolicyMembers] = {}
        self.node_policies: dict[str, list[PolicyMembers]] = {}
        for name in sorted(self.policies):
            pm = PolicyMembers(self.policies[name], self.index)
            self.members[name] = pm
            for node in pm.involved():
                self.node_policies.setdefault(node, []).append(pm)
        self.externals = sorted(
            n for n, node in self.nodes.items() if node.kind == spec_pb2.NODE_KIND_EXTERNAL
        )
        self._head: dict[str, bytes] = {}
        self._ike: dict[str, bytes] = {}
        self._child_common: dict[str, tuple[bytes, bytes]] = {}
        self._ts: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._prefix: dict[tuple[str, str], tuple[bytes, bool, bytes]] = {}
        self._hidden: dict[str, tuple[bool, bool]] = {}

    def inherit(self, old: Model, nodes: set[str], policies: set[str], profiles: set[str]) -> None:
        """Reuse the previous model's fragments except those of changed nodes, policies and profiles, so
        an update costs what it touches.  Callers must include in `nodes` every node whose site changed
        and in `policies` every policy whose profile changed."""
        self._ike = {k: v for k, v in old._ike.items() if k not in profiles}
        self._child_common = {k: v for k, v in old._child_common.items() if k not in policies}
        self._head = {k: v for k, v in old._head.items() if k not in nodes}
        self._hidden = {k: v for k, v in old._hidden.items() if k not in nodes}
        self._ts = {k: v for k, v in old._ts.items() if k[0] not in nodes and k[1] not in policies}
        self._prefix = {k: v for k, v in old._prefix.items() if k[0] not in nodes and k[1] not in policies}

    def with_creds(self, creds: Credentials) -> Model:
        """The same spec and fragment caches under other credentials.  Only for credentials with the
        same PSK master: the cached fragments hold no PSK, CA or revocation (those are read per call)."""
        out = Model.__new__(Model)
        out.__dict__.update(self.__dict__)
        out.creds = creds
        return out

    # --- topology ---------------------------------------------------------------------------------
    def agents(self) -> list[str]:
        return sorted(self.index.agents)

    def is_agent(self, name: str) -> bool:
        return name in self.index.agents

    def peers_of(self, name: str) -> set[str]:
        """Peers of an agent; an external node has none here (it is compiled from its peers' side)."""
        if name not in self.index.agents:
            return set()
        out: set[str] = set()
        for pm in self.node_policies.get(name, ()):
            out |= pm.peers_of(name)
        out.discard(name)
        return out

    def peer_count(self, name: str) -> int:
        """An upper bound on an agent's peers (pairs reached by several policies count once each), from
        the index in O(its policies): what an update uses to price a change before building anything."""
        if name not in self.index.agents:
            return 0
        total = 0
        for pm in self.node_policies.get(name, ()):
            topo = pm.policy.topology
            if topo == spec_pb2.TOPOLOGY_PAIRS:
                total += len(pm.partners.get(name, ()))
            elif topo == spec_pb2.TOPOLOGY_HUB_AND_SPOKE:
                total += len(pm.members) if name in pm.hubs else len(pm.hubs) if name in pm.members else 0
            elif name in pm.members:
                total += len(pm.members) - 1
        return total

    def policies_between(self, a: str, b: str) -> list[PolicyMembers]:
        return [pm for pm in self.node_policies.get(a, ()) if pm.connects(a, b)]

    def connected(self, a: str, b: str) -> bool:
        if a not in self.index.agents or b not in self.nodes:
            return False
        return any(pm.connects(a, b) for pm in self.node_policies.get(a, ()))

    def initiator(self, a: str, b: str) -> str:
        """Exactly one side initiates: towards external gear we do; a NATed or endpoint-less side does;
        otherwise the smaller name.  Symmetric in a and b."""
        ext_a, hidden_a = self._visibility(a)
        ext_b, hidden_b = self._visibility(b)
        if ext_b:
            return a
        if ext_a:
            return b
        if hidden_a != hidden_b:
            return a if hidden_a else b
        return min(a, b)

    def _visibility(self, name: str) -> tuple[bool, bool]:
        """(external, hidden): hidden nodes (behind NAT or without endpoints) cannot be initiated to."""
        cached = self._hidden.get(name)
        if cached is None:
            node = self.nodes[name]
            cached = (node.kind == spec_pb2.NODE_KIND_EXTERNAL, node.behind_nat or not node.endpoints)
            self._hidden[name] = cached
        return cached

    # --- fragments --------------------------------------------------------------------------------
    def _ike_bytes(self, profile_name: str) -> bytes:
        cached = self._ike.get(profile_name)
        if cached is None:
            p = self.profiles[profile_name]
            ike = config_pb2.IkeConfig(
                proposals=p.ike_proposals,
                lifetime=p.ike_lifetime,
                dpd_interval_seconds=p.dpd_interval_seconds,
                dpd_timeout_seconds=p.dpd_timeout_seconds,
            )
            cached = self._ike[profile_name] = ld(7, ike.SerializeToString(deterministic=True))
        return cached

    def _head_bytes(self, b: str) -> bytes:
        """Fields 1-4 of PeerConfig, which depend only on the peer."""
        cached = self._head.get(b)
        if cached is None:
            node = self.nodes[b]
            cached = (
                _text(1, node.name)
                + varint_field(2, node.kind)
                + b"".join(ld(3, ep.encode()) for ep in node.endpoints)
                + _text(4, default_identity(node))
            )
            self._head[b] = cached
        return cached

    def _common(self, policy_name: str) -> tuple[bytes, bytes]:
        """ChildSaConfig fields 1-2 and 5-6, which depend only on the policy and its profile."""
        cached = self._child_common.get(policy_name)
        if cached is None:
            pol = self.policies[policy_name]
            prof = self.profiles[pol.profile]
            lifetime = prof.child_lifetime.SerializeToString(deterministic=True)
            cached = (
                _text(1, pol.name) + varint_field(2, pol.mode),
                b"".join(ld(5, p.encode()) for p in prof.esp_proposals) + ld(6, lifetime),
            )
            self._child_common[policy_name] = cached
        return cached

    def traffic_selectors(self, node_name: str, policy_name: str) -> list[str]:
        pol, node = self.policies[policy_name], self.nodes[node_name]
        if pol.mode == spec_pb2.MODE_TRANSPORT:
            nets = {h for h in map(_host_prefix, node.endpoints) if h}
        else:
            nets = set(node.subnets)
            if pol.include_site_subnets and node.site in self.sites:
                nets.update(self.sites[node.site].subnets)
        return sorted(nets, key=_net_key)

    def _ts_bytes(self, node_name: str, policy_name: str) -> tuple[bytes, bytes]:
        """(as local_ts, as remote_ts) of this node under this policy."""
        key = (node_name, policy_name)
        cached = self._ts.get(key)
        if cached is None:
            ts = [t.encode() for t in self.traffic_selectors(node_name, policy_name)]
            cached = self._ts[key] = (b"".join(ld(3, t) for t in ts), b"".join(ld(4, t) for t in ts))
        return cached

    def auth_of(self, a: str, b: str, first_policy: str) -> int:
        peer = self.nodes[b]
        if peer.kind == spec_pb2.NODE_KIND_EXTERNAL:
            return peer.auth or spec_pb2.AUTH_METHOD_CERTIFICATE
        prof = self.profiles[self.policies[first_policy].profile]
        return prof.auth or spec_pb2.AUTH_METHOD_CERTIFICATE

    # --- the compile function ---------------------------------------------------------------------
    def peer_bytes(self, a: str, b: str, policies: Iterable[PolicyMembers] | None = None) -> bytes:
        """Canonical serialized PeerConfig (with digest) of peer b for node a.

        IKE settings and auth come from the profile of the first policy (by name) connecting the pair;
        each policy adds one child SA named after it, with its own profile's ESP settings.
        """
        pols = list(policies) if policies is not None else self.policies_between(a, b)
        first = pols[0].policy.name
        prefix = self._prefix.get((b, first))
        if prefix is None:
            auth = self.auth_of(a, b, first)
            prefix = (
                self._head_bytes(b) + varint_field(5, auth),
                auth == spec_pb2.AUTH_METHOD_PSK,
                self._ike_bytes(self.policies[first].profile),
            )
            self._prefix[(b, first)] = prefix
        head_auth, psk, ike = prefix
        body = [head_auth]
        if psk:
            body.append(ld(6, self.creds.psk_for(a, b)))
        body.append(ike)
        for pm in pols:
            name = pm.policy.name
            head, tail = self._common(name)
            child = head + self._ts_bytes(a, name)[0] + self._ts_bytes(b, name)[1] + tail
            body.append(_CHILD_TAG + _varint(len(child)) + child)
        body.append(_INITIATE if self.initiator(a, b) == a else _RESPOND)
        if self.nodes[b].behind_nat:
            body.append(_BEHIND_NAT)
        data = b"".join(body)
        return data + _DIGEST_FIELD + hashlib.sha256(data).hexdigest().encode()

    def local_config(self, name: str) -> config_pb2.LocalConfig:
        node = self.nodes[name]
        cas = [self.creds.trusted_ca_pem] if self.creds.trusted_ca_pem else []
        extra = sorted(
            {
                self.nodes[e].external_ca_pem
                for e in self.externals
                if self.nodes[e].external_ca_pem and self.connected(name, e)
            }
        )
        bundle = "".join(pem if pem.endswith("\n") else pem + "\n" for pem in cas + extra)
        return config_pb2.LocalConfig(
            name=name,
            identity=default_identity(node),
            subnets=sorted(node.subnets, key=_net_key),
            behind_nat=node.behind_nat,
            trusted_ca_pem=bundle,
            revoked_fingerprints=sorted(set(self.creds.revoked_fingerprints)),
        )

    def peer_map(self, name: str) -> dict[str, bytes]:
        """Every peer of an agent -> its canonical PeerConfig bytes.  Walks the node's policies once
        instead of asking, per peer, which policies connect the pair."""
        if name not in self.index.agents:
            return {}
        pols_of: dict[str, list[PolicyMembers]] = {}
        for pm in self.node_policies.get(name, ()):  # sorted by policy name, as children must be
            for peer in pm.peers_of(name):
                if peer != name:
                    pols_of.setdefault(peer, []).append(pm)
        build = self.peer_bytes
        return {peer: build(name, peer, pols_of[peer]) for peer in sorted(pols_of)}

    def node_config_bytes(self, name: str, peers: dict[str, bytes] | None = None) -> bytes:
        """Canonical serialized NodeConfig (version 0) of an agent."""
        if peers is None:
            peers = self.peer_map(name)
        local = self.local_config(name).SerializeToString(deterministic=True)
        return ld(2, local) + b"".join(ld(3, peers[p]) for p in sorted(peers))
