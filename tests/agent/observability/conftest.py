"""A real single-member etcd for the agent endpoint test (its controller needs one)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.etcd import EtcdCluster


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster
