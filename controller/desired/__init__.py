"""The desired state a replica serves: compile inputs read from etcd, lazily built NodeConfigs,
per-node deltas, versions.

Owns the replica's in-memory view (kept current by an etcd watch), the bounded per-node delta
history used for live streams and resumes, and the adapters to the spec loader and the mesh compiler
(controller/spec and controller/compiler, which this package must not edit).  It must not speak gRPC.
"""

from meshsec.controller.desired.contracts import SpecInvalid, compile_configs, diff, load_spec, plan
from meshsec.controller.desired.history import History, NodeDelta
from meshsec.controller.desired.inputs import Credentials, Inputs, load_inputs
from meshsec.controller.desired.state import DesiredState

__all__ = [
    "Credentials",
    "DesiredState",
    "History",
    "Inputs",
    "NodeDelta",
    "SpecInvalid",
    "compile_configs",
    "diff",
    "load_inputs",
    "load_spec",
    "plan",
]
