"""Valid specs load with the documented defaults, dump back to the same spec, and garbage never crashes."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshsec.api.v1 import spec_pb2
from meshsec.controller.spec import SpecInvalid, dump_spec, load_spec

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "mesh.yaml"


def test_documented_example_loads() -> None:
    spec = load_spec(EXAMPLE.read_text(), "mesh.yaml")
    assert [n.name for n in spec.nodes][:2] == ["gw-berlin", "gw-paris"]
    fw = next(n for n in spec.nodes if n.name == "legacy-fw")
    assert fw.kind == spec_pb2.NODE_KIND_EXTERNAL and fw.auth == spec_pb2.AUTH_METHOD_PSK
    fast = next(p for p in spec.profiles if p.name == "fast")
    assert fast.child_lifetime.rekey_seconds == 1200 and fast.child_lifetime.life_bytes == 2 * 2**30
    branches = next(p for p in spec.policies if p.name == "branches")
    assert branches.topology == spec_pb2.TOPOLOGY_HUB_AND_SPOKE and list(branches.hubs.nodes) == ["gw-berlin"]
    assert dict(branches.members.labels) == {"role": "branch"}


def test_defaults_are_what_a_strongswan_user_expects() -> None:
    spec = load_spec(
        "apiVersion: meshsec.io/v1\n"
        "nodes: [{name: a, endpoints: [198.18.0.1], subnets: [198.19.0.1/32]},\n"
        "        {name: b, endpoints: [198.18.0.2], subnets: [198.19.0.2/32]}]\n"
        "policies: [{name: mesh, members: {all: true}}]\n",
        "mesh.yaml",
    )
    (profile,) = spec.profiles
    assert profile.name == "default"
    assert list(profile.ike_proposals) == ["aes128gcm16-prfsha256-x25519", "aes256-sha256-modp2048"]
    assert profile.esp_proposals[0] == "aes128gcm16"
    assert (profile.ike_lifetime.rekey_seconds, profile.ike_lifetime.life_seconds) == (
        4 * 3600,
        4 * 3600 + 1440,
    )
    assert (profile.child_lifetime.rekey_seconds, profile.child_lifetime.life_seconds) == (3600, 3960)
    assert profile.dpd_interval_seconds == 30 and profile.auth == spec_pb2.AUTH_METHOD_CERTIFICATE
    (policy,) = spec.policies
    assert policy.topology == spec_pb2.TOPOLOGY_FULL_MESH and policy.mode == spec_pb2.MODE_TUNNEL
    assert policy.profile == "default" and policy.include_site_subnets


def test_round_trip_through_yaml() -> None:
    spec = load_spec(EXAMPLE.read_text(), "mesh.yaml")
    text = dump_spec(spec)
    again = load_spec(text, "dumped.yaml")
    assert again == spec
    assert dump_spec(again) == text


_KEYS = st.sampled_from(
    [
        "apiVersion",
        "kind",
        "nodes",
        "sites",
        "profiles",
        "policies",
        "name",
        "endpoints",
        "subnets",
        "labels",
        "site",
        "ike",
        "esp",
        "proposals",
        "rekey",
        "life",
        "members",
        "hubs",
        "spokes",
        "pairs",
        "all",
        "mode",
        "topology",
        "profile",
        "dpd",
        "interval",
        "behindNat",
        "identity",
        "kind",
        "auth",
        "a",
        "b",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2**70),
    st.floats(allow_nan=False),
    st.sampled_from(
        [
            "meshsec.io/v1",
            "Mesh",
            "a",
            "b",
            "198.19.0.0/24",
            "198.18.0.1",
            "[fd00::1]:4500",
            "aes128gcm16",
            "4h",
            "4x",
            "full-mesh",
            "pairs",
            "hub-and-spoke",
            "tunnel",
            "psk",
            "fqdn:x",
            "external",
            "1GiB",
            "fd00::/8",
            "default",
        ]
    ),
    st.text(max_size=12),
)
_DOCS = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(_KEYS, _DOCS, max_size=6), version=st.booleans())
def test_structured_garbage_only_raises_spec_invalid(doc: dict, version: bool) -> None:
    if version:
        doc["apiVersion"] = "meshsec.io/v1"
    text = yaml.safe_dump(doc)
    try:
        load_spec(text, "fuzz.yaml")
    except SpecInvalid as exc:
        assert exc.errors and all(str(p).startswith("fuzz.yaml") for p in exc.errors)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab:- []{}\n#&*!|>'\"%@`,?1/.\t\x00é")), max_size=80))
def test_arbitrary_text_only_raises_spec_invalid(text: str) -> None:
    try:
        load_spec(text, "fuzz.yaml")
    except SpecInvalid as exc:
        assert all("\n" not in str(p) for p in exc.errors)


_LABEL_TEXT = st.text(alphabet=st.sampled_from(list("abz09-_.:/ #'\"é{}[]")), min_size=1, max_size=8)
_PROPOSALS_IKE = st.sampled_from(
    ["aes128gcm16-prfsha256-x25519", "aes256-sha384-ecp384", "chacha20poly1305-prfsha512-modp2048-x25519"]
)
_PROPOSALS_ESP = st.sampled_from(
    ["aes128gcm16", "aes256-sha256-noesn", "chacha20poly1305-esn", "aes128-sha512-ecp256"]
)


@st.composite
def valid_specs(draw: st.DrawFn) -> spec_pb2.MeshSpec:
    spec = spec_pb2.MeshSpec()
    spec.sites.add(
        name="s1",
        subnets=["198.19.128.0/20", "fd00:1::/64"],
        labels=draw(st.dictionaries(_LABEL_TEXT, _LABEL_TEXT, max_size=2)),
    )
    for i in range(draw(st.integers(2, 6))):
        node = spec.nodes.add(name=f"n{i}", kind=spec_pb2.NODE_KIND_AGENT, subnets=[f"198.19.{i}.0/24"])
        node.endpoints.extend(
            draw(
                st.sampled_from([[f"198.18.0.{i + 1}"], [f"[fd00::{i + 1}]:4500", f"198.18.1.{i + 1}:4500"]])
            )
        )
        node.labels.update(draw(st.dictionaries(_LABEL_TEXT, _LABEL_TEXT, max_size=3)))
        node.behind_nat = draw(st.booleans()) and i > 0
        if draw(st.booleans()):
            node.site = "s1"
        if draw(st.booleans()):
            node.identity = f"email:n{i}@example.net"
    spec.nodes.add(
        name="fw",
        kind=spec_pb2.NODE_KIND_EXTERNAL,
        endpoints=["198.18.9.9"],
        subnets=["198.19.200.0/24"],
        auth=draw(st.sampled_from([spec_pb2.AUTH_METHOD_PSK, spec_pb2.AUTH_METHOD_CERTIFICATE])),
    )
    rekey = draw(st.integers(1, 10**6))
    profile = spec.profiles.add(
        name="p",
        auth=draw(st.sampled_from([spec_pb2.AUTH_METHOD_PSK, spec_pb2.AUTH_METHOD_CERTIFICATE])),
        ike_proposals=draw(st.lists(_PROPOSALS_IKE, min_size=1, max_size=3)),
        esp_proposals=draw(st.lists(_PROPOSALS_ESP, min_size=1, max_size=3)),
        dpd_interval_seconds=draw(st.integers(0, 100)),
        dpd_timeout_seconds=draw(st.integers(101, 1000)),
    )
    profile.ike_lifetime.CopyFrom(
        spec_pb2.Lifetime(
            rekey_seconds=rekey,
            life_seconds=rekey + draw(st.integers(1, 10**5)),
            jitter_seconds=draw(st.integers(0, rekey - 1)),
        )
    )
    rb = draw(st.integers(0, 2**40))
    profile.child_lifetime.CopyFrom(
        spec_pb2.Lifetime(
            rekey_seconds=rekey,
            life_seconds=rekey * 2,
            jitter_seconds=0,
            rekey_bytes=rb,
            life_bytes=rb * 2 + 1 if rb else 0,
            rekey_packets=0,
            life_packets=draw(st.integers(0, 10**9)),
        )
    )
    spec.profiles.append(load_spec("apiVersion: meshsec.io/v1\n", "x").profiles[0])  # the implicit default
    spec.policies.add(
        name="mesh",
        topology=spec_pb2.TOPOLOGY_FULL_MESH,
        members=spec_pb2.Selector(all=True),
        mode=spec_pb2.MODE_TUNNEL,
        profile=draw(st.sampled_from(["p", "default"])),
        include_site_subnets=draw(st.booleans()),
    )
    spec.policies.add(
        name="ext",
        topology=spec_pb2.TOPOLOGY_PAIRS,
        pairs=[spec_pb2.NodePair(a="n0", b="fw")],
        mode=spec_pb2.MODE_TUNNEL,
        profile="p",
        include_site_subnets=True,
    )
    return spec


@settings(max_examples=40, deadline=None)
@given(spec=valid_specs())
def test_dump_then_load_is_the_identity(spec: spec_pb2.MeshSpec) -> None:
    text = dump_spec(spec)
    assert load_spec(text, "dumped.yaml") == spec
