"""Lifetimes (soft/hard by packets, bytes, seconds), sequence-number exhaustion and key wiping.

Soft limits produce one SoftExpired event (rekey) and keep the SA working; hard limits produce one
HardExpired event and make protect refuse / unprotect drop with EXPIRED. The sender never wraps its
sequence number (RFC 4303 §3.3.3): SoftExpired(SEQUENCE) comes SEQ_SOFT_MARGIN packets before the end,
and the packet after 2^32-1 (2^64-1 with ESN) is refused. The initial-sequence seam starts the counter
near the limit.
"""

from __future__ import annotations

import pytest
from meshsec.agent.esp import (
    DropReason,
    EspDrop,
    ExpiryCause,
    HardExpired,
    InboundSa,
    Lifetime,
    OutboundSa,
    Sad,
    SoftExpired,
)
from meshsec.agent.esp.sa import SEQ_MAX_32, SEQ_MAX_64, SEQ_SOFT_MARGIN

from .helpers import TRANSFORM_IDS, TRANSFORMS, make_params, sa_pair, udp_packet

PKT = udp_packet(4, b"x" * 372)  # 400 bytes
SPI = 0x1001


def _refused(sa: OutboundSa, now: float = 0.0) -> DropReason:
    with pytest.raises(EspDrop) as e:
        sa.protect(PKT, now)
    return e.value.reason


def test_packet_limits() -> None:
    out, _ = sa_pair((20, 128, 0), lifetime=Lifetime(soft_packets=3, hard_packets=5))
    for _ in range(2):
        out.protect(PKT, 0.0)
    assert out.poll(0.0) == []
    out.protect(PKT, 0.0)
    assert out.poll(0.0) == [SoftExpired(SPI, ExpiryCause.PACKETS)]
    out.protect(PKT, 0.0)
    out.protect(PKT, 0.0)
    assert out.poll(0.0) == []  # reported once
    assert _refused(out) is DropReason.EXPIRED
    assert out.poll(0.0) == [HardExpired(SPI, ExpiryCause.PACKETS)]
    assert _refused(out) is DropReason.EXPIRED
    assert out.poll(0.0) == []
    assert out.counters.packets_out == 5
    assert out.expired


def test_byte_limits() -> None:
    out, _ = sa_pair((28, 256, 0), lifetime=Lifetime(soft_bytes=1000, hard_bytes=2000))
    out.protect(PKT, 0.0)
    out.protect(PKT, 0.0)  # 800
    assert out.poll(0.0) == []
    out.protect(PKT, 0.0)  # 1200 >= soft
    assert out.poll(0.0) == [SoftExpired(SPI, ExpiryCause.BYTES)]
    out.protect(PKT, 0.0)
    out.protect(PKT, 0.0)  # exactly 2000: still allowed
    assert _refused(out) is DropReason.EXPIRED  # 2400 would exceed the hard limit
    assert out.poll(0.0) == [HardExpired(SPI, ExpiryCause.BYTES)]
    assert out.counters.bytes_out == 2000


def test_time_limits_outbound() -> None:
    out, _ = sa_pair((12, 128, 12), now=100.0, lifetime=Lifetime(soft_seconds=10, hard_seconds=20))
    assert out.next_deadline() == 110.0
    out.protect(PKT, 105.0)
    assert out.poll(109.9) == []
    assert out.poll(110.0) == [SoftExpired(SPI, ExpiryCause.SECONDS)]
    assert out.next_deadline() == 120.0
    out.protect(PKT, 119.0)
    assert _refused(out, 120.5) is DropReason.EXPIRED  # enforced on the hot path even without poll
    assert out.poll(121.0) == [HardExpired(SPI, ExpiryCause.SECONDS)]
    assert out.next_deadline() is None


def test_time_limit_found_by_poll_alone() -> None:
    out, _ = sa_pair((20, 256, 0), now=0.0, lifetime=Lifetime(soft_seconds=5, hard_seconds=6))
    assert out.poll(7.0) == [HardExpired(SPI, ExpiryCause.SECONDS)]
    assert out.expired
    assert _refused(out, 7.0) is DropReason.EXPIRED


def test_soft_only_keeps_working() -> None:
    out, inb = sa_pair((20, 128, 0), lifetime=Lifetime(soft_packets=1))
    for _ in range(10):
        assert inb.unprotect(out.protect(PKT, 0.0), 0.0) == PKT
    assert out.poll(0.0) == [SoftExpired(SPI, ExpiryCause.PACKETS)]
    assert inb.poll(0.0) == [SoftExpired(SPI, ExpiryCause.PACKETS)]
    assert not out.expired and not inb.expired


def test_inbound_limits() -> None:
    out, _ = sa_pair((20, 128, 0))
    _, inb = sa_pair((20, 128, 0), lifetime=Lifetime(soft_packets=2, hard_packets=3, hard_seconds=50))
    esps = [out.protect(PKT, 0.0) for _ in range(5)]
    inb.unprotect(esps[0], 0.0)
    inb.unprotect(esps[1], 0.0)
    assert inb.poll(0.0) == [SoftExpired(SPI, ExpiryCause.PACKETS)]
    inb.unprotect(esps[2], 0.0)
    with pytest.raises(EspDrop) as e:
        inb.unprotect(esps[3], 0.0)
    assert e.value.reason is DropReason.EXPIRED
    assert inb.poll(0.0) == [HardExpired(SPI, ExpiryCause.PACKETS)]
    assert inb.counters.packets_in == 3
    assert inb.counters.expired_drops == 1


