"""Two engines authenticating with certificates (RFC 7427 digital signatures, CA-validated chains)."""

from __future__ import annotations

from meshsec.agent.ike import payloads as P
from meshsec.agent.ike.certs import RevocationSet, TrustStore
from meshsec.agent.ike.constants import AuthMethod, Exchange
from meshsec.agent.ike.events import ChildSaEstablished, IkeSaDeleted, IkeSaEstablished, IkeSaFailed
from meshsec.agent.ike.identity import IdentityPattern
from meshsec.agent.ike.message import decrypt_message, parse_message

from . import pki_helpers as pk
from .harness import Pair, make_configs, of

WALL = pk.NOW.timestamp()


def _pki(kind: str = "ec") -> dict:
    root = pk.issue(pk.cn("meshsec CA"), pk.key("ec", 10), ca=True)
    a = pk.issue(pk.cn("node-a"), pk.key(kind, 1), root, pk.key("ec", 10), dns=["a.test"])
    b = pk.issue(pk.cn("node-b"), pk.key(kind, 2), root, pk.key("ec", 10), dns=["b.test"])
    return {
        "root": root,
        "a": a,
        "b": b,
        "trust": TrustStore((root,)),
        "ka": pk.key(kind, 1),
        "kb": pk.key(kind, 2),
    }


def _cert_configs(x: dict, **kw: object) -> tuple:
    kw = {
        "i_private_key": x["ka"],
        "i_cert_chain": [x["a"]],
        "r_private_key": x["kb"],
        "r_cert_chain": [x["b"]],
        **kw,
    }
    return make_configs(psk=None, trust=x["trust"], wall_clock=lambda now: WALL, **kw)


def test_certificate_authentication_both_ways() -> None:
    for kind in ("ec", "ed25519"):
        x = _pki(kind)
        p = Pair(*_cert_configs(x)).start()
        assert of(p.ev_a, IkeSaEstablished) and of(p.ev_b, IkeSaEstablished), (p.ev_a, p.ev_b)
        assert of(p.ev_a, ChildSaEstablished)
        req = next(r for r in p.wire.sent("a>b") if parse_message(r).exchange == Exchange.IKE_AUTH)
        inner = decrypt_message(parse_message(req), p.b_session.sa.inb)
        assert [type(x).__name__ for x in inner[:4]] == ["IDi", "IDr", "Cert", "CertReq"]
        assert P.find(inner, P.Auth)[0].method == AuthMethod.DIGITAL_SIGNATURE
        assert of(p.ev_b, IkeSaEstablished)[0].remote_id == (2, b"a.test")


def test_certificate_from_untrusted_ca_is_refused() -> None:
    x = _pki()
    other = pk.issue(pk.cn("rogue CA"), pk.key("ec", 20), ca=True)
    a_cfg, b_cfg = _cert_configs(x)
    a_cfg.cert_chain = [pk.issue(pk.cn("node-a"), pk.key("ec", 1), other, pk.key("ec", 20), dns=["a.test"])]
    p = Pair(a_cfg, b_cfg).start()
    assert "not trusted" in of(p.ev_b, IkeSaFailed)[0].reason
    assert "AUTHENTICATION_FAILED" in of(p.ev_a, IkeSaFailed)[0].reason


def test_revoked_and_wrong_identity_refused() -> None:
    x = _pki()
    a_cfg, b_cfg = _cert_configs(x)
    b_cfg.revoked = RevocationSet.of(serials=[x["a"].serial_number])
    p = Pair(a_cfg, b_cfg).start()
    assert "revoked" in of(p.ev_b, IkeSaFailed)[0].reason
    a_cfg, b_cfg = _cert_configs(x, r_remote_id=IdentityPattern.parse("*.other"))
    p = Pair(a_cfg, b_cfg).start()
    assert "does not match" in of(p.ev_b, IkeSaFailed)[0].reason


def test_initiator_checks_responder_certificate() -> None:
    x = _pki()
    a_cfg, b_cfg = _cert_configs(x)
    b_cfg.cert_chain = [
        pk.issue(pk.cn("node-b"), pk.key("ec", 2), x["root"], pk.key("ec", 10), dns=["c.test"])
    ]
    p = Pair(a_cfg, b_cfg).start()
    assert "not in certificate" in of(p.ev_a, IkeSaFailed)[0].reason
    # B already had the SA up; A tells it with an INFORMATIONAL AUTHENTICATION_FAILED and B tears it down
    assert "AUTHENTICATION_FAILED" in of(p.ev_b, IkeSaDeleted)[0].reason and p.b.sessions == []


def test_psk_initiator_cert_responder_mixed() -> None:
    x = _pki()
    a_cfg, b_cfg = _cert_configs(x)
    a_cfg.private_key, a_cfg.cert_chain = None, ()
    a_cfg.psk = b_cfg.psk = b"0123456789abcdef0123"
    p = Pair(a_cfg, b_cfg).start()
    assert of(p.ev_a, IkeSaEstablished) and of(p.ev_b, IkeSaEstablished)
    req = next(r for r in p.wire.sent("a>b") if parse_message(r).exchange == Exchange.IKE_AUTH)
    resp = next(r for r in p.wire.sent("b>a") if parse_message(r).exchange == Exchange.IKE_AUTH)
    a_auth = P.find(decrypt_message(parse_message(req), p.b_session.sa.inb), P.Auth)[0]
    b_inner = decrypt_message(parse_message(resp), p.a.sa.inb)
    assert a_auth.method == AuthMethod.SHARED_KEY_MIC
    assert P.find(b_inner, P.Auth)[0].method == AuthMethod.DIGITAL_SIGNATURE
    assert P.find(b_inner, P.Cert)  # the responder sent its certificate
