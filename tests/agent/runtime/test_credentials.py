"""Certificates behind established SAs: the pure rules (credentials.py), the engine exposing the peer's
leaf, and the host acting on them between two real engines (a real INFORMATIONAL DELETE; a session
marked for make-before-break re-authentication that plan.py then replaces)."""

from __future__ import annotations

import math

from cryptography.hazmat.primitives.serialization import Encoding
from meshsec.agent.ike.certs import RevocationSet, TrustStore
from meshsec.agent.ike.constants import Exchange
from meshsec.agent.ike.events import IkeSaDeleted, IkeSaEstablished, IkeSaFailed
from meshsec.agent.ike.message import parse_message
from meshsec.agent.runtime import credentials as cr
from meshsec.agent.runtime import mapping, plan
from meshsec.agent.runtime.host import AgentRuntime
from meshsec.agent.runtime.sas import PeerState, Session
from meshsec.controller.ca import fingerprint as controller_fingerprint

from tests.agent.ike import pki_helpers as pk
from tests.agent.ike.harness import Pair, make_configs, of
from tests.agent.runtime.harness import node, peer

FP_A = "ab" * 32
FP_B = "cd" * 32
WALL = pk.NOW.timestamp()  # the test certificates are valid 30 days either side of it
LATER = (pk.NOW + 31 * pk.DAY).timestamp()  # ... and expired by then


def test_normalize_accepts_the_usual_spellings_and_ignores_garbage() -> None:
    colons = ":".join(["EF"] * 32)
    got = cr.normalize([FP_A.upper(), f"sha256:{FP_B}", colons, "", "12", "zz" * 32, f" {FP_A} "])
    assert got == {FP_A, FP_B, "ef" * 32}


def test_only_established_sessions_with_a_revoked_peer_certificate_are_cut() -> None:
    sessions = [
        cr.SessionCert(4, "c", "established", FP_A),
        cr.SessionCert(1, "c", "established", FP_A),  # a duplicate SA with the same node: cut too
        cr.SessionCert(2, "b", "established", FP_B),  # not revoked
        cr.SessionCert(3, "c", "deleting", FP_A),  # already going
        cr.SessionCert(5, "c", "auth", FP_A),  # still negotiating: IKE_AUTH checks it
        cr.SessionCert(6, "p", "established", ""),  # PSK peer: no certificate
    ]
    none: frozenset[str] = frozenset()
    assert [s.sid for s in cr.to_cut(sessions, frozenset({FP_A}), none, WALL)] == [1, 4]
    assert cr.to_cut(sessions, none, none, WALL) == []
    assert cr.to_cut(sessions, frozenset({"ee" * 32}), none, WALL) == []


def test_expired_certificate_of_a_peer_refused_as_revoked_is_cut_too() -> None:
    """The controller lists only unexpired certificates: an SA still on the revoked node's expired
    one (re-authentication pending) goes once the node's current certificate was refused."""
    old = cr.SessionCert(1, "c", "established", FP_A, peer_not_after=WALL - 1)
    fresh = cr.SessionCert(2, "b", "established", FP_B, peer_not_after=WALL + 100)
    refused = frozenset({"c", "b"})
    assert cr.to_cut([old, fresh], frozenset(), refused, WALL) == [old]  # b's valid cert is not listed
    assert cr.to_cut([old, fresh], frozenset(), frozenset(), WALL) == []


def test_refusal_reason_of_the_engine_is_recognized() -> None:
    p, _, _ = _cert_pair(r_revoked=True)
    (failed,) = of(p.ev_b, IkeSaFailed)
    assert cr.refused_as_revoked(failed.reason), failed.reason
    assert not cr.refused_as_revoked("AUTHENTICATION_FAILED: the responder rejected our AUTH (wrong PSK?)")
    assert not cr.refused_as_revoked("peer certificate revoked")  # our own note after a cut
    assert not cr.refused_as_revoked("AUTHENTICATION_FAILED: certificate 'CN=x' expired at 2026-01-01")


