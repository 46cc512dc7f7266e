"""etcd endpoints by DNS name (a Kubernetes StatefulSet's members): etcd3aio dials address lists only,
so the Store resolves names at open() and checks TLS against the first name."""

from __future__ import annotations

import asyncio

import pytest
from meshsec.controller.store import Store
from meshsec.controller.store.client import grpc_target, split_endpoint

from tests.support.etcd import EtcdCluster


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "meshsec-etcd-0.meshsec-etcd-peer.meshsec.svc:2379",
            ("meshsec-etcd-0.meshsec-etcd-peer.meshsec.svc", 2379),
        ),
        ("198.18.0.1:12379", ("198.18.0.1", 12379)),
        ("[fd00::1]:2379", ("fd00::1", 2379)),
        ("fd00::1", ("fd00::1", 2379)),
        ("etcd", ("etcd", 2379)),
    ],
)
def test_split_endpoint(text: str, expected: tuple[str, int]) -> None:
    assert split_endpoint(text) == expected


def test_grpc_target_keeps_one_family() -> None:
    assert grpc_target([("198.18.0.1", 2379), ("198.18.0.2", 2379)]) == "ipv4:198.18.0.1:2379,198.18.0.2:2379"
    assert grpc_target([("fd00::1", 2379)]) == "ipv6:[fd00::1]:2379"
    assert grpc_target([("fd00::1", 2379), ("198.18.0.1", 2379)]) == "ipv4:198.18.0.1:2379"


def test_store_dials_a_dns_name(etcd: EtcdCluster) -> None:
    """A name, not an address (etcd3aio special-cases only lower-case "localhost")."""
    port = etcd.endpoints[0].rpartition(":")[2]

    async def body() -> None:
        async with Store([f"LOCALHOST:{port}"]) as s:
            rev = await s.put("/meshsec/v1/test/name", b"1")
            assert rev > 0

    run(body())


def test_store_dials_a_dns_name_over_tls_and_checks_that_name() -> None:
    with EtcdCluster(1, tls=True) as etcd:
        tls = etcd.tls
        assert tls is not None
        port = etcd.endpoints[0].rpartition(":")[2]
        creds = {
            "ca_cert": tls.ca_file.read_bytes(),
            "cert": tls.client_cert.read_bytes(),
            "key": tls.client_key.read_bytes(),
        }

        async def body() -> None:
            async with Store([f"LOCALHOST:{port}"], **creds) as s:  # the certificate names localhost
                assert await s.put("/meshsec/v1/test/tls", b"1") > 0

        run(body())
