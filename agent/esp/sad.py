"""Inbound SAD: the inbound SAs of this host keyed by SPI (RFC 4301 §4.4.2).

Owns the SPI -> InboundSa map; `remove` wipes the SA's keys. Must not allocate SPIs (the IKE engine
does) nor hold outbound SAs (the data plane maps SPD results to them).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from meshsec.agent.esp.errors import DropReason, EspDrop
from meshsec.agent.esp.sa import InboundSa

_SPI = struct.Struct("!I")


class Sad:
    """SPI-keyed table of inbound SAs, with a one-call `unprotect` for the data plane's receive loop."""

    __slots__ = ("_by_spi",)

    def __init__(self) -> None:
        self._by_spi: dict[int, InboundSa] = {}

    def add(self, sa: InboundSa) -> None:
        """Install an inbound SA; a duplicate SPI is a bug in SPI allocation, so it raises ValueError."""
        if sa.spi in self._by_spi:
            raise ValueError(f"inbound SPI {sa.spi:#010x} already installed")
        self._by_spi[sa.spi] = sa

    def remove(self, spi: int) -> InboundSa | None:
        """Uninstall and wipe the SA with this SPI; returns it (wiped) or None if absent."""
        sa = self._by_spi.pop(spi, None)
        if sa is not None:
            sa.wipe()
        return sa

    @property
    def by_spi(self) -> dict[int, InboundSa]:
        """The SPI -> SA dict itself, for the data plane's per-datagram lookup; never mutate it."""
        return self._by_spi

    def get(self, spi: int) -> InboundSa | None:
        return self._by_spi.get(spi)

    def lookup(self, esp: bytes | bytearray | memoryview) -> InboundSa | None:
        """The SA for an ESP packet's SPI, or None (also for packets shorter than an SPI)."""
        if len(esp) < 4:
            return None
        return self._by_spi.get(_SPI.unpack_from(esp)[0])

    def unprotect(
        self, esp: bytes | bytearray | memoryview, now: float
    ) -> tuple[InboundSa, bytes | bytearray]:
        """Look up the SA and unprotect: (sa, inner packet), or EspDrop (UNKNOWN_SPI, MALFORMED, ...)."""
        if len(esp) < 8:
            raise EspDrop(DropReason.MALFORMED, "shorter than an ESP header")
        sa = self._by_spi.get(_SPI.unpack_from(esp)[0])
        if sa is None:
            raise EspDrop(DropReason.UNKNOWN_SPI)
        return sa, sa.unprotect(esp, now)

    def __len__(self) -> int:
        return len(self._by_spi)

    def __iter__(self) -> Iterator[InboundSa]:
        return iter(list(self._by_spi.values()))

    def __contains__(self, spi: object) -> bool:
        return spi in self._by_spi
