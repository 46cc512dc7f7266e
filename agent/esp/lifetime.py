"""SA lifetimes: the limits (RFC 4301 §4.4.2.1 soft/hard by bytes, packets, seconds) and the events.

Owns the value types the IKE layer configures and receives: `Lifetime`, `SoftExpired`, `HardExpired`,
`ExpiryCause`, and the sequence-number limits (RFC 4303 §3.3.3). The per-packet accounting lives in
sa.py, on the SA object, because it is on the hot path. Must not know about packets or keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Soft and hard limits, 0 = unlimited. Bytes count inner (plaintext) packet bytes (RFC 4301 §4.4.2.1).

    Soft limits raise a SoftExpired event (rekey now); hard limits raise HardExpired and the SA refuses
    (outbound) or drops (inbound) every further packet. Seconds are measured from the SA's creation `now`.
    """

    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0
    soft_seconds: float = 0.0
    hard_seconds: float = 0.0


class ExpiryCause(enum.Enum):
    BYTES = "bytes"
    PACKETS = "packets"
    SECONDS = "seconds"
    SEQUENCE = "sequence"  # sequence-number space nearly (soft) or fully (hard) used; RFC 4303 §3.3.3


@dataclass(frozen=True, slots=True)
class SoftExpired:
    """Soft limit reached: the IKE layer should rekey this CHILD_SA now; the SA keeps working."""

    spi: int
    cause: ExpiryCause


@dataclass(frozen=True, slots=True)
class HardExpired:
    """Hard limit reached: the SA refuses/drops every packet from now on; the IKE layer deletes it."""

    spi: int
    cause: ExpiryCause


LifetimeEvent = SoftExpired | HardExpired

#: Highest sequence number a sender may use, ESN and not (RFC 4303 §3.3.3: the counter MUST NOT cycle).
SEQ_MAX_32 = 0xFFFF_FFFF
SEQ_MAX_64 = 0xFFFF_FFFF_FFFF_FFFF
#: SoftExpired(SEQUENCE) fires when this many sequence numbers are left: ~16.7 M packets, i.e. seconds
#: of margin even at 10 Mpps, yet "well before" 2^32 (RFC 4303 §3.3.3 asks for a rekey before cycling).
SEQ_SOFT_MARGIN = 1 << 24
