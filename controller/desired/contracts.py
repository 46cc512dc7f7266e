"""Adapters to the colleague-owned spec loader and compiler, with minimal stand-ins until they exist.

Owns nothing but the seam: `load_spec`, `SpecInvalid`, `compile_mesh`, `MeshCompiler`, `Credentials`,
`diff` and `plan` come from meshsec.controller.spec / meshsec.controller.compiler when those provide
them; otherwise the stand-ins below (full mesh of every agent node, whole-peer diffs, a compiler that
recompiles everything) keep the control plane testable.  Never edit
controller/spec or controller/compiler from here.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from google.protobuf import json_format
from meshsec.api.v1 import admin_pb2, config_pb2, spec_pb2

log = logging.getLogger(__name__)


def _optional(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


# -- stand-ins ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    file: str
    line: int
    field: str
    reason: str


class _StandinSpecInvalid(Exception):
    def __init__(self, errors: list[_Problem]) -> None:
        super().__init__("; ".join(f"{e.file}:{e.line}: {e.field}: {e.reason}" for e in errors))
        self.errors = errors


def _standin_load_spec(text: str, filename: str) -> spec_pb2.MeshSpec:
    """YAML with the proto field names; enum values spelled as in the .proto."""
    try:
        data = yaml.safe_load(text) or {}
        spec = json_format.ParseDict(data, spec_pb2.MeshSpec())
    except (yaml.YAMLError, json_format.ParseError, TypeError, AttributeError) as exc:
        raise _StandinSpecInvalid([_Problem(filename, 0, "", str(exc).splitlines()[0])]) from None
    seen: set[str] = set()
    for i, node in enumerate(spec.nodes):
        if node.name in seen or not node.name:
            raise _StandinSpecInvalid([_Problem(filename, 0, f"nodes[{i}].name", "duplicate or empty name")])
        seen.add(node.name)
    return spec


def _digest(msg: Any) -> str:
    return hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()


def _standin_compile_mesh(spec: spec_pb2.MeshSpec, creds: Any) -> dict[str, config_pb2.NodeConfig]:
    """Every agent node peers with every other node, one tunnel-mode child between their subnets."""
    out: dict[str, config_pb2.NodeConfig] = {}
    nodes = sorted(spec.nodes, key=lambda n: n.name)
    for me in nodes:
        if me.kind == spec_pb2.NODE_KIND_EXTERNAL:
            continue
        cfg = config_pb2.NodeConfig(
            local=config_pb2.LocalConfig(
                name=me.name,
                identity=me.identity or f"fqdn:{me.name}.meshsec",
                subnets=list(me.subnets),
                behind_nat=me.behind_nat,
                trusted_ca_pem=creds.trusted_ca_pem,
                revoked_fingerprints=sorted(creds.revoked_fingerprints),
            )
        )
        for other in nodes:
            if other.name == me.name:
                continue
            peer = config_pb2.PeerConfig(
                name=other.name,
                kind=other.kind or spec_pb2.NODE_KIND_AGENT,
                endpoints=list(other.endpoints),
                remote_identity=other.identity or f"fqdn:{other.name}.meshsec",
                auth=other.auth or spec_pb2.AUTH_METHOD_CERTIFICATE,
                initiation=config_pb2.INITIATION_INITIATE
                if me.name < other.name
                else config_pb2.INITIATION_RESPOND,
                behind_nat=other.behind_nat,
                children=[
                    config_pb2.ChildSaConfig(
                        name="net",
                        mode=spec_pb2.MODE_TUNNEL,
                        local_ts=list(me.subnets),
                        remote_ts=list(other.subnets),
                    )
                ],
            )
            if peer.auth == spec_pb2.AUTH_METHOD_PSK:
                peer.psk = creds.psk_for(me.name, other.name)
            peer.digest = _digest(peer)
            cfg.peers.append(peer)
        out[me.name] = cfg
    return out


def _standin_diff(old: config_pb2.NodeConfig, new: config_pb2.NodeConfig) -> config_pb2.NodeConfigDelta:
    delta = config_pb2.NodeConfigDelta(from_version=old.version, to_version=new.version)
    if old.local != new.local:
        delta.local.CopyFrom(new.local)
    before = {p.name: p for p in old.peers}
    after = {p.name: p for p in new.peers}
    delta.upsert_peers.extend(p for name, p in sorted(after.items()) if before.get(name) != p)
    delta.remove_peers.extend(sorted(before.keys() - after.keys()))
    return delta


def _standin_plan(
    old: dict[str, config_pb2.NodeConfig], new: dict[str, config_pb2.NodeConfig]
) -> list[admin_pb2.NodePlan]:
    plans = []
    for node in sorted(old.keys() | new.keys()):
        a = {p.name: p for p in old[node].peers} if node in old else {}
        b = {p.name: p for p in new[node].peers} if node in new else {}
        p = admin_pb2.NodePlan(
            node=node,
            peers_added=sorted(b.keys() - a.keys()),
            peers_removed=sorted(a.keys() - b.keys()),
            peers_changed=sorted(n for n in a.keys() & b.keys() if a[n] != b[n]),
        )
        if p.peers_added or p.peers_removed or p.peers_changed:
            plans.append(p)
    return plans


# -- the seam ----------------------------------------------------------------------------------------

load_spec: Callable[[str, str], spec_pb2.MeshSpec] = (
    _optional("meshsec.controller.spec", "load_spec") or _standin_load_spec
)
SpecInvalid: type[Exception] = _optional("meshsec.controller.spec", "SpecInvalid") or _StandinSpecInvalid
compile_mesh: Callable[[spec_pb2.MeshSpec, Any], dict[str, config_pb2.NodeConfig]] = (
    _optional("meshsec.controller.compiler", "compile_mesh") or _standin_compile_mesh
)
diff: Callable[[config_pb2.NodeConfig, config_pb2.NodeConfig], config_pb2.NodeConfigDelta] = (
    _optional("meshsec.controller.compiler", "diff") or _standin_diff
)
_plan = _optional("meshsec.controller.compiler", "plan")
_CompilerCredentials = _optional("meshsec.controller.compiler", "Credentials")


def compiler_credentials(creds: Any) -> Any:
    """Our Credentials in the compiler's own type when it defines one (same three things), with a
    `psk_version` that changes with the PSK master (a one-way hash of it), so the compiler can tell
    a new master (every PSK peer changes) from a CA or revocation change (LocalConfigs only)."""
    if _CompilerCredentials is None:
        return creds
    master = getattr(creds, "psk_master", b"") or b""
    version = hashlib.sha256(b"meshsec psk version\x00" + master).hexdigest()[:16] if master else ""
    return _CompilerCredentials(
        trusted_ca_pem=creds.trusted_ca_pem,
        revoked_fingerprints=sorted(creds.revoked_fingerprints),
        psk_for=creds.psk_for,
        psk_version=version,
    )


def compile_configs(spec: spec_pb2.MeshSpec, creds: Any) -> dict[str, config_pb2.NodeConfig]:
    """compile_mesh with credentials converted for the compiler."""
    return compile_mesh(spec, compiler_credentials(creds))


def plan(old: spec_pb2.MeshSpec, new: spec_pb2.MeshSpec, creds: Any) -> list[admin_pb2.NodePlan]:
    """Per-node plan of applying `new` over `old` (the compiler's plan when it exists)."""
    if _plan is not None:
        return list(_plan(old, new, compiler_credentials(creds)))
    return _standin_plan(compile_configs(old, creds), compile_configs(new, creds))


class _FullCompiler:
    """Stand-in with MeshCompiler's surface: recompiles everything, reports the agents that changed."""

    def __init__(self, creds: Any) -> None:
        self.creds = creds
        self._configs: dict[str, config_pb2.NodeConfig] = {}
        self._deltas: dict[str, config_pb2.NodeConfigDelta] = {}

    def update(self, spec: spec_pb2.MeshSpec, creds: Any = None) -> set[str]:
        if creds is not None:
            self.creds = creds
        new = compile_mesh(spec, self.creds)
        changed = {n for n in new.keys() | self._configs.keys() if new.get(n) != self._configs.get(n)}
        self._deltas = {
            n: _standin_diff(
                self._configs.get(n, config_pb2.NodeConfig(local=config_pb2.LocalConfig(name=n))),
                new.get(n, config_pb2.NodeConfig(local=config_pb2.LocalConfig(name=n))),
            )
            for n in changed
        }
        self._configs = new
        return changed

    def config(self, name: str) -> config_pb2.NodeConfig:
        out = config_pb2.NodeConfig()
        out.CopyFrom(self._configs[name])  # KeyError: not an agent (any more)
        return out

    def config_bytes(self, name: str) -> bytes:
        return self._configs[name].SerializeToString(deterministic=True)

    def delta(self, name: str) -> config_pb2.NodeConfigDelta | None:
        return self._deltas.get(name)


_MeshCompiler = _optional("meshsec.controller.compiler", "MeshCompiler")


def new_compiler(creds: Any, cache_peers: int = 200_000, delta_peers: int = 100_000) -> Any:
    """An incremental compiler: `update(spec, creds) -> changed agents`, `config_bytes(name)` (KeyError
    if none), `delta(name)` (None: send a snapshot).  `cache_peers` bounds the peer entries it keeps
    materialized; `delta_peers` the entries one update may build for deltas (above: snapshots)."""
    if _MeshCompiler is not None and compile_mesh is not _standin_compile_mesh:
        return _MeshCompiler(compiler_credentials(creds), cache_peers=cache_peers, delta_peers=delta_peers)
    return _FullCompiler(compiler_credentials(creds))


def spec_errors(exc: Exception) -> list[admin_pb2.SpecError]:
    """SpecInvalid.errors (file, line, field, reason objects) as API messages."""
    return [
        admin_pb2.SpecError(
            file=str(getattr(e, "file", "")),
            line=int(getattr(e, "line", 0) or 0),
            field=str(getattr(e, "field", "")),
            reason=str(getattr(e, "reason", e)),
        )
        for e in getattr(exc, "errors", [exc])
    ]


def using_standins() -> list[str]:
    """Which colleague interfaces are still stand-ins (logged once at startup)."""
    names = {
        "load_spec": load_spec is _standin_load_spec,
        "compile_mesh": compile_mesh is _standin_compile_mesh,
    }
    names["diff"] = diff is _standin_diff
    return [n for n, standin in names.items() if standin]
