"""mapping: PeerConfig -> IkeConfig, selector conversions, Child SA -> ESP parameters (pure)."""

from __future__ import annotations

import ipaddress

import pytest
from meshsec.agent.esp import Mode, TrafficSelector
from meshsec.agent.ike.events import ChildSaEstablished
from meshsec.agent.ike.identity import IdentityPattern
from meshsec.agent.runtime import mapping
from meshsec.api.v1 import config_pb2, spec_pb2

from tests.agent.runtime.harness import PSK, TestCa, node, peer


def _peer(**kw: object):  # type: ignore[no-untyped-def]
    return peer("b", endpoint="198.18.0.2", local_ts=["198.19.1.0/24"], remote_ts=["198.19.2.0/24"], **kw)  # type: ignore[arg-type]


def test_psk_peer_to_ike_config() -> None:
    p = _peer(
        ike_proposals=["aes256-sha256-modp2048"],
        esp_proposals=["aes256-sha256"],
        dpd=10,
        dpd_timeout=30,
        child_rekey=600,
        ike_rekey=3000,
    )
    cfg = mapping.ike_config(
        p, node("a", [p]).local, local_addr=("198.18.0.1", 500), remote_addr=("198.18.0.2", 500)
    )
    assert cfg.psk == PSK
    assert cfg.local_id == (2, b"a.meshsec")  # ID_FQDN
    assert isinstance(cfg.remote_id, IdentityPattern)
    assert list(cfg.ike_proposals) == ["aes256-sha256-modp2048"]
    assert list(cfg.esp_proposals) == ["aes256-sha256"]
    assert [str(t) for t in cfg.local_ts] == ["198.19.1.0-198.19.1.255 proto 0 ports 0-65535"]
    assert cfg.mode == "tunnel"
    assert cfg.dpd_interval == 10.0
    assert cfg.ike_lifetime == 9000.0 and abs(cfg.rekey_fraction - 3000 / 9000) < 1e-9
    assert cfg.child_lifetime == 1800.0
    # retransmissions give up after roughly the DPD timeout
    total = sum(cfg.retransmit_timeout * cfg.retransmit_base**i for i in range(cfg.retransmit_tries))
    assert 10 <= total <= 30


def test_defaults_and_transport_mode() -> None:
    p = _peer(mode="transport")
    p.ike.ClearField("proposals")
    cfg = mapping.ike_config(p, node("a", [p]).local, local_addr=("198.18.0.1", 500), remote_addr=None)
    assert cfg.mode == "transport"
    assert list(cfg.ike_proposals) == list(mapping.DEFAULT_IKE_PROPOSALS)
    assert cfg.dpd_interval is None


def test_certificate_peer_needs_credentials_and_ca() -> None:
    p = _peer(psk=None)
    local = node("a", [p]).local
    with pytest.raises(mapping.ConfigError, match="no key/certificate"):
        mapping.ike_config(p, local, local_addr=("198.18.0.1", 500), remote_addr=None)
    ca = TestCa()
    key_pem, cert_pem = ca.issue("a.meshsec")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    creds = mapping.Credentials(
        serialization.load_pem_private_key(key_pem, None), (x509.load_pem_x509_certificate(cert_pem),)
    )
    with pytest.raises(mapping.ConfigError, match="trusted_ca_pem is empty"):
        mapping.ike_config(p, local, local_addr=("198.18.0.1", 500), remote_addr=None, credentials=creds)
    local.trusted_ca_pem = ca.pem
    cfg = mapping.ike_config(p, local, local_addr=("198.18.0.1", 500), remote_addr=None, credentials=creds)
    assert cfg.psk is None and cfg.private_key is not None and cfg.trust is not None


