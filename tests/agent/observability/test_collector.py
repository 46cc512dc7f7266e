"""The agent's scrape-time collector: NodeStatus and data plane counters in, meshsec_agent_* out.

Pure logic with a fake status provider; the collector is read through a real prometheus_client registry
and exposition, exactly as /metrics serves it.
"""

from __future__ import annotations

import re

import pytest
from meshsec.agent.dataplane.counters import DataplaneCounters
from meshsec.agent.esp.errors import DropReason
from meshsec.agent.observability import metrics as am
from meshsec.agent.observability.metrics import AgentSources, agent_registry
from meshsec.api.v1 import status_pb2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def _status() -> status_pb2.NodeStatus:
    st = status_pb2.NodeStatus(node="a", applied_version=42, errors=["cannot bind port 500"])
    up = st.peers.add(peer="b", ike_state=status_pb2.IKE_SA_STATE_ESTABLISHED, dpd_rtt_us=1500, rekeys=3)
    up.children.add(name="b-0", state=status_pb2.CHILD_SA_STATE_INSTALLED)
    up.children.add(name="b-1", state=status_pb2.CHILD_SA_STATE_REKEYING)
    st.peers.add(peer="c", ike_state=status_pb2.IKE_SA_STATE_CONNECTING)
    st.peers.add(
        peer="d", ike_state=status_pb2.IKE_SA_STATE_FAILED, last_error="AUTHENTICATION_FAILED", rekeys=1
    )
    # established IKE SA but no Child SA: not "up"
    st.peers.add(peer="e", ike_state=status_pb2.IKE_SA_STATE_ESTABLISHED)
    c = st.counters
    c.packets_in, c.packets_out, c.bytes_in, c.bytes_out = 10, 20, 1000, 2000
    c.replay_drops, c.icv_failures, c.malformed, c.policy_drops = 1, 2, 3, 4
    return st


def _registry(sources: AgentSources) -> CollectorRegistry:
    return agent_registry(sources, process=False)


def _value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_sa_states_peers_and_traffic_from_status() -> None:
    reg = _registry(AgentSources(status=_status))
    assert _value(reg, "meshsec_agent_ike_sas", state="established") == 2
    assert _value(reg, "meshsec_agent_ike_sas", state="connecting") == 1
    assert _value(reg, "meshsec_agent_ike_sas", state="failed") == 1
    assert _value(reg, "meshsec_agent_ike_sas", state="down") == 0  # every state present, zero included
    assert _value(reg, "meshsec_agent_child_sas", state="installed") == 1
    assert _value(reg, "meshsec_agent_child_sas", state="rekeying") == 1
    assert _value(reg, "meshsec_agent_child_sas", state="deleting") == 0
    assert _value(reg, "meshsec_agent_peers") == 4
    assert _value(reg, "meshsec_agent_peer_up", peer="b") == 1
    assert _value(reg, "meshsec_agent_peer_up", peer="c") == 0
    assert _value(reg, "meshsec_agent_peer_up", peer="e") == 0
    assert _value(reg, "meshsec_agent_dpd_rtt_seconds", peer="b") == pytest.approx(0.0015)
    assert _value(reg, "meshsec_agent_dpd_rtt_seconds", peer="c") is None  # no DPD yet: no sample
    assert _value(reg, "meshsec_agent_rekeys_total", peer="b") == 3
    assert _value(reg, "meshsec_agent_rekeys_total", peer="d") == 1
    assert _value(reg, "meshsec_agent_bytes_total", direction="in") == 1000
    assert _value(reg, "meshsec_agent_bytes_total", direction="out") == 2000
    assert _value(reg, "meshsec_agent_packets_total", direction="in") == 10
    assert _value(reg, "meshsec_agent_packets_total", direction="out") == 20
    assert _value(reg, "meshsec_agent_applied_version") == 42
    assert _value(reg, "meshsec_agent_node_errors") == 1
    assert _value(reg, "meshsec_agent_info", node="a", version="") == 1


