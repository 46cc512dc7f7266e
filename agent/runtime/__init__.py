"""The agent runtime: turns a NodeConfig into running IKE SAs, installed ESP SAs and routes.

Owns the reconcile plan (plan.py, pure), the mapping from PeerConfig to IKE settings and from
negotiated Child SAs to ESP SA parameters (mapping.py, pure) and the asyncio host that wires the IKE
engine, the data plane and netcfg together (host.py).  It must not implement protocol logic itself:
IKE lives in meshsec.agent.ike, ESP in meshsec.agent.esp, packet I/O in meshsec.agent.dataplane.
"""

from meshsec.agent.runtime.host import AgentRuntime, RuntimeOptions
from meshsec.agent.runtime.plan import diff

__all__ = ["AgentRuntime", "RuntimeOptions", "diff"]
