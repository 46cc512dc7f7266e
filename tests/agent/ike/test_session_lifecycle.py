"""Two engines with a fake clock: loss, retransmission, caching, rekeying, DPD, deletion, bad input."""

from __future__ import annotations

import logging

import pytest
from meshsec.agent.ike import payloads as P
from meshsec.agent.ike.constants import Exchange, Flag, Notify
from meshsec.agent.ike.cookies import DosGuard
from meshsec.agent.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    DpdRtt,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerDead,
)
from meshsec.agent.ike.message import Message, decrypt_message, encode_encrypted, encode_plain, parse_message

from .harness import A_IP, Pair, make_configs, of


def _up(**kw: object) -> Pair:
    p = Pair(*make_configs(**kw)).start()
    assert of(p.ev_a, ChildSaEstablished) and of(p.ev_b, ChildSaEstablished), (p.ev_a, p.ev_b)
    return p


def _exchange(raw: bytes) -> int:
    return parse_message(raw).exchange


def _current_children(p: Pair) -> tuple[dict[int, bytes], dict[int, bytes]]:
    a = {c.spi_in_int: c.keymat_in for c in p.a.children.values()}
    b = {c.spi_out_int: c.keymat_out for c in p.b_session.children.values()}
    return a, b


def test_lost_ike_auth_request_is_retransmitted() -> None:
    p = Pair(*make_configs())
    dropped: list[bytes] = []

    def drop_first_auth(direction: str, raw: bytes) -> bool:
        if direction == "a>b" and _exchange(raw) == Exchange.IKE_AUTH and not dropped:
            dropped.append(raw)
            return True
        return False

    p.drop = drop_first_auth
    p.start()
    assert not of(p.ev_a, IkeSaEstablished)
    assert p.a.get_timer() == pytest.approx(p.now + 2.0)
    p.advance(2.0)
    assert of(p.ev_a, IkeSaEstablished) and p.a.stats["retransmitted"] == 1
    auths = [r for r in p.wire.sent("a>b") if _exchange(r) == Exchange.IKE_AUTH]
    assert auths[0] == auths[1]  # a retransmission is the same octets


def test_retransmission_backoff_and_give_up() -> None:
    p = Pair(*make_configs())
    p.drop = lambda d, raw: True
    p.start()
    p.advance(300)
    sent = [r for r in p.wire.sent("a>b")]
    assert len(sent) == 6  # first + 5 retransmissions
    assert "IKE_SA_INIT" in of(p.ev_a, IkeSaFailed)[0].reason
    assert p.a.get_timer() is None


def test_lost_response_answered_from_cache() -> None:
    p = Pair(*make_configs())
    lost: list[bytes] = []

    def drop_first_auth_response(direction: str, raw: bytes) -> bool:
        if direction == "b>a" and _exchange(raw) == Exchange.IKE_AUTH and not lost:
            lost.append(raw)
            return True
        return False

    p.drop = drop_first_auth_response
    p.start()
    assert of(p.ev_b, IkeSaEstablished) and not of(p.ev_a, IkeSaEstablished)
    p.advance(2.0)
    assert of(p.ev_a, IkeSaEstablished)
    assert p.b_session.stats["retransmit_answered"] == 1
    responses = [r for r in p.wire.sent("b>a") if _exchange(r) == Exchange.IKE_AUTH]
    assert responses[0] == responses[1]
    assert len(of(p.ev_b, IkeSaEstablished)) == 1 and len(of(p.ev_b, ChildSaEstablished)) == 1


def test_duplicate_ike_sa_init_answered_from_cache() -> None:
    p = Pair(*make_configs())
    p.a.initiate(p.now)
    ((init, _),) = p.a.datagrams_to_send(p.now)
    p.b.receive(init, (A_IP, 500), p.now)
    p.b.receive(init, (A_IP, 500), p.now)
    out = p.b.datagrams_to_send(p.now)
    assert len(out) == 2 and out[0][0] == out[1][0]
    assert len(p.b.sessions) == 1 and p.b.guard.half_open == 1


