"""The demo's success criteria: a partial stack fails at the right step, with a reason that says what."""

from __future__ import annotations

import json

from meshsec.api.v1 import admin_pb2, status_pb2
from meshsec.controller.demo import checks

EXPECTED = {"a": {"b": {"hosts", "sites"}}, "b": {"a": {"hosts", "sites"}}}
EST = status_pb2.IKE_SA_STATE_ESTABLISHED
INSTALLED = status_pb2.CHILD_SA_STATE_INSTALLED


def node(name: str, peer: str, ike: int = EST, children: dict[str, tuple[int, int, int]] | None = None):  # type: ignore[no-untyped-def]
    """children: name -> (state, packets in, packets out)."""
    kids = children if children is not None else {"hosts": (INSTALLED, 0, 0), "sites": (INSTALLED, 0, 0)}
    return status_pb2.NodeStatus(
        node=name,
        peers=[
            status_pb2.PeerStatus(
                peer=peer,
                ike_state=ike,
                children=[
                    status_pb2.ChildSaStatus(
                        name=n, state=st, counters=status_pb2.Counters(packets_in=pin, packets_out=pout)
                    )
                    for n, (st, pin, pout) in kids.items()
                ],
            )
        ],
    )


def status(*nodes: status_pb2.NodeStatus) -> admin_pb2.GetStatusResponse:
    return admin_pb2.GetStatusResponse(nodes=list(nodes))


def texts(resp: admin_pb2.GetStatusResponse) -> list[str]:
    return [p.text for p in checks.sa_problems(EXPECTED, resp)]


def test_all_up_means_no_problems() -> None:
    assert texts(status(node("a", "b"), node("b", "a"))) == []


def test_an_agent_without_ike_is_named_as_such() -> None:
    got = texts(status(node("a", "b", ike=status_pb2.IKE_SA_STATE_UNSPECIFIED), node("b", "a")))
    assert got == [
        "a → b: IKE UNSPECIFIED (the agent reports no IKE state at all: is its IKE runtime running?)"
    ]


def test_a_half_open_or_failed_sa_shows_from_the_side_that_sees_it() -> None:
    a = node("a", "b")
    a.peers[0].ike_state = status_pb2.IKE_SA_STATE_FAILED
    a.peers[0].last_error = "AUTHENTICATION_FAILED: peer ID not in certificate"
    got = texts(status(a, node("b", "a")))
    assert got == ["a → b: IKE FAILED, last error: AUTHENTICATION_FAILED: peer ID not in certificate"]


def test_missing_reports_peers_and_child_sas_are_each_reported() -> None:
    assert texts(status(node("a", "b"))) == ["b: no status report yet"]
    only_hosts = node("b", "a", children={"hosts": (INSTALLED, 0, 0)})
    assert texts(status(node("a", "b"), only_hosts)) == ["b → a: child SA 'sites' missing"]
    deleting = node(
        "b", "a", children={"hosts": (INSTALLED, 0, 0), "sites": (status_pb2.CHILD_SA_STATE_DELETING, 0, 0)}
    )
    assert texts(status(node("a", "b"), deleting)) == ["b → a: child SA 'sites' DELETING"]
    only_hosts.peers[0].last_error = "child sites: NO_PROPOSAL_CHOSEN"
    assert texts(status(node("a", "b"), only_hosts)) == [
        "b → a: child SA 'sites' missing, last error: child sites: NO_PROPOSAL_CHOSEN"
    ]
    other_peer = status(node("a", "b"), node("b", "zed"))
    assert texts(other_peer) == ["b → a: peer not reported"]


def test_node_level_errors_are_problems() -> None:
    a = node("a", "b")
    a.errors.append("cannot create TUN: EPERM")
    assert texts(status(a, node("b", "a"))) == ["a: cannot create TUN: EPERM"]


def test_count_sas_counts_each_pair_once() -> None:
    assert checks.count_sas(EXPECTED) == (1, 2)


def test_a_ping_counts_as_through_esp_only_if_both_ends_counted_it() -> None:
    before = checks.child_counters(status(node("a", "b"), node("b", "a")))
    sent = node("a", "b", children={"hosts": (INSTALLED, 3, 3), "sites": (INSTALLED, 0, 0)})
    got = node("b", "a", children={"hosts": (INSTALLED, 3, 3), "sites": (INSTALLED, 0, 0)})
    after = checks.child_counters(status(sent, got))
    assert checks.through_esp(before, after, "a", "b", "hosts", 3)
    assert not checks.through_esp(before, after, "a", "b", "sites", 3)  # went over the other SA
    deaf = node("b", "a", children={"hosts": (INSTALLED, 0, 3), "sites": (INSTALLED, 0, 0)})
    assert not checks.through_esp(before, checks.child_counters(status(sent, deaf)), "a", "b", "hosts", 3)
    assert not checks.through_esp(before, before, "a", "b", "hosts", 3)  # answered in the clear


def test_ping_and_iperf_output_parsing() -> None:
    out = (
        "--- 198.18.0.2 ping statistics ---\n3 packets transmitted, 2 received, 33% packet loss, time 401ms\n"
    )
    assert checks.ping_received(out) == (3, 2)
    assert checks.ping_received("connect: Network is unreachable\n") == (0, 0)
    good = json.dumps({"end": {"sum_received": {"bytes": 123456, "bits_per_second": 4.2e8}}})
    assert checks.iperf_result(good) == checks.IperfResult(True, 4.2e8, 123456, "")
    refused = json.dumps({"error": "unable to connect to server: Connection refused"})
    assert checks.iperf_result(refused).error.endswith("Connection refused")
    assert not checks.iperf_result("garbage").ok


def test_a_child_sa_in_the_wrong_mode_is_a_problem_and_shared_ike_sas_are_listed() -> None:
    from meshsec.api.v1 import spec_pb2

    modes = {"hosts": "transport", "sites": "tunnel"}
    a, b = node("a", "b"), node("b", "a")
    for n in (a, b):
        n.peers[0].children[0].mode = spec_pb2.MODE_TRANSPORT
        n.peers[0].children[1].mode = spec_pb2.MODE_TUNNEL
    assert checks.sa_problems(EXPECTED, status(a, b), modes) == []
    assert checks.shared_ike_sas(status(a, b)) == [("a", "b", [("hosts", "transport"), ("sites", "tunnel")])]
    b.peers[0].children[0].mode = spec_pb2.MODE_TUNNEL  # b installed "hosts" as a tunnel
    got = [p.text for p in checks.sa_problems(EXPECTED, status(a, b), modes)]
    assert got == ["b → a: child SA 'hosts' is in tunnel mode, want transport"]
