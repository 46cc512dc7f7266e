"""Agent metrics: names, labels and the scrape-time Collector that reads the runtime's state.

Owns every ``meshsec_agent_*`` metric.  Nothing here is called on the packet path: the data plane keeps
bumping its plain-int counters (DataplaneCounters, the ESP core's per-SA Counters) and this Collector
reads them, together with the runtime's ``status()``, only when Prometheus scrapes.  It must not change
runtime state, hold references to SAs or keys, or import the runtime (the sources are callables).
docs/metrics.md describes every metric; keep the two in step.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshsec.api.v1 import status_pb2
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

disable_created_metrics()

# Metric names (without the `_total` suffix the exposition adds to counters).
IKE_SAS = "meshsec_agent_ike_sas"
CHILD_SAS = "meshsec_agent_child_sas"
PEERS = "meshsec_agent_peers"
PEER_UP = "meshsec_agent_peer_up"
BYTES = "meshsec_agent_bytes"
PACKETS = "meshsec_agent_packets"
DROPS = "meshsec_agent_drops"
REKEYS = "meshsec_agent_rekeys"
IKE_FAILURES = "meshsec_agent_ike_failures"
DPD_RTT_SECONDS = "meshsec_agent_dpd_rtt_seconds"
APPLIED_VERSION = "meshsec_agent_applied_version"
NODE_ERRORS = "meshsec_agent_node_errors"
INTERNAL_ERRORS = "meshsec_agent_internal_errors"
INFO = "meshsec_agent"
CONTROLLER_CONNECTED = "meshsec_agent_controller_connected"
READY = "meshsec_agent_ready"
SCRAPE_ERRORS = "meshsec_agent_scrape_errors"

IKE_STATE_LABEL = {
    status_pb2.IKE_SA_STATE_UNSPECIFIED: "unspecified",
    status_pb2.IKE_SA_STATE_DOWN: "down",
    status_pb2.IKE_SA_STATE_CONNECTING: "connecting",
    status_pb2.IKE_SA_STATE_ESTABLISHED: "established",
    status_pb2.IKE_SA_STATE_REKEYING: "rekeying",
    status_pb2.IKE_SA_STATE_DELETING: "deleting",
    status_pb2.IKE_SA_STATE_FAILED: "failed",
}
CHILD_STATE_LABEL = {
    status_pb2.CHILD_SA_STATE_UNSPECIFIED: "unspecified",
    status_pb2.CHILD_SA_STATE_INSTALLED: "installed",
    status_pb2.CHILD_SA_STATE_REKEYING: "rekeying",
    status_pb2.CHILD_SA_STATE_DELETING: "deleting",
}
# IKE states counted as "the tunnel carries traffic" for meshsec_agent_peer_up.
_UP_STATES = (status_pb2.IKE_SA_STATE_ESTABLISHED, status_pb2.IKE_SA_STATE_REKEYING)
_CARRYING = (status_pb2.CHILD_SA_STATE_INSTALLED, status_pb2.CHILD_SA_STATE_REKEYING)

# Drop reasons always exposed (as 0 until they happen) so alerts and dashboards have a series to watch.
# The data plane's EspDrop reasons (meshsec.agent.esp.errors.DropReason values) pass through unchanged.
STANDARD_DROPS = (
    ("in", "replay"),
    ("in", "icv_failure"),
    ("in", "malformed"),
    ("in", "policy"),
    ("in", "unknown_spi"),
    ("in", "expired"),
    ("in", "invalid_datagram"),
    ("out", "no_policy"),
    ("out", "no_sa"),
    ("out", "too_big"),
    ("out", "expired"),
)
# I/O-level DataplaneCounters fields that are drops: field -> (direction, reason).
_DATAPLANE_DROP_FIELDS = {
    "no_policy": ("out", "no_policy"),
    "no_sa": ("out", "no_sa"),
    "too_big": ("out", "too_big"),
    "udp_sends_failed": ("out", "udp_send_failed"),
    "invalid_datagrams": ("in", "invalid_datagram"),
    "tun_write_errors": ("in", "tun_write_error"),
}
# EspDrop reasons that are not errors (authenticated TFC padding packets): not counted as drops.
_NOT_DROPS = frozenset({"dummy"})
# NodeStatus.Counters fields used when the data plane's own counters are not available.
_STATUS_DROP_FIELDS = {
    "replay_drops": ("in", "replay"),
    "icv_failures": ("in", "icv_failure"),
    "malformed": ("in", "malformed"),
    "policy_drops": ("in", "policy"),
}

# IKE failure reasons are free text ("IKE_SA_INIT from 198.18.0.2:500: NO_PROPOSAL_CHOSEN ..."); the label
# is the first IKEv2 notify-style name in it that is not an exchange name, or a cause found by phrase.
_NOTIFY_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
_EXCHANGE_NAMES = frozenset({"IKE_SA_INIT", "IKE_AUTH", "CREATE_CHILD_SA", "INFORMATIONAL", "IKE_SA"})
_PHRASES = (
    ("half-open", "half_open_timeout"),
    ("peer dead", "peer_dead"),
    ("liveness", "peer_dead"),
    ("did not answer", "timeout"),
    ("retransmission", "timeout"),
)
MAX_REASON_LEN = 40


def failure_reason(text: str) -> str:
    """A bounded label for an IKE failure reason: "AUTHENTICATION_FAILED", "timeout", ... or "other".

    The runtime should count failures under this (not the raw text, which carries addresses and
    details), so the set of label values stays small.
    """
    for match in _NOTIFY_NAME.finditer(text):
        if match.group(0) not in _EXCHANGE_NAMES:
            return match.group(0)[:MAX_REASON_LEN]
    lowered = text.lower()
    for phrase, label in _PHRASES:
        if phrase in lowered:
            return label
    if re.fullmatch(r"[a-z0-9_]{1,40}", text):  # already a label
        return text
    return "other"


StatusFn = Callable[[], status_pb2.NodeStatus | None]
CountersFn = Callable[[], Any]  # -> DataplaneCounters | None (duck-typed: plain int attributes + drops)
FailuresFn = Callable[[], Mapping[str, int] | None]
FlagFn = Callable[[], bool]


def _none() -> None:
    return None


@dataclass
class AgentSources:
    """Where the collector reads from at scrape time; every callable must be cheap and non-blocking.

    status: the reconciler's NodeStatus (per-peer IKE/child state, counters, DPD RTT, rekeys).
    dataplane: the data plane's DataplaneCounters (drops by reason, I/O errors), or None.
    ike_failures: IKE SA failures by reason since start (e.g. {"AUTHENTICATION_FAILED": 2}), or None.
    connected / ready: control-plane state for the two gauges of the same name.
    """

    status: StatusFn = _none
    dataplane: CountersFn = _none
    ike_failures: FailuresFn = _none
    connected: FlagFn | None = None
    ready: FlagFn | None = None
    version: str = ""
    node: str = ""


def _drop_key(key: str) -> tuple[str, str]:
    """DataplaneCounters.drops key ("replay", "out_policy") -> (direction, reason)."""
    if key.startswith("out_"):
        return "out", key[4:]
    return "in", key


class AgentCollector(Collector):
    """Builds every meshsec_agent_* family from the sources, once per scrape.

    A source that raises does not fail the scrape: its families are left out and
    meshsec_agent_scrape_errors_total goes up (the error is logged at debug level, without payloads).
    """

    def __init__(self, sources: AgentSources) -> None:
        self.sources = sources
        self.scrape_errors = 0
        self._high: dict[tuple[str, tuple[str, ...]], float] = {}
        self._lock = threading.Lock()

    def _count(self, family: CounterMetricFamily, labels: list[str], value: float) -> None:
        """Add a counter sample that never goes down.

        Totals built from live SAs can dip for a moment (a rekeyed Child SA's counters leave the live
        set before they join the retired sums); Prometheus would read a dip as a counter reset and
        report a burst of traffic that never happened.  The high-water mark per series prevents it.
        """
        key = (family.name, tuple(labels))
        with self._lock:
            value = max(float(value), self._high.get(key, 0.0))
            self._high[key] = value
        family.add_metric(labels, value)

    def describe(self) -> Iterable[Any]:
        return []  # unchecked collector: families depend on the runtime's state

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # a scrape must never take the agent down
            self.scrape_errors += 1
            log.debug("metrics source %r failed: %s", fn, type(exc).__name__)
            return None

    def collect(self) -> Iterable[Any]:
        src = self.sources
        status = self._call(src.status)
        dp = self._call(src.dataplane)
        failures = self._call(src.ike_failures)

        info = InfoMetricFamily(INFO, "Agent version and node name.")
        labels = {"version": src.version or (status.agent_version if status else ""), "node": src.node}
        if status is not None and status.node:
            labels["node"] = status.node
        info.add_metric([], labels)
        yield info

        for name, fn, text in (
            (CONTROLLER_CONNECTED, src.connected, "1 while a Sync stream with a controller is open."),
            (READY, src.ready, "1 while the agent is ready (enrolled and synced once); same as /readyz."),
        ):
            if fn is not None:
                value = self._call(fn)
                if value is not None:
                    yield GaugeMetricFamily(name, text, value=1.0 if value else 0.0)

        if status is not None:
            yield from self._from_status(status)
        yield from self._drops(status, dp)
        yield from self._failures(failures)
        if dp is not None:
            yield CounterMetricFamily(
                INTERNAL_ERRORS,
                "Unexpected exceptions caught per packet by the data plane loops (bugs; the loop went on).",
                value=int(getattr(dp, "internal_errors", 0)),
            )
        yield CounterMetricFamily(
            SCRAPE_ERRORS, "Metric sources that raised during a scrape.", value=self.scrape_errors
        )

    def _from_status(self, status: status_pb2.NodeStatus) -> Iterable[Any]:
        ike = {label: 0 for label in IKE_STATE_LABEL.values() if label != "unspecified"}
        child = {label: 0 for label in CHILD_STATE_LABEL.values() if label != "unspecified"}
        up = GaugeMetricFamily(
            PEER_UP,
            "1 when the IKE SA with this peer is established and at least one Child SA is installed.",
            labels=["peer"],
        )
        rtt = GaugeMetricFamily(
            DPD_RTT_SECONDS,
            "Round trip of the last liveness check (DPD) with this peer, seconds; absent before the first.",
            labels=["peer"],
        )
        rekeys = CounterMetricFamily(
            REKEYS, "Child and IKE SA rekeys completed with this peer.", labels=["peer"]
        )
        for p in status.peers:
            ike_label = IKE_STATE_LABEL.get(p.ike_state, "unspecified")
            ike[ike_label] = ike.get(ike_label, 0) + 1
            installed = 0
            for c in p.children:
                c_label = CHILD_STATE_LABEL.get(c.state, "unspecified")
                child[c_label] = child.get(c_label, 0) + 1
                installed += c.state in _CARRYING
            up.add_metric([p.peer], 1.0 if p.ike_state in _UP_STATES and installed else 0.0)
            if p.dpd_rtt_us:
                rtt.add_metric([p.peer], p.dpd_rtt_us / 1e6)
            self._count(rekeys, [p.peer], p.rekeys)
        ike_f = GaugeMetricFamily(IKE_SAS, "Configured peers by the state of their IKE SA.", labels=["state"])
        for label, n in ike.items():
            ike_f.add_metric([label], n)
        child_f = GaugeMetricFamily(CHILD_SAS, "Child SAs by state, over all peers.", labels=["state"])
        for label, n in child.items():
            child_f.add_metric([label], n)
        yield ike_f
        yield child_f
        yield GaugeMetricFamily(PEERS, "Peers in the applied desired state.", value=len(status.peers))
        yield up
        yield rtt
        yield rekeys
        yield GaugeMetricFamily(
            APPLIED_VERSION, "Version of the NodeConfig the agent has applied.", value=status.applied_version
        )
        yield GaugeMetricFamily(
            NODE_ERRORS,
            "Node-level errors currently reported (cannot create TUN, cannot bind a port, ...).",
            value=len(status.errors),
        )
        total = status.counters
        traffic_bytes = CounterMetricFamily(
            BYTES, "ESP payload bytes over all SAs, by direction.", labels=["direction"]
        )
        self._count(traffic_bytes, ["in"], total.bytes_in)
        self._count(traffic_bytes, ["out"], total.bytes_out)
        traffic_packets = CounterMetricFamily(
            PACKETS, "ESP packets over all SAs, by direction.", labels=["direction"]
        )
        self._count(traffic_packets, ["in"], total.packets_in)
        self._count(traffic_packets, ["out"], total.packets_out)
        yield traffic_bytes
        yield traffic_packets

    def _drops(self, status: status_pb2.NodeStatus | None, dp: Any) -> Iterable[Any]:
        counts: dict[tuple[str, str], int] = dict.fromkeys(STANDARD_DROPS, 0)
        if dp is not None:
            for key, n in dict(getattr(dp, "drops", {}) or {}).items():
                if key in _NOT_DROPS or key == "out_dummy":
                    continue
                k = _drop_key(key)
                counts[k] = counts.get(k, 0) + int(n)
            for attr, k in _DATAPLANE_DROP_FIELDS.items():
                counts[k] = counts.get(k, 0) + int(getattr(dp, attr, 0))
        elif status is not None:  # no data plane counters: what the SAs counted themselves
            for attr, k in _STATUS_DROP_FIELDS.items():
                counts[k] = counts.get(k, 0) + int(getattr(status.counters, attr))
        family = CounterMetricFamily(
            DROPS, "Packets dropped, by direction and reason.", labels=["direction", "reason"]
        )
        for (direction, reason), n in sorted(counts.items()):
            self._count(family, [direction, reason], n)
        yield family

    def _failures(self, failures: Mapping[str, int] | None) -> Iterable[Any]:
        family = CounterMetricFamily(
            IKE_FAILURES,
            "IKE SA setups and Child SA negotiations that failed, by reason (notify type or local cause).",
            labels=["reason"],
        )
        merged: dict[str, int] = {}
        for reason, n in (failures or {}).items():
            label = failure_reason(str(reason))
            merged[label] = merged.get(label, 0) + int(n)
        for label, n in sorted(merged.items()):
            self._count(family, [label], n)
        yield family


def agent_registry(sources: AgentSources, *, process: bool = True) -> CollectorRegistry:
    """A registry holding the agent collector (and the process/GC/platform collectors when `process`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(sources))
    if process:
        from prometheus_client import gc_collector, platform_collector, process_collector

        process_collector.ProcessCollector(registry=registry)
        platform_collector.PlatformCollector(registry=registry)
        gc_collector.GCCollector(registry=registry)
    return registry
