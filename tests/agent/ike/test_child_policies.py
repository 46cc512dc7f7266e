"""Several Child SA policies on one IKE SA: a transport child (host to host) beside a tunnel child
(subnet to subnet), each with its own proposals, from either side; the responder's choice of policy
(containment before narrowing, mode, proposals) and its refusals; rekeys that keep mode and proposals."""

from __future__ import annotations

from typing import Any

import pytest
from meshsec.agent.ike import payloads as P
from meshsec.agent.ike.config import ChildPolicy
from meshsec.agent.ike.constants import Encr, Notify
from meshsec.agent.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeSaEstablished,
)
from meshsec.agent.ike.payloads import TrafficSelector as TS

from .harness import A_IP, B_IP, NET_A, NET_B, Pair, make_configs, of

HOST_A, HOST_B = TS.from_cidr(f"{A_IP}/32"), TS.from_cidr(f"{B_IP}/32")
SITE_A, SITE_B = TS.from_cidr(NET_A), TS.from_cidr(NET_B)


def _policies(side: str, hosts_esp: tuple[str, ...] = ("aes128gcm16",), sites_esp=("chacha20poly1305",)):
    """hosts (transport, host to host) first, then sites (tunnel, subnet to subnet), seen from `side`."""
    mine, theirs = (HOST_A, HOST_B) if side == "a" else (HOST_B, HOST_A)
    lan, far = (SITE_A, SITE_B) if side == "a" else (SITE_B, SITE_A)
    return [
        ChildPolicy("hosts", "transport", hosts_esp, [mine], [theirs]),
        ChildPolicy("sites", "tunnel", sites_esp, [lan], [far]),
    ]


def _mixed(**kw: Any) -> Pair:
    kw.setdefault("i_children", _policies("a"))
    kw.setdefault("r_children", _policies("b"))
    return Pair(*make_configs(**kw)).start()


def _pending_notifies(session: Any) -> dict[int, Any]:
    req = session.sa.pending
    assert req is not None
    return P.notifies(req.payloads)


def test_transport_and_tunnel_children_on_one_ike_sa_initiator_creates_second() -> None:
    p = _mixed()
    assert len(of(p.ev_a, IkeSaEstablished)) == 1
    first = of(p.ev_a, ChildSaEstablished)
    assert len(first) == 1 and first[0].mode == "transport"  # the first policy rides in IKE_AUTH
    assert first[0].ts_local == (HOST_A,) and first[0].ts_remote == (HOST_B,)
    assert first[0].encr_id == Encr.AES_GCM_16

    p.a.create_child(p.now, [SITE_A], [SITE_B])  # mode and proposals come from the matching policy
    assert Notify.USE_TRANSPORT_MODE not in _pending_notifies(p.a)
    p.pump()
    a = {e.mode: e for e in of(p.ev_a, ChildSaEstablished)}
    b = {e.mode: e for e in of(p.ev_b, ChildSaEstablished)}
    assert set(a) == set(b) == {"transport", "tunnel"}
    assert a["tunnel"].ts_local == (SITE_A,) and a["tunnel"].ts_remote == (SITE_B,)
    assert b["tunnel"].ts_local == (SITE_B,) and b["tunnel"].ts_remote == (SITE_A,)
    assert a["tunnel"].encr_id == b["tunnel"].encr_id == Encr.CHACHA20_POLY1305  # its own proposals
    for mode in ("transport", "tunnel"):
        assert (a[mode].spi_in, a[mode].spi_out) == (b[mode].spi_out, b[mode].spi_in)
        assert a[mode].keymat_in == b[mode].keymat_out
    assert {c.policy for c in p.b_session.children.values()} == {"hosts", "sites"}
    assert len(p.b.sessions) == 1 and not of(p.ev_a, ChildSaFailed) and not of(p.ev_b, ChildSaFailed)


