"""Small spec builders for compiler tests."""

from __future__ import annotations

import hashlib

from meshsec.api.v1 import spec_pb2
from meshsec.controller.compiler import Credentials
from meshsec.controller.spec import load_spec


def psk_for(a: str, b: str) -> bytes:
    return hashlib.sha256("|".join(sorted((a, b))).encode()).digest()


CREDS = Credentials(
    trusted_ca_pem="-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
    revoked_fingerprints=["ff" * 32],
    psk_for=psk_for,
)


def node_yaml(name: str, i: int, labels: str = "{}", extra: str = "") -> str:
    return (
        f"  - {{name: {name}, endpoints: [198.18.{i // 250}.{i % 250 + 1}], "
        f"subnets: [198.19.{i // 250}.{i % 250 + 1}/32], labels: {labels}{extra}}}\n"
    )


def spec_from(nodes: str, policies: str, extra: str = "") -> spec_pb2.MeshSpec:
    return load_spec(f"apiVersion: meshsec.io/v1\nnodes:\n{nodes}policies:\n{policies}{extra}", "mesh.yaml")
