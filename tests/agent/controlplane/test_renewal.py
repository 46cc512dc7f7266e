"""Certificate renewal: the pure schedule on a fake clock, the crash-safe swap, and a real Renew against
a controller replica on a real etcd (the renewed identity then works for Sync)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
from collections.abc import Iterator
from pathlib import Path

import grpc
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
    rng = random.Random(7)  # one schedule per agent of the fleet
    times = {RenewalSchedule(RenewalPolicy(), rng).next_attempt(info(3000), T0) for _ in range(50)}
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


def _first_due(
    sched: RenewalSchedule, cert: CertInfo, start: dt.datetime, step: float, **kw: object
) -> dt.datetime:
    """Ask as CertificateRenewer.run does: again after every sleep slice of at most `step` seconds,
    until the answer is due; the time it became due."""
    now = start
    for _ in range(100_000):
        at = sched.next_attempt(cert, now, **kw)  # type: ignore[arg-type]
        if at <= now:
            return now
        now = min(at, now + step * S)
    raise AssertionError("never became due")


def test_repeated_calls_with_advancing_time_converge_to_one_attempt_time() -> None:
    for kw in ({"failures": 3}, {"signing_ca": b"B"}, {}):
        sched = RenewalSchedule(RenewalPolicy(ca_switch_window=dt.timedelta(seconds=60)), random.Random(11))
        first = sched.next_attempt(info(3000), T0, **kw)  # type: ignore[arg-type]
        assert first > T0
        # asked again and again, a little later each time: the same answer, until it is due
        for dt_s in (0.001, 0.5, 1.0, 1.9):
            now = T0 + dt_s * S
            if now < first:
                assert sched.next_attempt(info(3000), now, **kw) == first  # type: ignore[arg-type]
        assert sched.next_attempt(info(3000), first, **kw) == first  # type: ignore[arg-type]
        assert sched.next_attempt(info(3000), first + S, **kw) == first + S  # overdue: now
        # an attempt was made: the next one gets a time of its own
        sched.attempted()
        assert sched.next_attempt(info(3000), first + S, **kw) >= first + S  # type: ignore[arg-type]


def test_a_failed_renewal_is_retried_after_its_backoff() -> None:
    sched = RenewalSchedule(RenewalPolicy(retry_initial=4, retry_max=300), random.Random(5))
    cert = info(100_000)
    # polled every 0.5 s (a renewer's sleep slice): the retry comes within the backoff, 2..4 s
    at = _first_due(sched, cert, T0, 0.5, failures=1)
    assert T0 + 2 * S <= at <= T0 + 4.5 * S, at
    # the failure count grows after that attempt fails: the next retry waits 4..8 s more
    again = _first_due(sched, cert, at, 0.5, failures=2)
    assert at + 4 * S <= again <= at + 8.5 * S, (at, again)


def test_after_a_ca_switch_the_renewal_happens_within_the_window_not_at_expiry() -> None:
    window = dt.timedelta(seconds=300)
    for seed in range(20):
        sched = RenewalSchedule(RenewalPolicy(ca_switch_window=window), random.Random(seed))
        cert = info(30 * 86400, issuer=b"A")  # a 30-day certificate, 1 day old when B starts signing
        start = T0 + 86400 * S
        assert sched.next_attempt(cert, start, signing_ca=b"A") > start + 86400 * S  # A signs: later
        # B signs now; the renewer asks again after each 30 s slice
        at = _first_due(sched, cert, start, 30.0, signing_ca=b"B")
        assert start <= at <= start + window + 30 * S, (seed, at)


def test_renewer_retries_a_refused_renewal_on_the_same_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CertificateRenewer.run on a fake clock: the first Renew is refused, the retry after the backoff
    installs a certificate (fake stub signing with a real CA)."""
    ca = CertificateAuthority.generate("A")
    ident = AgentIdentity(tmp_path)
    key = ident.private_key()
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        .public_bytes(serialization.Encoding.PEM)
    )
    first = ca.sign_node_csr(csr, "n1", dt.timedelta(seconds=60))
    ident.cert_path.write_bytes(first.public_bytes(serialization.Encoding.PEM))
    ident.ca_path.write_bytes(ca.bundle_pem)
    now = [dt.datetime.now(dt.UTC)]
    got = now[0].timestamp() - 200  # obtained 200 s ago: two thirds of its life are gone
    os.utime(ident.cert_path, (got, got))
    calls: list[dt.datetime] = []

    class Stub:
        async def Renew(self, req: agent_pb2.RenewRequest, timeout: float) -> agent_pb2.RenewResponse:
            calls.append(now[0])
            if len(calls) == 1:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "busy"
                )
            cert = ca.sign_node_csr(req.csr_pem, "n1", dt.timedelta(seconds=60))
            return agent_pb2.RenewResponse(
                certificate_pem=cert.public_bytes(serialization.Encoding.PEM), ca_bundle_pem=ca.bundle_pem
            )

    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds * S
        await real_sleep(0)

    renewer = CertificateRenewer(
        ident,
        schedule=RenewalSchedule(RenewalPolicy(retry_initial=4), random.Random(2)),
        clock=lambda: now[0],
    )
    renewer.failures = 0
    monkeypatch.setattr("meshsec.agent.controlplane.renewal.asyncio.sleep", fake_sleep)

    async def body() -> None:
        task = asyncio.ensure_future(renewer.run(Stub(), max_sleep=0.5))  # type: ignore[arg-type]
        while renewer.renewals == 0 and now[0] < calls_deadline:
            await real_sleep(0)
        task.cancel()

    start = now[0]
    calls_deadline = now[0] + 120 * S
    asyncio.run(asyncio.wait_for(body(), 20))
    assert len(calls) == 2 and renewer.renewals == 1, calls
    assert calls[0] - start < S  # due at once
    assert 2 * S <= calls[1] - calls[0] <= 4.5 * S  # retried after the backoff (2..4 s), not never
    assert renewer.failures == 0


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
