"""The seam between the control plane client and whatever realizes the desired state.

The IKE/ESP data plane will implement Reconciler; until then RecordingReconciler records what it was
asked to apply and reports it, which is all the control plane needs to be tested end to end.
"""

from __future__ import annotations

from typing import Protocol

from meshsec.api.v1 import config_pb2, status_pb2

AGENT_VERSION = "0.1.0"


class Reconciler(Protocol):
    """Converges the host to a NodeConfig (level-triggered: apply may be called again with the same)."""

    async def apply(self, config: config_pb2.NodeConfig) -> None: ...

    def status(self) -> status_pb2.NodeStatus: ...


class RecordingReconciler:
    """Keeps every applied NodeConfig; status() reports the last applied version."""

    def __init__(self) -> None:
        self.applied: list[config_pb2.NodeConfig] = []

    async def apply(self, config: config_pb2.NodeConfig) -> None:
        copy = config_pb2.NodeConfig()
        copy.CopyFrom(config)
        self.applied.append(copy)

    def status(self) -> status_pb2.NodeStatus:
        st = status_pb2.NodeStatus(agent_version=AGENT_VERSION)
        if self.applied:
            last = self.applied[-1]
            st.node = last.local.name
            st.applied_version = last.version
            st.peers.extend(status_pb2.PeerStatus(peer=p.name) for p in last.peers)
        st.reported_at.GetCurrentTime()
        return st
