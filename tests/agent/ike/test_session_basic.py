"""Two engines in one process: establishment per proposal family and DH group, and failures."""

from __future__ import annotations

import pytest
from meshsec.agent.ike.constants import Encr, Exchange
from meshsec.agent.ike.events import ChildSaEstablished, ChildSaFailed, IkeSaEstablished, IkeSaFailed
from meshsec.agent.ike.message import parse_message

from .harness import Pair, make_configs, of


def _established(p: Pair) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    assert of(p.ev_a, IkeSaEstablished) and of(p.ev_b, IkeSaEstablished), (p.ev_a, p.ev_b)
    ca, cb = of(p.ev_a, ChildSaEstablished), of(p.ev_b, ChildSaEstablished)
    assert len(ca) == 1 and len(cb) == 1, (p.ev_a, p.ev_b)
    a, b = ca[0], cb[0]
    assert (a.spi_in, a.spi_out) == (b.spi_out, b.spi_in)
    assert a.keymat_in == b.keymat_out and a.keymat_out == b.keymat_in and a.keymat_in != a.keymat_out
    return a, b


@pytest.mark.parametrize(
    ("ike", "esp"),
    [
        ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
        ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-esn"),
        ("aes256-sha256-modp2048", "aes128-sha256"),
        ("chacha20poly1305-prfsha512-ecp256", "chacha20poly1305"),
        ("aes128-sha512-ecp256", "aes256-sha256-noesn"),
        ("aes256-sha384-x25519", "aes256gcm16"),
    ],
)
def test_establish(ike: str, esp: str) -> None:
    p = Pair(*make_configs(ike_proposals=[ike], esp_proposals=[esp])).start()
    a, b = _established(p)
    assert a.mode == "tunnel" and not a.encap
    assert str(a.ts_local[0]).startswith("198.19.1.0-198.19.1.255") and b.ts_local == a.ts_remote
    assert a.esn == esp.endswith("-esn")
    assert len(a.keymat_in) == a.encr_key_len + len(a.integ_key_in)
    assert "keymat" not in repr(a)
    assert p.a.established and p.b_session.established


def test_responder_picks_first_acceptable_in_initiator_order() -> None:
    p = Pair(
        *make_configs(
            i_ike_proposals=["aes256gcm16-prfsha384-ecp384", "aes128gcm16-prfsha256-x25519"],
            r_ike_proposals=["aes128gcm16-prfsha256-x25519", "aes256gcm16-prfsha384-ecp384"],
            i_esp_proposals=["chacha20poly1305", "aes128gcm16"],
            r_esp_proposals=["aes128gcm16", "chacha20poly1305"],
        )
    ).start()
    a, _ = _established(p)
    assert "AES_GCM_16_256" in of(p.ev_a, IkeSaEstablished)[0].proposal
    assert a.encr_id == Encr.CHACHA20_POLY1305


def test_ike_proposal_mismatch_no_proposal_chosen() -> None:
    p = Pair(
        *make_configs(
            i_ike_proposals=["aes128gcm16-prfsha256-x25519"], r_ike_proposals=["aes256-sha256-modp2048"]
        )
    ).start()
    assert "NO_PROPOSAL_CHOSEN" in of(p.ev_a, IkeSaFailed)[0].reason
    assert "NO_PROPOSAL_CHOSEN" in of(p.ev_b, IkeSaFailed)[0].reason
    assert p.b.sessions == [] and p.b.guard.half_open == 0


def test_esp_mismatch_keeps_ike_sa_and_fails_child() -> None:
    p = Pair(*make_configs(i_esp_proposals=["aes128gcm16"], r_esp_proposals=["chacha20poly1305"])).start()
    assert of(p.ev_a, IkeSaEstablished) and of(p.ev_b, IkeSaEstablished)
    assert "NO_PROPOSAL_CHOSEN" in of(p.ev_a, ChildSaFailed)[0].reason
    assert "NO_PROPOSAL_CHOSEN" in of(p.ev_b, ChildSaFailed)[0].reason


def test_wrong_psk_fails_on_both_sides(caplog: pytest.LogCaptureFixture) -> None:
    p = Pair(*make_configs(r_psk=b"a different secret, 30 octets")).start()
    assert "AUTHENTICATION_FAILED" in of(p.ev_a, IkeSaFailed)[0].reason
    assert "AUTHENTICATION_FAILED" in of(p.ev_b, IkeSaFailed)[0].reason
    assert not of(p.ev_a, IkeSaEstablished) and not of(p.ev_b, IkeSaEstablished)
    assert p.b.sessions == []
    assert "shared key MIC mismatch" in caplog.text
    assert "30 octets" not in caplog.text and "correct horse" not in caplog.text