def test_bad_input_names_the_field() -> None:
    p = _peer(psk=b"short")
    with pytest.raises(mapping.ConfigError, match="psk has 5 octets"):
        mapping.ike_config(p, node("a", [p]).local, local_addr=("198.18.0.1", 500), remote_addr=None)
    p = _peer()
    p.children[0].local_ts[:] = ["not-a-cidr"]
    with pytest.raises(mapping.ConfigError, match="traffic selector"):
        mapping.ike_config(p, node("a", [p]).local, local_addr=("198.18.0.1", 500), remote_addr=None)
    p = _peer()
    p.remote_identity = "fqdn:"
    with pytest.raises(mapping.ConfigError, match="identity"):
        mapping.ike_config(p, node("a", [p]).local, local_addr=("198.18.0.1", 500), remote_addr=None)


def test_every_child_becomes_a_policy_with_its_own_mode_and_proposals() -> None:
    p = _peer()
    p.children.add(
        name="lan2", mode=spec_pb2.MODE_TUNNEL, local_ts=["198.19.5.0/24"], remote_ts=["198.19.6.0/24"]
    )
    p.children.add(
        name="hosts",
        mode=spec_pb2.MODE_TRANSPORT,
        local_ts=["198.18.0.1/32"],
        remote_ts=["198.18.0.2/32"],
        esp_proposals=["chacha20poly1305"],
    )
    p.children[2].lifetime.life_seconds = 600
    local = node("a", [p]).local
    ini = mapping.ike_config(p, local, local_addr=("198.18.0.1", 500), remote_addr=None)
    resp = mapping.ike_config(p, local, local_addr=("198.18.0.1", 500), remote_addr=None, responder=True)
    for cfg in (ini, resp):  # both ends know every child; IKE_AUTH carries the first
        pols = {c.name: c for c in cfg.children}
        assert list(pols) == ["net", "lan2", "hosts"]
        assert pols["hosts"].mode == "transport" and list(pols["hosts"].esp_proposals) == ["chacha20poly1305"]
        assert pols["lan2"].mode == "tunnel" and list(pols["lan2"].esp_proposals) == ["aes128gcm16"]
        assert [str(t) for t in pols["hosts"].remote_ts] == ["198.18.0.2-198.18.0.2 proto 0 ports 0-65535"]
        assert cfg.mode == "tunnel" and len(cfg.local_ts) == 1 and cfg.policies()[0].name == "net"
        assert pols["hosts"].lifetime == 600.0 and pols["net"].lifetime == mapping.DEFAULT_CHILD_LIFE
    assert (
        mapping.child_for(p, mapping.ike_ts(["198.19.5.0/25"]), mapping.ike_ts(["198.19.6.7/32"])) == "lan2"
    )
    assert mapping.child_for(p, mapping.ike_ts(["198.19.1.0/24"]), mapping.ike_ts(["198.19.2.0/24"])) == "net"
    assert mapping.child_for(p, mapping.ike_ts(["198.19.9.0/24"]), mapping.ike_ts(["198.19.2.0/24"])) == ""
    host_a, host_b = mapping.ike_ts(["198.18.0.1/32"]), mapping.ike_ts(["198.18.0.2/32"])
    assert mapping.child_for(p, host_a, host_b, "transport") == "hosts"
    assert mapping.child_for(p, host_a, host_b, "tunnel") == ""


def test_bad_child_selectors_name_the_child() -> None:
    p = _peer()
    p.children.add(name="broken", local_ts=["198.19.300.0/24"], remote_ts=["198.19.6.0/24"])
    with pytest.raises(mapping.ConfigError, match="child broken"):
        mapping.ike_config(p, node("a", [p]).local, local_addr=("198.18.0.1", 500), remote_addr=None)
    p = _peer()
    p.children.add(name="empty", local_ts=["198.19.5.0/24"])
    with pytest.raises(mapping.ConfigError, match="child empty"):
        mapping.ike_config(p, node("a", [p]).local, local_addr=("198.18.0.1", 500), remote_addr=None)


def test_endpoints_parse() -> None:
    p = _peer()
    p.endpoints[:] = ["198.18.0.2", "198.18.0.3:4500", "[fd00::2]:500", "fd00::3"]
    assert mapping.endpoints(p) == [
        ("198.18.0.2", 500),
        ("198.18.0.3", 4500),
        ("fd00::2", 500),
        ("fd00::3", 500),
    ]


