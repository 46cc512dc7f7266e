"""The CA: KEK custody, key encrypted at rest in etcd, certificate profiles, one-time tokens."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from meshsec.controller.ca import (
    ROLE_ADMIN,
    ROLE_NODE,
    CertificateAuthority,
    CsrInvalid,
    Sealer,
    TokenRefused,
    consume_token,
    create_kek,
    create_token,
    identity_of,
    load_ca,
    load_kek,
    load_or_create_ca,
)
from meshsec.controller.ca.kek import KekError
from meshsec.controller.store import Keys, Store

from tests.support.etcd import EtcdCluster


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))


def _csr(cn: str = "whatever", key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    req = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    return req.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_kek_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    assert create_kek(path)
    first = path.read_bytes()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not create_kek(path)
    assert path.read_bytes() == first
    assert len(load_kek(path)) == 32
    os.chmod(path, 0o644)
    with pytest.raises(KekError, match="chmod 600"):
        load_kek(path)
    with pytest.raises(KekError, match="init"):
        load_kek(tmp_path / "absent")


def test_sealed_blobs_need_the_right_kek_and_key_name() -> None:
    a, b = Sealer(os.urandom(32)), Sealer(os.urandom(32))
    blob = a.seal(b"secret", "/k1")
    assert a.open(blob, "/k1") == b"secret"
    with pytest.raises(KekError):
        b.open(blob, "/k1")
    with pytest.raises(KekError):
        a.open(blob, "/k2")  # a blob moved to another key does not open
    with pytest.raises(KekError):
        a.open(b"junk", "/k1")


def test_ca_lives_in_etcd_with_its_key_encrypted(etcd: EtcdCluster, tmp_path: Path) -> None:
    create_kek(tmp_path / "kek")
    sealer = Sealer(load_kek(tmp_path / "kek"))

    async def body() -> None:
        async with Store(etcd.endpoints) as s:
            ca, created = await load_or_create_ca(s, sealer)
            again, created_again = await load_or_create_ca(s, sealer)
            assert created and not created_again
            assert again.sha256 == ca.sha256
            raw = await s.get(Keys.CA_KEY)
            assert raw is not None and b"PRIVATE KEY" not in raw.value
            der = ca.key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            assert der not in raw.value
            with pytest.raises(KekError):
                await load_ca(s, Sealer(os.urandom(32)))

    run(body())


def test_certificate_profiles() -> None:
    ca = CertificateAuthority.generate()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.sign_node_csr(_csr("evil-admin", key), "node-a", dt.timedelta(hours=2), ["a.example"])
    ident = identity_of(cert.public_bytes(serialization.Encoding.PEM))
    assert (ident.role, ident.name) == (ROLE_NODE, "node-a")  # the CSR's subject is ignored
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert sans == ["node-a", "node-a.meshsec", "a.example"]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(hours=2, minutes=5)
    cert.verify_directly_issued_by(ca.cert)
    admin_pem, _ = ca.issue_keypair(ROLE_ADMIN, "admin", dt.timedelta(days=1))
    assert identity_of(admin_pem).role == ROLE_ADMIN
    server_pem, _ = ca.issue_server("r1")
    server = x509.load_pem_x509_certificate(server_pem)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "meshsec-controller" in names.get_values_for_type(x509.DNSName)
    with pytest.raises(CsrInvalid):
        ca.sign_node_csr(b"not a csr", "node-a", dt.timedelta(hours=1))


def test_tokens_are_single_use_hashed_bound_and_expire(etcd: EtcdCluster) -> None:
    async def body() -> None:
        async with Store(etcd.endpoints) as s:
            token, _ = await create_token(s, node="node-a", ttl=60)
            token_id, secret = token.split(".")
            stored = await s.get(Keys.token(token_id))
            assert stored is not None and secret.encode() not in stored.value
            assert stored.lease != 0  # TTL lease: etcd deletes it by itself
            with pytest.raises(TokenRefused):
                await consume_token(s, f"{token_id}.{'x' * len(secret)}", "node-a")  # wrong secret
            with pytest.raises(TokenRefused):
                await consume_token(s, token, "node-b")  # bound to node-a
            await consume_token(s, token, "node-a")
            with pytest.raises(TokenRefused):
                await consume_token(s, token, "node-a")  # used
            with pytest.raises(TokenRefused):
                await consume_token(s, "garbage", "node-a")
            short, _ = await create_token(s, ttl=1)
            await asyncio.sleep(1.2)
            with pytest.raises(TokenRefused):
                await consume_token(s, short, "node-a")  # expired

    run(body())


def test_two_replicas_racing_for_one_token_accept_it_once(etcd: EtcdCluster) -> None:
    async def body() -> None:
        async with Store(etcd.endpoints) as s1, Store(etcd.endpoints) as s2:
            for _ in range(5):
                token, _ = await create_token(s1, ttl=60)
                results = await asyncio.gather(
                    consume_token(s1, token, "n"), consume_token(s2, token, "n"), return_exceptions=True
                )
                assert sorted(type(r).__name__ for r in results) == ["NoneType", "TokenRefused"]

    run(body())