def test_child_rekey_make_before_break() -> None:
    p = _up()
    old = of(p.ev_a, ChildSaEstablished)[0]
    p.a.rekey_child(p.now)
    p.pump()
    ra, rb = of(p.ev_a, ChildSaRekeyed), of(p.ev_b, ChildSaRekeyed)
    assert len(ra) == 1 and len(rb) == 1
    assert ra[0].old_spi_in == old.spi_in and ra[0].new.spi_in != old.spi_in
    assert ra[0].new.keymat_in == rb[0].new.keymat_out and ra[0].new.keymat_in != old.keymat_in
    # the event order shows make-before-break: rekeyed (new installed) before the old is deleted
    idx = [type(e).__name__ for e in p.ev_a]
    assert idx.index("ChildSaRekeyed") < idx.index("ChildSaDeleted")
    assert of(p.ev_a, ChildSaDeleted)[0].spi_in == old.spi_in
    assert of(p.ev_b, ChildSaDeleted)[0].spi_out == old.spi_in
    a, b = _current_children(p)
    assert a == b and len(a) == 1


def test_child_rekey_with_pfs_and_new_child() -> None:
    p = _up(esp_proposals=["aes128gcm16-x25519"])
    p.a.rekey_child(p.now)
    p.pump()
    msgs = [parse_message(r) for r in p.wire.sent("a>b")]
    assert any(m.exchange == Exchange.CREATE_CHILD_SA for m in msgs)
    assert len(of(p.ev_a, ChildSaRekeyed)) == 1
    p.a.create_child(p.now)
    p.pump()
    assert len(of(p.ev_a, ChildSaEstablished)) == 2 and len(of(p.ev_b, ChildSaEstablished)) == 2
    a, b = _current_children(p)
    assert a == b and len(a) == 2


def test_pfs_group_mismatch_retries_with_requested_group() -> None:
    p = _up(i_esp_proposals=["aes128gcm16-x25519-ecp256"], r_esp_proposals=["aes128gcm16-ecp256"])
    p.a.rekey_child(p.now)
    p.pump()
    assert len(of(p.ev_a, ChildSaRekeyed)) == 1
    a, b = _current_children(p)
    assert a == b and len(a) == 1


def test_responder_initiated_child_rekey() -> None:
    p = _up()
    p.b_session.rekey_child(p.now)
    p.b.handle_timer(p.now)
    p.b.sync(p.b_session)
    p.pump()
    assert len(of(p.ev_a, ChildSaRekeyed)) == 1 and len(of(p.ev_b, ChildSaRekeyed)) == 1
    a, b = _current_children(p)
    assert a == b and len(a) == 1


def test_simultaneous_child_rekey_lowest_nonce_loses(caplog: pytest.LogCaptureFixture) -> None:
    p = _up()
    p.a.rekey_child(p.now)
    p.b_session.rekey_child(p.now)
    p.b.sync(p.b_session)
    with caplog.at_level(logging.INFO):
        p.pump()
    assert caplog.text.count("our new SA is redundant (lowest nonce)") == 1
    a, b = _current_children(p)
    assert a == b and len(a) == 1, (p.ev_a, p.ev_b)
    assert p.a.children[next(iter(p.a.children))].state == "installed"
    assert len(of(p.ev_a, ChildSaDeleted)) == 2 and len(of(p.ev_b, ChildSaDeleted)) == 2


def test_ike_rekey_moves_children_and_keeps_working() -> None:
    p = _up()
    old_spis = (p.a.sa.spi_i, p.a.sa.spi_r)
    p.a.rekey_ike(p.now)
    p.pump()
    ra, rb = of(p.ev_a, IkeSaRekeyed), of(p.ev_b, IkeSaRekeyed)
    assert len(ra) == 1 and len(rb) == 1
    assert (ra[0].old_spi_i, ra[0].old_spi_r) == old_spis
    assert (ra[0].spi_i, ra[0].spi_r) == (rb[0].spi_i, rb[0].spi_r) != old_spis
    assert p.a.old_sas == [] and p.b_session.old_sas == []
    assert p.a.sa.keys.sk_d == p.b_session.sa.keys.sk_d  # same new keys on both sides
    assert len(p.a.children) == 1
    p.a.rekey_child(p.now)  # the new IKE SA carries CREATE_CHILD_SA
    p.pump()
    assert len(of(p.ev_b, ChildSaRekeyed)) == 1
    p.b_session.rekey_ike(p.now)  # and the other side can rekey it again
    p.b.sync(p.b_session)
    p.pump()
    assert len(of(p.ev_a, IkeSaRekeyed)) == 2
    a, b = _current_children(p)
    assert a == b and len(a) == 1