def test_responder_creates_the_tunnel_child_and_initiator_matches_its_policies() -> None:
    p = _mixed()
    p.b_session.create_child(p.now, [SITE_B], [SITE_A])
    p.b.sync(p.b_session)  # a direct call on a responder session: hand its output to the dispatcher
    p.pump()
    a = {e.mode: e for e in of(p.ev_a, ChildSaEstablished)}
    assert set(a) == {"transport", "tunnel"} and a["tunnel"].ts_local == (SITE_A,)
    assert {c.policy for c in p.a.children.values()} == {"hosts", "sites"}


def test_tunnel_first_then_transport_with_explicit_mode_and_proposals() -> None:
    ia, rb = _policies("a")[::-1], _policies("b", hosts_esp=("aes256gcm16", "aes128gcm16"))[::-1]
    p = _mixed(i_children=ia, r_children=rb)
    assert [e.mode for e in of(p.ev_a, ChildSaEstablished)] == ["tunnel"]
    p.a.create_child(p.now, [HOST_A], [HOST_B], mode="transport", esp_proposals=["aes256gcm16"])
    assert Notify.USE_TRANSPORT_MODE in _pending_notifies(p.a)
    p.pump()
    t = [e for e in of(p.ev_a, ChildSaEstablished) if e.mode == "transport"]
    assert len(t) == 1 and t[0].key_bits == 256
    assert [e.mode for e in of(p.ev_b, ChildSaEstablished)] == ["tunnel", "transport"]


@pytest.mark.parametrize("side", ["a", "b"])
def test_rekeys_keep_each_childs_mode_and_proposals(side: str) -> None:
    p = _mixed()
    p.a.create_child(p.now, [SITE_A], [SITE_B])
    p.pump()
    s = p.a if side == "a" else p.b_session
    by_mode = {c.mode: c for c in s.children.values()}
    s.rekey_child(p.now, by_mode["transport"].spi_in_int)
    assert Notify.USE_TRANSPORT_MODE in _pending_notifies(s)  # RFC 7296 §2.8: sent again on rekey
    p.b.sync(p.b_session)
    p.pump()
    s.rekey_child(p.now, by_mode["tunnel"].spi_in_int)
    assert Notify.USE_TRANSPORT_MODE not in _pending_notifies(s)
    p.b.sync(p.b_session)
    p.pump()
    for evs in (p.ev_a, p.ev_b):
        rekeyed = of(evs, ChildSaRekeyed)
        assert [r.new.mode for r in rekeyed] == ["transport", "tunnel"]
        assert [r.new.encr_id for r in rekeyed] == [Encr.AES_GCM_16, Encr.CHACHA20_POLY1305]
    for sess in (p.a, p.b_session):
        assert sorted(c.mode for c in sess.children.values()) == ["transport", "tunnel"]
        assert {c.policy for c in sess.children.values()} == {"hosts", "sites"}


def test_peer_rekey_of_a_child_made_with_explicit_proposals_is_accepted() -> None:
    # A creates the tunnel child with proposals outside its own "sites" policy; B's policy allows
    # them. When B rekeys that child, A accepts what the SA was created with.
    p = _mixed(r_children=_policies("b", sites_esp=("aes256gcm16",)))
    p.a.create_child(p.now, [SITE_A], [SITE_B], esp_proposals=["aes256gcm16"])
    p.pump()
    tunnel = next(c for c in p.b_session.children.values() if c.mode == "tunnel")
    assert tunnel.suite.key_bits == 256
    p.b_session.rekey_child(p.now, tunnel.spi_in_int)
    p.b.sync(p.b_session)
    p.pump()
    rekeyed = of(p.ev_a, ChildSaRekeyed)
    assert len(rekeyed) == 1 and rekeyed[0].new.mode == "tunnel"
    assert rekeyed[0].new.encr_id == Encr.AES_GCM_16 and rekeyed[0].new.key_bits == 256
    assert not of(p.ev_a, ChildSaFailed) and not of(p.ev_b, ChildSaFailed)


def test_lifetime_rekeys_keep_modes() -> None:
    p = _mixed(child_lifetime=60.0)
    p.a.create_child(p.now, [SITE_A], [SITE_B])
    p.pump()
    p.advance(70.0)
    modes = sorted(r.new.mode for r in of(p.ev_a, ChildSaRekeyed))
    assert modes == ["transport", "tunnel"]
    assert sorted(c.mode for c in p.a.children.values()) == ["transport", "tunnel"]


