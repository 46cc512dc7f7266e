"""History and NodeDelta: composition equals applying deltas in order (hypothesis), and the bounds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from meshsec.api.v1 import config_pb2
from meshsec.controller.compiler import apply_delta
from meshsec.controller.desired import History, NodeDelta

PEERS = ["p0", "p1", "p2", "p3"]


def _peer(name: str, tag: int) -> bytes:
    return config_pb2.PeerConfig(name=name, endpoints=[f"198.18.0.{tag}"]).SerializeToString(
        deterministic=True
    )


deltas = st.builds(
    lambda ups, rms, local: NodeDelta(
        config_pb2.LocalConfig(name="me", subnets=[f"198.19.{local}.0/24"]).SerializeToString()
        if local is not None
        else None,
        {n: _peer(n, t) for n, t in ups.items()},
        frozenset(rms) - set(ups),
    ),
    st.dictionaries(st.sampled_from(PEERS), st.integers(1, 9), max_size=3),
    st.sets(st.sampled_from(PEERS), max_size=2),
    st.none() | st.integers(1, 9),
)


def _apply(cfg: config_pb2.NodeConfig, d: NodeDelta) -> config_pb2.NodeConfig:
    return apply_delta(cfg, d.to_message(0, 0))


@settings(max_examples=200, deadline=None)
@given(st.lists(deltas, max_size=5))
def test_compose_equals_applying_in_order(seq: list[NodeDelta]) -> None:
    start = config_pb2.NodeConfig(local=config_pb2.LocalConfig(name="me"))
    start.peers.add().MergeFromString(_peer("p1", 1))
    stepwise = start
    for d in seq:
        stepwise = _apply(stepwise, d)
    assert _apply(start, NodeDelta.compose(seq)) == stepwise


def test_history_answers_from_since_and_is_bounded() -> None:
    hist = History(max_changes=3, max_bytes=1 << 20)
    hist.reset(10)
    for v in (11, 12, 13, 14):
        hist.append(v, {"a": NodeDelta(None, {"p0": _peer("p0", v - 10)}, frozenset())})
    assert len(hist) == 3 and hist.since == 11  # 11 was dropped: 11 is the oldest answerable version
    assert hist.delta_since("a", 10) is None
    assert hist.delta_since("a", 11).upserts["p0"] == _peer("p0", 4)  # type: ignore[union-attr]
    assert not hist.delta_since("b", 11)  # untouched node: nothing to send
    assert not hist.delta_since("a", 14)
    big = {f"n{i}": NodeDelta(None, {"p0": b"x" * 1000}, frozenset()) for i in range(100)}
    small = History(max_changes=64, max_bytes=200_000)
    small.reset(1)
    assert small.append(2, big) and small.append(3, big)  # ~120 KB each: the older one is dropped
    assert len(small) == 1 and small.since == 2 and small.bytes < 200_000
    assert small.delta_since("n0", 2) is not None and small.delta_since("n0", 1) is None
    huge = {f"n{i}": NodeDelta(None, {"p0": b"x" * 1000}, frozenset()) for i in range(200)}
    assert not small.append(4, huge)  # alone over budget: not held; agents behind 4 get snapshots
    assert len(small) == 0 and small.since == 4 and small.delta_since("n0", 3) is None


def test_a_change_too_large_for_deltas_marks_only_its_nodes_for_snapshots() -> None:
    """A snapshot marker (the compiler built nothing) wins over any delta composed with it; nodes the
    change did not touch keep being answered with deltas, so they need no snapshot."""
    h = History(max_changes=8)
    h.reset(10)
    h.append(11, {"a": NodeDelta(None, {"p0": _peer("p0", 1)}), "b": NodeDelta(None, {"p0": _peer("p0", 1)})})
    h.append(12, {"a": NodeDelta(snapshot=True)})  # e.g. a profile only a's policies use
    h.append(13, {"a": NodeDelta(None, {"p1": _peer("p1", 2)}), "b": NodeDelta(removes=frozenset({"p3"}))})
    assert h.delta_since("a", 10).snapshot and h.delta_since("a", 11).snapshot  # type: ignore[union-attr]
    assert not h.delta_since("a", 12).snapshot  # type: ignore[union-attr]  # after it: deltas again
    b = h.delta_since("b", 10)
    assert b is not None and not b.snapshot and set(b.upserts) == {"p0"} and b.removes == {"p3"}
    assert NodeDelta(snapshot=True) and NodeDelta(snapshot=True).size() == 0
