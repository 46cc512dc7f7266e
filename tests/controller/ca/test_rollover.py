"""CA rollover: the pure state machine on a fake clock, then a whole rollover in a real etcd, checked
through what agents get (Credentials.trusted_ca_pem via load_inputs) and the IKE side's chain check."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from meshsec.agent.ike.certs import CertificateError, TrustStore, validate_chain
from meshsec.controller.ca import CertificateAuthority, Sealer, load_ca, load_or_create_ca
from meshsec.controller.ca.rollover import (
    CA_NEXT_KEY,
    CA_ROLLOVER,
    Action,
    Phase,
    RolloverError,
    RolloverPolicy,
    RolloverState,
    RolloverStore,
    bundle_after,
    next_action,
    policy_for,
)
from meshsec.controller.desired import load_inputs
from meshsec.controller.store import Keys, Store

from tests.support.etcd import EtcdCluster

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)
POLICY = RolloverPolicy(propagate=10 * S, overlap=60 * S, rotate_before=100 * S, ca_lifetime=1000 * S)


def test_stable_begins_only_when_due_or_requested() -> None:
    expiry = T0 + 500 * S
    assert next_action(RolloverState(), expiry, T0, POLICY) is None
    assert next_action(RolloverState(), expiry, expiry - 101 * S, POLICY) is None
    assert next_action(RolloverState(), expiry, expiry - 100 * S, POLICY) is Action.BEGIN
    assert next_action(RolloverState(), expiry, T0, POLICY, requested=True) is Action.BEGIN


def test_phases_advance_after_propagate_then_overlap() -> None:
    expiry = T0 + 500 * S
    published = RolloverState(Phase.PUBLISHED, T0, "a", "b", "manual")
    assert next_action(published, expiry, T0 + 9 * S, POLICY) is None
    assert next_action(published, expiry, T0 + 10 * S, POLICY) is Action.SWITCH
    # a repeated `meshctl ca rotate` during a rollover does not start another one
    assert next_action(published, expiry, T0 + 1 * S, POLICY, requested=True) is None
    switched = RolloverState(Phase.SWITCHED, T0 + 10 * S, "a", "b")
    assert next_action(switched, expiry, T0 + 69 * S, POLICY) is None
    assert next_action(switched, expiry, T0 + 70 * S, POLICY) is Action.RETIRE


def test_policy_refuses_schedules_that_would_let_the_old_ca_expire_in_use() -> None:
    with pytest.raises(ValueError, match="rotate_before"):
        RolloverPolicy(propagate=10 * S, overlap=60 * S, rotate_before=69 * S, ca_lifetime=1000 * S)
    with pytest.raises(ValueError, match="ca_lifetime"):
        RolloverPolicy(propagate=10 * S, overlap=60 * S, rotate_before=100 * S, ca_lifetime=100 * S)


def test_state_roundtrip_and_malformed_state() -> None:
    st = RolloverState(Phase.SWITCHED, T0, "aa", "bb", "scheduled")
    assert RolloverState.from_json(st.to_json()) == st
    for bad in (b"", b"{}", b'{"phase": "sideways", "since": 0}', b"[1]"):
        with pytest.raises(RolloverError):
            RolloverState.from_json(bad)


def test_bundle_order_through_the_phases() -> None:
    a, b = CertificateAuthority.generate("A"), CertificateAuthority.generate("B")
    names = lambda pem: [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(pem)]  # noqa: E731
    begun = bundle_after(Action.BEGIN, [a.cert], b.cert)
    assert names(begun) == ["CN=A", "CN=B"]
    switched = bundle_after(Action.SWITCH, x509.load_pem_x509_certificates(begun), None)
    assert names(switched) == ["CN=B", "CN=A"]
    assert names(bundle_after(Action.RETIRE, x509.load_pem_x509_certificates(switched), None)) == ["CN=B"]
    with pytest.raises(RolloverError):
        bundle_after(Action.SWITCH, [a.cert], None)


# -- against a real etcd ---------------------------------------------------------------------------


def _csr(cn: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    req = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    return req.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _trusted(leaf: x509.Certificate, bundle_pem: str) -> bool:
    try:
        validate_chain(leaf, [], TrustStore.from_pem(bundle_pem.encode()), dt.datetime.now(dt.UTC))
    except CertificateError:
        return False
    return True


def test_full_rollover_in_etcd_keeps_both_cas_trusted_during_the_overlap(etcd: EtcdCluster) -> None:
    async def body() -> None:
        sealer = Sealer(os.urandom(32))
        async with Store(etcd.endpoints) as store:
            ca_a, created = await load_or_create_ca(store, sealer)
            assert created
            node_a = ca_a.sign_node_csr(_csr("n1"), "n1", dt.timedelta(hours=1))
            roll = RolloverStore(store, sealer, POLICY)
            now = dt.datetime.now(dt.UTC)

            assert await roll.step(now) == (None, RolloverState())  # A is far from expiry
            action, st = await roll.step(now, requested=True)
            assert action is Action.BEGIN and st.phase is Phase.PUBLISHED and st.reason == "manual"
            creds = (await load_inputs(store, sealer)).creds
            signing = await load_ca(store, sealer)
            assert signing.sha256 == ca_a.sha256  # A still signs while B propagates
            assert len(x509.load_pem_x509_certificates(creds.trusted_ca_pem.encode())) == 2
            assert await store.get(CA_NEXT_KEY) is not None
            assert b"PRIVATE" not in (await store.get(CA_NEXT_KEY)).value  # type: ignore[union-attr]

            assert (await roll.step(now + 9 * S))[0] is None
            action, st = await roll.step(now + 10 * S)
            assert action is Action.SWITCH and st.phase is Phase.SWITCHED
            ca_b = await load_ca(store, sealer)  # what a replica reloads: B now signs
            assert ca_b.sha256 == st.new_fp != ca_a.sha256
            assert await store.get(CA_NEXT_KEY) is None
            node_b = ca_b.sign_node_csr(_csr("n2"), "n2", dt.timedelta(hours=1))
            overlap = (await load_inputs(store, sealer)).creds.trusted_ca_pem
            assert _trusted(node_a, overlap) and _trusted(node_b, overlap)  # both during the overlap

            action, st = await roll.step(now + 70 * S)
            assert action is Action.RETIRE and st == RolloverState()
            assert await store.get(CA_ROLLOVER) is None
            after = (await load_inputs(store, sealer)).creds.trusted_ca_pem
            assert _trusted(node_b, after) and not _trusted(node_a, after)
            assert (await load_ca(store, sealer)).sha256 == ca_b.sha256

    asyncio.run(asyncio.wait_for(body(), 30))


def test_a_step_is_applied_once_even_when_two_replicas_race(etcd: EtcdCluster) -> None:
    async def body() -> None:
        sealer = Sealer(os.urandom(32))
        async with Store(etcd.endpoints) as s1, Store(etcd.endpoints) as s2:
            await load_or_create_ca(s1, sealer)
            r1, r2 = RolloverStore(s1, sealer, POLICY), RolloverStore(s2, sealer, POLICY)
            snap1, snap2 = await r1.read(), await r2.read()
            now = dt.datetime.now(dt.UTC)
            results = await asyncio.gather(
                r1.apply(snap1, Action.BEGIN, now), r2.apply(snap2, Action.BEGIN, now), return_exceptions=True
            )
            assert sum(isinstance(r, RolloverError) for r in results) == 1
            kv = await s1.get(Keys.CA_CERT)
            assert kv is not None and len(x509.load_pem_x509_certificates(kv.value)) == 2

    asyncio.run(asyncio.wait_for(body(), 30))


def test_policy_for_a_node_certificate_lifetime_is_consistent() -> None:
    for lifetime in (dt.timedelta(seconds=30), dt.timedelta(days=30), dt.timedelta(days=365)):
        p = policy_for(lifetime, propagate=dt.timedelta(seconds=5))
        assert p.overlap >= lifetime  # every old-CA node certificate expires inside the overlap
        assert p.rotate_before >= p.propagate + p.overlap and p.ca_lifetime > p.rotate_before


def test_switch_waits_for_lagging_agents_but_not_forever() -> None:
    published = RolloverState(Phase.PUBLISHED, T0, "a", "b")
    expiry = T0 + 500 * S
    assert POLICY.max_wait == 100 * S
    assert next_action(published, expiry, T0 + 10 * S, POLICY, lagging=3) is None
    assert next_action(published, expiry, T0 + 99 * S, POLICY, lagging=1) is None
    assert next_action(published, expiry, T0 + 100 * S, POLICY, lagging=1) is Action.SWITCH
    assert next_action(published, expiry, T0 + 10 * S, POLICY, lagging=0) is Action.SWITCH


def test_lagging_counts_reporting_agents_behind_the_new_bundle(etcd: EtcdCluster) -> None:
    from meshsec.api.v1 import status_pb2

    async def body() -> None:
        sealer = Sealer(os.urandom(32))
        async with Store(etcd.endpoints) as store:
            await load_or_create_ca(store, sealer)
            roll = RolloverStore(store, sealer, POLICY)
            now = dt.datetime.now(dt.UTC)
            await roll.step(now, requested=True)
            begun = (await roll.read()).bundle_rev
            await store.put(
                Keys.status("old"), status_pb2.NodeStatus(applied_version=begun - 1).SerializeToString()
            )
            await store.put(
                Keys.status("new"), status_pb2.NodeStatus(applied_version=begun).SerializeToString()
            )
            await store.put(Keys.status("bad"), b"\xff\xff\xff")
            assert await roll.lagging(begun) == 2
            assert (await roll.step(now + 10 * S))[0] is None  # held back by the lagging agents
            await store.put(
                Keys.status("old"), status_pb2.NodeStatus(applied_version=begun).SerializeToString()
            )
            await store.delete(Keys.status("bad"))  # its Report stream ended
            action, st = await roll.step(now + 10 * S)
            assert action is Action.SWITCH and st.phase is Phase.SWITCHED

    asyncio.run(asyncio.wait_for(body(), 30))