def test_lifetimes_trigger_rekey_with_jitter() -> None:
    p = _up(child_lifetime=100.0, ike_lifetime=1000.0, dpd_interval=None)
    first = of(p.ev_a, ChildSaEstablished)[0]
    p.advance(85)
    assert not of(p.ev_a, ChildSaRekeyed)
    p.advance(10)  # rekey at 90 % of the lifetime minus up to 5 % jitter
    assert of(p.ev_a, ChildSaRekeyed) or of(p.ev_b, ChildSaRekeyed)
    assert any(e.spi_in == first.spi_in for e in of(p.ev_a, ChildSaDeleted))
    p.advance(1000)
    assert of(p.ev_a, IkeSaRekeyed) or of(p.ev_b, IkeSaRekeyed)
    assert p.a.established and p.b_session.established
    a, b = _current_children(p)
    assert a == b and len(a) == 1


def test_dpd_measures_rtt_and_detects_dead_peer() -> None:
    p = _up(dpd_interval=10.0)
    p.advance(10.0)
    rtts = of(p.ev_a, DpdRtt)
    assert len(rtts) == 1 and rtts[0].rtt == 0.0
    p.a.note_inbound_traffic(p.now + 5)
    assert p.a.get_timer() == pytest.approx(p.now + 15)
    p.drop = lambda d, raw: True
    p.advance(400)
    dead = of(p.ev_a, PeerDead)
    assert len(dead) == 1 and 0.0 in dead[0].rtt_history
    assert of(p.ev_a, ChildSaDeleted) and of(p.ev_a, IkeSaDeleted)
    assert of(p.ev_b, PeerDead)  # B's probes went unanswered too
    assert p.b.sessions == []


def test_delete_ike_sa() -> None:
    p = _up()
    p.a.delete(p.now)
    p.pump()
    for evs in (p.ev_a, p.ev_b):
        assert len(of(evs, ChildSaDeleted)) == 1 and len(of(evs, IkeSaDeleted)) == 1
    assert p.b.sessions == [] and p.a.get_timer() is None


def test_delete_child_sa() -> None:
    p = _up()
    spi = of(p.ev_a, ChildSaEstablished)[0].spi_in
    p.a.delete_child(p.now, spi)
    p.pump()
    assert of(p.ev_a, ChildSaDeleted)[0].spi_in == spi and of(p.ev_b, ChildSaDeleted)[0].spi_out == spi
    assert not p.a.children and not p.b_session.children and p.a.established


def _inject(p: Pair, inner: list[object]) -> list[P.Payload]:
    """Send an authenticated INFORMATIONAL request from A with `inner` payloads; return B's answer."""
    sa = p.a.sa
    msg = Message(sa.spi_i, sa.spi_r, Exchange.INFORMATIONAL, Flag.INITIATOR, sa.next_mid, inner)  # type: ignore[arg-type]
    sa.next_mid += 1
    p.b.receive(encode_encrypted(msg, sa.out), (A_IP, 500), p.now)
    ((raw, _, _),) = p.b.datagrams_to_send(p.now)
    return decrypt_message(parse_message(raw), sa.inb)


def test_malformed_authenticated_request_gets_invalid_syntax() -> None:
    p = _up()
    answer = _inject(p, [P.Vendor(b"x"), _BadNonce()])
    assert answer == [P.Notify(Notify.INVALID_SYNTAX)]
    assert p.b_session.established and p.b_session.stats["invalid_syntax"] == 1


class _BadNonce:
    """A Nonce payload of 3 octets: well framed, authenticated, but out of range (§3.9)."""

    ptype = P.PT.NONCE

    def body(self) -> bytes:
        return b"abc"


def test_unsupported_critical_payload() -> None:
    p = _up()
    answer = _inject(p, [P.Unknown(50, critical=True, data=b"zz")])
    assert answer == [P.Notify(Notify.UNSUPPORTED_CRITICAL_PAYLOAD, data=bytes([50]))]


def test_unauthenticated_garbage_dropped_and_counted() -> None:
    p = _up()
    sa = p.a.sa
    msg = Message(sa.spi_i, sa.spi_r, Exchange.INFORMATIONAL, Flag.INITIATOR, sa.next_mid, [])
    raw = bytearray(encode_encrypted(msg, sa.out))
    raw[-1] ^= 0xFF
    p.b.receive(bytes(raw), (A_IP, 500), p.now)
    p.b.receive(b"\x00" * 10, (A_IP, 500), p.now)
    p.b.receive(encode_plain(Message(b"x" * 8, b"y" * 8, 37, Flag.INITIATOR, 0, [])), (A_IP, 500), p.now)
    assert p.b.datagrams_to_send(p.now) == []
    assert p.b_session.stats["dropped_integrity"] == 1
    assert p.b.stats["dropped_unparseable"] == 1 and p.b.stats["dropped_unknown_spi"] == 1
    assert p.b.counters()["dropped_integrity"] == 1
    assert p.b_session.established