def test_reauthentication_candidates_are_sas_on_an_expired_peer_certificate() -> None:
    s = [
        cr.SessionCert(1, "a", "established", FP_A, peer_not_after=WALL - 1),
        cr.SessionCert(2, "b", "established", FP_B, peer_not_after=WALL),
        cr.SessionCert(3, "c", "established", FP_B, peer_not_after=WALL + 9),  # still valid
        cr.SessionCert(4, "d", "established", FP_B, peer_not_after=WALL - 9, marked=True),  # once
        cr.SessionCert(5, "e", "auth", FP_B, peer_not_after=WALL - 9),
        cr.SessionCert(6, "p", "established", ""),  # PSK: nothing to expire
    ]
    assert [x.sid for x in cr.to_reauthenticate(s, WALL)] == [1, 2]
    assert cr.not_after(None) == math.inf


def _cert_pair(*, r_revoked: bool = False) -> tuple[Pair, object, object]:
    root = pk.issue(pk.cn("meshsec CA"), pk.key("ec", 10), ca=True)
    a = pk.issue(pk.cn("node-a"), pk.key("ec", 1), root, pk.key("ec", 10), dns=["a.test"])
    b = pk.issue(pk.cn("node-b"), pk.key("ec", 2), root, pk.key("ec", 10), dns=["b.test"])
    a_cfg, b_cfg = make_configs(
        psk=None,
        trust=TrustStore((root,)),
        wall_clock=lambda now: WALL,
        i_private_key=pk.key("ec", 1),
        i_cert_chain=[a],
        r_private_key=pk.key("ec", 2),
        r_cert_chain=[b],
    )
    if r_revoked:
        b_cfg.revoked = RevocationSet.of(fingerprints=[controller_fingerprint(a)])
    return Pair(a_cfg, b_cfg).start(), a, b


def test_engine_exposes_the_authenticated_leaf_in_the_controller_fingerprint_format() -> None:
    p, a, b = _cert_pair()
    assert of(p.ev_a, IkeSaEstablished) and of(p.ev_b, IkeSaEstablished)
    assert p.a.peer_cert == b and p.b_session.peer_cert == a
    assert cr.fingerprint(p.b_session.peer_cert) == controller_fingerprint(a)  # what `node revoke` writes
    assert cr.fingerprint(None) == ""
    p.a.rekey_ike(p.now)  # an IKE rekey does not re-authenticate: the SA keeps what it was built on
    p.pump()
    assert p.a.state == "established" and p.a.peer_cert == b


def test_psk_session_has_no_peer_certificate() -> None:
    p = Pair(*make_configs()).start()
    assert of(p.ev_a, IkeSaEstablished) and p.a.peer_cert is None and p.b_session.peer_cert is None


def _runtime_with(p: Pair, revoked: list[str], *, we_initiate: bool = True) -> tuple[AgentRuntime, Session]:
    """A host (no data plane) whose one session is the responder side of `p`, with peer "node-a"; it
    can start IKE SAs of its own through `p`'s dispatcher (certificate credentials of node-b)."""
    rt = AgentRuntime(clock=lambda: p.now)
    a_peer = peer(
        "node-a",
        endpoint="198.18.0.1",
        local_ts=["198.19.2.0/24"],
        remote_ts=["198.19.1.0/24"],
        psk=None,
        initiate=we_initiate,
        remote_identity="fqdn:a.test",
    )
    desired = node("node-b", [a_peer], identity="fqdn:b.test", listen=["198.18.0.2"])
    desired.local.trusted_ca_pem = p.b_session.config.trust.cas[0].public_bytes(Encoding.PEM).decode()
    desired.local.revoked_fingerprints.extend(revoked)
    rt.desired = desired
    rt._ike = p.b
    rt._credentials = mapping.Credentials(pk.key("ec", 2), tuple(p.b_session.config.cert_chain))
    digest = plan.session_digest(desired.peers[0], desired.local)
    s = Session(7, "node-a", p.b_session, digest, initiator=False, established_at=p.now)
    rt._sessions[id(p.b_session)] = s
    return rt, s


