"""The mesh compiler: MeshSpec -> per-agent NodeConfig (peers, IKE settings, child SAs), incrementally.

Public API: `Credentials`, `compile_mesh(spec, creds)`, `MeshCompiler(creds, cache_peers, delta_peers)`
(`update`, `update_credentials`, `config`, `config_bytes`, `delta`, `changes`, counters), `plan(old,
new, creds)`, and `diff` / `apply_delta`.  Semantics are
in `.model`, change tracking in `.incremental`.  `.delta` imports nothing from the controller, and
this package loads its other modules lazily, so the agent can import
`meshsec.controller.compiler.delta` without pulling in the spec loader.  Must not touch etcd, gRPC or
the CA: the caller passes credentials in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .delta import apply_delta, diff

if TYPE_CHECKING:
    from meshsec.api.v1 import config_pb2, spec_pb2

    from .incremental import MeshCompiler, NodeChange
    from .model import Credentials, Model
    from .planning import plan

__all__ = [
    "Credentials",
    "MeshCompiler",
    "Model",
    "NodeChange",
    "apply_delta",
    "compile_mesh",
    "diff",
    "plan",
]

_LAZY = {
    "Credentials": ".model",
    "Model": ".model",
    "MeshCompiler": ".incremental",
    "NodeChange": ".incremental",
    "plan": ".planning",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compile_mesh(spec: spec_pb2.MeshSpec, creds: Credentials) -> dict[str, config_pb2.NodeConfig]:
    """Every agent's NodeConfig (version 0).  Materializes everything: for small meshes and tests."""
    from .incremental import MeshCompiler

    compiler = MeshCompiler(creds, cache_peers=0)
    compiler.update(spec)
    return {name: compiler.config(name) for name in compiler.names()}
