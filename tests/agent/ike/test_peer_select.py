"""A responder whose peer is decided at IKE_AUTH by IDi/IDr, not by address (peerselect.py).

Several peers behind NATs come from addresses no configuration names.  The responder answers
IKE_SA_INIT with a config standing for all of them (union of IKE proposals, all their CAs) and
adopts the right peer's config (auth, identities, children) at IKE_AUTH.  Proves: the right peer
is picked by IDi for PSK and certificates, two peers interleaved through one NAT address each get
their own config, an unknown IDi or an IDr that is not us is refused with AUTHENTICATION_FAILED and
one log line, a wrong PSK for a known IDi is refused, an IKE proposal outside the resolved peer's
profile is refused, the ranking prefers exact identities, and the resolved SA rekeys with its own
peer's proposals.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from meshsec.agent.ike import payloads as P
from meshsec.agent.ike import peerselect
from meshsec.agent.ike.certs import TrustStore, parse_certreq, spki_sha1
from meshsec.agent.ike.config import IkeConfig, fqdn
from meshsec.agent.ike.constants import Notify
from meshsec.agent.ike.events import (
    ChildSaEstablished,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from meshsec.agent.ike.identity import Identity, IdentityPattern
from meshsec.agent.ike.message import parse_message
from meshsec.agent.ike.payloads import TrafficSelector
from meshsec.agent.ike.responder import IkeResponder
from meshsec.agent.ike.session import IkeSession

from . import pki_helpers as pk
from .harness import B_IP, NAT_IP, of

HUB_NET = "198.19.0.0/24"
NETS = {"c1": "198.19.1.0/24", "c2": "198.19.2.0/24", "c3": "198.19.3.0/24"}
PSKS = {
    "c1": b"c1-secret-0123456789abcdef",
    "c2": b"c2-secret-0123456789abcdef",
    "c3": b"c3-secret-0123456789abc",
}
INSIDE_IP = "198.18.1.2"  # every initiator's own (private) address behind its NAT
WALL = pk.NOW.timestamp()
GCM_X25519 = "aes128gcm16-prfsha256-x25519"
GCM256_ECP = "aes256gcm16-prfsha384-ecp256"


def ts(cidr: str) -> list[TrafficSelector]:
    return [TrafficSelector.from_cidr(cidr)]


def initiator(name: str, *, remote_id: Any = None, **kw: Any) -> IkeConfig:
    """Peer `name`'s own config towards the hub (it knows the hub's address)."""
    kw.setdefault("psk", PSKS.get(name, PSKS["c1"]))
    return IkeConfig(
        local_addr=(INSIDE_IP, 500),
        remote_addr=(B_IP, 500),
        local_id=fqdn(f"{name}.test"),
        remote_id=remote_id,
        local_ts=ts(NETS.get(name, NETS["c1"])),
        remote_ts=ts(HUB_NET),
        seed=1,
        **kw,
    )


def candidate(name: str, **kw: Any) -> IkeConfig:
    """The hub's config for peer `name` (no address: it may come from anywhere)."""
    kw.setdefault("psk", PSKS[name])
    kw.setdefault("remote_id", IdentityPattern.parse(f"fqdn:{name}.test"))
    kw.setdefault("local_id", fqdn("hub.test"))
    return IkeConfig(
        local_addr=(B_IP, 500),
        remote_addr=None,
        local_ts=ts(HUB_NET),
        remote_ts=ts(NETS[name]),
        seed=2,
        **kw,
    )