def test_host_deletes_the_sa_of_a_revoked_peer_with_a_delete_and_records_why() -> None:
    p, a, _ = _cert_pair()
    rt, s = _runtime_with(p, ["sha256:" + controller_fingerprint(a).upper()])
    assert rt._check_credentials(p.now, WALL) == 1
    assert s.ike.state == "deleting"
    assert rt._peers["node-a"].last_error == "peer certificate revoked"
    assert rt._peers["node-a"].retry_at > p.now  # no immediate retry: the node would be refused anyway
    out = p.b.datagrams_to_send(p.now)
    assert [parse_message(raw).exchange for raw, _, _ in out] == [Exchange.INFORMATIONAL]
    for raw, _dst, lport in out:  # the peer learns it at once (not by DPD)
        p.a.receive(raw, (p.b_ip, lport), p.now, local_port=500)
    p.collect()
    assert "deleted by peer" in of(p.ev_a, IkeSaDeleted)[0].reason
    assert rt._check_credentials(p.now, WALL) == 0  # idempotent: a deleting SA is not deleted twice


def test_host_keeps_sas_of_peers_that_are_not_revoked() -> None:
    p, _, b = _cert_pair()
    rt, s = _runtime_with(p, [controller_fingerprint(b), FP_A])  # our own cert and a stranger
    assert rt._check_credentials(p.now, WALL) == 0
    assert s.ike.state == "established" and not p.b.datagrams_to_send(p.now)
    # a refusal as revoked cuts only SAs on an expired certificate of that peer, not a valid one
    rt._peers["node-a"] = PeerState(last_error="AUTHENTICATION_FAILED: certificate 'CN=node-a' revoked")
    assert rt._check_credentials(p.now, WALL) == 0
    assert rt._check_credentials(p.now, LATER) == 1 and s.ike.state == "deleting"


def test_a_new_revocation_re_authenticates_sas_on_expired_certificates_make_before_break() -> None:
    p, _, _ = _cert_pair()
    rt, s = _runtime_with(p, [])
    assert rt.desired is not None
    current = plan.session_digest(rt.desired.peers[0], rt.desired.local)
    assert rt._check_credentials(p.now, LATER) == 0 and s.digest == current  # no probe: strongSwan-like
    assert rt._check_credentials(p.now, WALL, probe=True) == 0 and s.digest == current  # still valid
    assert rt._check_credentials(p.now, LATER, probe=True) == 0  # expired: nothing deleted ...
    assert s.ike.state == "established"
    assert s.digest == cr.REAUTH_MARK + current  # ... but no longer "built from the current config"
    rt._check_credentials(p.now, LATER + 5, probe=True)
    assert s.digest.count(cr.REAUTH_MARK) == 1  # marked once
    # so the plan replaces it make-before-break: we are the designated initiator and start a new IKE
    # SA; the old one stays until the new one is up
    actions = plan.diff(rt.desired, plan.Actual(sessions=(s.view(p.now),)), p.now)
    assert plan.StartIke("node-a") in actions and not any(isinstance(x, plan.DeleteIke) for x in actions)


def test_a_designated_responder_reaches_out_itself_and_a_refusal_as_revoked_cuts_the_old_sa() -> None:
    p, _, _ = _cert_pair()
    rt, s = _runtime_with(p, [], we_initiate=False)
    assert rt._check_credentials(p.now, LATER, probe=True) == 0
    new = [x for x in rt._sessions.values() if x is not s]
    assert len(new) == 1 and new[0].initiator and new[0].ike.state == "init"  # IKE_SA_INIT is out
    assert s.ike.state == "established"  # make-before-break: the old SA stays meanwhile
    # the peer's current certificate is refused as revoked: the old SA (on its expired one) goes
    rt._peers["node-a"] = PeerState(
        last_error="AUTHENTICATION_FAILED: certificate 'CN=a' (serial 0x1) revoked"
    )
    assert rt._check_credentials(p.now, LATER) == 1 and s.ike.state == "deleting"
