"""The demo's plan: a valid mesh.yaml, addresses only from the test ranges, SAs as the compiler says."""

from __future__ import annotations

import ipaddress

import pytest
from meshsec.controller.demo.plan import HOSTS_POLICY, SITES_POLICY, make_plan

UNDERLAY = ipaddress.ip_network("198.18.0.0/15")
SITES = ipaddress.ip_network("198.19.0.0/16")


@pytest.mark.parametrize("nodes", [2, 3, 4, 12])
def test_the_mesh_yaml_is_valid_and_every_pair_gets_the_expected_child_sas(nodes: int) -> None:
    plan = make_plan(nodes)
    spec = plan.spec()  # raises SpecInvalid if the controller would reject it
    assert [n.name for n in spec.nodes] == [f"host-{i}" for i in range(1, nodes + 1)]
    expected = plan.expected()
    for a in expected:
        assert set(expected[a]) == {h.name for h in plan.hosts} - {a}  # full mesh
        for b, children in expected[a].items():
            gateways = {"host-1", "host-2"}
            # the gateway pair's one IKE SA carries a transport child (the gateways themselves) and a
            # tunnel child (their LANs); every other pair only the transport child
            want = {HOSTS_POLICY, SITES_POLICY} if {a, b} == gateways else {HOSTS_POLICY}
            assert children == want, (a, b)
    assert plan.modes() == {HOSTS_POLICY: "transport", SITES_POLICY: "tunnel"}
    compiled = {p.mode for p in spec.policies}
    assert len(compiled) == 2  # both modes are in the spec the controller gets


def test_addresses_stay_inside_the_ranges_reserved_for_tests() -> None:
    plan = make_plan(12)
    for h in plan.hosts:
        assert ipaddress.ip_address(h.underlay) in UNDERLAY
        if h.lan_address:
            assert ipaddress.ip_interface(h.lan_address).ip in SITES
    for lan in plan.lans:
        assert ipaddress.ip_interface(lan.address).ip in ipaddress.ip_network(lan.subnet)
        assert ipaddress.ip_network(lan.subnet).subnet_of(SITES)
    assert len({h.underlay for h in plan.hosts}) == 12


def test_the_ping_matrix_covers_every_ordered_pair_once() -> None:
    plan = make_plan(4)
    pairs = plan.ping_pairs()
    hosts = [(s, d) for s, d, _, child in pairs if s.startswith("host-")]
    lans = [(s, d) for s, d, _, child in pairs if s.startswith("lan-")]
    assert len(hosts) == len(set(hosts)) == 4 * 3
    assert sorted(lans) == [("lan-a", "lan-b"), ("lan-b", "lan-a")]
    # every host pair, the gateways too, talks in transport mode; only the LANs use the tunnel
    assert all(child == HOSTS_POLICY for s, _, _, child in pairs if s.startswith("host-"))
    assert all(child == SITES_POLICY for s, _, _, child in pairs if s.startswith("lan-"))
    assert ("lan-a", "lan-b", "198.19.2.10", SITES_POLICY) in pairs


@pytest.mark.parametrize("nodes", [0, 1, 13])
def test_node_counts_outside_the_supported_range_are_refused(nodes: int) -> None:
    with pytest.raises(ValueError, match="--nodes must be between 2 and 12"):
        make_plan(nodes)