def test_drops_come_from_the_data_plane_counters_by_direction_and_reason() -> None:
    dp = DataplaneCounters(
        no_policy=5, no_sa=6, too_big=7, invalid_datagrams=8, udp_sends_failed=9, tun_write_errors=1
    )
    dp.drops.update({"replay": 11, "icv_failure": 12, "unknown_spi": 13, "out_expired": 14})
    dp.drops.update({"dummy": 99, "out_dummy": 98})  # TFC padding: not an error, not a drop
    dp.internal_errors = 2
    reg = _registry(AgentSources(status=_status, dataplane=lambda: dp))
    drops = "meshsec_agent_drops_total"
    assert _value(reg, drops, direction="in", reason="replay") == 11
    assert _value(reg, drops, direction="in", reason="icv_failure") == 12
    assert _value(reg, drops, direction="in", reason="unknown_spi") == 13
    assert _value(reg, drops, direction="out", reason="expired") == 14
    assert _value(reg, drops, direction="in", reason="malformed") == 0  # standard reasons always there
    assert _value(reg, drops, direction="out", reason="no_policy") == 5
    assert _value(reg, drops, direction="out", reason="no_sa") == 6
    assert _value(reg, drops, direction="out", reason="too_big") == 7
    assert _value(reg, drops, direction="in", reason="invalid_datagram") == 8
    assert _value(reg, drops, direction="out", reason="udp_send_failed") == 9
    assert _value(reg, drops, direction="in", reason="tun_write_error") == 1
    assert _value(reg, drops, direction="in", reason="dummy") is None
    assert _value(reg, drops, direction="out", reason="dummy") is None
    assert _value(reg, "meshsec_agent_internal_errors_total") == 2


def test_drops_fall_back_to_the_sa_counters_without_a_data_plane() -> None:
    reg = _registry(AgentSources(status=_status))
    drops = "meshsec_agent_drops_total"
    assert _value(reg, drops, direction="in", reason="replay") == 1
    assert _value(reg, drops, direction="in", reason="icv_failure") == 2
    assert _value(reg, drops, direction="in", reason="malformed") == 3
    assert _value(reg, drops, direction="in", reason="policy") == 4


def test_standard_drop_reasons_are_the_esp_cores_reasons() -> None:
    """A renamed DropReason must not silently leave the always-present drop series at zero forever."""
    esp = {r.value for r in DropReason} - {"dummy"}
    inbound = {reason for direction, reason in am.STANDARD_DROPS if direction == "in"}
    assert esp <= inbound


def test_ike_failures_by_reason_and_control_plane_gauges() -> None:
    failures = {"AUTHENTICATION_FAILED": 2, "NO_PROPOSAL_CHOSEN": 1, "timeout": 4}
    reg = _registry(
        AgentSources(
            status=_status, ike_failures=lambda: failures, connected=lambda: True, ready=lambda: False
        )
    )
    name = "meshsec_agent_ike_failures_total"
    assert _value(reg, name, reason="AUTHENTICATION_FAILED") == 2
    assert _value(reg, name, reason="timeout") == 4
    assert _value(reg, "meshsec_agent_controller_connected") == 1
    assert _value(reg, "meshsec_agent_ready") == 0


def test_counters_follow_the_source_between_scrapes() -> None:
    state = {"st": _status()}
    reg = _registry(AgentSources(status=lambda: state["st"]))
    assert _value(reg, "meshsec_agent_bytes_total", direction="in") == 1000
    nxt = _status()
    nxt.counters.bytes_in = 5000
    nxt.peers[0].children[1].state = status_pb2.CHILD_SA_STATE_INSTALLED
    state["st"] = nxt
    assert _value(reg, "meshsec_agent_bytes_total", direction="in") == 5000
    assert _value(reg, "meshsec_agent_child_sas", state="installed") == 2
    assert _value(reg, "meshsec_agent_child_sas", state="rekeying") == 0


