"""Incremental compile: a change recompiles only the nodes it touches, and always equals a full compile."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from meshsec.api.v1 import admin_pb2, config_pb2, spec_pb2
from meshsec.controller.compiler import MeshCompiler, apply_delta, compile_mesh, diff, plan

from .helpers import CREDS, node_yaml, spec_from


def three_meshes() -> spec_pb2.MeshSpec:
    """Three separate full meshes of 5 nodes each plus a hub with 4 spokes: 20 agents."""
    nodes = "".join(
        node_yaml(f"g{g}-n{i}", g * 10 + i, f"{{group: g{g}}}") for g in range(3) for i in range(5)
    )
    nodes += node_yaml("hub", 50, "{role: hub}") + "".join(
        node_yaml(f"sp{i}", 60 + i, "{role: spoke}") for i in range(4)
    )
    policies = "".join(f"  - {{name: mesh-g{g}, members: {{labels: {{group: g{g}}}}}}}\n" for g in range(3))
    policies += (
        "  - {name: star, topology: hub-and-spoke,\n"
        "     hubs: {labels: {role: hub}}, spokes: {labels: {role: spoke}}}\n"
    )
    return spec_from(nodes, policies)


def serialized(configs: dict[str, config_pb2.NodeConfig]) -> dict[str, bytes]:
    return {n: c.SerializeToString(deterministic=True) for n, c in configs.items()}


def test_changing_one_subnet_recompiles_only_that_node_and_its_peers() -> None:
    spec = three_meshes()
    compiler = MeshCompiler(CREDS)
    assert len(compiler.update(spec)) == 20
    before = {n: compiler.config(n) for n in compiler.names()}
    node = next(n for n in spec.nodes if n.name == "g1-n2")
    node.subnets[0] = "198.19.77.0/24"
    changed = compiler.update(spec)
    assert changed == {"g1-n0", "g1-n1", "g1-n2", "g1-n3", "g1-n4"}
    assert compiler.last_nodes_compiled == 5  # the node and its 4 peers, not the 20-node fleet
    # the node itself is recompiled whole (4 peers, old and new from cache or model); each peer once, twice
    assert compiler.last_peers_compiled <= 4 + 4 * 2
    fresh = compile_mesh(spec, CREDS)
    assert serialized({n: compiler.config(n) for n in compiler.names()}) == serialized(fresh)
    for name in changed - {"g1-n2"}:
        delta = compiler.delta(name)
        assert [p.name for p in delta.upsert_peers] == ["g1-n2"] and not delta.remove_peers
        assert apply_delta(before[name], delta) == fresh[name]


def test_changing_a_spoke_touches_only_the_hub() -> None:
    spec = three_meshes()
    compiler = MeshCompiler(CREDS)
    compiler.update(spec)
    next(n for n in spec.nodes if n.name == "sp3").endpoints[:] = ["198.18.9.1"]
    assert compiler.update(spec) == {"hub"}  # sp3's own config does not contain its endpoints
    assert compiler.last_nodes_compiled == 2


def test_unchanged_spec_changes_nothing_and_policy_change_touches_members() -> None:
    spec = three_meshes()
    compiler = MeshCompiler(CREDS)
    compiler.update(spec)
    assert compiler.update(spec) == set() and compiler.last_nodes_compiled == 0
    next(p for p in spec.policies if p.name == "mesh-g0").mode = spec_pb2.MODE_TRANSPORT
    assert compiler.update(spec) == {f"g0-n{i}" for i in range(5)}


def test_plan_lists_added_changed_removed() -> None:
    spec = three_meshes()
    new = spec_pb2.MeshSpec()
    new.CopyFrom(spec)
    new.nodes.add(
        name="g0-n9",
        kind=spec_pb2.NODE_KIND_AGENT,
        endpoints=["198.18.0.99"],
        subnets=["198.19.0.99/32"],
        labels={"group": "g0"},
    )
    plans = {p.node: p for p in plan(spec, new, CREDS)}
    assert sorted(plans) == ["g0-n0", "g0-n1", "g0-n2", "g0-n3", "g0-n4", "g0-n9"]
    assert plans["g0-n0"] == admin_pb2.NodePlan(
        node="g0-n0", peers_added=["g0-n9"], sas_added=["g0-n9/mesh-g0"]
    )
    assert list(plans["g0-n9"].peers_added) == [f"g0-n{i}" for i in range(5)]
    back = {p.node: p for p in plan(new, spec, CREDS)}
    assert list(back["g0-n9"].peers_removed) == [f"g0-n{i}" for i in range(5)]
    assert list(back["g0-n1"].sas_removed) == ["g0-n9/mesh-g0"]


# --- property: any sequence of edits, incremental == full compile, and the changed set is exact -----------

NAMES = [f"n{i}" for i in range(6)]
EDITS = st.lists(
    st.tuples(
        st.sampled_from(["subnet", "label", "endpoint", "nat", "remove", "add", "mode", "profile", "site"]),
        st.sampled_from(NAMES),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=8,
)


def base_spec() -> spec_pb2.MeshSpec:
    nodes = "".join(node_yaml(n, i, f"{{k: v{i % 3}}}", f", site: s{i % 2}") for i, n in enumerate(NAMES))
    policies = (
        "  - {name: m0, members: {labels: {k: v0}}}\n"
        "  - {name: m1, members: {sites: [s1]}, mode: transport}\n"
        "  - {name: hs, topology: hub-and-spoke, hubs: {nodes: [n0]}, spokes: {labels: {k: v1}}}\n"
        "  - {name: pr, topology: pairs, pairs: [[n2, n5], [n3, n4]], profile: p2}\n"
    )
    extra = (
        "sites:\n  - {name: s0, subnets: [198.19.100.0/24]}\n  - {name: s1, subnets: [198.19.101.0/24]}\n"
        "profiles:\n  - {name: p2, auth: psk}\n"
    )
    return spec_from(nodes, policies, extra)


def edit(spec: spec_pb2.MeshSpec, what: str, name: str, k: int) -> None:
    node = next((n for n in spec.nodes if n.name == name), None)
    if what == "add" and node is None:
        i = NAMES.index(name)
        spec.nodes.add(
            name=name,
            kind=spec_pb2.NODE_KIND_AGENT,
            endpoints=[f"198.18.0.{i + 1}"],
            subnets=[f"198.19.0.{i + 1}/32"],
            labels={"k": f"v{k % 3}"},
        )
        return
    if node is None:
        return
    if what == "subnet":
        node.subnets[:] = [f"198.19.{10 + k}.{NAMES.index(name)}/32"]
    elif what == "label":
        node.labels["k"] = f"v{k % 3}"
    elif what == "endpoint":
        node.endpoints[:] = [f"198.18.{k}.{NAMES.index(name) + 1}"]
    elif what == "nat":
        node.behind_nat = not node.behind_nat
    elif what == "remove":
        spec.nodes.remove(node)
    elif what == "site":
        node.site = f"s{k % 2}" if k < 3 else ""
    elif what == "mode":
        spec.policies[k % 4].mode = spec_pb2.MODE_TRANSPORT if k % 2 else spec_pb2.MODE_TUNNEL
    elif what == "profile":
        spec.profiles[0].dpd_interval_seconds = 10 + k


@settings(max_examples=60, deadline=None)
@given(edits=EDITS)
def test_incremental_equals_full_compile(edits: list[tuple[str, str, int]]) -> None:
    spec = base_spec()
    compiler = MeshCompiler(CREDS, cache_peers=8)  # a tiny cache exercises both cached and uncached paths
    compiler.update(spec)
    previous = serialized(compile_mesh(spec, CREDS))
    for i, (what, name, k) in enumerate(edits):
        edit(spec, what, name, k)
        changed = compiler.update(spec)
        full = serialized(compile_mesh(spec, CREDS))
        expected = {n for n in previous.keys() | full.keys() if previous.get(n) != full.get(n)}
        assert changed == expected
        if i % 2:
            assert serialized({n: compiler.config(n) for n in compiler.names()}) == full
        previous = full


# --- property: diff / apply_delta round trip ----------------------------------------------------------

PEERS = st.builds(
    lambda name, ep, digest: config_pb2.PeerConfig(name=name, endpoints=[ep], digest=digest),
    st.sampled_from(["a", "b", "c", "d", "e"]),
    st.sampled_from(["198.18.0.1", "198.18.0.2"]),
    st.sampled_from(["", "x", "y"]),
)
CONFIGS = st.builds(
    lambda version, ident, peers: config_pb2.NodeConfig(
        version=version,
        local=config_pb2.LocalConfig(name="me", identity=ident),
        peers=sorted({p.name: p for p in peers}.values(), key=lambda p: p.name),
    ),
    st.integers(0, 100),
    st.sampled_from(["fqdn:me", "fqdn:me2"]),
    st.lists(PEERS, max_size=5),
)


@settings(max_examples=200, deadline=None)
@given(old=CONFIGS, new=CONFIGS)
def test_diff_apply_delta_round_trip(old: config_pb2.NodeConfig, new: config_pb2.NodeConfig) -> None:
    delta = diff(old, new)
    assert apply_delta(old, delta) == new
    if old == new:
        assert not delta.upsert_peers and not delta.remove_peers and not delta.HasField("local")


def test_plan_between_compiled_meshes_matches_plan_between_specs() -> None:
    spec = three_meshes()
    new = spec_pb2.MeshSpec()
    new.CopyFrom(spec)
    new.nodes.remove(next(n for n in new.nodes if n.name == "sp0"))
    next(n for n in new.nodes if n.name == "g2-n1").subnets[:] = ["198.19.99.0/24"]
    from_specs = plan(spec, new, CREDS)
    from_configs = plan(compile_mesh(spec, CREDS), compile_mesh(new, CREDS))
    # the spec plan also lists the removed node itself; compiled meshes say the same for it
    assert from_specs == from_configs
    assert {p.node for p in from_specs} == {"hub", "sp0", "g2-n0", "g2-n1", "g2-n2", "g2-n3", "g2-n4"}


def test_delta_module_imports_nothing_from_the_controller() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from meshsec.controller.compiler.delta import apply_delta, diff; "
        "print(sorted(m for m in sys.modules if m.startswith('meshsec.controller') or m == 'yaml'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert (
        out.strip()
        == "['meshsec.controller', 'meshsec.controller.compiler', 'meshsec.controller.compiler.delta']"
    )


def test_new_credentials_reach_every_agent() -> None:
    from dataclasses import replace

    spec = three_meshes()
    compiler = MeshCompiler(CREDS)
    compiler.update(spec)
    assert compiler.update(spec, replace(CREDS)) == set()  # equal credentials: nothing to do
    rotated = replace(CREDS, trusted_ca_pem=CREDS.trusted_ca_pem * 2)
    assert compiler.update(spec, rotated) == set(compiler.names())
    assert compiler.config("hub").local.trusted_ca_pem == rotated.trusted_ca_pem
    revoked = replace(rotated, revoked_fingerprints=["ee" * 32, *rotated.revoked_fingerprints])
    assert compiler.update(spec, revoked) == set(compiler.names())
    # a PSK master rotation is visible only through psk_version
    keyed = replace(revoked, psk_for=lambda a, b: b"k" * 32, psk_version="2")
    assert compiler.update(spec, keyed) == set()  # nobody uses PSK auth here; configs are unchanged
