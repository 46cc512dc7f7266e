"""Fixtures for tests that build real hosts in network namespaces."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from tests.support.netns import Topology
from tests.system.fleet import Fleet


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    """A fresh, empty topology torn down after the test, pass or fail."""
    with Topology() as topo:
        yield topo


# --- fleet (tests/system/fleet.py) --------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Keep each phase's report on the item, so fleet fixtures know whether the test failed."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture
def make_fleet(request: pytest.FixtureRequest) -> Iterator[Callable[..., Fleet]]:
    """Factory: ``make_fleet(nodes=4, spec_extra=..., policy_extra=[...])`` starts a fleet (every SA up)
    and returns it.  Every fleet it made is removed after the test, pass or fail; on failure the end
    of every log (agents, replicas, etcd) is printed into the test report."""
    fleets: list[Fleet] = []

    def make(nodes: int = 4, *, timeout: float = 30.0, **kw: Any) -> Fleet:
        f = Fleet(nodes, **kw)
        fleets.append(f)
        return f.start(timeout)

    try:
        yield make
    finally:
        for f in fleets:
            try:
                if _failed(request) or not f.started_in:
                    print(f.dump_logs())
            finally:
                f.close()


@pytest.fixture
def fleet(make_fleet: Callable[..., Fleet]) -> Fleet:
    """A started 4-node fleet (3 etcd members, 2 replicas), removed after the test."""
    return make_fleet(4)
