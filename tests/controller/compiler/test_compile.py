"""Topologies, selectors, initiation, auth and digests compile as the design says."""

from __future__ import annotations

import hashlib
import random

from meshsec.api.v1 import config_pb2, spec_pb2
from meshsec.controller.compiler import compile_mesh
from meshsec.controller.spec import load_spec

from .helpers import CREDS, node_yaml, psk_for, spec_from

INIT, RESP = config_pb2.INITIATION_INITIATE, config_pb2.INITIATION_RESPOND


def peers(cfg: config_pb2.NodeConfig) -> dict[str, config_pb2.PeerConfig]:
    return {p.name: p for p in cfg.peers}


def test_full_mesh() -> None:
    nodes = "".join(node_yaml(f"n{i}", i) for i in range(4))
    out = compile_mesh(spec_from(nodes, "  - {name: mesh, members: {all: true}}\n"), CREDS)
    assert sorted(out) == ["n0", "n1", "n2", "n3"]
    for name, cfg in out.items():
        assert [p.name for p in cfg.peers] == sorted(set(out) - {name})
        assert cfg.version == 0 and cfg.local.name == name and cfg.local.identity == f"fqdn:{name}.meshsec"
        for peer in cfg.peers:
            (child,) = peer.children
            assert child.name == "mesh" and child.mode == spec_pb2.MODE_TUNNEL
            assert list(child.local_ts) == list(cfg.local.subnets)
            assert list(child.remote_ts) == list(peers(out[peer.name])[name].children[0].local_ts)
            # exactly one side initiates: the smaller name
            assert peer.initiation == (INIT if name < peer.name else RESP)
            assert peers(out[peer.name])[name].initiation != peer.initiation
            assert peer.auth == spec_pb2.AUTH_METHOD_CERTIFICATE and not peer.psk


def test_hub_and_spoke() -> None:
    nodes = node_yaml("hub1", 1, "{role: hub}") + node_yaml("hub2", 2, "{role: hub}")
    nodes += "".join(node_yaml(f"s{i}", 10 + i, "{role: spoke}") for i in range(3))
    policy = (
        "  - {name: star, topology: hub-and-spoke,\n"
        "     hubs: {labels: {role: hub}}, spokes: {labels: {role: spoke}}}\n"
    )
    out = compile_mesh(spec_from(nodes, policy), CREDS)
    assert [p.name for p in out["hub1"].peers] == ["s0", "s1", "s2"]
    assert [p.name for p in out["hub2"].peers] == ["s0", "s1", "s2"]
    for s in ("s0", "s1", "s2"):
        assert [p.name for p in out[s].peers] == ["hub1", "hub2"]


def test_explicit_pairs_and_several_policies_on_one_pair() -> None:
    nodes = "".join(node_yaml(n, i) for i, n in enumerate("abcd"))
    policies = (
        "  - {name: p1, topology: pairs, pairs: [[a, b], {a: c, b: d}]}\n"
        "  - {name: p2, topology: pairs, pairs: [[b, a]], mode: transport}\n"
    )
    out = compile_mesh(spec_from(nodes, policies), CREDS)
    assert {n: [p.name for p in c.peers] for n, c in out.items()} == {
        "a": ["b"],
        "b": ["a"],
        "c": ["d"],
        "d": ["c"],
    }
    ab = peers(out["a"])["b"]
    assert [c.name for c in ab.children] == ["p1", "p2"]
    tunnel, transport = ab.children
    assert (list(tunnel.local_ts), list(tunnel.remote_ts)) == (["198.19.0.1/32"], ["198.19.0.2/32"])
    assert transport.mode == spec_pb2.MODE_TRANSPORT
    assert (list(transport.local_ts), list(transport.remote_ts)) == (["198.18.0.1/32"], ["198.18.0.2/32"])


def test_tunnel_selectors_include_site_subnets_unless_disabled() -> None:
    nodes = node_yaml("a", 1, "{}", ", site: hq") + node_yaml("b", 2, "{}", ", site: br")
    sites = (
        "sites:\n  - {name: hq, subnets: [198.19.16.0/20, 'fd00:1::/64']}\n"
        "  - {name: br, subnets: [198.19.32.0/20]}\n"
    )
    spec = spec_from(nodes, "  - {name: s2s, members: {all: true}}\n", sites)
    child = peers(compile_mesh(spec, CREDS)["a"])["b"].children[0]
    assert list(child.local_ts) == ["198.19.0.2/32", "198.19.16.0/20", "fd00:1::/64"]
    assert list(child.remote_ts) == ["198.19.0.3/32", "198.19.32.0/20"]
    spec = spec_from(nodes, "  - {name: s2s, members: {all: true}, includeSiteSubnets: false}\n", sites)
    child = peers(compile_mesh(spec, CREDS)["a"])["b"].children[0]
    assert (list(child.local_ts), list(child.remote_ts)) == (["198.19.0.2/32"], ["198.19.0.3/32"])