def test_a_failing_source_costs_its_families_not_the_scrape() -> None:
    def broken() -> status_pb2.NodeStatus:
        raise RuntimeError("dictionary changed size during iteration")

    reg = _registry(AgentSources(status=broken, ike_failures=lambda: {"x": 1}))
    text = generate_latest(reg).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "meshsec_agent_ike_sas" not in names
    assert "meshsec_agent_ike_failures" in names
    assert _value(reg, "meshsec_agent_scrape_errors_total") >= 1


def test_no_status_yet_exposes_only_what_is_known() -> None:
    reg = _registry(AgentSources())
    text = generate_latest(reg).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "meshsec_agent_peers" not in names
    assert {"meshsec_agent_drops", "meshsec_agent_ike_failures", "meshsec_agent_info"} <= names


def test_every_exposed_name_is_documented() -> None:
    """docs/metrics.md lists every agent metric the collector can produce."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "metrics.md").read_text()
    dp = DataplaneCounters()
    reg = _registry(
        AgentSources(
            status=_status,
            dataplane=lambda: dp,
            ike_failures=lambda: {"x": 1},
            connected=lambda: True,
            ready=lambda: True,
        )
    )
    for family in text_string_to_metric_families(generate_latest(reg).decode()):
        shown = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{shown}`" in doc, f"{shown} missing from docs/metrics.md"
    produced = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(generate_latest(reg).decode())
    }
    documented = set(re.findall(r"`(meshsec_agent_[a-z_]+)`", doc))
    assert documented <= produced, f"documented but never produced: {documented - produced}"


@pytest.mark.parametrize(
    ("text", "label"),
    [
        (
            "AUTHENTICATION_FAILED: the responder rejected our AUTH (wrong PSK, certificate or ID?)",
            "AUTHENTICATION_FAILED",
        ),
        ("IKE_SA_INIT from 198.18.0.2:500: NO_PROPOSAL_CHOSEN for our offer", "NO_PROPOSAL_CHOSEN"),
        ("INVALID_KE_PAYLOAD: responder wants DH group 19, which we cannot use", "INVALID_KE_PAYLOAD"),
        ("INVALID_SYNTAX in IKE_AUTH response", "INVALID_SYNTAX"),
        ("peer did not answer IKE_SA_INIT after 5 retransmissions", "timeout"),
        ("half-open SA expired: no IKE_AUTH within 30 s", "half_open_timeout"),
        ("peer dead (retransmissions exhausted)", "peer_dead"),
        ("IKE_SA_INIT response: invalid responder public value: bad point", "other"),
        ("timeout", "timeout"),
    ],
)
def test_failure_reason_is_a_bounded_label(text: str, label: str) -> None:
    assert am.failure_reason(text) == label


def test_raw_failure_texts_are_merged_under_their_label() -> None:
    failures = {
        "AUTHENTICATION_FAILED: peer ID not in certificate": 1,
        "AUTHENTICATION_FAILED: the initiator rejected our AUTH": 2,
        "IKE_SA_INIT from 198.18.0.9:500: something odd": 1,
    }
    reg = _registry(AgentSources(ike_failures=lambda: failures))
    assert _value(reg, "meshsec_agent_ike_failures_total", reason="AUTHENTICATION_FAILED") == 3
    assert _value(reg, "meshsec_agent_ike_failures_total", reason="other") == 1


def test_counters_never_go_down_when_a_rekeyed_sa_leaves_the_live_totals() -> None:
    """A dip in the runtime's totals (old Child SA retiring) must not look like a counter reset."""
    state = {"st": _status()}
    reg = _registry(AgentSources(status=lambda: state["st"]))
    assert _value(reg, "meshsec_agent_bytes_total", direction="in") == 1000
    dip = _status()
    dip.counters.bytes_in = 400  # the retiring SA's 600 bytes are in neither set for a moment
    dip.peers[0].rekeys = 0
    state["st"] = dip
    assert _value(reg, "meshsec_agent_bytes_total", direction="in") == 1000
    assert _value(reg, "meshsec_agent_rekeys_total", peer="b") == 3
    back = _status()
    back.counters.bytes_in = 1300  # retired sums caught up, plus new traffic
    state["st"] = back
    assert _value(reg, "meshsec_agent_bytes_total", direction="in") == 1300
