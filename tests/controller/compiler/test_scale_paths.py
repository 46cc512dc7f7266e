"""The paths that keep a 10,000-node mesh cheap: a fleet-wide change is priced from the indexes and
builds nothing until a config is asked for; credential-only updates build no peer entry; a selection
change recompiles only the nodes that joined or left; apply_delta costs O(changed peers x log n).
Correctness of each against a full compile (property tests); cost by counters, never by timing."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from meshsec.api.v1 import config_pb2, spec_pb2
from meshsec.controller.compiler import MeshCompiler, apply_delta, compile_mesh, plan
from meshsec.controller.compiler import delta as delta_mod

from .helpers import CREDS, node_yaml, spec_from
from .test_incremental import EDITS, base_spec, edit, serialized


def fleet(n: int) -> spec_pb2.MeshSpec:
    """A full mesh of n agents under one policy and the default profile every node uses."""
    return spec_from(
        "".join(node_yaml(f"n{i:05d}", i) for i in range(n)), "  - {name: all, members: {all: true}}\n"
    )


def test_fleet_wide_profile_change_at_2000_nodes_builds_no_peer_until_asked() -> None:
    spec = fleet(2000)
    compiler = MeshCompiler(CREDS, cache_peers=0)
    compiler.update(spec)
    assert compiler.peers_compiled == 0
    spec.profiles[0].dpd_interval_seconds += 15  # the profile of the only policy: every peer entry changes
    changed = compiler.update(spec)
    assert changed == set(compiler.names()) and len(changed) == 2000
    assert compiler.peers_compiled == 0  # priced from the index (~2 x 2000 x 1999 entries), nothing built
    assert compiler.last_estimate > compiler.delta_peers
    assert all(c.snapshot for c in compiler.changes.values())
    assert compiler.delta("n00007") is None  # no delta: the agent takes a snapshot
    fresh = MeshCompiler(CREDS, cache_peers=0)
    fresh.update(spec)
    for name in ("n00000", "n01000", "n01999"):
        assert compiler.config_bytes(name) == fresh.config_bytes(name)
        assert compiler.config(name).peers[0].ike.dpd_interval_seconds == 45
    assert compiler.peers_compiled == 3 * 2 * 1999  # only what was asked for (config_bytes + config)


def test_one_node_joining_a_fleet_policy_recompiles_it_and_one_entry_per_member() -> None:
    spec = fleet(300)
    compiler = MeshCompiler(CREDS, cache_peers=0)
    compiler.update(spec)
    spec.nodes.add(
        name="z-new",
        kind=spec_pb2.NODE_KIND_AGENT,
        endpoints=["198.18.200.1"],
        subnets=["198.19.200.1/32"],
    )
    changed = compiler.update(spec)
    assert changed == set(compiler.names()) and len(changed) == 301
    assert compiler.last_peers_compiled <= 300 + 2 * 300  # not 301 x 300 entries
    delta = compiler.delta("n00042")
    assert [p.name for p in delta.upsert_peers] == ["z-new"] and not delta.remove_peers


SELECTOR_EDITS = st.lists(
    st.tuples(st.sampled_from(["members", "hubs", "pairs", "node"]), st.integers(0, 5), st.integers(0, 3)),
    min_size=1,
    max_size=6,
)


def edit_selector(spec: spec_pb2.MeshSpec, what: str, i: int, k: int) -> None:
    """Change who a policy selects without changing its template (mode, profile)."""
    pols = {p.name: p for p in spec.policies}
    if what == "members":
        pols["m0"].members.ClearField("labels")
        pols["m0"].members.nodes[:] = [f"n{j}" for j in range(6) if (j + k) % 3 != i % 3]
    elif what == "hubs":
        pols["hs"].hubs.nodes[:] = [f"n{i}"]
    elif what == "pairs":
        del pols["pr"].pairs[:]
        pols["pr"].pairs.add(a=f"n{i}", b=f"n{(i + k + 1) % 6}")
    else:
        edit(spec, ["label", "site", "remove", "add"][k], f"n{i}", k)


@settings(max_examples=60, deadline=None)
@given(edits=SELECTOR_EDITS)
def test_selection_changes_are_exact(edits: list[tuple[str, int, int]]) -> None:
    """Members that stay in a policy get only the joined/left nodes' entries rechecked; still exact."""
    spec = base_spec()
    compiler = MeshCompiler(CREDS, cache_peers=8)
    compiler.update(spec)
    previous = serialized(compile_mesh(spec, CREDS))
    for what, i, k in edits:
        edit_selector(spec, what, i, k)
        changed = compiler.update(spec)
        full = serialized(compile_mesh(spec, CREDS))
        assert changed == {n for n in previous.keys() | full.keys() if previous.get(n) != full.get(n)}
        assert serialized({n: compiler.config(n) for n in compiler.names()}) == full
        previous = full