def test_ikev1_gets_invalid_major_version(caplog: pytest.LogCaptureFixture) -> None:
    p = Pair(*make_configs())
    v1 = Message(b"\x11" * 8, bytes(8), 2, 0, 0, [P.Vendor(b"v1")])
    raw = bytearray(encode_plain(v1))
    raw[17] = 0x10  # ISAKMP version 1.0, Identity Protection (main mode)
    with caplog.at_level(logging.WARNING):
        p.b.receive(bytes(raw), (A_IP, 500), p.now)
    ((reply, dst, _),) = p.b.datagrams_to_send(p.now)
    m = parse_message(reply)
    assert dst == (A_IP, 500) and m.spi_i == b"\x11" * 8 and m.is_response
    assert m.payloads == [P.Notify(Notify.INVALID_MAJOR_VERSION, data=b"\x20")]
    assert "IKEv1 is deliberately unsupported" in caplog.text and "RFC 9395" in caplog.text
    assert p.b.sessions == []


def test_cookie_demanded_and_returned() -> None:
    a_cfg, b_cfg = make_configs()
    p = Pair(a_cfg, b_cfg)
    p.b.guard = DosGuard(p.now, cookie_threshold=0)
    p.start()
    inits = [parse_message(r) for r in p.wire.sent("a>b") if _exchange(r) == Exchange.IKE_SA_INIT]
    assert len(inits) == 2 and inits[1].payloads[0].type == Notify.COOKIE
    assert of(p.ev_a, IkeSaEstablished) and p.b.stats["cookies_sent"] == 1


def test_half_open_state_expires() -> None:
    p = Pair(*make_configs())
    p.drop = lambda d, raw: d == "a>b" and _exchange(raw) == Exchange.IKE_AUTH
    p.start()
    assert p.b.half_open == 1 and p.b.guard.half_open == 1
    p.advance(31)
    assert p.b.sessions == [] and p.b.guard.half_open == 0
    assert of(p.ev_b, IkeSaFailed)


def test_nat_rebinding_followed_only_when_peer_is_behind_nat() -> None:
    p = Pair(*make_configs(dpd_interval=10.0), nat=True).start()
    assert p.b_session.remote == ("198.18.0.99", 40001)
    p.nat_ports[1] = 40002  # the NAT drops A's mapping and picks a new port
    p.advance(10.0)  # A's liveness check arrives from the new port; B answers there
    assert p.b_session.remote == ("198.18.0.99", 40002)
    assert of(p.ev_a, DpdRtt)
    q = _up(dpd_interval=10.0)
    q.a_source_ip = "198.18.0.77"  # no NAT detected: an authenticated message from elsewhere
    q.advance(10.0)  # must not move the SA (the answer still goes to A's address)
    assert q.b_session.remote == (A_IP, 500) and of(q.ev_a, DpdRtt)


def test_simultaneous_ike_rekey_lowest_nonce_rule(caplog: pytest.LogCaptureFixture) -> None:
    p = _up(dpd_interval=None)
    old = p.a.sa.spi_i
    p.a.rekey_ike(p.now)
    p.b_session.rekey_ike(p.now)
    p.b.sync(p.b_session)
    with caplog.at_level(logging.INFO):
        p.pump()
    assert caplog.text.count("ours is redundant (lowest nonce)") == 1
    assert caplog.text.count("ours survives") == 1
    ra, rb = of(p.ev_a, IkeSaRekeyed), of(p.ev_b, IkeSaRekeyed)
    assert len(ra) == 1 and len(rb) == 1 and (ra[0].spi_i, ra[0].spi_r) == (rb[0].spi_i, rb[0].spi_r)
    assert p.a.sa.spi_i != old and p.a.sa.spi_i == p.b_session.sa.spi_i
    assert p.a.sa.keys.sk_d == p.b_session.sa.keys.sk_d
    assert p.a.old_sas == [] and p.b_session.old_sas == []  # old and redundant SAs both deleted
    assert not [k for k in p.b.counters() if k.startswith("dropped")]  # nothing dropped on the way
    p.a.rekey_child(p.now)  # and the survivor works
    p.pump()
    a, b = _current_children(p)
    assert a == b and len(a) == 1 and len(of(p.ev_b, ChildSaRekeyed)) == 1