def test_range_selectors_become_exact_prefixes() -> None:
    [ts] = mapping.ike_ts(["198.19.2.0/24"])
    assert mapping.ts_text(ts) == ["198.19.2.0/24"]
    odd = type(ts)(
        ts.ts_type,
        6,
        80,
        80,
        ipaddress.ip_address("198.19.2.1").packed,
        ipaddress.ip_address("198.19.2.4").packed,
    )
    assert mapping.ts_text(odd) == ["198.19.2.1/32", "198.19.2.2/31", "198.19.2.4/32"]
    sels = mapping.esp_selectors(mapping.ike_ts(["198.19.1.0/24"]), [odd])
    assert len(sels) == 3 and all(s.protocol == 6 and s.remote_ports == (80, 80) for s in sels)


def _event(
    mode: str = "tunnel", encr: int = 20, bits: int | None = 128, integ: int = 0
) -> ChildSaEstablished:
    local, remote = (
        (["198.18.0.1/32"], ["198.18.0.2/32"])
        if mode == "transport"
        else (["198.19.1.0/24"], ["198.19.2.0/24"])
    )
    from meshsec.agent.esp.transforms import transform_spec

    spec = transform_spec(encr, bits or 256, integ)
    return ChildSaEstablished(
        spi_in=0x1111,
        spi_out=0x2222,
        encr_id=encr,
        key_bits=bits,
        integ_id=integ,
        esn=False,
        mode=mode,
        ts_local=tuple(mapping.ike_ts(local)),
        ts_remote=tuple(mapping.ike_ts(remote)),
        peer=("198.18.0.2", 4500),
        local_port=4500,
        encap=True,
        nat_local=False,
        nat_remote=True,
        lifetime=3600.0,
        keymat_in=bytes(range(spec.keymat_len)),
        keymat_out=bytes(reversed(range(spec.keymat_len))),
        encr_key_len=spec.enc_key_len,
    )


def test_child_event_to_sa_params_tunnel() -> None:
    ev = _event()
    inbound, outbound = mapping.sa_params(ev)
    assert (inbound.spi, outbound.spi) == (0x1111, 0x2222)
    assert inbound.enc_key == ev.keymat_in[:20] and outbound.enc_key == ev.keymat_out[:20]
    assert inbound.mode is Mode.TUNNEL and inbound.transport is None
    assert inbound.selectors == (TrafficSelector.of("198.19.1.0/24", "198.19.2.0/24"),)
    assert mapping.transform_name(ev) == "aes128gcm16"


def test_child_event_to_sa_params_transport_and_cbc() -> None:
    ev = _event(mode="transport", encr=12, bits=256, integ=12)
    inbound, _outbound = mapping.sa_params(ev)
    assert inbound.mode is Mode.TRANSPORT
    assert inbound.transport is not None and str(inbound.transport.local) == "198.18.0.1"
    assert str(inbound.transport.remote) == "198.18.0.2"
    assert len(inbound.enc_key) == 32 and len(inbound.integ_key) == 32
    assert mapping.transform_name(ev) == "aes256-sha256"
    chacha = _event(encr=28, bits=None)
    assert mapping.sa_params(chacha)[0].key_bits == 256


def _profile_peer(name: str, local_ts: str, remote_ts: str) -> config_pb2.PeerConfig:
    """A PSK peer with the default IKE profile (rekey 4h, life 4h24m, jitter 24m) and two children:
    "net" with ESP rekey 30 min / life 1 h / jitter 1 min, "hosts" with the ESP defaults unset."""
    p = peer(name, endpoint=None, local_ts=[local_ts], remote_ts=[remote_ts])
    p.ike.lifetime.CopyFrom(spec_pb2.Lifetime(rekey_seconds=14400, life_seconds=15840, jitter_seconds=1440))
    p.children[0].lifetime.CopyFrom(
        spec_pb2.Lifetime(rekey_seconds=1800, life_seconds=3600, jitter_seconds=60)
    )
    p.children.add(
        name="hosts", mode=spec_pb2.MODE_TRANSPORT, local_ts=["198.18.0.1/32"], remote_ts=["198.18.0.2/32"]
    )
    return p