@settings(max_examples=60, deadline=None)
@given(edits=EDITS, budget=st.sampled_from([0, 3, 12]))
def test_changes_above_the_delta_budget_equal_a_full_compile(
    edits: list[tuple[str, str, int]], budget: int
) -> None:
    """Above the budget the reported set may be larger than the exact one (it is priced from the
    indexes), never smaller, and configs built afterwards equal a full compile."""
    spec = base_spec()
    compiler = MeshCompiler(CREDS, cache_peers=8, delta_peers=budget)
    compiler.update(spec)
    previous = serialized(compile_mesh(spec, CREDS))
    for what, name, k in edits:
        edit(spec, what, name, k)
        changed = compiler.update(spec)
        full = serialized(compile_mesh(spec, CREDS))
        assert changed >= {n for n in previous.keys() | full.keys() if previous.get(n) != full.get(n)}
        for n in changed:
            change = compiler.changes[n]
            if not change.snapshot:  # below the budget: a real delta that turns the old into the new
                old = config_pb2.NodeConfig.FromString(previous.get(n, b""))
                new = config_pb2.NodeConfig.FromString(full.get(n, b""))
                if not change.node_removed:
                    assert apply_delta(old, compiler.delta(n)) == new
        assert serialized({n: compiler.config(n) for n in compiler.names()}) == full
        previous = full


def test_credential_only_updates_build_no_peer_entry() -> None:
    spec = base_spec()  # includes a PSK profile, so PSKs are in some peer entries
    compiler = MeshCompiler(CREDS)
    compiler.update(spec)
    for name in compiler.names():
        compiler.config_bytes(name)  # cache every peer map
    built = compiler.peers_compiled
    rotated = replace(CREDS, trusted_ca_pem=CREDS.trusted_ca_pem * 2, revoked_fingerprints=["ab" * 32])
    changed = compiler.update_credentials(rotated)
    assert changed == set(compiler.names())
    assert compiler.peers_compiled == built and compiler.last_peers_compiled == 0
    for name in changed:
        delta = compiler.delta(name)
        assert not delta.upsert_peers and not delta.remove_peers
        assert list(delta.local.revoked_fingerprints) == ["ab" * 32]
    assert serialized({n: compiler.config(n) for n in compiler.names()}) == serialized(
        compile_mesh(spec, rotated)
    )
    assert compiler.peers_compiled == built  # the cached peer maps stayed valid
    assert compiler.update_credentials(replace(rotated)) == set()
    # the same through update(spec, creds): also LocalConfigs only
    back = compiler.update(spec, CREDS)
    assert back == set(compiler.names()) and compiler.last_peers_compiled == 0
    # a new PSK master changes the PSK peers: a real update, and exact
    keyed = replace(CREDS, psk_for=lambda a, b: b"k" * 32, psk_version="2")
    before = serialized({n: compiler.config(n) for n in compiler.names()})
    changed = compiler.update_credentials(keyed)
    after = serialized(compile_mesh(spec, keyed))
    assert changed == {n for n in after if before[n] != after[n]} and changed
    assert serialized({n: compiler.config(n) for n in compiler.names()}) == after


# --- apply_delta: byte-identical to the rebuild-and-sort reference, at O(changed x log n) --------------


def reference_apply(
    config: config_pb2.NodeConfig, delta: config_pb2.NodeConfigDelta
) -> config_pb2.NodeConfig:
    """The previous implementation: rebuild every peer by name and sort."""
    out = config_pb2.NodeConfig(version=delta.to_version)
    out.local.CopyFrom(delta.local if delta.HasField("local") else config.local)
    removed = set(delta.remove_peers)
    peers = {p.name: p for p in config.peers if p.name not in removed}
    for peer in delta.upsert_peers:
        peers[peer.name] = peer
    out.peers.extend(peers[name] for name in sorted(peers))
    return out


NAMES = st.sampled_from([f"p{i}" for i in range(12)] + ["a", "zz", "p10b"])
PEER = st.builds(
    lambda name, ep: config_pb2.PeerConfig(name=name, endpoints=[ep], digest=ep[-1:]),
    NAMES,
    st.sampled_from(["198.18.0.1", "198.18.0.2", "198.18.0.3"]),
)