def test_delete_unanswered_still_closes() -> None:
    p = _up()
    p.drop = lambda d, raw: True
    p.a.delete(p.now)
    p.advance(300)
    assert of(p.ev_a, IkeSaDeleted)[0].reason == "deleted locally (peer never confirmed)"
    assert not of(p.ev_a, PeerDead)


def _owned(p: Pair) -> set[bytes]:
    return {c.spi_in for s in p.b.sessions for c in s.children.values()} | {
        spi for s in p.b.sessions for spi in s._reserved
    }


def test_child_spis_are_returned_to_the_host_pool() -> None:
    p = _up(i_esp_proposals=["aes128gcm16", "chacha20poly1305"], r_esp_proposals=["chacha20poly1305"])
    p.a.rekey_child(p.now)
    p.b_session.rekey_child(p.now)
    p.b.sync(p.b_session)
    p.pump()
    p.a.create_child(p.now, remote_ts=[P.TrafficSelector.from_cidr("198.19.99.0/24")])  # TS_UNACCEPTABLE
    p.pump()
    assert p.b._child_spis == _owned(p) and len(p.b._child_spis) == 1
    p.a.delete(p.now)
    p.pump()
    assert p.b._child_spis == set() and p.b.sessions == []


def test_refused_ike_auth_is_answered_again_after_the_sa_is_gone() -> None:
    """B refuses A's AUTH and forgets the SA; the AUTHENTICATION_FAILED answer is lost once. A's
    retransmission still gets it (from the dispatcher's tombstone), so A fails for the right reason."""
    p = Pair(*make_configs(r_psk=b"a different secret, 30 octets"))
    lost: list[bytes] = []

    def lose_first_auth_answer(direction: str, raw: bytes) -> bool:
        if direction == "b>a" and _exchange(raw) == Exchange.IKE_AUTH and not lost:
            lost.append(raw)
            return True
        return False

    p.drop = lose_first_auth_answer
    p.start()
    assert p.b.sessions == [] and not of(p.ev_a, IkeSaFailed)
    p.advance(2.0)
    assert "AUTHENTICATION_FAILED" in of(p.ev_a, IkeSaFailed)[0].reason
    assert p.b.stats["retransmit_answered_after_close"] == 1
    p.advance(100)
    assert p.b._tombstones == {} and p.b.get_timer() is None


def test_initial_contact_replaces_stale_sas_of_a_restarted_peer() -> None:
    from meshsec.agent.ike.session import IkeSession

    p = _up()
    stale = p.b_session
    p.a.config.initial_contact = True  # off by default; the runtime sets it when it holds no SA
    p.a = IkeSession(p.a.config, p.now)  # A "restarts": it lost all state and starts over
    p.a.initiate(p.now)
    p.pump()
    assert len(p.b.sessions) == 1 and p.b.sessions[0] is not stale and p.b_session.established
    gone = [e for e in p.ev_b if isinstance(e, IkeSaDeleted)]
    assert len(gone) == 1 and "INITIAL_CONTACT" in gone[0].reason
    assert len(of(p.ev_b, ChildSaDeleted)) == 1 and len(of(p.ev_b, ChildSaEstablished)) == 2


def test_rekey_of_unknown_or_retiring_child_is_refused() -> None:
    p = _up()
    child = next(iter(p.a.children.values()))
    esp = p.a._esp_specs[0].to_wire(1, b"\x01\x02\x03\x04")
    ts = [P.TSi(child.ts_local), P.TSr(child.ts_remote)]
    req = [P.Notify(Notify.REKEY_SA, 3, b"\xde\xad\xbe\xef"), P.SA((esp,)), P.Nonce(b"n" * 32), *ts]
    sa = p.a.sa

    def ask(inner: list[object]) -> list[P.Payload]:
        m = Message(sa.spi_i, sa.spi_r, Exchange.CREATE_CHILD_SA, Flag.INITIATOR, sa.next_mid, inner)  # type: ignore[arg-type]
        sa.next_mid += 1
        p.b.receive(encode_encrypted(m, sa.out), (A_IP, 500), p.now)
        ((raw, _, _),) = p.b.datagrams_to_send(p.now)
        return decrypt_message(parse_message(raw), sa.inb)

    assert ask(req)[0].type == Notify.CHILD_SA_NOT_FOUND
    next(iter(p.b_session.children.values())).state = "deleting"
    req[0] = P.Notify(Notify.REKEY_SA, 3, child.spi_in)
    assert ask(req) == [P.Notify(Notify.TEMPORARY_FAILURE)]
