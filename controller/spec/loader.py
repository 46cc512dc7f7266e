"""mesh.yaml -> MeshSpec, structurally: fields, types, scalar values and defaults.

Owns the YAML spelling of every spec_pb2 message (the schema docs/mesh-yaml.md documents).  Checks
that need the whole document (names, references, overlaps, selections) live in `semantic`; this module
records the paths and lines they need in `Paths`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import yaml
from meshsec.api.v1 import spec_pb2

from . import defaults
from .proposals import check_proposal
from .values import (
    BadValue,
    format_duration,
    parse_cidr,
    parse_duration,
    parse_endpoint,
    parse_identity,
    parse_name,
    parse_size,
)
from .yamltree import Reader

__all__ = ["API_VERSION", "KIND", "Paths", "read_spec"]

API_VERSION = "meshsec.io/v1"
KIND = "Mesh"
TOP = ("apiVersion", "kind", "nodes", "sites", "profiles", "policies")
NODE = (
    "name",
    "kind",
    "site",
    "endpoints",
    "subnets",
    "labels",
    "identity",
    "behindNat",
    "acceptAnnouncedSubnets",
    "auth",
    "externalCaPem",
)
SITE = ("name", "subnets", "labels")
PROFILE = ("name", "auth", "ike", "esp", "dpd")
IKE = ("proposals", "rekey", "life", "jitter")
ESP = ("proposals", "rekey", "life", "jitter", "rekeyBytes", "lifeBytes", "rekeyPackets", "lifePackets")
DPD = ("interval", "timeout")
POLICY = ("name", "topology", "members", "hubs", "spokes", "pairs", "mode", "profile", "includeSiteSubnets")
SELECTOR = ("all", "nodes", "sites", "labels")

NODE_KINDS = {"agent": spec_pb2.NODE_KIND_AGENT, "external": spec_pb2.NODE_KIND_EXTERNAL}
AUTHS = {"certificate": spec_pb2.AUTH_METHOD_CERTIFICATE, "psk": spec_pb2.AUTH_METHOD_PSK}
MODES = {"tunnel": spec_pb2.MODE_TUNNEL, "transport": spec_pb2.MODE_TRANSPORT}
TOPOLOGIES = {
    "full-mesh": spec_pb2.TOPOLOGY_FULL_MESH,
    "hub-and-spoke": spec_pb2.TOPOLOGY_HUB_AND_SPOKE,
    "pairs": spec_pb2.TOPOLOGY_PAIRS,
}
T = TypeVar("T")


@dataclass
class Paths:
    """YAML path of each resource by its index in the MeshSpec lists, and of selector/pair entries."""

    nodes: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)


def read_spec(root: yaml.Node | None, r: Reader) -> tuple[spec_pb2.MeshSpec, Paths]:
    spec, paths = spec_pb2.MeshSpec(), Paths()
    if root is None or r.is_null(root):
        r.error("", f"empty document; expected a mapping starting with 'apiVersion: {API_VERSION}'", line=1)
        return spec, paths
    top = r.mapping(root, "", TOP)
    if top is None:
        return spec, paths
    if "apiVersion" not in top:
        r.error("apiVersion", f"missing; add 'apiVersion: {API_VERSION}'", root)
    else:
        p, n = top["apiVersion"]
        version = r.string(n, p)
        if version is not None and version != API_VERSION:
            r.error(p, f"unknown apiVersion {version!r}; this controller reads {API_VERSION!r}", n)
    if "kind" in top:
        p, n = top["kind"]
        kind = r.string(n, p)
        if kind is not None and kind != KIND:
            r.error(p, f"unknown kind {kind!r}; expected {KIND!r}", n)
    for key, reader, target, path_list in (
        ("nodes", _node, spec.nodes, paths.nodes),
        ("sites", _site, spec.sites, paths.sites),
        ("profiles", _profile, spec.profiles, paths.profiles),
        ("policies", _policy, spec.policies, paths.policies),
    ):
        if key in top:
            for sub, item in r.sequence(top[key][1], top[key][0]):
                msg = reader(r, item, sub)
                if msg is not None:
                    target.append(msg)
                    path_list.append(sub)
    if defaults.DEFAULT_PROFILE not in {p.name for p in spec.profiles}:
        spec.profiles.append(defaults.default_profile())
        paths.profiles.append("profiles")
    return spec, paths


def _value(r: Reader, path: str, node: yaml.Node, parse: Callable[[str], T], text: str | None) -> T | None:
    """Parse a scalar already read at `path` (so its line is known), reporting a bad value there."""
    if text is None:
        return None
    try:
        return parse(text)
    except BadValue as exc:
        r.error(path, str(exc), line=r.line(path) or node.start_mark.line + 1)
        return None


def _choice(r: Reader, path: str, node: yaml.Node, choices: dict[str, int]) -> int | None:
    text = r.string(node, path)
    if text is None:
        return None
    if text not in choices:
        hint = difflib.get_close_matches(text, choices, 1, 0.6)
        more = f"; did you mean {hint[0]!r}?" if hint else ""
        r.error(path, f"{text!r} is not one of {', '.join(choices)}{more}", node)
        return None
    return choices[text]


def _name(r: Reader, fields: dict[str, tuple[str, yaml.Node]], path: str, node: yaml.Node) -> str:
    if "name" not in fields:
        r.error(f"{path}.name", "missing required field 'name'", node)
        return ""
    p, n = fields["name"]
    text = r.string(n, p)
    _value(r, p, n, parse_name, text)
    # Keep even a bad name so that references to it do not cascade into more errors; the load fails anyway.
    if text is not None:
        return text
    return str(n.value) if isinstance(n, yaml.ScalarNode) else ""


def _cidrs(r: Reader, path: str, node: yaml.Node) -> list[str]:
    out = []
    for sub, text in r.string_list(node, path):
        net = _value(r, sub, node, parse_cidr, text)
        if net is not None:
            out.append(str(net))
    return out


def _node(r: Reader, node: yaml.Node, path: str) -> spec_pb2.Node | None:
    f = r.mapping(node, path, NODE)
    if f is None:
        return None
    msg = spec_pb2.Node(name=_name(r, f, path, node), kind=spec_pb2.NODE_KIND_AGENT)
    if "kind" in f:
        msg.kind = _choice(r, *f["kind"], NODE_KINDS) or spec_pb2.NODE_KIND_AGENT
    if "site" in f:
        msg.site = _value(r, *f["site"], parse_name, r.string(f["site"][1], f["site"][0])) or ""
    if "endpoints" in f:
        p, n = f["endpoints"]
        for sub, text in r.string_list(n, p):
            if _value(r, sub, n, parse_endpoint, text) is not None:
                msg.endpoints.append(text)
    if "subnets" in f:
        msg.subnets.extend(_cidrs(r, *f["subnets"]))
    if "labels" in f:
        msg.labels.update(r.string_map(f["labels"][1], f["labels"][0]))
    if "identity" in f:
        p, n = f["identity"]
        msg.identity = _value(r, p, n, parse_identity, r.string(n, p)) or ""
    if "behindNat" in f:
        msg.behind_nat = bool(r.boolean(f["behindNat"][1], f["behindNat"][0]))
    if "acceptAnnouncedSubnets" in f:
        msg.accept_announced_subnets = bool(
            r.boolean(f["acceptAnnouncedSubnets"][1], f["acceptAnnouncedSubnets"][0])
        )
    external = msg.kind == spec_pb2.NODE_KIND_EXTERNAL
    if msg.accept_announced_subnets and external:
        p, n = f["acceptAnnouncedSubnets"]
        r.error(p, "only agents announce subnets; external nodes list theirs in 'subnets'", n)
    for key in ("auth", "externalCaPem"):
        if key in f and not external:
            r.error(
                f[key][0], f"only external nodes take {key!r}; agents use their policy's profile", f[key][1]
            )
    if external:
        msg.auth = spec_pb2.AUTH_METHOD_CERTIFICATE
        if "auth" in f:
            msg.auth = _choice(r, *f["auth"], AUTHS) or spec_pb2.AUTH_METHOD_CERTIFICATE
        if "externalCaPem" in f:
            p, n = f["externalCaPem"]
            pem = r.string(n, p) or ""
            if pem and "-----BEGIN CERTIFICATE-----" not in pem:
                r.error(p, "expected PEM certificate(s) ('-----BEGIN CERTIFICATE-----')", n)
            msg.external_ca_pem = pem
        if not msg.endpoints:
            r.error(
                f"{path}.endpoints", "an external node needs at least one endpoint (we initiate to it)", node
            )
    return msg


def _site(r: Reader, node: yaml.Node, path: str) -> spec_pb2.Site | None:
    f = r.mapping(node, path, SITE)
    if f is None:
        return None
    msg = spec_pb2.Site(name=_name(r, f, path, node))
    if "subnets" in f:
        msg.subnets.extend(_cidrs(r, *f["subnets"]))
    if "labels" in f:
        msg.labels.update(r.string_map(f["labels"][1], f["labels"][0]))
    return msg


def _proposals(r: Reader, path: str, node: yaml.Node, kind: str, target) -> None:
    items = r.string_list(node, path)
    if r.is_null(node) or (isinstance(node, yaml.SequenceNode) and not node.value):
        r.error(path, f"needs at least one {kind} proposal", node)
    for sub, text in items:
        reason = check_proposal(text, kind)  # type: ignore[arg-type]
        if reason:
            r.error(sub, reason, line=r.line(sub))
        else:
            target.append(text)


def _lifetime(
    r: Reader, f: dict[str, tuple[str, yaml.Node]], path: str, node: yaml.Node, default_rekey: int
) -> spec_pb2.Lifetime:
    def seconds(key: str) -> int | None:
        if key not in f:
            return None
        p, n = f[key]
        return _value(r, p, n, parse_duration, r.string_or_int(n, p))  # type: ignore[arg-type]

    def amount(key: str) -> int:
        if key not in f:
            return 0
        p, n = f[key]
        return _value(r, p, n, parse_size, r.string_or_int(n, p)) or 0  # type: ignore[arg-type]

    rekey, life, jitter = seconds("rekey"), seconds("life"), seconds("jitter")
    lt = spec_pb2.Lifetime()
    lt.rekey_seconds = default_rekey if rekey is None else rekey
    lt.life_seconds = life if life is not None else lt.rekey_seconds + defaults.over_time(lt.rekey_seconds)
    lt.jitter_seconds = (
        jitter
        if jitter is not None
        else max(0, min(lt.life_seconds - lt.rekey_seconds, lt.rekey_seconds // 2))
    )
    fmt = format_duration
    if lt.life_seconds and lt.rekey_seconds >= lt.life_seconds:
        where = f"{path}.rekey" if "rekey" in f else f"{path}.life"
        r.error(
            where,
            f"rekey ({fmt(lt.rekey_seconds)}) must be shorter than life ({fmt(lt.life_seconds)})",
            line=r.line(where) or node.start_mark.line + 1,
        )
    elif lt.rekey_seconds and lt.jitter_seconds >= lt.rekey_seconds:
        r.error(
            f"{path}.jitter",
            f"jitter ({fmt(lt.jitter_seconds)}) must be shorter than rekey ({fmt(lt.rekey_seconds)})",
            line=r.line(f"{path}.jitter") or node.start_mark.line + 1,
        )
    lt.rekey_bytes, lt.life_bytes = amount("rekeyBytes"), amount("lifeBytes")
    lt.rekey_packets, lt.life_packets = amount("rekeyPackets"), amount("lifePackets")
    for what, soft, hard in (
        ("Bytes", lt.rekey_bytes, lt.life_bytes),
        ("Packets", lt.rekey_packets, lt.life_packets),
    ):
        if soft and hard and soft >= hard:
            where = f"{path}.rekey{what}"
            r.error(
                where, f"rekey{what} ({soft}) must be smaller than life{what} ({hard})", line=r.line(where)
            )
    return lt


def _profile(r: Reader, node: yaml.Node, path: str) -> spec_pb2.Profile | None:
    f = r.mapping(node, path, PROFILE)
    if f is None:
        return None
    msg = defaults.default_profile(_name(r, f, path, node))
    if "auth" in f:
        msg.auth = _choice(r, *f["auth"], AUTHS) or spec_pb2.AUTH_METHOD_CERTIFICATE
    if "ike" in f:
        p, n = f["ike"]
        sub = r.mapping(n, p, IKE) if not r.is_null(n) else {}
        if sub is not None:
            if "proposals" in sub:
                del msg.ike_proposals[:]
                _proposals(r, *sub["proposals"], "ike", msg.ike_proposals)
            msg.ike_lifetime.CopyFrom(_lifetime(r, sub, p, n, defaults.IKE_REKEY))
    if "esp" in f:
        p, n = f["esp"]
        sub = r.mapping(n, p, ESP) if not r.is_null(n) else {}
        if sub is not None:
            if "proposals" in sub:
                del msg.esp_proposals[:]
                _proposals(r, *sub["proposals"], "esp", msg.esp_proposals)
            msg.child_lifetime.CopyFrom(_lifetime(r, sub, p, n, defaults.CHILD_REKEY))
    if "dpd" in f:
        p, n = f["dpd"]
        sub = r.mapping(n, p, DPD) if not r.is_null(n) else {}
        for key, attr in (("interval", "dpd_interval_seconds"), ("timeout", "dpd_timeout_seconds")):
            if sub and key in sub:
                sp, sn = sub[key]
                value = _value(r, sp, sn, parse_duration, r.string_or_int(sn, sp))  # type: ignore[arg-type]
                if value is not None:
                    setattr(msg, attr, value)
        if (
            msg.dpd_interval_seconds
            and msg.dpd_timeout_seconds
            and msg.dpd_timeout_seconds <= msg.dpd_interval_seconds
        ):
            r.error(
                f"{p}.timeout",
                "DPD timeout must be longer than the DPD interval",
                line=r.line(f"{p}.timeout") or r.line(p),
            )
    return msg


def _selector(r: Reader, node: yaml.Node, path: str) -> spec_pb2.Selector:
    msg = spec_pb2.Selector()
    f = r.mapping(node, path, SELECTOR)
    if f is None:
        return msg
    if "all" in f:
        msg.all = bool(r.boolean(f["all"][1], f["all"][0]))
    if "nodes" in f:
        for sub, text in r.string_list(f["nodes"][1], f["nodes"][0]):
            msg.nodes.append(text)
            r.seen(sub, f["nodes"][1])
    if "sites" in f:
        for _sub, text in r.string_list(f["sites"][1], f["sites"][0]):
            msg.sites.append(text)
    if "labels" in f:
        msg.labels.update(r.string_map(f["labels"][1], f["labels"][0]))
    return msg


def _policy(r: Reader, node: yaml.Node, path: str) -> spec_pb2.Policy | None:
    f = r.mapping(node, path, POLICY)
    if f is None:
        return None
    msg = spec_pb2.Policy(
        name=_name(r, f, path, node),
        topology=spec_pb2.TOPOLOGY_FULL_MESH,
        mode=spec_pb2.MODE_TUNNEL,
        profile=defaults.DEFAULT_PROFILE,
        include_site_subnets=True,
    )
    if "topology" in f:
        msg.topology = _choice(r, *f["topology"], TOPOLOGIES) or spec_pb2.TOPOLOGY_FULL_MESH
    if "mode" in f:
        msg.mode = _choice(r, *f["mode"], MODES) or spec_pb2.MODE_TUNNEL
    if "profile" in f:
        msg.profile = r.string(f["profile"][1], f["profile"][0]) or defaults.DEFAULT_PROFILE
    if "includeSiteSubnets" in f:
        value = r.boolean(f["includeSiteSubnets"][1], f["includeSiteSubnets"][0])
        msg.include_site_subnets = True if value is None else value
    wanted = {
        spec_pb2.TOPOLOGY_FULL_MESH: ("members",),
        spec_pb2.TOPOLOGY_HUB_AND_SPOKE: ("hubs", "spokes"),
        spec_pb2.TOPOLOGY_PAIRS: ("pairs",),
    }[msg.topology]
    topo_name = next(k for k, v in TOPOLOGIES.items() if v == msg.topology)
    for key in ("members", "hubs", "spokes", "pairs"):
        if key in f and key not in wanted:
            r.error(
                f[key][0],
                f"{key!r} does not apply to topology {topo_name!r} (it uses {' and '.join(wanted)})",
                f[key][1],
            )
    for key in wanted:
        if key not in f:
            r.error(f"{path}.{key}", f"topology {topo_name!r} needs {key!r}", node)
    if "members" in f and "members" in wanted:
        msg.members.CopyFrom(_selector(r, f["members"][1], f["members"][0]))
    if "spokes" in f and "spokes" in wanted:
        msg.members.CopyFrom(_selector(r, f["spokes"][1], f["spokes"][0]))
    if "hubs" in f and "hubs" in wanted:
        msg.hubs.CopyFrom(_selector(r, f["hubs"][1], f["hubs"][0]))
    if "pairs" in f and "pairs" in wanted:
        for sub, item in r.sequence(f["pairs"][1], f["pairs"][0]):
            pair = _pair(r, item, sub)
            if pair is not None:
                msg.pairs.append(pair)
    return msg


def _pair(r: Reader, node: yaml.Node, path: str) -> spec_pb2.NodePair | None:
    if isinstance(node, yaml.MappingNode):
        f = r.mapping(node, path, ("a", "b"))
        if f is None or "a" not in f or "b" not in f:
            r.error(path, "a pair needs both 'a' and 'b'", node)
            return None
        a, b = r.string(f["a"][1], f["a"][0]), r.string(f["b"][1], f["b"][0])
    elif isinstance(node, yaml.SequenceNode) and len(node.value) == 2:
        a, b = r.string(node.value[0], f"{path}[0]"), r.string(node.value[1], f"{path}[1]")
    else:
        r.error(path, "expected a pair of node names: [a, b] or {a: NAME, b: NAME}", node)
        return None
    if a is None or b is None:
        return None
    return spec_pb2.NodePair(a=a, b=b)
