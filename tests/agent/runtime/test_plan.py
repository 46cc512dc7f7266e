"""plan.diff as a pure function: desired NodeConfig + snapshot -> actions (STYLE.md §2)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from meshsec.agent.runtime import plan
from meshsec.agent.runtime.plan import (
    Actual,
    AddRoute,
    CreateChild,
    DeleteChild,
    DeleteIke,
    DelRoute,
    SessionView,
    StartIke,
    diff,
    session_digest,
)
from meshsec.api.v1 import config_pb2

from tests.agent.runtime.harness import node, peer


def _cfg(
    *, initiate: bool = True, esp: str = "aes128gcm16", behind_nat: bool = False
) -> config_pb2.NodeConfig:
    return node(
        "a",
        [
            peer(
                "b",
                endpoint="198.18.0.2",
                local_ts=["198.19.1.0/24"],
                remote_ts=["198.19.2.0/24"],
                initiate=initiate,
                esp_proposals=[esp],
                behind_nat=behind_nat,
            )
        ],
    )


def _session(cfg: config_pb2.NodeConfig, sid: int = 1, **kw: object) -> SessionView:
    p = cfg.peers[0]
    base = SessionView(
        sid=sid,
        peer=p.name,
        digest=session_digest(p, cfg.local),
        state="established",
        initiator=True,
        established_at=10.0,
        spis=f"{sid:032x}",
        children=frozenset({"net"}),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


ROUTES = frozenset({"198.19.2.0/24"})


def test_fresh_start_initiates_and_routes() -> None:
    assert diff(_cfg(), Actual(), 0.0) == [StartIke("b"), AddRoute("198.19.2.0/24")]


def test_converged_state_is_a_fixed_point() -> None:
    cfg = _cfg()
    assert diff(cfg, Actual(sessions=(_session(cfg),), routes=ROUTES), 50.0) == []


def test_responder_waits_for_the_peer() -> None:
    assert diff(_cfg(initiate=False), Actual(routes=ROUTES), 0.0) == []
    assert diff(_cfg(behind_nat=True), Actual(routes=ROUTES), 0.0) == []  # a NATed peer comes to us


def test_we_behind_nat_always_initiate() -> None:
    cfg = _cfg(initiate=False)
    cfg.local.behind_nat = True
    assert diff(cfg, Actual(routes=ROUTES), 0.0) == [StartIke("b")]


def test_connecting_session_is_not_started_twice_and_retry_waits() -> None:
    cfg = _cfg()
    connecting = _session(cfg, state="connecting", established_at=None, children=frozenset())
    assert diff(cfg, Actual(sessions=(connecting,), routes=ROUTES), 1.0) == []
    assert diff(cfg, Actual(routes=ROUTES, retry_at={"b": 5.0}), 1.0) == []
    assert diff(cfg, Actual(routes=ROUTES, retry_at={"b": 5.0}), 5.0) == [StartIke("b")]


def test_removed_peer_is_deleted_and_unrouted() -> None:
    cfg = _cfg()
    s = _session(cfg)
    empty = node("a", [])
    assert diff(empty, Actual(sessions=(s,), routes=ROUTES), 0.0) == [
        DeleteIke(1, "b", "peer removed from the desired state"),
        DelRoute("198.19.2.0/24"),
    ]
    # ... but not twice while the DELETE is in flight
    assert diff(empty, Actual(sessions=(replace(s, state="deleting"),)), 0.0) == []


def test_changed_crypto_is_make_before_break() -> None:
    old_cfg, new_cfg = _cfg(), _cfg(esp="chacha20poly1305")
    old = _session(old_cfg)
    # first a new SA with the new proposals, the old one keeps carrying traffic ...
    assert diff(new_cfg, Actual(sessions=(old,), routes=ROUTES), 0.0) == [StartIke("b")]
    new = _session(new_cfg, sid=2, state="connecting", established_at=None)
    assert diff(new_cfg, Actual(sessions=(old, new), routes=ROUTES), 1.0) == []
    # ... and only once the new one is up, the old one goes
    up = replace(new, state="established", established_at=20.0)
    assert diff(new_cfg, Actual(sessions=(old, up), routes=ROUTES), 21.0) == [
        DeleteIke(1, "b", "replaced by an SA with the current configuration")
    ]


def test_responder_replaces_a_stale_sa_itself_after_the_grace() -> None:
    """The initiator built its replacement before our config changed, so we answered with the old one:
    neither end would replace that SA, and its children keep the old selectors."""
    old_cfg, new_cfg = _cfg(initiate=False), _cfg(initiate=False, esp="chacha20poly1305")
    old = _session(old_cfg, initiator=False)
    seen = {"b": 100.0}  # the new config arrived at t=100
    quiet = Actual(sessions=(old,), routes=ROUTES, config_since=seen)
    assert diff(new_cfg, quiet, 100.0 + plan.STALE_GRACE - 0.1) == []  # the initiator's turn first
    assert diff(new_cfg, quiet, 100.0 + plan.STALE_GRACE) == [StartIke("b")]
    # not while our own replacement is being set up, and not before the retry time
    mine = _session(new_cfg, sid=2, state="connecting", established_at=None)
    late = Actual(sessions=(old, mine), routes=ROUTES, config_since=seen)
    assert diff(new_cfg, late, 200.0) == []
    backoff = Actual(sessions=(old,), routes=ROUTES, config_since=seen, retry_at={"b": 300.0})
    assert diff(new_cfg, backoff, 200.0) == []
    # a peer we cannot reach (behind NAT) must come to us: the stale SA is deleted instead
    nat_old = _cfg(initiate=False, behind_nat=True)
    nat_new = _cfg(initiate=False, behind_nat=True, esp="chacha20poly1305")
    s = _session(nat_old, initiator=False)
    assert diff(nat_new, Actual(sessions=(s,), routes=ROUTES, config_since=seen), 104.0) == [
        DeleteIke(1, "b", "built from an older configuration; the peer re-initiates")
    ]
    # without a record of when the config came, the responder keeps waiting (the old behaviour)
    assert diff(new_cfg, Actual(sessions=(old,), routes=ROUTES), 1e6) == []


def test_duplicate_sas_collision_keeps_lowest_spis_restart_keeps_newest() -> None:
    cfg = _cfg()
    # set-ups overlapped (the second began before the first was up): both ends initiated at once
    s1 = _session(cfg, sid=1, spis="ff" * 16, created_at=99.0, established_at=100.0)
    s2 = _session(cfg, sid=2, spis="00" * 16, created_at=99.5, established_at=100.1, initiator=False)
    acts = diff(cfg, Actual(sessions=(s1, s2), routes=ROUTES), 102.0)
    assert acts == [DeleteIke(1, "b", "duplicate IKE SA with this peer")]  # both ends agree on this one
    # the second began after the first was up: the peer restarted, the newest wins whatever its SPIs
    s1_low = replace(s1, spis="00" * 16)
    s2_late = replace(s2, spis="ff" * 16, created_at=101.0, established_at=101.1)
    acts = diff(cfg, Actual(sessions=(s1_low, s2_late), routes=ROUTES), 102.0)
    assert acts == [DeleteIke(1, "b", "duplicate IKE SA with this peer")]


def test_missing_child_created_by_initiator_only_and_extra_child_deleted() -> None:
    cfg = _cfg()
    bare = _session(cfg, children=frozenset())
    assert diff(cfg, Actual(sessions=(bare,), routes=ROUTES), 0.0) == [CreateChild(1, "b", "net")]
    assert (
        diff(cfg, Actual(sessions=(replace(bare, busy_children=frozenset({"net"})),), routes=ROUTES), 0.0)
        == []
    )
    assert diff(cfg, Actual(sessions=(replace(bare, initiator=False),), routes=ROUTES), 0.0) == []
    extra = _session(cfg, children=frozenset({"net", "old"}))
    assert diff(cfg, Actual(sessions=(extra,), routes=ROUTES), 0.0) == [DeleteChild(1, "b", "old")]


def test_endpoint_change_does_not_restart_an_established_sa() -> None:
    cfg = _cfg()
    s = _session(cfg)
    moved = _cfg()
    moved.peers[0].endpoints[:] = ["198.18.0.9"]
    moved.peers[0].digest = "something else"
    assert diff(moved, Actual(sessions=(s,), routes=ROUTES), 0.0) == []


def test_routes_follow_remote_selectors() -> None:
    cfg = _cfg()
    cfg.peers[0].children[0].remote_ts.append("198.19.3.7/24")  # normalized to the network
    acts = diff(cfg, Actual(sessions=(_session(cfg),), routes=frozenset({"198.19.9.0/24"})), 0.0)
    assert acts == [AddRoute("198.19.2.0/24"), AddRoute("198.19.3.0/24"), DelRoute("198.19.9.0/24")]


_states = st.sampled_from(["connecting", "established", "deleting"])


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(0, 3),
    states=st.lists(_states, min_size=3, max_size=3),
    initiate=st.booleans(),
    routed=st.booleans(),
    now=st.floats(0, 1000),
)
def test_applying_the_plan_converges(
    n: int, states: list[str], initiate: bool, routed: bool, now: float
) -> None:
    """Executing the actions on the snapshot (as the host would, instantly) reaches a fixed point."""
    cfg = _cfg(initiate=initiate)
    stale_cfg = _cfg(initiate=initiate, esp="aes256gcm16")
    sessions = [
        _session(
            stale_cfg if i % 2 else cfg, sid=i + 1, state=states[i], spis=f"{i:032x}", established_at=float(i)
        )
        for i in range(n)
    ]
    actual = Actual(sessions=tuple(sessions), routes=ROUTES if routed else frozenset())
    for _ in range(4):
        acts = diff(cfg, actual, now)
        if not acts:
            break
        assert len(set(acts)) == len(acts)  # never the same action twice in one pass
        ss = {s.sid: s for s in actual.sessions}
        routes = set(actual.routes)
        for a in acts:
            if isinstance(a, StartIke):
                sid = max(ss, default=0) + 1
                ss[sid] = _session(cfg, sid=sid, spis=f"{sid:032x}", established_at=now, initiator=True)
            elif isinstance(a, DeleteIke):
                del ss[a.sid]
            elif isinstance(a, CreateChild):
                ss[a.sid] = replace(ss[a.sid], children=ss[a.sid].children | {a.child})
            elif isinstance(a, AddRoute):
                routes.add(a.cidr)
            elif isinstance(a, DelRoute):
                routes.discard(a.cidr)
        actual = Actual(sessions=tuple(ss.values()), routes=frozenset(routes))
    assert diff(cfg, actual, now) == []
    live = [s for s in actual.sessions if s.state == "established"]
    assert len(live) <= 1  # one IKE SA per peer once converged


def test_should_initiate_needs_an_endpoint() -> None:
    cfg = _cfg()
    del cfg.peers[0].endpoints[:]
    assert not plan.should_initiate(cfg.peers[0], cfg.local)
