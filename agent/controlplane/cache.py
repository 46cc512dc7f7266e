"""DesiredStateCache: the last desired state on disk, so the agent starts fail-static without a controller.

Owns one file (NodeConfig, protobuf binary).  Writes are atomic: temp file, fsync, rename, fsync of the
directory, so a crash leaves either the old or the new state, never a torn one.  A corrupt file is
reported and ignored (the agent then waits for a snapshot).  The file holds PSKs: mode 0600.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from google.protobuf.message import DecodeError
from meshsec.api.v1 import config_pb2

log = logging.getLogger(__name__)


class DesiredStateCache:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> config_pb2.NodeConfig | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        cfg = config_pb2.NodeConfig()
        try:
            cfg.ParseFromString(data)
        except DecodeError:
            log.warning("cached desired state %s is corrupt; ignoring it", self.path)
            return None
        return cfg

    def save(self, config: config_pb2.NodeConfig) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, config.SerializeToString(deterministic=True))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
