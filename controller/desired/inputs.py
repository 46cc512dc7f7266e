"""Compile inputs at one etcd revision: the spec, the CA bundle, revoked fingerprints, PSK master, and
the subnets agents announce (merged into the spec for the nodes that accept them: announced.py).
Node-level revocations are read with them (the API's checks use them; no NodeConfig does).

A NodeConfig is a pure function of these, so reading them at an old revision reproduces exactly what an
agent was sent at that revision (how a freshly started replica serves a resume with a delta).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from meshsec.api.v1 import spec_pb2
from meshsec.controller.ca.authority import load_psk_master
from meshsec.controller.ca.kek import Sealer
from meshsec.controller.ca.revocation import issued_until
from meshsec.controller.desired import announced
from meshsec.controller.store import Keys, Store


@dataclass(frozen=True)
class Credentials:
    """What the compiler needs besides the spec (the contract with controller/compiler)."""

    trusted_ca_pem: str
    revoked_fingerprints: frozenset[str]
    psk_master: bytes = field(repr=False)

    @property
    def ca_bundle_pem(self) -> str:
        """Alias of trusted_ca_pem."""
        return self.trusted_ca_pem

    def psk_for(self, a: str, b: str) -> bytes:
        """The pre-shared key of the pair {a, b}: HKDF-SHA256 of the master, symmetric in a and b."""
        lo, hi = sorted((a, b))
        info = b"meshsec psk v1\x00" + lo.encode() + b"\x00" + hi.encode()
        return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(self.psk_master)


@dataclass(frozen=True)
class Inputs:
    spec: spec_pb2.MeshSpec  # what is compiled: the stored spec plus accepted announced subnets
    spec_revision: int  # mod_revision of the spec key, or of a later merged announcement (0: no spec)
    creds: Credentials
    revision: int  # the etcd revision all of this was read at
    # node -> notBefore (POSIX s) up to which its certificates are revoked (certs/revoked-nodes/).
    # Not in the digest: nothing compiled depends on it (revoke_node lists fingerprints in the same txn).
    revoked_nodes: Mapping[str, float] = field(default_factory=dict)

    def digest(self) -> str:
        """Changes whenever any input changes (cheap equality across loads)."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> str:  # computed once: the spec of a 10,000-node mesh is about a megabyte
        h = hashlib.sha256(self.spec.SerializeToString(deterministic=True))
        h.update(self.creds.trusted_ca_pem.encode())
        h.update(",".join(sorted(self.creds.revoked_fingerprints)).encode())
        return h.hexdigest()


async def load_inputs(
    store: Store, sealer: Sealer, *, revision: int = 0, psk_master: bytes | None = None
) -> Inputs:
    """Read every compile input at one revision (0 = now); raises Compacted for a compacted revision."""
    revision = revision or await store.revision()
    # Concurrently: these reads are on the path from an etcd write to every agent's delta.
    spec_kv, ca_kv, (revoked, _), (revoked_nodes, _), stored = await asyncio.gather(
        store.get(Keys.SPEC, revision=revision),
        store.get(Keys.CA_CERT, revision=revision),
        store.get_prefix(Keys.CERTS_REVOKED, revision=revision),
        store.get_prefix(Keys.REVOKED_NODES, revision=revision),
        announced.load(store, revision),
    )
    spec = spec_pb2.MeshSpec()
    if spec_kv is not None:
        spec.ParseFromString(spec_kv.value)
    if psk_master is None:
        psk_master = await load_psk_master(store, sealer, revision=revision)
    creds = Credentials(
        trusted_ca_pem=ca_kv.value.decode() if ca_kv else "",
        revoked_fingerprints=frozenset(kv.key.removeprefix(Keys.CERTS_REVOKED) for kv in revoked),
        psk_master=psk_master,
    )
    spec, spec_revision = announced.merge_stored(spec, spec_kv.mod_revision if spec_kv else 0, stored)
    nodes = {kv.key.removeprefix(Keys.REVOKED_NODES): issued_until(kv.value) for kv in revoked_nodes}
    return Inputs(spec, spec_revision, creds, revision, nodes)
