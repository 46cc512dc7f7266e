"""Shared builders for the ESP core tests: SA pairs for every transform and mode, inner packets via Scapy."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from meshsec.agent.esp import (
    InboundSa,
    Lifetime,
    Mode,
    OutboundSa,
    SaParams,
    TransportAddresses,
    transform_spec,
)
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw, raw

VECTORS = Path(__file__).resolve().parents[2] / "vectors"

#: (encr_id, key_bits, integ_id) of every transform the core supports.
TRANSFORMS = [
    (20, 128, 0),
    (20, 192, 0),
    (20, 256, 0),
    (28, 256, 0),
    (12, 128, 12),
    (12, 256, 12),
    (21, 128, 0),
    (21, 256, 0),
]
TRANSFORM_IDS = [transform_spec(*t).name for t in TRANSFORMS]

ADDR = {
    4: ("198.18.1.1", "198.18.2.1"),  # host A, host B
    6: ("fd00::a", "fd00::b"),
}


def load_vectors(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / name).read_text())["cases"]


def key_bytes(n: int, label: str) -> bytes:
    """Deterministic test keys (never real ones)."""
    return hashlib.shake_256(label.encode()).digest(n) if n else b""


def make_params(
    transform: tuple[int, int, int],
    *,
    spi: int = 0x1001,
    mode: Mode = Mode.TUNNEL,
    esn: bool = True,
    window: int = 1024,
    lifetime: Lifetime | None = None,
    label: str = "k",
) -> SaParams:
    spec = transform_spec(*transform)
    return SaParams(
        spi=spi,
        encr_id=transform[0],
        key_bits=transform[1],
        integ_id=transform[2],
        enc_key=key_bytes(spec.enc_key_len, label + "e"),
        integ_key=key_bytes(spec.integ_key_len, label + "i"),
        mode=mode,
        esn=esn,
        replay_window=window,
        lifetime=lifetime or Lifetime(),
    )


def sa_pair(
    transform: tuple[int, int, int],
    mode: Mode = Mode.TUNNEL,
    family: int = 4,
    *,
    esn: bool = True,
    now: float = 0.0,
    **kw: Any,
) -> tuple[OutboundSa, InboundSa]:
    """Outbound SA of host A and the matching inbound SA of host B (transport addresses set per side)."""
    a, b = (ip_address(x) for x in ADDR[family])
    params = make_params(transform, mode=mode, esn=esn, **kw)
    if mode is Mode.TRANSPORT:
        out_p = replace(params, transport=TransportAddresses(local=a, remote=b))
        in_p = replace(params, transport=TransportAddresses(local=b, remote=a))
    else:
        out_p = in_p = params
    return OutboundSa(out_p, now), InboundSa(in_p, now)


def udp_packet(family: int, payload: bytes, *, src: str | None = None, dst: str | None = None) -> bytes:
    """An A -> B UDP packet in the canonical header form a transport-mode receiver rebuilds."""
    s, d = ADDR[family]
    s, d = src or s, dst or d
    if family == 4:
        return raw(IP(src=s, dst=d, id=0, flags="DF", ttl=64) / UDP(sport=4242, dport=53) / Raw(payload))
    return raw(IPv6(src=s, dst=d, hlim=64) / UDP(sport=4242, dport=53) / Raw(payload))


def tcp_packet(family: int, payload: bytes, *, src: str | None = None, dst: str | None = None) -> bytes:
    s, d = ADDR[family]
    s, d = src or s, dst or d
    l4 = TCP(sport=40000, dport=443, seq=7, flags="PA") / Raw(payload)
    if family == 4:
        return raw(IP(src=s, dst=d, id=0, flags="DF", ttl=64) / l4)
    return raw(IPv6(src=s, dst=d, hlim=64) / l4)
