"""Certificate renewal: the pure schedule on a fake clock, the crash-safe swap, and a real Renew against
a controller replica on a real etcd (the renewed identity then works for Sync)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from meshsec.agent.controlplane import AgentIdentity
from meshsec.agent.controlplane.renewal import (
    CertificateRenewer,
    CertInfo,
    RenewalPolicy,
    RenewalSchedule,
    recover_pending,
    signing_ca_key_id,
    swap_identity,
    update_trust,
)
from meshsec.api.v1 import agent_pb2, agent_pb2_grpc
from meshsec.controller.ca import CertificateAuthority

from tests.controller import harness
from tests.support.etcd import EtcdCluster

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)
NO_JITTER = RenewalPolicy(jitter=0.0)


def info(
    lifetime: float, *, obtained: float | None = 0.0, backdate: float = 0.0, issuer: bytes = b"A"
) -> CertInfo:
    return CertInfo(
        not_before=T0 - backdate * S,
        not_after=T0 + lifetime * S,
        obtained_at=None if obtained is None else T0 + obtained * S,
        issuer_key_id=issuer,
    )


def test_renews_at_two_thirds_of_the_lifetime() -> None:
    sched = RenewalSchedule(NO_JITTER, random.Random(1))
    assert sched.next_attempt(info(300), T0) == T0 + 200 * S
    assert sched.next_attempt(info(300), T0 + 250 * S) == T0 + 250 * S  # overdue: now


def test_lifetime_counts_from_when_the_agent_got_the_certificate_not_the_backdated_not_before() -> None:
    # 30 s certificate, notBefore backdated 5 minutes for clock skew: still renewed after 20 s, not at once
    sched = RenewalSchedule(NO_JITTER, random.Random(1))
    assert sched.next_attempt(info(30, backdate=300), T0) == T0 + 20 * S
    # without knowing when it was obtained, notBefore is all there is
    assert sched.next_attempt(info(30, backdate=300, obtained=None), T0) == T0


def test_jitter_spreads_a_fleet_but_stays_before_expiry() -> None:
    sched = RenewalSchedule(RenewalPolicy(), random.Random(7))
    times = {sched.next_attempt(info(3000), T0) for _ in range(50)}
    assert len(times) > 40
    assert all(T0 + 2000 * S <= t < T0 + 3000 * S for t in times)


def test_a_certificate_from_a_ca_that_no_longer_signs_is_renewed_now() -> None:
    sched = RenewalSchedule(RenewalPolicy(ca_switch_window=dt.timedelta(seconds=60)), random.Random(3))
    same = sched.next_attempt(info(3000, issuer=b"B"), T0, signing_ca=b"B")
    assert same >= T0 + 2000 * S
    switched = [sched.next_attempt(info(3000, issuer=b"A"), T0, signing_ca=b"B") for _ in range(20)]
    assert all(T0 <= t <= T0 + 60 * S for t in switched)
    # the window shrinks for a certificate close to expiry
    late = sched.next_attempt(info(30, issuer=b"A"), T0, signing_ca=b"B")
    assert late <= T0 + 5 * S


def test_retries_back_off_with_jitter_and_fit_before_expiry() -> None:
    sched = RenewalSchedule(RenewalPolicy(retry_initial=1, retry_max=300), random.Random(5))
    delays = [(sched.next_attempt(info(100_000), T0, failures=n) - T0).total_seconds() for n in range(1, 12)]
    for n, d in enumerate(delays, start=1):
        cap = min(300, 2 ** (n - 1))
        assert cap / 2 <= d <= cap
    near_expiry = (sched.next_attempt(info(40), T0 + 30 * S, failures=9) - (T0 + 30 * S)).total_seconds()
    assert near_expiry <= 10 / 4


def test_signing_ca_is_the_first_of_the_bundle() -> None:
    a, b = CertificateAuthority.generate("A"), CertificateAuthority.generate("B")
    assert signing_ca_key_id(a.cert_pem + b.cert_pem) != signing_ca_key_id(b.cert_pem + a.cert_pem)
    assert signing_ca_key_id(b.cert_pem + a.cert_pem) == signing_ca_key_id(b.cert_pem.decode())
    assert signing_ca_key_id(b"") is None and signing_ca_key_id(b"garbage") is None


def _identity(tmp: Path) -> AgentIdentity:
    ident = AgentIdentity(tmp)
    ident.private_key()
    ident.cert_path.write_bytes(b"old cert")
    return ident


def test_swap_replaces_both_files_and_recovery_completes_an_interrupted_swap(tmp_path: Path) -> None:
    ident = _identity(tmp_path)
    swap_identity(ident, b"new key", b"new cert")
    assert ident.key_path.read_bytes() == b"new key" and ident.cert_path.read_bytes() == b"new cert"
    assert ident.key_path.stat().st_mode & 0o077 == 0
    assert not recover_pending(ident)
    # crash after the key was renamed, before the certificate: the next start completes the pair
    (tmp_path / "node.pem.new").write_bytes(b"newer cert")
    ident.key_path.write_bytes(b"newer key")
    assert recover_pending(ident)
    assert ident.cert_path.read_bytes() == b"newer cert" and ident.key_path.read_bytes() == b"newer key"
    # crash while writing the key: the half-written key is dropped, the old pair stays
    (tmp_path / "node-key.pem.new").write_bytes(b"partial")
    assert not recover_pending(ident)
    assert ident.key_path.read_bytes() == b"newer key" and not (tmp_path / "node-key.pem.new").exists()


def test_update_trust_writes_only_changes(tmp_path: Path) -> None:
    ident = AgentIdentity(tmp_path)
    assert update_trust(ident, b"bundle 1")
    assert not update_trust(ident, b"bundle 1")
    assert update_trust(ident, b"bundle 2") and ident.ca_path.read_bytes() == b"bundle 2"
    assert not update_trust(ident, b"")


# -- against a real controller -----------------------------------------------------------------------


def test_renewal_over_a_real_controller_installs_a_new_key_that_then_syncs(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    async def body() -> None:
        state = tmp_path / "controller"
        state.mkdir()
        await harness.init_state(state, etcd.endpoints)
        async with harness.replica(state, etcd.endpoints, node_cert_lifetime=dt.timedelta(seconds=30)) as c:
            await harness.apply(c.address, state, harness.mesh_yaml({"n1": 1, "n2": 2}))
            ident = await harness.enrolled(c, state, tmp_path / "agent", "n1")
            old_cert = x509.load_pem_x509_certificate(ident.cert_path.read_bytes())
            old_key = ident.key_path.read_bytes()
            seen: list[bytes] = []
            renewer = CertificateRenewer(ident, on_renewed=lambda r: seen.append(r.cert_pem))
            # a 30 s certificate (notBefore backdated by the CA) is due after ~20 s, not at once
            due = renewer.next_attempt() - dt.datetime.now(dt.UTC)
            assert dt.timedelta(seconds=15) < due < dt.timedelta(seconds=30)
            async with harness.node_channel(c.address, ident) as ch:
                renewed = await renewer.renew_once(agent_pb2_grpc.AgentServiceStub(ch))
            new_cert = x509.load_pem_x509_certificate(ident.cert_path.read_bytes())
            assert seen == [renewed.cert_pem] and new_cert.serial_number != old_cert.serial_number
            assert ident.key_path.read_bytes() != old_key  # a new key pair, not the old one re-signed
            assert new_cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ) == ident.private_key().public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            async with harness.node_channel(c.address, ident) as ch:  # the new identity is accepted
                call = agent_pb2_grpc.AgentServiceStub(ch).Sync(agent_pb2.SyncRequest(node="n1"))
                first = await asyncio.wait_for(call.read(), 10)
                call.cancel()
            assert first.WhichOneof("update") == "snapshot"

    asyncio.run(asyncio.wait_for(body(), 60))


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster
