"""Sans-I/O ESP (RFC 4303) core: transforms, SAs (protect/unprotect), replay window, SPD, SAD, MTU maths.

Owns the ESP wire format and its cryptography. Must not touch sockets, TUN devices, asyncio or the clock:
packets are bytes-like values in and out, time is always an argument. The data plane (agent/dataplane/)
and the IKE engine (agent/ike/) build on the names re-exported here.
"""

from meshsec.agent.esp.errors import DropReason, EspDrop
from meshsec.agent.esp.lifetime import ExpiryCause, HardExpired, Lifetime, LifetimeEvent, SoftExpired
from meshsec.agent.esp.mtu import esp_overhead, max_inner_packet, mss_for, tunnel_mtu
from meshsec.agent.esp.replay import ReplayWindow
from meshsec.agent.esp.sa import Counters, InboundSa, Mode, OutboundSa, SaParams
from meshsec.agent.esp.sad import Sad
from meshsec.agent.esp.spd import Spd, TrafficSelector
from meshsec.agent.esp.transforms import (
    EncrId,
    EspProposal,
    IntegId,
    TransformError,
    TransformSpec,
    keymat_length,
    parse_esp_proposal,
    parse_esp_proposals,
    transform_spec,
)
from meshsec.agent.esp.transport import TransportAddresses

__all__ = [
    "Counters",
    "DropReason",
    "EncrId",
    "EspDrop",
    "EspProposal",
    "ExpiryCause",
    "HardExpired",
    "InboundSa",
    "IntegId",
    "Lifetime",
    "LifetimeEvent",
    "Mode",
    "OutboundSa",
    "ReplayWindow",
    "SaParams",
    "Sad",
    "SoftExpired",
    "Spd",
    "TrafficSelector",
    "TransformError",
    "TransformSpec",
    "TransportAddresses",
    "esp_overhead",
    "keymat_length",
    "max_inner_packet",
    "mss_for",
    "parse_esp_proposal",
    "parse_esp_proposals",
    "transform_spec",
    "tunnel_mtu",
]