def test_nat_and_external_initiation_psk_and_trust() -> None:
    nodes = node_yaml("a", 1) + "  - {name: z, behindNat: true, subnets: [198.19.9.0/24]}\n"
    nodes += (
        "  - {name: fw, kind: external, endpoints: [198.18.9.9], subnets: [198.19.200.0/24], auth: psk,\n"
        '     externalCaPem: "-----BEGIN CERTIFICATE-----\\nFW\\n-----END CERTIFICATE-----\\n"}\n'
    )
    policies = (
        "  - {name: mesh, members: {nodes: [a, z]}}\n  - {name: ext, topology: pairs, pairs: [[fw, z]]}\n"
    )
    out = compile_mesh(spec_from(nodes, policies), CREDS)
    assert sorted(out) == ["a", "z"]  # external nodes get no NodeConfig
    assert peers(out["a"])["z"].initiation == RESP and peers(out["z"])["a"].initiation == INIT
    assert peers(out["a"])["z"].behind_nat
    fw = peers(out["z"])["fw"]
    assert fw.initiation == INIT and fw.kind == spec_pb2.NODE_KIND_EXTERNAL
    assert fw.auth == spec_pb2.AUTH_METHOD_PSK and fw.psk == psk_for("z", "fw") == psk_for("fw", "z")
    assert fw.remote_identity == "ipv4:198.18.9.9"
    assert "FW" in out["z"].local.trusted_ca_pem and "FW" not in out["a"].local.trusted_ca_pem
    assert list(out["a"].local.revoked_fingerprints) == ["ff" * 32]


def test_psk_profile_gives_symmetric_keys() -> None:
    nodes = node_yaml("a", 1) + node_yaml("b", 2)
    extra = "profiles:\n  - {name: legacy, auth: psk}\n"
    out = compile_mesh(
        spec_from(nodes, "  - {name: m, members: {all: true}, profile: legacy}\n", extra), CREDS
    )
    assert peers(out["a"])["b"].psk == peers(out["b"])["a"].psk == psk_for("a", "b")


def test_digest_and_canonical_bytes() -> None:
    nodes = "".join(node_yaml(f"n{i}", i) for i in range(3))
    for cfg in compile_mesh(spec_from(nodes, "  - {name: mesh, members: {all: true}}\n"), CREDS).values():
        for peer in cfg.peers:
            bare = config_pb2.PeerConfig()
            bare.CopyFrom(peer)
            bare.digest = ""
            assert peer.digest == hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def test_deterministic_and_independent_of_input_order() -> None:
    text = "apiVersion: meshsec.io/v1\nnodes:\n" + "".join(node_yaml(f"n{i}", i, "{k: v}") for i in range(12))
    text += "sites:\n  - {name: s1, subnets: [198.19.100.0/24]}\n  - {name: s2, subnets: [198.19.101.0/24]}\n"
    text += (
        "policies:\n  - {name: a, members: {labels: {k: v}}}\n"
        "  - {name: b, topology: pairs, pairs: [[n1, n2], [n3, n4]], mode: transport}\n"
        "  - {name: c, topology: hub-and-spoke, hubs: {nodes: [n0]}, spokes: {all: true}}\n"
    )
    spec = load_spec(text, "mesh.yaml")

    def serialized(s: spec_pb2.MeshSpec) -> dict[str, bytes]:
        return {n: c.SerializeToString(deterministic=True) for n, c in compile_mesh(s, CREDS).items()}

    first = serialized(spec)
    assert serialized(spec) == first
    rng = random.Random(7)
    for _ in range(3):
        shuffled = spec_pb2.MeshSpec()
        shuffled.CopyFrom(spec)
        for field in (shuffled.nodes, shuffled.sites, shuffled.policies, shuffled.profiles):
            items = list(field)
            rng.shuffle(items)
            copies = [type(i)() for i in items]
            for c, i in zip(copies, items, strict=True):
                c.CopyFrom(i)
            del field[:]
            field.extend(copies)
        assert serialized(shuffled) == first
