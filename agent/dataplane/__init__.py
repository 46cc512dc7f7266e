"""User-space ESP data plane: TUN and UDP 500/4500 I/O loops around the sans-I/O ESP core.

Owns packet movement (TUN reads/writes, UDP sends/receives, batching, offloads) and I/O counters.
Must not implement ESP itself (meshsec.agent.esp does) nor negotiate keys (meshsec.agent.ike does).
"""

from meshsec.agent.dataplane.counters import DataplaneCounters
from meshsec.agent.dataplane.engine import Dataplane, IkeHandler
from meshsec.agent.dataplane.tables import Peer, SaTables

__all__ = ["Dataplane", "DataplaneCounters", "IkeHandler", "Peer", "SaTables"]
