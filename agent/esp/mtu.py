"""ESP overhead, tunnel MTU and TCP MSS: the one place these numbers are computed.

Owns the arithmetic from a transform's sizes (IV, ICV, padding alignment), the mode, the outer address
family (IPv4 header 20, IPv6 40) and UDP encapsulation (RFC 3948, 8 bytes) to packet sizes. Must not
hard-code a transform's sizes (they come from transforms.TransformSpec) nor touch devices.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshsec.agent.esp.sa import Mode
from meshsec.agent.esp.transforms import TransformSpec

ESP_HEADER = 8  # SPI + sequence number (RFC 4303 §2)
ESP_TRAILER = 2  # pad length + next header
UDP_HEADER = 8
TCP_HEADER = 20
IP_HEADER = {4: 20, 6: 40}


def esp_overhead(spec: TransformSpec, payload_len: int) -> int:
    """Exact bytes ESP adds to `payload_len` bytes with minimal padding (header, IV, pad, trailer, ICV)."""
    body = payload_len + ESP_TRAILER
    padded = -(-body // spec.block) * spec.block
    return ESP_HEADER + spec.iv_len + (padded - payload_len) + spec.icv_len


def max_esp_payload(spec: TransformSpec, esp_space: int) -> int:
    """Largest payload whose ESP packet (SPI through ICV) fits in `esp_space` bytes (may be negative)."""
    room = esp_space - ESP_HEADER - spec.iv_len - spec.icv_len
    return (room // spec.block) * spec.block - ESP_TRAILER


def max_inner_packet(
    link_mtu: int,
    spec: TransformSpec,
    *,
    mode: Mode = Mode.TUNNEL,
    outer_family: int = 4,
    udp_encap: bool = True,
    inner_family: int | None = None,
) -> int:
    """Largest inner IP packet that, once protected, fits in one `link_mtu`-sized outer packet.

    Tunnel mode: the whole inner packet is the payload. Transport mode: the inner IP header (without
    options/extension headers; `inner_family` defaults to the outer one) is replaced by the outer one,
    so only the L4 segment is the payload.
    """
    space = link_mtu - IP_HEADER[outer_family] - (UDP_HEADER if udp_encap else 0)
    payload = max_esp_payload(spec, space)
    if mode is Mode.TRANSPORT:
        payload += IP_HEADER[inner_family or outer_family]
    return payload


def tunnel_mtu(
    link_mtu: int,
    specs: TransformSpec | Iterable[TransformSpec],
    *,
    outer_family: int = 4,
    udp_encap: bool = True,
    mode: Mode = Mode.TUNNEL,
) -> int:
    """MTU for the TUN device: the smallest `max_inner_packet` over the transforms the SAs may use.

    Pass every transform of the configured proposals, so a rekey to another transform cannot make
    packets that passed the TUN too large for the link.
    """
    items = [specs] if isinstance(specs, TransformSpec) else list(specs)
    if not items:
        raise ValueError("tunnel_mtu needs at least one transform")
    families = (4, 6) if mode is Mode.TUNNEL else (outer_family,)
    return min(
        max_inner_packet(
            link_mtu, s, mode=mode, outer_family=outer_family, udp_encap=udp_encap, inner_family=f
        )
        for s in items
        for f in families
    )


def mss_for(
    link_mtu: int,
    specs: TransformSpec | Iterable[TransformSpec],
    *,
    inner_family: int = 4,
    outer_family: int = 4,
    udp_encap: bool = True,
    mode: Mode = Mode.TUNNEL,
) -> int:
    """TCP MSS to clamp SYNs to for inner `inner_family` traffic (tunnel MTU minus IP and TCP headers)."""
    mtu = tunnel_mtu(link_mtu, specs, outer_family=outer_family, udp_encap=udp_encap, mode=mode)
    return mtu - IP_HEADER[inner_family] - TCP_HEADER
