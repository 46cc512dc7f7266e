"""NodeStatus (status.proto) from the host's records: per-peer IKE/child state, counters, DPD, errors.

Owns only the translation into the API message; reads the records, changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshsec.agent.runtime.sas import COUNTER_FIELDS, PeerState, Session, fill_counters
from meshsec.api.v1 import config_pb2, spec_pb2, status_pb2

AGENT_VERSION = "0.1.0"


def best_session(sessions: list[Session]) -> Session | None:
    """The session to report for a peer: established first, then the most recent."""
    if not sessions:
        return None
    return max(sessions, key=lambda s: (s.ike.state == "established", s.established_at or 0.0, s.sid))


def ike_state(s: Session) -> int:
    st = s.ike.state
    if st == "established":
        if any(c.state == "rekeying" for c in s.children.values()):
            return status_pb2.IKE_SA_STATE_REKEYING
        return status_pb2.IKE_SA_STATE_ESTABLISHED
    if st == "deleting":
        return status_pb2.IKE_SA_STATE_DELETING
    if st in ("failed", "closed"):
        return status_pb2.IKE_SA_STATE_FAILED
    return status_pb2.IKE_SA_STATE_CONNECTING


def node_status(
    desired: config_pb2.NodeConfig | None,
    sessions: Iterable[Session],
    peers: Mapping[str, PeerState],
    errors: list[str],
    dp_counters: Any,
    now: float,
) -> status_pb2.NodeStatus:
    st = status_pb2.NodeStatus(agent_version=AGENT_VERSION, errors=list(errors))
    st.reported_at.GetCurrentTime()
    if desired is None:
        return st
    st.node = desired.local.name
    st.applied_version = desired.version
    total = st.counters
    live = [s for s in sessions if not s.dead]
    for peer in desired.peers:
        ps = peers.get(peer.name, PeerState())
        p = st.peers.add(peer=peer.name, rekeys=ps.rekeys, dpd_rtt_us=ps.dpd_rtt_us)
        if ps.last_error:
            p.last_error = ps.last_error
            p.last_error_at.FromNanoseconds(int(ps.last_error_wall * 1e9))
        best = best_session([s for s in live if s.peer == peer.name])
        if best is None:
            failed = ps.last_error and ps.retry_at > now
            p.ike_state = status_pb2.IKE_SA_STATE_FAILED if failed else status_pb2.IKE_SA_STATE_DOWN
            continue
        p.ike_state = ike_state(best)
        if best.ike.remote is not None:
            p.remote_endpoint = f"{best.ike.remote[0]}:{best.ike.remote[1]}"
        p.ike_transform = best.transform
        p.nat_detected = best.ike.encap
        if best.established_at is not None:
            p.established_at.FromNanoseconds(int(best.established_wall * 1e9))
        for c in best.children.values():
            if c.state == "retiring":
                continue
            cs = p.children.add(
                name=c.name,
                state=status_pb2.CHILD_SA_STATE_INSTALLED
                if c.state == "installed"
                else status_pb2.CHILD_SA_STATE_REKEYING,
                mode=spec_pb2.MODE_TRANSPORT if c.mode == "transport" else spec_pb2.MODE_TUNNEL,
                spi_in=c.spi_in,
                spi_out=c.spi_out,
                transform=c.transform,
                local_ts=c.ts_local,
                remote_ts=c.ts_remote,
            )
            cs.established_at.FromNanoseconds(int(c.established_wall * 1e9))
            fill_counters(cs.counters, c)
            for f in COUNTER_FIELDS:
                setattr(total, f, getattr(total, f) + getattr(cs.counters, f))
    for ps in peers.values():
        for f, v in ps.retired.items():
            setattr(total, f, getattr(total, f) + v)
    if dp_counters is not None:
        total.policy_drops += dp_counters.no_policy + dp_counters.no_sa
    return st