class Hub:
    """One responder dispatcher and any number of initiators, each behind its own NAT port on one
    public NAT address, so the hub can never tell them apart by address."""

    def __init__(self, candidates: dict[str, IkeConfig], now: float = 1000.0) -> None:
        self.now = now
        self.candidates = candidates
        self.resolved: list[tuple[str, IkeConfig]] = []
        self.inits: list[IkeConfig] = []
        self.r = IkeResponder(self._config_for, now)
        self.peers: dict[int, tuple[IkeSession, list[Any]]] = {}  # NAT port of 500 -> (session, events)
        self.ev_r: list[tuple[IkeSession, Any]] = []
        self.sent_r: list[bytes] = []

    def _config_for(self, addr: Any) -> IkeConfig:
        """Like the agent: a fresh deferred config per IKE_SA_INIT, noting which peer it resolved to."""
        cfg = peerselect.deferred_config(
            list(self.candidates.items()), on_resolved=lambda k, c: self.resolved.append((k, c))
        )
        self.inits.append(cfg)
        return cfg

    def connect(self, cfg: IkeConfig, *, pump: bool = True) -> IkeSession:
        port = 40000 + 2 * len(self.peers)
        s = IkeSession(cfg, self.now)
        self.peers[port] = (s, [])
        s.initiate(self.now)
        if pump:
            self.pump()
        return s

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            for port, (s, evs) in self.peers.items():
                for raw, dst in s.datagrams_to_send(self.now):
                    moved = True
                    src = (NAT_IP, port if s.local_port == 500 else port + 1)
                    self.r.receive(raw, src, self.now, local_port=dst[1])
                while (e := s.next_event()) is not None:
                    evs.append(e)
            for raw, dst, lport in self.r.datagrams_to_send(self.now):
                moved = True
                self.sent_r.append(raw)
                base = dst[1] if dst[1] % 2 == 0 else dst[1] - 1
                s, _ = self.peers[base]
                s.receive(raw, (B_IP, lport), self.now, local_port=500 if dst[1] == base else 4500)
            while (item := self.r.next_event()) is not None:
                self.ev_r.append(item)
            if not moved:
                return

    def events(self, s: IkeSession) -> list[Any]:
        return next(evs for x, evs in self.peers.values() if x is s)

    def hub_events(self, cls: type) -> list[tuple[IkeSession, Any]]:
        return [(s, e) for s, e in self.ev_r if isinstance(e, cls)]


def test_psk_peers_are_told_apart_by_idi() -> None:
    hub = Hub({"c1": candidate("c1"), "c2": candidate("c2")})
    s2 = hub.connect(initiator("c2"))
    s1 = hub.connect(initiator("c1"))
    assert of(hub.events(s1), IkeSaEstablished) and of(hub.events(s2), IkeSaEstablished)
    assert [k for k, _ in hub.resolved] == ["c2", "c1"]
    by_peer = {e.remote_id: (s, e) for s, e in hub.hub_events(IkeSaEstablished)}
    for name in ("c1", "c2"):
        s, _ = by_peer[fqdn(f"{name}.test")]
        assert s.config is next(c for k, c in hub.resolved if k == name)  # adopted the resolved copy
        assert s.config.psk == PSKS[name] and s.config.resolve is None
        assert s.peer_id == fqdn(f"{name}.test")
        child = next(e for x, e in hub.hub_events(ChildSaEstablished) if x is s)
        assert [str(t) for t in child.ts_remote] == [str(t) for t in ts(NETS[name])]  # the peer's children
    # each peer was resolved from its own deferred config: nothing is shared between the two SAs
    assert len(hub.inits) == 2 and all(s.config is not i for s, _ in hub.ev_r for i in hub.inits)


def test_two_peers_interleaved_each_get_their_own_config() -> None:
    """Both IKE_SA_INITs are answered before either IKE_AUTH arrives (from the same NAT address)."""
    hub = Hub({"c1": candidate("c1"), "c2": candidate("c2")})
    s1 = hub.connect(initiator("c1"), pump=False)
    s2 = hub.connect(initiator("c2"), pump=False)
    for port, (s, _) in hub.peers.items():  # deliver both IKE_SA_INITs first
        for raw, dst in s.datagrams_to_send(hub.now):
            hub.r.receive(raw, (NAT_IP, port), hub.now, local_port=dst[1])
    assert hub.r.half_open == 2 and not hub.resolved
    assert all(s.config.resolve is not None for s in hub.r.sessions)  # undecided until IKE_AUTH
    hub.pump()
    assert of(hub.events(s1), ChildSaEstablished) and of(hub.events(s2), ChildSaEstablished)
    assert sorted(k for k, _ in hub.resolved) == ["c1", "c2"]
    assert {s.config.psk for s, _ in hub.hub_events(IkeSaEstablished)} == {PSKS["c1"], PSKS["c2"]}


