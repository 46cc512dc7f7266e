"""The mTLS gRPC channel to AdminService and a call wrapper that turns every failure into a CliError."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import grpc
from meshsec.api.v1 import admin_pb2_grpc

from .errors import CliError, Exit, from_rpc_error
from .settings import Settings

__all__ = ["SERVER_NAME", "Client"]

SERVER_NAME = "meshsec-controller"  # the DNS SAN every controller certificate carries
T = TypeVar("T")


class Client:
    """AdminService stub plus the target name for error messages."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.target = settings.controller
        self.timeout = timeout
        if self.target.startswith("unix://"):
            sock = self.target[len("unix://") :]
            if not os.path.exists(sock):
                raise CliError(
                    Exit.UNREACHABLE,
                    f"cannot reach controller at {self.target}: no such file; is meshsec-controller running?",
                )
        elif self.target.startswith("unix:"):
            pass
        elif ":" not in self.target:
            raise CliError(
                Exit.USAGE, f"bad controller address {self.target!r} (use host:port or unix:///path)"
            )
        ca, cert, key = settings.read_credentials()
        try:
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
        except Exception as exc:  # grpc raises plain errors for malformed PEM
            raise CliError(Exit.USAGE, f"bad credentials: {exc}") from None
        self.channel = grpc.secure_channel(
            self.target,
            creds,
            options=[("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.default_authority", SERVER_NAME)],
        )
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def call(self, method: Callable[..., T], request: object, timeout: float | None = None) -> T:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None

    def close(self) -> None:
        self.channel.close()
