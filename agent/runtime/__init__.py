"""The agent runtime: turns a NodeConfig into running IKE SAs, installed ESP SAs and routes.

Owns the reconcile plan (plan.py, pure), the mapping from PeerConfig to IKE settings and from
negotiated Child SAs to ESP SA parameters (mapping.py, pure), the asyncio host that wires the IKE
engine, the data plane and netcfg together (host.py) with its SA bookkeeping (sas.py), TUN routes
(routes.py) and status report (status.py), and `python -m meshsec.agent.runtime` (__main__.py), which
runs an agent from a NodeConfig file without a controller.  It must not implement protocol logic itself:
IKE lives in meshsec.agent.ike, ESP in meshsec.agent.esp, packet I/O in meshsec.agent.dataplane.
"""

from meshsec.agent.runtime.host import AgentRuntime, RuntimeOptions
from meshsec.agent.runtime.plan import diff

__all__ = ["AgentRuntime", "RuntimeOptions", "diff"]