def test_each_child_rekeys_on_its_own_policys_lifetime() -> None:
    ia = [
        ChildPolicy("hosts", "transport", ("aes128gcm16",), [HOST_A], [HOST_B], lifetime=100.0),
        _policies("a")[1],  # sites: the session-wide child_lifetime (1000 s)
    ]
    p = _mixed(i_children=ia, child_lifetime=1000.0, rekey_jitter=0.0)
    p.a.create_child(p.now, [SITE_A], [SITE_B])
    p.pump()
    ev = {e.mode: e for e in of(p.ev_a, ChildSaEstablished)}
    assert ev["transport"].lifetime == 100.0 and ev["tunnel"].lifetime == 1000.0
    p.advance(150.0)  # past 90 % of 100 s, far from 90 % of 1000 s
    assert [r.new.mode for r in of(p.ev_a, ChildSaRekeyed)] == ["transport"]
    assert of(p.ev_a, ChildSaRekeyed)[0].new.lifetime == 100.0  # the rekeyed SA keeps its policy


def test_rekey_that_changes_the_mode_is_refused() -> None:
    p = _mixed()
    c = next(iter(p.a.children.values()))
    assert c.mode == "transport"
    c.state = "rekeying"
    p.a._send_create_child(
        p.now, c.ts_local, c.ts_remote, c, None, mode="tunnel", specs=c.specs, policy=c.policy
    )
    p.pump()
    assert "NO_PROPOSAL_CHOSEN" in of(p.ev_b, ChildSaFailed)[0].reason
    assert "NO_PROPOSAL_CHOSEN" in of(p.ev_a, ChildSaFailed)[0].reason
    assert not of(p.ev_a, ChildSaRekeyed) and p.a.children[c.spi_in].state == "installed"


def _one_child(p: Pair, tsl: list[TS], tsr: list[TS], **kw: Any) -> tuple[Any, Any]:
    before_a, before_b = len(p.ev_a), len(p.ev_b)
    p.a.create_child(p.now, tsl, tsr, **kw)
    p.pump()
    return p.ev_a[before_a:], p.ev_b[before_b:]


@pytest.mark.parametrize(
    ("tsl", "tsr", "kw", "notify"),
    [
        ([TS.from_cidr("198.19.9.0/24")], [SITE_B], {}, "TS_UNACCEPTABLE"),  # no policy overlaps
        ([HOST_A], [HOST_B], {"mode": "tunnel"}, "NO_PROPOSAL_CHOSEN"),  # hosts policy is transport
        ([SITE_A], [SITE_B], {"mode": "transport"}, "NO_PROPOSAL_CHOSEN"),  # sites policy is tunnel
        ([SITE_A], [SITE_B], {"esp_proposals": ["aes128gcm16"]}, "NO_PROPOSAL_CHOSEN"),  # sites: chacha
    ],
)
def test_responder_refusals_leave_ike_sa_and_other_child_up(tsl: Any, tsr: Any, kw: Any, notify: str) -> None:
    p = _mixed()
    ea, eb = _one_child(p, tsl, tsr, **kw)
    assert notify in of(ea, ChildSaFailed)[0].reason and notify in of(eb, ChildSaFailed)[0].reason
    assert not of(ea, ChildSaEstablished) and not of(eb, ChildSaEstablished)
    assert p.a.established and p.b_session.established
    assert [c.mode for c in p.a.children.values()] == ["transport"]
    assert len(p.b_session.children) == 1 and p.b_session._reserved == set()