def test_each_child_carries_its_own_esp_rekey_time_and_jitter() -> None:
    p = _profile_peer("b", "198.19.1.0/24", "198.19.2.0/24")
    p.children.add(name="lan2", local_ts=["198.19.5.0/24"], remote_ts=["198.19.6.0/24"])
    p.children[2].lifetime.CopyFrom(
        spec_pb2.Lifetime(rekey_seconds=600, life_seconds=1200, jitter_seconds=30)
    )
    cfg = mapping.ike_config(p, node("a", [p]).local, local_addr=("198.18.0.1", 500), remote_addr=None)
    pols = {c.name: (c.rekey_time, c.lifetime, c.rekey_jitter) for c in cfg.children}
    assert pols["net"] == (1800.0, 3600.0, 60.0)  # the profile's ESP numbers, not the IKE ratio
    assert pols["lan2"] == (600.0, 1200.0, 30.0)
    assert pols["hosts"] == pytest.approx((3240.0, 3600.0, 180.0))  # unset: 1 h life, 90 %, 5 %
    # the IKE SA keeps its own timers
    assert cfg.ike_lifetime == 15840.0 and cfg.rekey_fraction == pytest.approx(14400 / 15840)
    assert cfg.rekey_jitter == pytest.approx(1440 / 15840)


def test_child_jitter_is_capped_at_half_its_rekey_time() -> None:
    p = _peer()
    p.children[0].lifetime.CopyFrom(
        spec_pb2.Lifetime(rekey_seconds=100, life_seconds=1000, jitter_seconds=90)
    )
    (pol,) = mapping.child_policies(p)
    assert (pol.rekey_time, pol.lifetime, pol.rekey_jitter) == (100.0, 1000.0, 50.0)


def test_esp_byte_and_packet_limits_are_per_child() -> None:
    p = _profile_peer("b", "198.19.1.0/24", "198.19.2.0/24")
    p.children[0].lifetime.rekey_bytes, p.children[0].lifetime.life_bytes = 1000, 2000
    p.children[1].lifetime.rekey_packets, p.children[1].lifetime.life_packets = 10, 20
    net, hosts = (mapping.esp_lifetime(c) for c in p.children)
    assert (net.soft_bytes, net.hard_bytes, net.soft_packets, net.hard_packets) == (1000, 2000, 0, 0)
    assert (hosts.soft_bytes, hosts.hard_bytes, hosts.soft_packets, hosts.hard_packets) == (0, 0, 10, 20)


def test_profile_esp_rekey_time_reaches_the_engine() -> None:
    """The reported bug end to end: ESP rekey 30 min / life 1 h with the default IKE profile used to
    rekey children at ~49-55 min; both engines, configured through mapping, now schedule 29-30 min."""
    from tests.agent.ike.harness import A_IP, B_IP, Pair

    to_b = _profile_peer("b", "198.19.1.0/24", "198.19.2.0/24")
    to_a = _profile_peer("a", "198.19.2.0/24", "198.19.1.0/24")
    to_a.children[1].local_ts[:], to_a.children[1].remote_ts[:] = ["198.18.0.2/32"], ["198.18.0.1/32"]
    a = mapping.ike_config(to_b, node("a", [to_b]).local, local_addr=(A_IP, 500), remote_addr=(B_IP, 500))
    b = mapping.ike_config(to_a, node("b", [to_a]).local, local_addr=(B_IP, 500), remote_addr=None)
    pair = Pair(a, b).start()
    for session in (pair.a, pair.b_session):
        (c,) = session.children.values()
        assert c.mode == "tunnel" and c.policy == "net"
        assert 1740.0 <= c.rekey_at - c.created <= 1800.0
        assert c.expire_at - c.created == pytest.approx(3600.0)
    pair.advance(1801.0)
    (c,) = (c for c in pair.a.children.values() if c.state == "installed")
    assert c.created > 1000.0 + 1700.0  # rekeyed once, around 30 min