def _pki() -> dict[str, Any]:
    ca_key, other_key = pk.key("ec", 30), pk.key("ec", 31)
    root = pk.issue(pk.cn("mesh CA"), ca_key, ca=True)
    other = pk.issue(pk.cn("partner CA"), other_key, ca=True)
    out: dict[str, Any] = {"root": root, "other": other}
    for i, (name, issuer, ikey) in enumerate(
        (("hub", root, ca_key), ("c1", root, ca_key), ("c2", other, other_key), ("c3", root, ca_key))
    ):
        k = pk.key("ec", 40 + i)
        out[name] = (k, pk.issue(pk.cn(name), k, issuer, ikey, dns=[f"{name}.test"]))
    return out


def _cert_candidate(x: dict[str, Any], name: str, ca: str, **kw: Any) -> IkeConfig:
    hub_key, hub_cert = x["hub"]
    return candidate(
        name,
        psk=None,
        private_key=hub_key,
        cert_chain=[hub_cert],
        trust=TrustStore((x[ca],)),
        wall_clock=lambda now: WALL,
        **kw,
    )


def _cert_initiator(x: dict[str, Any], name: str) -> IkeConfig:
    k, cert = x[name]
    return initiator(
        name,
        psk=None,
        private_key=k,
        cert_chain=[cert],
        trust=TrustStore((x["root"],)),
        remote_id=IdentityPattern.parse("fqdn:hub.test"),
        wall_clock=lambda now: WALL,
    )


def test_certificate_peers_are_told_apart_by_idi() -> None:
    """c1 and c2 hold certificates from different CAs; the hub asks for both in IKE_SA_INIT and
    verifies each peer against its own candidate's trust only."""
    x = _pki()
    hub = Hub({"c1": _cert_candidate(x, "c1", "root"), "c2": _cert_candidate(x, "c2", "other")})
    s1 = hub.connect(_cert_initiator(x, "c1"))
    s2 = hub.connect(_cert_initiator(x, "c2"))
    assert of(hub.events(s1), ChildSaEstablished), hub.events(s1)
    assert of(hub.events(s2), ChildSaEstablished), hub.events(s2)
    init_resp = parse_message(hub.sent_r[0])
    reqs = P.find(init_resp.payloads, P.CertReq)
    assert set(parse_certreq(reqs[0].encoding, reqs[0].data)) == {spki_sha1(x["root"]), spki_sha1(x["other"])}
    assert Notify.SIGNATURE_HASH_ALGORITHMS in P.notifies(init_resp.payloads)
    certs_seen = {e.remote_id: s.peer_cert for s, e in hub.hub_events(IkeSaEstablished)}
    assert certs_seen[fqdn("c1.test")] == x["c1"][1] and certs_seen[fqdn("c2.test")] == x["c2"][1]


def test_certificate_from_the_other_candidates_ca_is_refused() -> None:
    """c3's certificate is from the mesh CA, but the hub's c3 profile trusts only the partner CA:
    the union of CAs in CERTREQ must not widen what each peer is verified against."""
    x = _pki()
    hub = Hub({"c1": _cert_candidate(x, "c1", "root"), "c3": _cert_candidate(x, "c3", "other")})
    s3 = hub.connect(_cert_initiator(x, "c3"))
    assert "AUTHENTICATION_FAILED" in of(hub.events(s3), IkeSaFailed)[0].reason
    (s, fail), *_ = hub.hub_events(IkeSaFailed)
    assert "not trusted" in fail.reason and s.config.remote_id.text == "fqdn:c3.test"


