"""Published ESP vectors reproduce byte for byte in both directions.

draft-mcgrew-gcm-test-01 §4 (AES-GCM-ESP, RFC 4106, and AES-GMAC-ESP, RFC 4543; 32-bit and ESN
sequence numbers) and RFC 7634 Appendix A (ChaCha20-Poly1305 tunnel-mode packet). The vectors' explicit
IVs enter through the SA's IV seam; the vectors' sequence numbers through the initial-sequence and
replay-window seams.
"""

from __future__ import annotations

from typing import Any

import pytest
from meshsec.agent.esp import EncrId, EspDrop, InboundSa, Mode, OutboundSa, SaParams
from meshsec.agent.esp.errors import DropReason

from .helpers import load_vectors

GCM = load_vectors("gcm_esp.json")
CHACHA = [c for c in load_vectors("chacha_rfc7634.json") if c["kind"] == "esp-chacha20-poly1305"]


def _gcm_case(case: dict[str, Any]) -> tuple[SaParams, bytes, int, int, int]:
    gmac = case["kind"] == "esp-aes-gmac"
    params = SaParams(
        spi=int(case["spi"], 16),
        encr_id=EncrId.ENCR_NULL_AUTH_AES_GMAC if gmac else EncrId.ENCR_AES_GCM_16,
        key_bits=case["key_bits"],
        integ_id=0,
        enc_key=bytes.fromhex(case["key"] + case["salt"]),
        esn=case["esn"],
    )
    trailer = case["esp_trailer"]
    # "plaintext" (GMAC: "payload", sent in clear) is payload||padding||pad length||next header.
    body = bytes.fromhex(case["payload"] if gmac else case["plaintext"])
    assert body.endswith(bytes.fromhex(trailer["padding"] + trailer["pad_length"] + trailer["next_header"]))
    payload = body[: -2 - int(trailer["pad_length"], 16)]
    return (
        params,
        payload,
        int(trailer["next_header"], 16),
        int(trailer["pad_length"], 16),
        int(case["seq"], 16),
    )


def test_all_gcm_cases_present() -> None:
    assert len(GCM) == 17
    assert all(c["verified"] for c in GCM)
    assert sum(c["kind"] == "esp-aes-gmac" for c in GCM) == 1


@pytest.mark.parametrize("case", GCM, ids=[c["id"] for c in GCM])
def test_gcm_vector_outbound(case: dict[str, Any]) -> None:
    params, payload, nh, pad, seq = _gcm_case(case)
    iv = bytes.fromhex(case["iv"])
    sa = OutboundSa(params, 0.0, iv_source=lambda s: iv, initial_seq=seq - 1)
    out = sa.encapsulate(payload, nh, 0.0, pad_len=pad)
    assert out.hex() == case["packet"]
    assert sa.seq == seq


@pytest.mark.parametrize("case", GCM, ids=[c["id"] for c in GCM])
def test_gcm_vector_inbound(case: dict[str, Any]) -> None:
    params, payload, nh, _, seq = _gcm_case(case)
    sa = InboundSa(params, 0.0, replay_highest=seq - 1)
    packet = bytes.fromhex(case["packet"])
    assert sa.decapsulate(packet, 0.0) == (nh, payload)
    assert sa.replay.highest == seq
    with pytest.raises(EspDrop) as e:  # the same packet again is a replay
        sa.decapsulate(packet, 0.0)
    assert e.value.reason is DropReason.REPLAY


@pytest.mark.parametrize("case", GCM, ids=[c["id"] for c in GCM])
def test_gcm_vector_tampered_icv(case: dict[str, Any]) -> None:
    params, _, _, _, seq = _gcm_case(case)
    sa = InboundSa(params, 0.0, replay_highest=seq - 1)
    packet = bytearray.fromhex(case["packet"])
    packet[-1] ^= 0x80
    with pytest.raises(EspDrop) as e:
        sa.decapsulate(packet, 0.0)
    assert e.value.reason is DropReason.ICV_FAILURE
    assert sa.counters.icv_failures == 1
    assert sa.replay.highest == seq - 1  # a forged packet does not move the window


def _chacha_params(case: dict[str, Any]) -> SaParams:
    return SaParams(
        spi=int(case["spi"], 16),
        encr_id=EncrId.ENCR_CHACHA20_POLY1305,
        key_bits=256,
        integ_id=0,
        enc_key=bytes.fromhex(case["keymat"]),
        esn=case["esn"],
        mode=Mode.TUNNEL,
    )


@pytest.mark.parametrize("case", CHACHA, ids=[c["id"] for c in CHACHA])
def test_chacha_vector_protect(case: dict[str, Any]) -> None:
    """RFC 7634 Appendix A is a real tunnel-mode packet: protect() itself must produce it."""
    iv = bytes.fromhex(case["iv"])
    seq = int(case["seq"], 16)
    sa = OutboundSa(_chacha_params(case), 0.0, iv_source=lambda s: iv, initial_seq=seq - 1)
    assert sa.protect(bytes.fromhex(case["source_packet"]), 0.0).hex() == case["esp_packet"]


@pytest.mark.parametrize("case", CHACHA, ids=[c["id"] for c in CHACHA])
def test_chacha_vector_unprotect(case: dict[str, Any]) -> None:
    seq = int(case["seq"], 16)
    sa = InboundSa(_chacha_params(case), 0.0, replay_highest=seq - 1)
    assert sa.unprotect(bytes.fromhex(case["esp_packet"]), 0.0).hex() == case["source_packet"]
    assert sa.counters.packets_in == 1
    assert sa.counters.bytes_in == len(case["source_packet"]) // 2
