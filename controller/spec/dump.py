"""MeshSpec -> mesh.yaml text, the inverse of the loader (load_spec(dump_spec(s)) == s).

Used by `meshctl get -o yaml` and by the round-trip test.  Writes every field explicitly, in the order
docs/mesh-yaml.md documents.
"""

from __future__ import annotations

from typing import Any

import yaml
from meshsec.api.v1 import spec_pb2

from .loader import API_VERSION, AUTHS, KIND, MODES, NODE_KINDS, TOPOLOGIES
from .values import format_duration, format_size

__all__ = ["dump_spec", "node_to_dict", "policy_to_dict", "profile_to_dict", "site_to_dict", "spec_to_dict"]


def _name_of(table: dict[str, int], value: int) -> str:
    return next((k for k, v in table.items() if v == value), "")


def node_to_dict(n: spec_pb2.Node) -> dict[str, Any]:
    d: dict[str, Any] = {"name": n.name, "kind": _name_of(NODE_KINDS, n.kind) or "agent"}
    if n.site:
        d["site"] = n.site
    if n.endpoints:
        d["endpoints"] = list(n.endpoints)
    if n.subnets:
        d["subnets"] = list(n.subnets)
    if n.labels:
        d["labels"] = dict(sorted(n.labels.items()))
    if n.identity:
        d["identity"] = n.identity
    if n.behind_nat:
        d["behindNat"] = True
    if n.accept_announced_subnets:
        d["acceptAnnouncedSubnets"] = True
    if n.kind == spec_pb2.NODE_KIND_EXTERNAL:
        d["auth"] = _name_of(AUTHS, n.auth) or "certificate"
        if n.external_ca_pem:
            d["externalCaPem"] = n.external_ca_pem
    return d


def site_to_dict(s: spec_pb2.Site) -> dict[str, Any]:
    d: dict[str, Any] = {"name": s.name, "subnets": list(s.subnets)}
    if s.labels:
        d["labels"] = dict(sorted(s.labels.items()))
    return d


def _lifetime(lt: spec_pb2.Lifetime, esp: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "rekey": format_duration(lt.rekey_seconds),
        "life": format_duration(lt.life_seconds),
        "jitter": format_duration(lt.jitter_seconds),
    }
    if esp:
        for key, value in (
            ("rekeyBytes", lt.rekey_bytes),
            ("lifeBytes", lt.life_bytes),
            ("rekeyPackets", lt.rekey_packets),
            ("lifePackets", lt.life_packets),
        ):
            if value:
                d[key] = format_size(value) if key.endswith("Bytes") else value
    return d


def profile_to_dict(p: spec_pb2.Profile) -> dict[str, Any]:
    return {
        "name": p.name,
        "auth": _name_of(AUTHS, p.auth) or "certificate",
        "ike": {"proposals": list(p.ike_proposals), **_lifetime(p.ike_lifetime, esp=False)},
        "esp": {"proposals": list(p.esp_proposals), **_lifetime(p.child_lifetime, esp=True)},
        "dpd": {
            "interval": format_duration(p.dpd_interval_seconds),
            "timeout": format_duration(p.dpd_timeout_seconds),
        },
    }


def _selector(s: spec_pb2.Selector) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if s.all:
        d["all"] = True
    if s.nodes:
        d["nodes"] = list(s.nodes)
    if s.sites:
        d["sites"] = list(s.sites)
    if s.labels:
        d["labels"] = dict(sorted(s.labels.items()))
    return d


def policy_to_dict(p: spec_pb2.Policy) -> dict[str, Any]:
    d: dict[str, Any] = {"name": p.name, "topology": _name_of(TOPOLOGIES, p.topology) or "full-mesh"}
    if p.topology == spec_pb2.TOPOLOGY_HUB_AND_SPOKE:
        d["hubs"] = _selector(p.hubs)
        d["spokes"] = _selector(p.members)
    elif p.topology == spec_pb2.TOPOLOGY_PAIRS:
        d["pairs"] = [[pair.a, pair.b] for pair in p.pairs]
    else:
        d["members"] = _selector(p.members)
    d["mode"] = _name_of(MODES, p.mode) or "tunnel"
    d["profile"] = p.profile
    d["includeSiteSubnets"] = p.include_site_subnets
    return d


def spec_to_dict(spec: spec_pb2.MeshSpec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "nodes": [node_to_dict(n) for n in spec.nodes],
        "sites": [site_to_dict(s) for s in spec.sites],
        "profiles": [profile_to_dict(p) for p in spec.profiles],
        "policies": [policy_to_dict(p) for p in spec.policies],
    }


def dump_spec(spec: spec_pb2.MeshSpec) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False, default_flow_style=None, width=100)
