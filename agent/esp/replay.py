"""Anti-replay window (RFC 4303 §3.4.3, Appendix A2) with ESN high-bit inference (Appendix A2.2).

Owns the bitmap and the highest authenticated sequence number of one inbound SA. Check-then-update:
`check` runs before the ICV and never changes state, `update` runs only after the ICV verified, so a
forged packet cannot move the window. Must not know about packets or cryptography.
"""

from __future__ import annotations

from meshsec.agent.esp.errors import DropReason, EspDrop

_MASK32 = 0xFFFF_FFFF
_SEQ_MAX_64 = 0xFFFF_FFFF_FFFF_FFFF


class ReplayWindow:
    """Bitmap window of `size` sequence numbers ending at the highest one authenticated so far.

    The bitmap is a ring in a bytearray: sequence number s lives at bit s mod R (R = size rounded up to
    a multiple of 8), so recording a packet costs the same whatever the window size (no shifting of a
    `size`-bit integer per packet). `esn` selects 64-bit extended sequence numbers; `highest` starts the
    window as if that number had been received (0 = nothing received yet).
    """

    __slots__ = ("_bits", "_limit", "_ring", "esn", "highest", "size")

    def __init__(self, size: int = 1024, *, esn: bool = True, highest: int = 0) -> None:
        if not 32 <= size <= 1 << 31:
            raise ValueError(f"replay window size {size} outside 32..2^31")
        limit = _SEQ_MAX_64 if esn else _MASK32
        if not 0 <= highest <= limit:
            raise ValueError(f"initial highest sequence number {highest} outside 0..{limit}")
        self.size = size
        self.esn = esn
        self.highest = highest
        self._limit = limit
        self._bits = (size + 7) // 8 * 8
        self._ring = bytearray(self._bits // 8)
        if highest:
            self._set(highest)

    def _set(self, seq: int) -> None:
        pos = seq % self._bits
        self._ring[pos >> 3] |= 1 << (pos & 7)

    def _test(self, seq: int) -> bool:
        pos = seq % self._bits
        return bool(self._ring[pos >> 3] >> (pos & 7) & 1)

    def _clear(self, first: int, count: int) -> None:
        """Clear `count` ring positions starting at sequence number `first` (whole bytes where aligned)."""
        bits, ring = self._bits, self._ring
        pos = first % bits
        while count > 0:
            if pos & 7 == 0 and count >= 8:
                n = min(count >> 3, (bits - pos) >> 3)
                ring[pos >> 3 : (pos >> 3) + n] = bytes(n)
                pos = (pos + 8 * n) % bits
                count -= 8 * n
            else:
                ring[pos >> 3] &= ~(1 << (pos & 7)) & 0xFF
                pos = (pos + 1) % bits
                count -= 1

    def check(self, seq_low32: int) -> int:
        """Return the full (64-bit with ESN) sequence number for `seq_low32`, or raise EspDrop(REPLAY)."""
        top = self.highest
        nxt = top + 1
        if seq_low32 == nxt & _MASK32 and nxt <= self._limit:
            return nxt  # the in-order case; Appendix A2.2 gives the same answer
        if self.esn:
            size = self.size
            tl = top & _MASK32
            th = top >> 32
            # RFC 4303 Appendix A2.2: the window lies in one subspace (case A) or straddles two (case B).
            if tl >= size - 1:
                seq = ((th + 1) << 32 | seq_low32) if seq_low32 < tl - size + 1 else (th << 32 | seq_low32)
            elif seq_low32 >= (tl - size + 1) & _MASK32:
                if th == 0:
                    raise EspDrop(DropReason.REPLAY, "sequence number left of the window")
                seq = (th - 1) << 32 | seq_low32
            else:
                seq = th << 32 | seq_low32
            if seq > _SEQ_MAX_64:
                raise EspDrop(DropReason.REPLAY, "sequence number space exhausted")
        else:
            seq = seq_low32
        if seq > top:
            if seq == 0:
                raise EspDrop(DropReason.REPLAY, "sequence number 0 is never sent")
            return seq
        diff = top - seq
        if diff >= self.size or seq == 0:
            raise EspDrop(DropReason.REPLAY, "sequence number left of the window")
        if self._test(seq):
            raise EspDrop(DropReason.REPLAY, "duplicate sequence number")
        return seq

    def update(self, seq: int) -> None:
        """Record an authenticated sequence number (the value `check` returned)."""
        top = self.highest
        if seq > top:
            gap = seq - top - 1  # positions of numbers skipped over now stand for new, unseen numbers
            if gap >= self._bits:
                self._ring[:] = bytes(len(self._ring))
            elif gap:
                self._clear(top + 1, gap)
            self.highest = seq
        pos = seq % self._bits  # (the position of seq held seq - R, now outside the window: overwrite)
        self._ring[pos >> 3] |= 1 << (pos & 7)

    def seen(self, seq: int) -> bool:
        """Whether `seq` is marked received (False when left of the window); for tests and diagnostics."""
        diff = self.highest - seq
        return 0 <= diff < self.size and self._test(seq)