@settings(max_examples=300, deadline=None)
@given(
    peers=st.lists(PEER, max_size=10),
    upserts=st.lists(PEER, max_size=5),
    removes=st.lists(NAMES, max_size=5),
    local=st.booleans(),
    has_local=st.booleans(),
)
def test_apply_delta_is_byte_identical_to_the_reference(peers, upserts, removes, local, has_local) -> None:
    config = config_pb2.NodeConfig(
        version=3, peers=sorted({p.name: p for p in peers}.values(), key=lambda p: p.name)
    )
    if has_local:
        config.local.name = "me"
    delta = config_pb2.NodeConfigDelta(to_version=4, upsert_peers=upserts, remove_peers=removes)
    if local:
        delta.local.identity = "fqdn:new"
    before = config.SerializeToString(deterministic=True)
    got = apply_delta(config, delta)
    want = reference_apply(config, delta)
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    assert config.SerializeToString(deterministic=True) == before  # the input is left untouched


def test_apply_delta_reads_log_n_peer_names_per_changed_peer() -> None:
    def config_of(n: int) -> config_pb2.NodeConfig:
        return config_pb2.NodeConfig(peers=[config_pb2.PeerConfig(name=f"p{i:05d}") for i in range(n)])

    delta = config_pb2.NodeConfigDelta(
        upsert_peers=[
            config_pb2.PeerConfig(name="p00500", endpoints=["198.18.0.9"]),
            config_pb2.PeerConfig(name="p00500x"),
        ],
        remove_peers=["p00007"],
    )
    for n in (1_000, 10_000):
        cfg = config_of(n)
        start = delta_mod.STATS["probes"]
        out = apply_delta(cfg, delta)
        probes = delta_mod.STATS["probes"] - start
        assert probes <= 3 * (math.ceil(math.log2(n)) + 2)  # 3 changed peers; a rebuild reads all n
        assert len(out.peers) == n  # one removed, one added
        assert [(p.name, list(p.endpoints)) for p in out.peers[498:501]] == [
            ("p00499", []),
            ("p00500", ["198.18.0.9"]),
            ("p00500x", []),
        ]
        assert out == reference_apply(cfg, delta)


@settings(max_examples=60, deadline=None)
@given(
    edits=EDITS, revoke=st.lists(st.booleans(), min_size=8, max_size=8), budget=st.sampled_from([0, 10**9])
)
def test_spec_and_credential_changes_together(
    edits: list[tuple[str, str, int]], revoke: list[bool], budget: int
) -> None:
    """update(spec, creds) with a new revocation list and a spec edit at once: exact below the budget
    (LocalConfigs of partially recompiled nodes included), a superset above it; configs always equal a
    full compile."""
    spec = base_spec()
    creds = CREDS
    compiler = MeshCompiler(CREDS, cache_peers=8, delta_peers=budget)
    compiler.update(spec)
    previous = serialized(compile_mesh(spec, creds))
    for (what, name, k), flip in zip(edits, revoke, strict=False):
        edit(spec, what, name, k)
        if flip:
            creds = replace(
                creds,
                revoked_fingerprints=[*creds.revoked_fingerprints, f"{len(creds.revoked_fingerprints):064x}"],
            )
        changed = compiler.update(spec, creds)
        full = serialized(compile_mesh(spec, creds))
        expected = {n for n in previous.keys() | full.keys() if previous.get(n) != full.get(n)}
        assert changed == expected if budget else changed >= expected
        for n in changed & full.keys() & previous.keys():
            if not compiler.changes[n].snapshot:  # the delta, LocalConfig included, is complete
                old = config_pb2.NodeConfig.FromString(previous[n])
                assert apply_delta(old, compiler.delta(n)).SerializeToString(deterministic=True) == full[n]
        assert serialized({n: compiler.config(n) for n in compiler.names()}) == full
        previous = full


@settings(max_examples=40, deadline=None)
@given(edits=EDITS)
def test_a_plan_above_the_delta_budget_equals_the_exact_plan(edits: list[tuple[str, str, int]]) -> None:
    """`meshctl apply --dry-run` of a fleet-wide change: planned node by node, same result."""
    old = base_spec()
    new = base_spec()
    for what, name, k in edits:
        edit(new, what, name, k)
    assert plan(old, new, CREDS, delta_peers=0) == plan(old, new, CREDS, delta_peers=None)
