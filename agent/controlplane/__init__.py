"""The agent's side of the control plane: enrollment, the Sync client, the fail-static cache, Report.

Owns the agent's identity files, its connection to the controller and the on-disk copy of the last
desired state.  It hands each NodeConfig to a Reconciler and never touches IKE, ESP or the network
configuration itself.
"""

from meshsec.agent.controlplane.cache import DesiredStateCache
from meshsec.agent.controlplane.client import ControlPlaneClient, SyncEvent
from meshsec.agent.controlplane.enroll import (
    AgentIdentity,
    EnrollError,
    enroll,
    enroll_address,
    fetch_pinned_ca,
)
from meshsec.agent.controlplane.reconciler import Reconciler, RecordingReconciler

__all__ = [
    "AgentIdentity",
    "ControlPlaneClient",
    "DesiredStateCache",
    "EnrollError",
    "Reconciler",
    "RecordingReconciler",
    "SyncEvent",
    "enroll",
    "enroll_address",
    "fetch_pinned_ca",
]