def test_wrong_identity_fails() -> None:
    from meshsec.agent.ike.config import fqdn

    p = Pair(*make_configs(r_remote_id=fqdn("someone-else.test"))).start()
    assert "identity" in of(p.ev_b, IkeSaFailed)[0].reason
    assert "AUTHENTICATION_FAILED" in of(p.ev_a, IkeSaFailed)[0].reason


def test_invalid_ke_payload_retry_with_requested_group() -> None:
    p = Pair(
        *make_configs(
            i_ike_proposals=["aes128gcm16-prfsha256-x25519-ecp256"],
            r_ike_proposals=["aes128gcm16-prfsha256-ecp256"],
        )
    ).start()
    _established(p)
    inits = [parse_message(r) for r in p.wire.sent("a>b")]
    inits = [m for m in inits if m.exchange == Exchange.IKE_SA_INIT]
    assert len(inits) == 2
    assert [m.payloads[1].group for m in inits] == [31, 19]


def test_no_invalid_ke_when_responder_accepts_the_sent_group() -> None:
    p = Pair(
        *make_configs(
            i_ike_proposals=["aes128gcm16-prfsha256-x25519"],
            r_ike_proposals=["aes128gcm16-prfsha256-x25519-ecp256"],
        )
    ).start()
    _established(p)  # responder accepts x25519 since it is in its list: no INVALID_KE needed
    inits = [m for m in map(parse_message, p.wire.sent("a>b")) if m.exchange == Exchange.IKE_SA_INIT]
    assert len(inits) == 1


def test_ts_narrowing() -> None:
    from meshsec.agent.ike.payloads import TrafficSelector as TS

    p = Pair(
        *make_configs(
            i_local_ts=[TS.from_cidr("198.19.0.0/16")],
            i_remote_ts=[TS.from_cidr("198.18.0.0/15")],
            r_local_ts=[TS.from_cidr("198.19.2.0/24")],
            r_remote_ts=[TS.from_cidr("198.19.1.0/24")],
        )
    )
    p.start()
    a, b = _established(p)
    assert a.ts_local == (TS.from_cidr("198.19.1.0/24"),) and a.ts_remote == (TS.from_cidr("198.19.2.0/24"),)
    assert b.ts_local == a.ts_remote and b.ts_remote == a.ts_local


def test_ts_unacceptable() -> None:
    from meshsec.agent.ike.payloads import TrafficSelector as TS

    p = Pair(*make_configs(i_remote_ts=[TS.from_cidr("198.19.9.0/24")])).start()
    assert "TS_UNACCEPTABLE" in of(p.ev_a, ChildSaFailed)[0].reason
    assert "TS_UNACCEPTABLE" in of(p.ev_b, ChildSaFailed)[0].reason


def test_transport_mode() -> None:
    p = Pair(*make_configs(mode="transport")).start()
    a, b = _established(p)
    assert a.mode == b.mode == "transport"


def test_transport_requested_tunnel_configured_fails_child() -> None:
    p = Pair(*make_configs(i_mode="transport", r_mode="tunnel")).start()
    assert "tunnel" in of(p.ev_a, ChildSaFailed)[0].reason
    assert not of(p.ev_a, ChildSaEstablished)


def test_nat_detected_floats_to_4500() -> None:
    p = Pair(*make_configs(), nat=True).start()
    a, b = _established(p)
    assert a.encap and b.encap and a.nat_local and b.nat_remote
    assert a.peer == ("198.18.0.2", 4500) and a.local_port == 4500
    assert b.peer == ("198.18.0.99", 40001) and b.local_port == 4500
    dsts = [dst for d, _, dst in p.wire.log if d == "a>b"]
    assert dsts[0][1] == 500 and dsts[-1][1] == 4500


def test_ipv6_underlay_and_ipv6_selectors() -> None:
    from meshsec.agent.ike.payloads import TrafficSelector as TS

    p = Pair(
        *make_configs(
            i_ip="fd00::1",
            i_peer_ip="fd00::2",
            r_ip="fd00::2",
            i_local_ts=[TS.from_cidr("fd00:1::/64")],
            i_remote_ts=[TS.from_cidr("fd00:2::/64")],
            r_local_ts=[TS.from_cidr("fd00:2::/64")],
            r_remote_ts=[TS.from_cidr("fd00:1::/64")],
        )
    )
    p.start()
    a, b = _established(p)
    assert a.peer == ("fd00::2", 500) and b.peer == ("fd00::1", 500) and not a.encap
    assert a.ts_remote == (TS.from_cidr("fd00:2::/64"),)
