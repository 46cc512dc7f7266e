"""Controller metrics: the one place their names, labels and buckets are defined.

Owns the controller's Prometheus registry (``REGISTRY``) and the metric objects other modules import
and update (``SYNC_PUSH_SECONDS.observe(...)``, ``with COMPILE_SECONDS.time(): ...``).  It must not
import the rest of the controller: any module can import this one without cycles.  docs/metrics.md
describes every metric; keep the two in step.

A dedicated registry (rather than prometheus_client's global one) keeps a test process that imports
both the controller and the agent from mixing their metrics on one endpoint.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    gc_collector,
    platform_collector,
    process_collector,
)

# `_created` series double the series count and no dashboard here uses them.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

# Latencies in this controller span sub-millisecond (a cached compile) to seconds (etcd elections).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Label values (kept as constants so a typo is an AttributeError, not a new time series).
APPLY_OK = "ok"  # the spec was written to etcd
APPLY_DRY_RUN = "dry_run"  # validated and planned, nothing written
APPLY_INVALID = "invalid"  # validation failed (the request was wrong)
APPLY_CONFLICT = "conflict"  # the expected revision did not match (someone applied in between)
APPLY_DENIED = "denied"  # the caller is not an admin
APPLY_ERROR = "error"  # etcd or an internal error

ENROLL_OK = "ok"
ENROLL_BAD_TOKEN = "bad_token"  # unknown, expired, used or wrong-node token
ENROLL_INVALID = "invalid"  # bad node name, or CSR unparsable / wrong key type / wrong name
ENROLL_ERROR = "error"  # etcd or an internal error

INFO = Info("meshsec_controller", "Build and replica of this controller process.", registry=REGISTRY)

READY = Gauge(
    "meshsec_controller_ready",
    "1 while this replica is ready (desired state loaded and etcd answers), else 0; same as /readyz.",
    registry=REGISTRY,
)

CONNECTED_AGENTS = Gauge(
    "meshsec_controller_connected_agents",
    "Agents with an open Sync stream on this replica.",
    registry=REGISTRY,
)

SYNC_STREAMS_TOTAL = Counter(
    "meshsec_controller_sync_streams",
    "Sync streams opened on this replica.",
    registry=REGISTRY,
)

SYNC_PUSH_SECONDS = Histogram(
    "meshsec_controller_sync_push_seconds",
    "From the etcd watch event that changed a node's desired state to its NodeConfig handed to the "
    "node's Sync stream, seconds.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

COMPILE_SECONDS = Histogram(
    "meshsec_controller_compile_seconds",
    "Time to compile desired state (NodeConfigs) after a change, seconds.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

ETCD_REQUEST_SECONDS = Histogram(
    "meshsec_controller_etcd_request_seconds",
    "etcd request latency by operation (get, get_prefix, revision, put, delete, txn, grant, revoke, "
    "keepalive), seconds; failed requests included.",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

ETCD_ERRORS_TOTAL = Counter(
    "meshsec_controller_etcd_errors",
    "etcd requests that failed, by operation and error (unavailable, compacted, other).",
    ["operation", "error"],
    registry=REGISTRY,
)

APPLIES_TOTAL = Counter(
    "meshsec_controller_applies",
    "AdminService.Apply calls by result (ok, dry_run, invalid, conflict, denied, error).",
    ["result"],
    registry=REGISTRY,
)

ENROLLMENTS_TOTAL = Counter(
    "meshsec_controller_enrollments",
    "AgentService.Enroll calls by result (ok, bad_token, invalid, error).",
    ["result"],
    registry=REGISTRY,
)


# Every result exists from the start (at 0), so rate() and alerts see a series before the first event.
for _result in (APPLY_OK, APPLY_DRY_RUN, APPLY_INVALID, APPLY_CONFLICT, APPLY_DENIED, APPLY_ERROR):
    APPLIES_TOTAL.labels(_result)
for _result in (ENROLL_OK, ENROLL_BAD_TOKEN, ENROLL_INVALID, ENROLL_ERROR):
    ENROLLMENTS_TOTAL.labels(_result)


def observe_push(watch_event_monotonic: float, now: float | None = None) -> None:
    """Record one Sync push whose cause was seen (time.monotonic()) at `watch_event_monotonic`."""
    end = time.monotonic() if now is None else now
    SYNC_PUSH_SECONDS.observe(max(0.0, end - watch_event_monotonic))