def test_inbound_hard_time() -> None:
    out, inb = sa_pair((28, 256, 0), lifetime=Lifetime(hard_seconds=50))
    inb.unprotect(out.protect(PKT, 0.0), 49.0)
    with pytest.raises(EspDrop) as e:
        inb.unprotect(out.protect(PKT, 0.0), 50.0)
    assert e.value.reason is DropReason.EXPIRED


@pytest.mark.parametrize("esn", [False, True])
def test_sequence_soft_event_well_before_end(esn: bool) -> None:
    top = SEQ_MAX_64 if esn else SEQ_MAX_32
    out = OutboundSa(make_params((20, 128, 0), esn=esn), 0.0, initial_seq=top - SEQ_SOFT_MARGIN - 2)
    out.protect(PKT, 0.0)
    assert out.poll(0.0) == []
    out.protect(PKT, 0.0)
    assert out.poll(0.0) == [SoftExpired(SPI, ExpiryCause.SEQUENCE)]
    assert top - out.seq == SEQ_SOFT_MARGIN
    out.protect(PKT, 0.0)
    assert out.poll(0.0) == []


@pytest.mark.parametrize("transform", TRANSFORMS, ids=TRANSFORM_IDS)
@pytest.mark.parametrize("esn", [False, True])
def test_sequence_never_wraps(transform: tuple, esn: bool) -> None:
    top = SEQ_MAX_64 if esn else SEQ_MAX_32
    params = make_params(transform, esn=esn)
    out = OutboundSa(params, 0.0, initial_seq=top - 2)
    inb = InboundSa(params, 0.0, replay_highest=top - 3)
    for _ in range(2):  # top - 1 and top itself are still sent and accepted
        assert inb.unprotect(out.protect(PKT, 0.0), 0.0) == PKT
    assert out.seq == top
    assert _refused(out) is DropReason.EXPIRED
    assert out.poll(0.0) == [SoftExpired(SPI, ExpiryCause.SEQUENCE), HardExpired(SPI, ExpiryCause.SEQUENCE)]
    assert out.seq == top


@pytest.mark.parametrize("transform", TRANSFORMS, ids=TRANSFORM_IDS)
def test_esn_crossing_2_32(transform: tuple) -> None:
    """High bits enter the ICV on both sides: packets around 2^32 authenticate; a receiver that infers
    other high bits (its window sits at 2^33) fails the ICV although the low 32 bits are acceptable."""
    params = make_params(transform, esn=True)
    out = OutboundSa(params, 0.0, initial_seq=(1 << 32) - 3)
    inb = InboundSa(params, 0.0, replay_highest=(1 << 32) - 3)
    lagging = InboundSa(params, 0.0, replay_highest=(2 << 32) + 10)  # infers high bits 2
    for i in range(5):
        esp = out.protect(PKT, 0.0)
        assert inb.unprotect(esp, 0.0) == PKT
        if i >= 2:
            assert esp[4:8] == (i - 2).to_bytes(4, "big")  # wire carries only the low 32 bits
            with pytest.raises(EspDrop) as e:
                lagging.unprotect(esp, 0.0)
            assert e.value.reason is DropReason.ICV_FAILURE
    assert inb.replay.highest == (1 << 32) + 2


@pytest.mark.parametrize("transform", TRANSFORMS, ids=TRANSFORM_IDS)
def test_wipe_clears_keys(transform: tuple) -> None:
    out, inb = sa_pair(transform)
    esp = out.protect(PKT, 0.0)
    held = [out._enc_key, out._integ_key, inb._enc_key, inb._integ_key]  # the SAs' own key buffers
    assert any(any(k) for k in held)
    out.wipe()
    inb.wipe()
    assert all(not any(k) for k in held)
    assert len(held[0]) == make_params(transform).spec.enc_key_len
    assert out._engine is None and inb._engine is None
    assert _refused(out) is DropReason.EXPIRED
    with pytest.raises(EspDrop) as e:
        inb.unprotect(esp, 0.0)
    assert e.value.reason is DropReason.EXPIRED


def test_params_keys_are_copied() -> None:
    """The SA owns bytearray copies, so wiping cannot be defeated by (or corrupt) the caller's buffer."""
    params = make_params((20, 128, 0))
    out = OutboundSa(params, 0.0)
    assert out._enc_key == bytearray(params.enc_key) and out._enc_key is not params.enc_key
    assert out.params.enc_key == b"" and out.params.integ_key == b""  # no unwipeable copy kept
    assert out.params.spi == params.spi and out.params.mode is params.mode
    out.wipe()
    assert any(params.enc_key)


def test_sad_remove_wipes() -> None:
    out, inb = sa_pair((20, 128, 0))
    sad = Sad()
    sad.add(inb)
    esp = out.protect(PKT, 0.0)
    sa, inner = sad.unprotect(esp, 0.0)
    assert sa is inb and inner == PKT
    key = inb._enc_key
    assert sad.remove(SPI) is inb
    assert not any(key)
    assert SPI not in sad and len(sad) == 0
    with pytest.raises(EspDrop) as e:
        sad.unprotect(out.protect(PKT, 0.0), 0.0)
    assert e.value.reason is DropReason.UNKNOWN_SPI
    assert sad.remove(SPI) is None


def test_keys_never_in_repr() -> None:
    params = make_params((12, 128, 12))
    text = repr(params) + str(params)
    assert params.enc_key.hex() not in text and params.integ_key.hex() not in text
    assert repr(params.enc_key)[2:12] not in text
