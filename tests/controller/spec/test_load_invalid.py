"""Each kind of invalid mesh.yaml gives exactly the expected one-line errors (file, line, field, reason)."""

from __future__ import annotations

import textwrap

import pytest
from meshsec.controller.spec import SpecInvalid, load_spec

HEAD = """\
apiVersion: meshsec.io/v1
kind: Mesh
"""

NODES = """\
nodes:
  - name: a
    endpoints: ["198.18.0.1"]
    subnets: [198.19.0.0/24]
  - name: b
    endpoints: ["198.18.0.2"]
    subnets: [198.19.1.0/24]
"""

MESH = """\
policies:
  - name: mesh
    members: {all: true}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(SpecInvalid) as info:
        load_spec(textwrap.dedent(text), "mesh.yaml")
    return [str(p) for p in info.value.errors]


def test_unknown_field_suggests_the_right_one() -> None:
    text = HEAD + NODES.replace("    subnets: [198.19.1.0/24]", "    subnet: [198.19.1.0/24]") + MESH
    assert errors(text) == [
        "mesh.yaml:9: nodes[1].subnet: unknown field 'subnet'; did you mean 'subnets'?",
        "mesh.yaml:11: policies[0]: node 'b' has no subnets (nor site subnets) to protect in tunnel mode",
    ]


def test_snake_case_field_suggests_camel_case() -> None:
    text = HEAD + NODES + "    behind_nat: true\n" + MESH
    assert errors(text) == [
        "mesh.yaml:10: nodes[1].behind_nat: unknown field 'behind_nat'; did you mean 'behindNat'?"
    ]


def test_wrong_types() -> None:
    text = HEAD + NODES.replace("[198.19.1.0/24]", "198.19.1.0/24").replace("name: a", "name: 7") + MESH
    assert errors(text) == [
        "mesh.yaml:4: nodes[0].name: expected a string, got integer '7' (quote it)",
        "mesh.yaml:9: nodes[1].subnets: expected a list, got string '198.19.1.0/24'",
        "mesh.yaml:11: policies[0]: node 'b' has no subnets (nor site subnets) to protect in tunnel mode",
    ]


def test_bad_cidrs() -> None:
    text = (
        HEAD + NODES.replace("198.19.0.0/24", "10.0.0.0/33").replace("198.19.1.0/24", "198.19.1.1/24") + MESH
    )
    assert errors(text) == [
        "mesh.yaml:6: nodes[0].subnets[0]: '10.0.0.0/33' is not a CIDR",
        "mesh.yaml:9: nodes[1].subnets[0]: '198.19.1.1/24' has host bits set; did you mean '198.19.1.0/24'?",
        "mesh.yaml:11: policies[0]: node 'a' has no subnets (nor site subnets) to protect in tunnel mode",
        "mesh.yaml:11: policies[0]: node 'b' has no subnets (nor site subnets) to protect in tunnel mode",
    ]


def test_bad_endpoints() -> None:
    text = HEAD + NODES.replace('"198.18.0.1"', '"198.18.0.1:99999", "fd00::1:4500x", "[fd00::1]:500"') + MESH
    assert errors(text) == [
        "mesh.yaml:5: nodes[0].endpoints[0]: '198.18.0.1:99999' is not an endpoint (port must be 1-65535)",
        "mesh.yaml:5: nodes[0].endpoints[1]: 'fd00::1:4500x' is not an endpoint "
        '(write IPv6 with a port as "[fd00::1]:4500")',
    ]


def test_overlapping_subnets_between_nodes_and_sites() -> None:
    text = (
        HEAD
        + NODES.replace("198.19.1.0/24", "198.19.0.128/25")
        + MESH
        + textwrap.dedent("""\
        sites:
          - name: hq
            subnets: [198.19.0.0/16]
        """)
    )
    assert errors(text) == [
        "mesh.yaml:9: nodes[1].subnets[0]: 198.19.0.128/25 overlaps 198.19.0.0/24 of node 'a' (line 6); "
        "routed subnets must not overlap",
        "mesh.yaml:15: sites[0].subnets[0]: 198.19.0.0/16 overlaps 198.19.0.0/24 of node 'a' (line 6); "
        "routed subnets must not overlap",
        "mesh.yaml:15: sites[0].subnets[0]: 198.19.0.0/16 overlaps 198.19.0.128/25 of node 'b' (line 9); "
        "routed subnets must not overlap",
    ]


def test_node_subnet_inside_its_own_site_is_fine() -> None:
    text = (
        HEAD
        + NODES.replace("    subnets: [198.19.1.0/24]", "    site: hq\n    subnets: [198.19.1.0/24]")
        + MESH
    )
    text += "sites:\n  - name: hq\n    subnets: [198.19.1.0/24, fd00:1::/64]\n"
    spec = load_spec(text, "mesh.yaml")
    assert spec.nodes[1].site == "hq"


def test_duplicate_names() -> None:
    text = (
        HEAD + NODES + "  - name: a\n    endpoints: [198.18.0.3]\n" + MESH + MESH.replace("policies:\n", "")
    )
    assert errors(text) == [
        "mesh.yaml:10: nodes[2].name: duplicate node name 'a' (first defined at line 4)",
        "mesh.yaml:15: policies[1].name: duplicate policy name 'mesh' (first defined at line 13)",
    ]


def test_dangling_references() -> None:
    text = HEAD + NODES.replace(
        "    subnets: [198.19.1.0/24]", "    subnets: [198.19.1.0/24]\n    site: berln"
    )
    text += "sites:\n  - name: berlin\n    subnets: [198.19.16.0/20]\n"
    text += textwrap.dedent("""\
        policies:
          - name: p
            topology: pairs
            pairs: [[a, bb]]
            profile: fsat
          - name: q
            topology: hub-and-spoke
            hubs: {nodes: [a]}
            spokes: {sites: [paris]}
        profiles:
          - name: fast
        """)
    assert errors(text) == [
        "mesh.yaml:10: nodes[1].site: unknown site 'berln'; did you mean 'berlin'?",
        "mesh.yaml:17: policies[0].pairs[0]: unknown node 'bb'; did you mean 'b'?",
        "mesh.yaml:18: policies[0].profile: unknown profile 'fsat'; did you mean 'fast'?",
        "mesh.yaml:22: policies[1].spokes: selects no node",
        "mesh.yaml:22: policies[1].spokes.sites[0]: unknown site 'paris'",
    ]


def test_bad_lifetimes() -> None:
    text = (
        HEAD
        + NODES
        + MESH
        + textwrap.dedent("""\
        profiles:
          - name: default
            ike: {rekey: 4x}
            esp:
              rekey: 2h
              life: 1h
              rekeyBytes: 2GiB
              lifeBytes: 1GiB
            dpd: {interval: 30s, timeout: 10s}
        """)
    )
    assert errors(text) == [
        "mesh.yaml:15: profiles[0].ike.rekey: '4x' is not a duration "
        '(use e.g. "4h", "30m", "45s", "1h30m")',
        "mesh.yaml:17: profiles[0].esp.rekey: rekey (2h) must be shorter than life (1h)",
        "mesh.yaml:19: profiles[0].esp.rekeyBytes: rekeyBytes (2147483648) must be smaller than "
        "lifeBytes (1073741824)",
        "mesh.yaml:21: profiles[0].dpd.timeout: DPD timeout must be longer than the DPD interval",
    ]


def test_unknown_and_malformed_algorithms() -> None:
    text = (
        HEAD
        + NODES
        + MESH
        + textwrap.dedent("""\
        profiles:
          - name: default
            ike:
              proposals: [aes128gcm16-prfsha256-x25519, aes129-sha256-x25519, aes128gcm16-x25519,
                          aes256-sha256]
            esp:
              proposals: [aes128gcm16, chacha20poly1305-esn, aes256-sha256-noesn, aes128gcm16-sha256,
                          aes128-prfsha256]
        """)
    )
    assert errors(text) == [
        "mesh.yaml:16: profiles[0].ike.proposals[1]: unknown algorithm 'aes129' in ike proposal "
        "'aes129-sha256-x25519'; did you mean 'aes128'?",
        "mesh.yaml:16: profiles[0].ike.proposals[2]: ike proposal 'aes128gcm16-x25519' needs a PRF "
        "with an AEAD cipher (e.g. aes128gcm16-prfsha256-x25519)",
        "mesh.yaml:17: profiles[0].ike.proposals[3]: ike proposal 'aes256-sha256' has no key exchange group "
        "(e.g. x25519)",
        "mesh.yaml:19: profiles[0].esp.proposals[3]: esp proposal 'aes128gcm16-sha256' combines an "
        "AEAD cipher with an integrity algorithm; drop 'sha256'",
        "mesh.yaml:20: profiles[0].esp.proposals[4]: 'prfsha256' is not allowed in an esp proposal "
        "'aes128-prfsha256'",
    ]


def test_policy_selecting_nothing_or_too_little() -> None:
    text = (
        HEAD
        + NODES
        + textwrap.dedent("""\
        policies:
          - name: empty
            members: {labels: {role: db}}
          - name: lonely
            members: {nodes: [a]}
        """)
    )
    assert errors(text) == [
        "mesh.yaml:12: policies[0].members: selects no node",
        "mesh.yaml:14: policies[1].members: selects only 'a'; a full mesh needs at least 2 nodes",
    ]


def test_unknown_api_version_and_kind() -> None:
    text = "apiVersion: meshsec.io/v2\nkind: Mash\n" + NODES + MESH
    assert errors(text) == [
        "mesh.yaml:1: apiVersion: unknown apiVersion 'meshsec.io/v2'; this controller reads 'meshsec.io/v1'",
        "mesh.yaml:2: kind: unknown kind 'Mash'; expected 'Mesh'",
    ]
    assert errors(NODES + MESH) == ["mesh.yaml:1: apiVersion: missing; add 'apiVersion: meshsec.io/v1'"]


def test_invalid_node_names() -> None:
    text = HEAD + NODES.replace("name: a", "name: Gateway_1").replace("name: b", "name: -b") + MESH
    reason = (
        "is not a valid name (a DNS label: lowercase letters, digits and '-', starting and ending with a "
        "letter or digit, at most 63 characters)"
    )
    assert errors(text) == [
        f"mesh.yaml:4: nodes[0].name: 'Gateway_1' {reason}",
        f"mesh.yaml:7: nodes[1].name: '-b' {reason}",
    ]


def test_yaml_syntax_error_and_empty_document() -> None:
    assert errors(HEAD + "nodes:\n  - name: [a\n") == [
        "mesh.yaml:5: invalid YAML: did not find expected ',' or ']'"
    ]
    assert errors("") == [
        "mesh.yaml:1: empty document; expected a mapping starting with 'apiVersion: meshsec.io/v1'"
    ]
    assert errors("- 1\n") == ["mesh.yaml:1: expected a mapping, got a list"]


def test_topology_fields_and_external_nodes() -> None:
    text = (
        HEAD
        + NODES
        + "  - name: fw\n    kind: external\n    auth: token\n"
        + textwrap.dedent("""\
        policies:
          - name: mesh
            members: {all: true}
            hubs: {nodes: [a]}
          - name: p
            topology: pairs
            pairs: [[a, a]]
        """)
    )
    assert errors(text) == [
        "mesh.yaml:10: nodes[2].endpoints: an external node needs at least one endpoint (we initiate to it)",
        "mesh.yaml:12: nodes[2].auth: 'token' is not one of certificate, psk",
        "mesh.yaml:16: policies[0].hubs: 'hubs' does not apply to topology 'full-mesh' (it uses members)",
        "mesh.yaml:19: policies[1].pairs[0]: a node cannot pair with itself ('a')",
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = HEAD + NODES.replace("198.19.0.0/24", "198.19.0.0/33").replace("name: b", "name: B") + MESH
    text = text.replace("apiVersion: meshsec.io/v1", "apiVersion: v1")
    assert len(errors(text)) == 4


def test_hostile_yaml_is_refused_not_crashed_on() -> None:
    # libyaml's composer recurses in C: without the depth check this kills the process
    assert errors("[" * 100_000) == ["mesh.yaml:1: invalid YAML: nested deeper than 64 levels"]
    assert errors(HEAD + "nodes: &a [*a]\n") == ["mesh.yaml:3: nodes[0]: expected a mapping, got a list"]
    assert errors("\x00") == [
        "mesh.yaml: invalid YAML: unacceptable character #x0000: control characters are not allowed"
    ]
