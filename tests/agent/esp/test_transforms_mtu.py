"""Transform table, keying-material lengths, proposal parsing, and MTU/MSS arithmetic checked against
real protect() output sizes."""

from __future__ import annotations

import pytest
from meshsec.agent.esp import (
    EncrId,
    IntegId,
    Mode,
    TransformError,
    esp_overhead,
    keymat_length,
    max_inner_packet,
    mss_for,
    parse_esp_proposal,
    parse_esp_proposals,
    transform_spec,
    tunnel_mtu,
)
from meshsec.agent.esp.mtu import IP_HEADER, UDP_HEADER

from .helpers import TRANSFORM_IDS, TRANSFORMS, sa_pair, udp_packet


@pytest.mark.parametrize(
    ("encr", "bits", "integ", "length"),
    [
        (20, 128, 0, 20),  # RFC 4106 §8.1: key + 4-byte salt
        (20, 256, 0, 36),
        (21, 128, 0, 20),  # RFC 4543 §7.1
        (28, 256, 0, 36),  # RFC 7634 §2: 32 + 4
        (12, 128, 12, 16 + 32),  # RFC 7296 §2.17: encryption key, then integrity key (RFC 4868: 32)
        (12, 256, 12, 32 + 32),
    ],
)
def test_keymat_length(encr: int, bits: int, integ: int, length: int) -> None:
    assert keymat_length(encr, bits, integ) == length


@pytest.mark.parametrize(
    ("encr", "bits", "integ"),
    [(20, 100, 0), (20, 128, 12), (12, 128, 0), (28, 128, 0), (3, 192, 0), (12, 128, 2)],
)
def test_unsupported_transform(encr: int, bits: int, integ: int) -> None:
    with pytest.raises(TransformError):
        transform_spec(encr, bits, integ)


@pytest.mark.parametrize(
    ("text", "encr", "bits", "integ", "esn"),
    [
        ("aes128gcm16", EncrId.ENCR_AES_GCM_16, 128, IntegId.NONE, (True, False)),
        ("aes256gcm16-esn", EncrId.ENCR_AES_GCM_16, 256, IntegId.NONE, (True,)),
        ("AES256GCM16-noesn", EncrId.ENCR_AES_GCM_16, 256, IntegId.NONE, (False,)),
        ("aes128gcm", EncrId.ENCR_AES_GCM_16, 128, IntegId.NONE, (True, False)),
        ("chacha20poly1305", EncrId.ENCR_CHACHA20_POLY1305, 256, IntegId.NONE, (True, False)),
        ("aes128-sha256", EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128, (True, False)),
        ("aes256-sha256-noesn-esn", EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_256_128, (False, True)),
        ("aes128gmac", EncrId.ENCR_NULL_AUTH_AES_GMAC, 128, IntegId.NONE, (True, False)),
    ],
)
def test_parse_proposal(text: str, encr: EncrId, bits: int, integ: IntegId, esn: tuple[bool, ...]) -> None:
    p = parse_esp_proposal(text)
    assert (p.encr_id, p.key_bits, p.integ_id, p.esn) == (encr, bits, integ, esn)
    assert parse_esp_proposal(str(p)) == p  # canonical form parses back


@pytest.mark.parametrize(
    "text", ["", "aes128", "aes128-sha1", "aes128gcm16-sha256", "3des-sha256", "aes128gcm16-esn-esn", "x-esn"]
)
def test_bad_proposal(text: str) -> None:
    with pytest.raises(TransformError):
        parse_esp_proposal(text)


def test_parse_proposal_list() -> None:
    got = parse_esp_proposals("aes256gcm16-esn, chacha20poly1305 ,aes128-sha256")
    assert [str(p) for p in got] == [
        "aes256gcm16-esn",
        "chacha20poly1305-esn-noesn",
        "aes128-sha256-esn-noesn",
    ]
    with pytest.raises(TransformError):
        parse_esp_proposals(" , ")


@pytest.mark.parametrize("transform", TRANSFORMS, ids=TRANSFORM_IDS)
@pytest.mark.parametrize("mode", [Mode.TUNNEL, Mode.TRANSPORT])
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("link_mtu", [1280, 1500, 1437, 9000])
def test_max_inner_packet_is_exact(transform: tuple, mode: Mode, family: int, link_mtu: int) -> None:
    """The largest inner packet fits the link once protected (outer IP, UDP, ESP); one byte more does not."""
    out, _ = sa_pair(transform, mode, family)
    outer = family  # tunnel: test the same outer family; transport: always the inner one
    biggest = max_inner_packet(link_mtu, out.spec, mode=mode, outer_family=outer, inner_family=family)
    hdr = IP_HEADER[family] + 8  # scapy IP/IPv6 + UDP header of the test packet

    def wire_size(inner_len: int) -> int:
        esp = out.protect(udp_packet(family, b"z" * (inner_len - hdr)), 0.0)
        return IP_HEADER[outer] + UDP_HEADER + len(esp)

    assert wire_size(biggest) <= link_mtu
    assert wire_size(biggest + 1) > link_mtu


@pytest.mark.parametrize("transform", TRANSFORMS, ids=TRANSFORM_IDS)
def test_esp_overhead_matches_protect(transform: tuple) -> None:
    out, _ = sa_pair(transform)
    for n in range(28, 140):
        packet = udp_packet(4, b"q" * (n - 28))
        assert len(out.protect(packet, 0.0)) == n + esp_overhead(out.spec, n)


def test_known_figures() -> None:
    gcm, cbc = transform_spec(20, 128), transform_spec(12, 128, 12)
    # 1500 - 20 (IPv4) - 8 (UDP) - 8 (ESP hdr) - 8 (IV) - 16 (ICV) = 1440, minus the 2-byte trailer
    assert tunnel_mtu(1500, gcm) == 1438
    assert mss_for(1500, gcm) == 1438 - 40
    assert mss_for(1500, gcm, inner_family=6) == 1438 - 60
    # CBC: 1500-20-8-8-16-16 = 1432 -> 1424 whole blocks - 2
    assert tunnel_mtu(1500, cbc) == 1422
    assert tunnel_mtu(1500, [gcm, cbc]) == 1422  # safe across every configured transform
    assert tunnel_mtu(1500, gcm, outer_family=6) == 1418
    assert tunnel_mtu(1500, gcm, udp_encap=False) == 1446
    with pytest.raises(ValueError):
        tunnel_mtu(1500, [])
