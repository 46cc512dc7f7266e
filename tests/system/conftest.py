"""Fixtures for tests that build real hosts in network namespaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.netns import Topology


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    """A fresh, empty topology torn down after the test, pass or fail."""
    with Topology() as topo:
        yield topo