def test_unknown_idi_is_refused_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    hub = Hub({"c1": candidate("c1"), "c2": candidate("c2")})
    with caplog.at_level(logging.INFO, logger="meshsec.agent.ike"):
        s = hub.connect(initiator("mallory", psk=PSKS["c1"]))
    assert "AUTHENTICATION_FAILED" in of(hub.events(s), IkeSaFailed)[0].reason
    [(hs, fail)] = hub.hub_events(IkeSaFailed)
    assert "no configured peer has identity fqdn:mallory.test" in fail.reason
    assert hs.config.resolve is not None and not hub.resolved  # nobody was bound to it
    lines = [
        r for r in caplog.records if r.name.startswith("meshsec.agent.ike.") and "mallory" in r.getMessage()
    ]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]
    assert PSKS["c1"].decode() not in caplog.text
    assert hub.r.half_open == 0 and not hub.r.sessions  # nothing kept


def test_wrong_psk_for_a_known_idi_is_refused() -> None:
    hub = Hub({"c1": candidate("c1"), "c2": candidate("c2")})
    s = hub.connect(initiator("c2", psk=PSKS["c1"]))  # claims c2 with c1's key
    assert "AUTHENTICATION_FAILED" in of(hub.events(s), IkeSaFailed)[0].reason
    [(hs, fail)] = hub.hub_events(IkeSaFailed)
    assert "shared key MIC mismatch" in fail.reason
    assert [k for k, _ in hub.resolved] == ["c2"] and hs.config.psk == PSKS["c2"]


def test_idr_picks_among_our_identities_and_a_foreign_idr_is_refused() -> None:
    other_us = candidate("c1", local_id=fqdn("hub-b.test"))
    hub = Hub({"c1-as-hub": candidate("c1"), "c1-as-hub-b": other_us})
    s = hub.connect(initiator("c1", remote_id=fqdn("hub-b.test")))  # sends IDr hub-b.test
    assert of(hub.events(s), IkeSaEstablished)
    assert [k for k, _ in hub.resolved] == ["c1-as-hub-b"]
    [(_, est)] = hub.hub_events(IkeSaEstablished)
    assert est.local_id == fqdn("hub-b.test")
    hub = Hub({"c1": candidate("c1"), "c2": candidate("c2")})
    s = hub.connect(initiator("c1", remote_id=fqdn("elsewhere.test")))
    [(_, fail)] = hub.hub_events(IkeSaFailed)
    assert "asking for us as fqdn:elsewhere.test" in fail.reason
    assert "AUTHENTICATION_FAILED" in of(hub.events(s), IkeSaFailed)[0].reason


def test_ike_proposal_outside_the_resolved_profile_is_refused() -> None:
    """The hub offers the union (c1: x25519 only, c2: ecp256 only).  c2 with its own proposal gets
    its SA; an initiator claiming to be c1 but offering only c2's proposal passes IKE_SA_INIT (the
    union allows it) and is refused at IKE_AUTH, with the reason naming the proposal."""
    hub = Hub(
        {"c1": candidate("c1", ike_proposals=[GCM_X25519]), "c2": candidate("c2", ike_proposals=[GCM256_ECP])}
    )
    assert hub._config_for(None).ike_proposals == (GCM_X25519, GCM256_ECP)
    s2 = hub.connect(initiator("c2", ike_proposals=[GCM256_ECP]))
    assert of(hub.events(s2), IkeSaEstablished)[0].proposal.startswith("AES_GCM_16_256")
    s1 = hub.connect(initiator("c1", ike_proposals=[GCM256_ECP]))
    assert "AUTHENTICATION_FAILED" in of(hub.events(s1), IkeSaFailed)[0].reason
    [(_, fail)] = hub.hub_events(IkeSaFailed)
    assert fail.reason.startswith("AUTHENTICATION_FAILED: NO_PROPOSAL_CHOSEN") and GCM_X25519 in fail.reason
    s1 = hub.connect(initiator("c1", ike_proposals=[GCM_X25519]))
    assert of(hub.events(s1), IkeSaEstablished)


