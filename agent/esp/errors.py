"""The one exception type of the ESP core, and why a packet was dropped.

Owns `EspDrop` and `DropReason`. Every refusal of the ESP core (inbound packet dropped, outbound packet
refused) is an `EspDrop`; the data plane counts it by reason and never sees another exception type from
`protect`/`unprotect`. Must not log: the caller decides what is worth a log line.
"""

from __future__ import annotations

import enum


class DropReason(enum.Enum):
    """Why a packet was dropped or refused; the data plane keys its counters and rate-limited logs on it."""

    MALFORMED = "malformed"  # too short, bad length, bad padding, bad inner header
    REPLAY = "replay"  # sequence number seen before or left of the window (RFC 4303 §3.4.3)
    ICV_FAILURE = "icv_failure"  # integrity check failed (RFC 4303 §3.4.4): forged, corrupted or wrong key
    POLICY = "policy"  # inner packet does not match the SA's selectors, or cannot be handled in this mode
    EXPIRED = "expired"  # hard lifetime reached or sequence numbers exhausted (RFC 4303 §3.3.3)
    DUMMY = "dummy"  # authenticated TFC dummy packet, next header 59 (RFC 4303 §2.6): not an error
    UNKNOWN_SPI = "unknown_spi"  # no inbound SA for this SPI (raised by the SAD)


class EspDrop(Exception):
    """A packet was dropped (inbound) or refused (outbound); `reason` says why, `detail` is for humans.

    `detail` never contains key material or packet contents.
    """

    __slots__ = ("detail", "reason")

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