def test_containment_beats_an_earlier_policy_that_only_narrows() -> None:
    narrow = ChildPolicy("lan", "tunnel", ("chacha20poly1305",), [SITE_B], [SITE_A])
    wide = ChildPolicy(
        "all", "tunnel", ("aes256gcm16",), [TS.from_cidr("198.19.0.0/16")], [TS.from_cidr("198.19.0.0/16")]
    )
    i_wide = ChildPolicy("all", "tunnel", ("aes256gcm16", "chacha20poly1305"), wide.local_ts, wide.remote_ts)
    p = _mixed(i_children=[_policies("a")[0], i_wide], r_children=[_policies("b")[0], narrow, wide])
    ea, _ = _one_child(p, list(wide.local_ts), list(wide.remote_ts))  # contained whole only by "all"
    got = of(ea, ChildSaEstablished)[0]
    assert got.ts_local == tuple(wide.local_ts) and got.key_bits == 256 and got.encr_id == Encr.AES_GCM_16
    ea, _ = _one_child(p, [SITE_A], [SITE_B])  # contained by both: the first listed ("lan") wins
    assert of(ea, ChildSaEstablished)[0].encr_id == Encr.CHACHA20_POLY1305


def test_responder_narrows_to_the_policy_selectors() -> None:
    wide_a = ChildPolicy(
        "sites",
        "tunnel",
        ("chacha20poly1305",),
        [TS.from_cidr("198.19.0.0/16")],
        [TS.from_cidr("198.18.0.0/15")],
    )
    p = _mixed(i_children=[_policies("a")[0], wide_a])
    ea, eb = _one_child(p, list(wide_a.local_ts), list(wide_a.remote_ts))
    a, b = of(ea, ChildSaEstablished)[0], of(eb, ChildSaEstablished)[0]
    assert a.mode == "tunnel" and a.ts_local == (SITE_A,) and a.ts_remote == (SITE_B,)  # §2.9 narrowed
    assert b.ts_local == (SITE_B,) and b.ts_remote == (SITE_A,)


def test_ike_auth_child_refused_by_mode_keeps_ike_sa_then_create_child_works() -> None:
    # the initiator's first policy is a tunnel child for the host addresses; the responder only has
    # them in a transport policy: IKE_AUTH's child is refused, the IKE SA stands (RFC 7296 §1.2)
    ia = [ChildPolicy("hosts", "tunnel", ("aes128gcm16",), [HOST_A], [HOST_B]), _policies("a")[1]]
    p = _mixed(i_children=ia)
    assert of(p.ev_a, IkeSaEstablished) and p.a.established
    assert "NO_PROPOSAL_CHOSEN" in of(p.ev_b, ChildSaFailed)[0].reason
    ea, _ = _one_child(p, [SITE_A], [SITE_B])
    assert of(ea, ChildSaEstablished)[0].mode == "tunnel"


def test_declined_transport_mode_is_deleted_by_the_initiator() -> None:
    # a responder without policies answers a transport request in tunnel mode (§1.3.1); the
    # initiator cannot use that SA and deletes it instead of leaving it installed at the peer
    p = Pair(*make_configs(i_mode="transport", r_mode="tunnel")).start()
    assert "tunnel" in of(p.ev_a, ChildSaFailed)[0].reason and not of(p.ev_a, ChildSaEstablished)
    est = of(p.ev_b, ChildSaEstablished)
    gone = of(p.ev_b, ChildSaDeleted)
    assert len(est) == 1 and len(gone) == 1 and gone[0].spi_in == est[0].spi_in
    assert p.a.children == {} and p.b_session.children == {} and p.a._reserved == set()
    assert not of(p.ev_a, ChildSaDeleted)  # never announced on our side, so never withdrawn


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        ChildPolicy("x", "bridge", ("aes128gcm16",), [SITE_A], [SITE_B])
    with pytest.raises(ValueError, match="unique"):
        make_configs(children=[ChildPolicy("x"), ChildPolicy("x")])
    p = _mixed()
    with pytest.raises(ValueError, match="mode"):
        p.a.create_child(p.now, [SITE_A], [SITE_B], mode="bridge")
    with pytest.raises(ValueError, match=r"esp proposal|unknown"):
        p.a.create_child(p.now, [SITE_A], [SITE_B], esp_proposals=["rot13"])


def test_initial_contact_is_off_unless_asked() -> None:
    a, _ = make_configs()
    assert a.initial_contact is False
