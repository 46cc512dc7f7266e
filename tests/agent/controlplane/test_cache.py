"""The fail-static cache: atomic, private, and a corrupt file is ignored rather than trusted."""

from __future__ import annotations

from pathlib import Path

from meshsec.agent.controlplane import DesiredStateCache
from meshsec.api.v1 import config_pb2


def _cfg(version: int) -> config_pb2.NodeConfig:
    return config_pb2.NodeConfig(
        version=version,
        local=config_pb2.LocalConfig(name="node-a"),
        peers=[config_pb2.PeerConfig(name="node-b", psk=b"k" * 32)],
    )


def test_roundtrip_is_atomic_and_private(tmp_path: Path) -> None:
    cache = DesiredStateCache(tmp_path / "sub" / "desired.pb")
    assert cache.load() is None
    cache.save(_cfg(5))
    cache.save(_cfg(9))
    assert cache.load() == _cfg(9)
    assert oct(cache.path.stat().st_mode & 0o777) == "0o600"  # it holds PSKs
    assert sorted(p.name for p in cache.path.parent.iterdir()) == ["desired.pb"]  # no temp file left


def test_corrupt_file_is_ignored(tmp_path: Path) -> None:
    cache = DesiredStateCache(tmp_path / "desired.pb")
    cache.path.write_bytes(b"\xff\xff\xff garbage")
    assert cache.load() is None
