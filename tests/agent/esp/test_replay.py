"""The anti-replay window matches a reference model (RFC 4303 §3.4.3 + Appendix A2.2) for any window size
and sequence, including ESN crossings of 2^32 and forged packets that are checked but never authenticated.

Reference model: the set of authenticated sequence numbers and the highest one. With ESN the full number
for a received low 32 bits is the unique value congruent to it in [T - W + 1, T + 2^32 - W] (that is what
Appendix A2.2's case analysis computes); it is accepted iff it is positive, within 64 bits, and either
above T or not yet seen.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshsec.agent.esp import DropReason, EspDrop, ReplayWindow

M32 = 1 << 32
MAX64 = (1 << 64) - 1


class Model:
    def __init__(self, size: int, esn: bool, highest: int) -> None:
        self.size, self.esn, self.highest = size, esn, highest
        self.seen: set[int] = {highest} if highest else set()

    def check(self, low: int) -> int | None:
        t, w = self.highest, self.size
        if self.esn:
            base = t - w + 1
            cand = base + ((low - base) % M32)
        else:
            cand = low
        if cand <= 0 or cand > MAX64:
            return None
        if cand > t:
            return cand
        if cand <= t - w or cand in self.seen:
            return None
        return cand

    def update(self, seq: int) -> None:
        self.seen.add(seq)
        self.highest = max(self.highest, seq)


sizes = st.one_of(st.sampled_from([32, 33, 64, 100, 1024]), st.integers(32, 5000))


@st.composite
def scenario(draw: st.DrawFn, start: st.SearchStrategy[int]) -> tuple[int, int, list[tuple[int, bool]]]:
    """A window size, a start for the highest number, packets as (offset from the highest, authentic)."""
    size = draw(sizes)
    delta = st.one_of(
        st.integers(-70, 70),  # around the top of the window
        st.sampled_from([-size - 1, -size, -size + 1, -size + 2]),  # exactly at the left edge
        st.integers(-size - 100, size + 100),
        st.integers(-(1 << 33), 1 << 33),  # far away: exercises the inference and its wrap
        st.sampled_from([M32 - size, M32 - size + 1, M32 - 1, M32, M32 + 1, -M32]),
    )
    ops = draw(st.lists(st.tuples(delta, st.booleans()), max_size=120))  # booleans: ICV ok or forged
    return size, draw(start), ops


def _run(size: int, esn: bool, start: int, ops: list[tuple[int, bool]]) -> None:
    window = ReplayWindow(size, esn=esn, highest=start)
    model = Model(size, esn, start)
    for delta, authentic in ops:
        full = model.highest + delta
        low = full % M32
        expected = model.check(low)
        try:
            got: int | None = window.check(low)
        except EspDrop as e:
            assert e.reason is DropReason.REPLAY
            got = None
        assert got == expected, (model.highest, delta, low)
        if got is not None and authentic:
            window.update(got)
            model.update(got)
        assert window.highest == model.highest
    top = model.highest
    probes = {*range(top - size - 3, top - size + 40), *range(top - 40, top + 2), *model.seen}
    for seq in probes:
        if seq >= 1:
            assert window.seen(seq) == (seq in model.seen and seq > top - size)


@settings(max_examples=300, deadline=None)
@given(scenario(st.integers(0, 1 << 40)))
def test_esn_window_matches_model(sc: tuple[int, int, list[tuple[int, bool]]]) -> None:
    _run(sc[0], True, sc[1], sc[2])


@settings(max_examples=200, deadline=None)
@given(scenario(st.integers(M32 - 6000, M32 + 6000)))
def test_esn_window_across_2_32(sc: tuple[int, int, list[tuple[int, bool]]]) -> None:
    _run(sc[0], True, sc[1], sc[2])


@settings(max_examples=200, deadline=None)
@given(scenario(st.integers(0, M32 - 1)))
def test_32bit_window_matches_model(sc: tuple[int, int, list[tuple[int, bool]]]) -> None:
    _run(sc[0], False, sc[1], sc[2])


@settings(max_examples=50, deadline=None)
@given(scenario(st.just(MAX64 - 3000)))
def test_esn_window_near_end_of_space(sc: tuple[int, int, list[tuple[int, bool]]]) -> None:
    _run(sc[0], True, sc[1], sc[2])


def test_rfc_example_crossing() -> None:
    """In-order delivery across 2^32 infers the high bits; the old subspace is still accepted in-window."""
    w = ReplayWindow(64, esn=True, highest=M32 - 2)
    assert w.check(0xFFFF_FFFF) == M32 - 1
    w.update(M32 - 1)
    assert w.check(0) == M32
    w.update(M32)
    assert w.check(5) == M32 + 5
    assert w.check(0xFFFF_FFF0) == M32 - 16  # late packet from the previous subspace, inside the window
    with pytest.raises(EspDrop):
        w.check(0xFFFF_FFFF)  # already seen


def test_sequence_zero_never_valid() -> None:
    with pytest.raises(EspDrop):
        ReplayWindow(32, esn=False).check(0)
    with pytest.raises(EspDrop):
        ReplayWindow(32, esn=True).check(0)


@pytest.mark.parametrize("size", [0, 31, (1 << 31) + 1])
def test_window_size_bounds(size: int) -> None:
    with pytest.raises(ValueError):
        ReplayWindow(size)
