"""The merge of agents' announced subnets into the compiled spec: only where the spec accepts them, and
never onto address space that belongs to someone else (pure unit tests, no etcd)."""

from __future__ import annotations

import ipaddress

import pytest
from meshsec.api.v1 import spec_pb2
from meshsec.controller.desired.announced import (
    MAX_ANNOUNCED,
    Rejected,
    is_compile_input,
    merge,
    merge_stored,
    normalize,
)
from meshsec.controller.store import Keys


def _spec(*nodes: spec_pb2.Node, sites: tuple[spec_pb2.Site, ...] = ()) -> spec_pb2.MeshSpec:
    return spec_pb2.MeshSpec(nodes=list(nodes), sites=list(sites))


def _node(name: str, n: int, accept: bool = True, **kw: object) -> spec_pb2.Node:
    return spec_pb2.Node(
        name=name,
        endpoints=[f"198.18.0.{n}"],
        subnets=[f"198.19.{n}.0/24"],
        accept_announced_subnets=accept,
        **kw,  # type: ignore[arg-type]
    )


def _subnets(spec: spec_pb2.MeshSpec) -> dict[str, list[str]]:
    return {n.name: list(n.subnets) for n in spec.nodes}


def test_accepted_announcements_are_added_and_the_stored_spec_is_untouched() -> None:
    spec = _spec(_node("a", 1), _node("b", 2, accept=False), _node("c", 3))
    before = spec.SerializeToString(deterministic=True)
    out, rejected = merge(spec, {"a": ["10.244.1.0/24", "fd00:244:1::/64"], "b": ["10.244.2.0/24"]})
    assert rejected == []
    assert _subnets(out) == {
        "a": ["198.19.1.0/24", "10.244.1.0/24", "fd00:244:1::/64"],
        "b": ["198.19.2.0/24"],  # b's spec does not accept announcements
        "c": ["198.19.3.0/24"],  # c announced nothing
    }
    assert spec.SerializeToString(deterministic=True) == before
    # Nothing to merge: the very same object (no copy of a big spec), whatever is announced.
    assert merge(spec, {"b": ["10.244.2.0/24"], "zz": ["10.9.0.0/16"]}) == (spec, [])
    assert merge(spec, {}) == (spec, [])


def test_external_nodes_never_take_announcements() -> None:
    ext = _node("ext", 9, kind=spec_pb2.NODE_KIND_EXTERNAL)
    assert merge(_spec(ext), {"ext": ["10.9.0.0/16"]})[0].nodes[0].subnets == ["198.19.9.0/24"]


def test_announcements_that_overlap_anything_not_theirs_are_ignored() -> None:
    site = spec_pb2.Site(name="berlin", subnets=["198.20.0.0/16"])
    spec = _spec(_node("a", 1), _node("b", 2), _node("c", 3), _node("d", 4), sites=(site,))
    out, rejected = merge(
        spec,
        {
            "a": ["198.19.0.0/16", "10.244.1.0/24"],  # a supernet of b's, c's and d's subnets
            "b": ["198.20.5.0/24", "10.244.2.0/24"],  # inside a site's LAN
            "c": ["10.244.0.0/16", "198.18.0.0/24"],  # over a's and b's announcements; over endpoints
            "d": ["198.19.4.128/25"],  # inside d's own subnet: already routed there, not a conflict
        },
    )
    assert _subnets(out) == {
        "a": ["198.19.1.0/24"],
        "b": ["198.19.2.0/24"],
        "c": ["198.19.3.0/24"],
        "d": ["198.19.4.0/24"],
    }
    assert sorted(rejected, key=lambda r: (r.node, r.subnet)) == [
        Rejected("a", "10.244.1.0/24", "overlaps another node's announced subnets"),
        Rejected("a", "198.19.0.0/16", "overlaps another node's subnets"),
        Rejected("b", "10.244.2.0/24", "overlaps another node's announced subnets"),
        Rejected("b", "198.20.5.0/24", "overlaps a site's subnets"),
        Rejected("c", "10.244.0.0/16", "overlaps another node's announced subnets"),
        Rejected("c", "198.18.0.0/24", "contains a node's endpoint address"),
    ]


def test_own_endpoint_and_bracketed_ipv6_endpoints_are_protected() -> None:
    a = _node("a", 1)
    a.endpoints[:] = ["[fd00:18::1]:4500", "gw.example.net:4500", "198.18.0.1:4500"]
    out, rejected = merge(_spec(a), {"a": ["fd00:18::/64", "198.18.0.0/30", "fd00:99::/64"]})
    assert out.nodes[0].subnets == ["198.19.1.0/24", "fd00:99::/64"]
    assert {r.subnet for r in rejected} == {"fd00:18::/64", "198.18.0.0/30"}


def test_the_merge_is_symmetric_in_node_order() -> None:
    a, b = _node("a", 1), _node("b", 2)
    ann = {"a": ["10.1.0.0/16"], "b": ["10.1.2.0/24"]}
    for spec in (_spec(a, b), _spec(b, a)):
        out, rejected = merge(spec, ann)
        assert all(len(n.subnets) == 1 for n in out.nodes)  # neither wins an overlap
        assert {r.node for r in rejected} == {"a", "b"}


def test_many_nodes_each_announcing_a_pod_cidr() -> None:
    nodes = [
        spec_pb2.Node(
            name=f"n{i}",
            endpoints=[str(ipaddress.ip_address("198.18.0.0") + i)],
            subnets=[],
            accept_announced_subnets=True,
        )
        for i in range(2000)
    ]
    ann = {f"n{i}": [f"10.{i // 256}.{i % 256}.0/24"] for i in range(2000)}
    ann["n5"] = ["10.0.0.0/22"]  # overlaps n0..n3 (and they it)
    out, rejected = merge(_spec(*nodes), ann)
    assert {r.node for r in rejected} == {"n0", "n1", "n2", "n3", "n5"}
    assert out.nodes[4].subnets == ["10.0.4.0/24"] and out.nodes[1999].subnets == ["10.7.207.0/24"]


def test_normalize_and_keys() -> None:
    assert normalize([" fd00::/64", "10.0.0.0/8", "10.0.0.0/8"]) == ("10.0.0.0/8", "fd00::/64")
    with pytest.raises(ValueError, match="not a CIDR"):
        normalize(["10.0.0.1/8"])
    with pytest.raises(ValueError, match=f"at most {MAX_ANNOUNCED}"):
        normalize([f"10.0.{i}.0/24" for i in range(MAX_ANNOUNCED + 1)])
    assert is_compile_input(Keys.ROOT + "announced/a") and is_compile_input(Keys.SPEC)
    assert not is_compile_input(Keys.status("a"))


def test_merge_stored_dates_the_effective_spec() -> None:
    spec = _spec(_node("a", 1), _node("b", 2, accept=False))
    stored = {"a": (("10.244.1.0/24",), 40), "b": (("10.244.2.0/24",), 50)}
    out, rev = merge_stored(spec, 30, stored)
    assert rev == 40 and out.nodes[0].subnets[-1] == "10.244.1.0/24"  # b's later key is not merged
    assert merge_stored(spec, 30, {"b": (("10.244.2.0/24",), 50)}) == (spec, 30)