def test_union_prefers_what_every_candidate_allows() -> None:
    """c1 allows x25519 and ecp256, c2 only ecp256.  An initiator (c2) offering both DH groups in one
    proposal, KE for x25519 first, is steered to ecp256 (INVALID_KE_PAYLOAD) and gets its SA, rather
    than getting x25519 at IKE_SA_INIT and a refusal at IKE_AUTH."""
    both = "aes256gcm16-prfsha384-x25519-ecp256"
    hub = Hub(
        {
            "c1": candidate("c1", ike_proposals=["aes256gcm16-prfsha384-x25519", GCM256_ECP]),
            "c2": candidate("c2", ike_proposals=[GCM256_ECP]),
        }
    )
    assert hub._config_for(None).ike_proposals == (GCM256_ECP, "aes256gcm16-prfsha384-x25519")
    s2 = hub.connect(initiator("c2", ike_proposals=[both]))
    assert of(hub.events(s2), IkeSaEstablished)[0].proposal.endswith("/ECP256"), hub.events(s2)


def test_resolved_sa_rekeys_with_its_own_peers_proposals() -> None:
    """After IKE_AUTH the session runs on the peer's config alone: an IKE rekey offers c2's proposals."""
    hub = Hub(
        {"c1": candidate("c1", ike_proposals=[GCM_X25519]), "c2": candidate("c2", ike_proposals=[GCM256_ECP])}
    )
    s2 = hub.connect(initiator("c2", ike_proposals=[GCM256_ECP]))
    [(hs, _)] = hub.hub_events(IkeSaEstablished)
    hs.rekey_ike(hub.now)
    hub.r.sync(hs)
    hub.pump()
    assert of(hub.events(s2), IkeSaRekeyed) and hs.sa.suite is not None and hs.sa.suite.dh_group == 19


def test_pick_ranks_exact_over_wildcard_over_any() -> None:
    def cfg(remote_id: Any, local: str = "hub.test") -> IkeConfig:
        return IkeConfig(
            local_addr=(B_IP, 500),
            remote_addr=None,
            local_id=fqdn(local),
            remote_id=remote_id,
            psk=PSKS["c1"],
        )

    cands = [
        ("any", cfg(None)),
        ("wild", cfg(IdentityPattern.parse("*.test"))),
        ("exact", cfg(IdentityPattern.parse("fqdn:c1.test"))),
        ("tuple", cfg(fqdn("c2.test"))),
    ]
    c1, c2, c9 = (Identity.parse(f"fqdn:{n}.test") for n in ("c1", "c2", "c9"))
    assert peerselect.pick(cands, c1, None)[0] == "exact"  # type: ignore[index]
    assert peerselect.pick(cands, c2, None)[0] == "tuple"  # type: ignore[index]
    assert peerselect.pick(cands, c9, None)[0] == "wild"  # type: ignore[index]
    assert peerselect.pick(cands, Identity.parse("fqdn:x.example"), None)[0] == "any"  # type: ignore[index]
    assert peerselect.pick(cands[1:], Identity.parse("fqdn:x.example"), None) is None
    assert peerselect.pick(cands, c1, Identity.parse("fqdn:HUB.test"))[0] == "exact"  # type: ignore[index]
    assert peerselect.pick(cands, c1, Identity.parse("fqdn:other.test")) is None
    twins = [
        ("first", cfg(IdentityPattern.parse("*.test"))),
        ("second", cfg(IdentityPattern.parse("*.test"))),
    ]
    assert peerselect.pick(twins, c1, None)[0] == "first"  # type: ignore[index]
    with pytest.raises(ValueError):
        peerselect.deferred_config([])


def test_single_candidate_config_is_used_as_is() -> None:
    """Without `resolve` the responder behaves as before: the one config authenticates the peer."""
    hub = Hub({"c1": candidate("c1")})
    hub._config_for = lambda addr: candidate("c1")  # type: ignore[method-assign]
    hub.r = IkeResponder(hub._config_for, hub.now)
    s = hub.connect(initiator("c1"))
    assert of(hub.events(s), IkeSaEstablished) and not hub.resolved
    s = hub.connect(initiator("c2", psk=PSKS["c1"]))
    [(_, fail)] = hub.hub_events(IkeSaFailed)
    assert "is not" in fail.reason or "does not match" in fail.reason
