"""Store: the thin async adapter over etcd3aio that the rest of the controller uses.

Owns the etcd client, error mapping (every failure is StoreUnavailable or Compacted, never a raw gRPC
error), compare-and-swap transactions (sent once: ``max_attempts=1``, so a retried txn can never apply
twice) and watches that resume from a revision.  It must not know what the keys mean.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end
from etcd3aio.kv import KVService

log = logging.getLogger(__name__)

# gRPC's default reconnect backoff grows to 120 s; an etcd restart must be noticed within a second or two.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class StoreError(Exception):
    """Base of the errors this adapter raises."""


class StoreUnavailable(StoreError):
    """etcd did not answer (down, no quorum, timeout)."""


class Compacted(StoreError):
    """The requested revision is compacted (or in the future): the caller must resync from now."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    """One change under a watched prefix; value is b"" for a delete."""

    key: str
    value: bytes
    deleted: bool
    revision: int


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int


Compare = object  # etcd3aio's protobuf Compare; opaque to callers
Op = object  # etcd3aio's protobuf RequestOp


def _kv(raw: object) -> KeyValue:
    return KeyValue(
        key=raw.key.decode(),  # type: ignore[attr-defined]
        value=bytes(raw.value),  # type: ignore[attr-defined]
        mod_revision=raw.mod_revision,  # type: ignore[attr-defined]
        create_revision=raw.create_revision,  # type: ignore[attr-defined]
        lease=raw.lease,  # type: ignore[attr-defined]
    )


def _map_error(exc: BaseException, what: str) -> StoreError:
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.OUT_OF_RANGE:
        return Compacted(f"{what}: {exc.details()}")
    detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc) or type(exc).__name__
    return StoreUnavailable(f"{what}: {detail}")


_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, asyncio.TimeoutError, OSError)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """ "host:port", "[v6]:port" or "v6-literal" (no port) -> (host, port); etcd's client port by default."""
    text = endpoint.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.removeprefix(":") or 2379)
    if text.count(":") > 1:  # a bare IPv6 literal
        return text, 2379
    host, _, port = text.partition(":")
    return host, int(port or 2379)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def grpc_target(addresses: Sequence[tuple[str, int]]) -> str:
    """The gRPC target for a list of IP addresses: one ``ipv4:``/``ipv6:`` list (round robin)."""
    v6 = [(h, p) for h, p in addresses if ":" in h]
    if v6 and len(v6) == len(addresses):
        return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in v6)
    v4 = [(h, p) for h, p in addresses if ":" not in h]
    return "ipv4:" + ",".join(f"{h}:{p}" for h, p in v4)  # gRPC cannot mix families in one list


class Store:
    """One connection to an etcd cluster (endpoints "host:port"); open() before use, close() after.

    etcd3aio dials ``ipv4:`` address lists only; endpoints given by DNS name (a Kubernetes
    StatefulSet's members) are resolved at open() and TLS then checks the first name, as etcdctl
    does with its --endpoints.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        ca_cert: bytes | None = None,
        cert: bytes | None = None,
        key: bytes | None = None,
    ) -> None:
        tls: dict[str, bytes | None] = {}
        if ca_cert is not None:
            tls = {"ca_cert": ca_cert, "cert_chain": cert, "cert_key": key}
        self.endpoints = list(endpoints)
        self._client = Etcd3Client(
            self.endpoints,
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=1.0,
            **tls,
        )
        self._client._manager.grpc_options.extend(_CHANNEL_OPTIONS)
        self._timeout = timeout

    async def open(self) -> Store:
        parsed = [split_endpoint(e) for e in self.endpoints]
        names = [h for h, _ in parsed if not _is_ip(h)]
        if names:
            addresses = await self._resolve(parsed)
            self._client._manager.target = grpc_target(addresses)
            if self._client._conn_args.get("ca_cert") is not None:
                self._client._tls_server_name = names[0]
        elif any(":" in h for h, _ in parsed):
            self._client._manager.target = grpc_target(parsed)
        await self._client.connect()
        return self

    async def _resolve(self, parsed: list[tuple[str, int]]) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        out: list[tuple[str, int]] = []
        for host, port in parsed:
            if _is_ip(host):
                out.append((host, port))
                continue
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise StoreUnavailable(f"etcd endpoint {host}:{port}: cannot resolve: {exc}") from None
            for info in infos:
                addr = (str(info[4][0]), port)
                if addr not in out:
                    out.append(addr)
        if any(":" not in h for h, _ in out):
            out = [a for a in out if ":" not in a[0]]  # one family per gRPC list: IPv4 when there is one
        return out

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Store:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _c(self) -> Etcd3Client:
        if self._client.kv is None:
            raise StoreUnavailable("store is not open")
        return self._client

    # -- reads -------------------------------------------------------------------------------------
    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        try:
            resp = await self._c.kv.get(key, revision=revision, timeout=self._timeout)  # type: ignore[union-attr]
        except _ERRORS as exc:
            raise _map_error(exc, f"get {key}") from None
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str, *, revision: int = 0) -> tuple[list[KeyValue], int]:
        """All keys under prefix (sorted) and the revision the read reflects."""
        try:
            resp = await self._c.kv.get(  # type: ignore[union-attr]
                prefix, range_end=prefix_range_end(prefix), revision=revision, timeout=self._timeout
            )
        except _ERRORS as exc:
            raise _map_error(exc, f"get {prefix}*") from None
        kvs = sorted((_kv(k) for k in resp.kvs), key=lambda k: k.key)
        return kvs, revision or resp.header.revision

    async def revision(self, *, timeout: float | None = None) -> int:
        """The cluster's current revision (also a cheap liveness probe)."""
        try:
            resp = await self._c.kv.get("/", count_only=True, timeout=timeout or self._timeout)  # type: ignore[union-attr]
        except _ERRORS as exc:
            raise _map_error(exc, "revision") from None
        return int(resp.header.revision)

    # -- writes ------------------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        try:
            resp = await self._c.kv.put(key, value, lease=lease, timeout=self._timeout)  # type: ignore[union-attr]
        except _ERRORS as exc:
            raise _map_error(exc, f"put {key}") from None
        return int(resp.header.revision)

    async def delete(self, key: str) -> int:
        try:
            resp = await self._c.kv.delete(key, timeout=self._timeout)  # type: ignore[union-attr]
        except _ERRORS as exc:
            raise _map_error(exc, f"delete {key}") from None
        return int(resp.header.revision)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """One atomic compare-and-swap, sent exactly once (a retried txn could apply twice)."""
        try:
            resp = await self._c.kv.txn(  # type: ignore[union-attr]
                compares, success, failure, timeout=self._timeout, max_attempts=1
            )
        except _ERRORS as exc:
            raise _map_error(exc, "txn") from None
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> bool:
        """Put key only if it does not exist; False if it already did."""
        res = await self.txn([self.absent(key)], [self.op_put(key, value, lease=lease)])
        return res.succeeded

    # txn building blocks
    @staticmethod
    def absent(key: str) -> Compare:
        return KVService.txn_compare_create_revision(key, 0)

    @staticmethod
    def mod_revision_is(key: str, revision: int) -> Compare:
        """Key unchanged since revision (0 = key absent)."""
        if revision == 0:
            return KVService.txn_compare_create_revision(key, 0)
        from etcd3aio._protobuf import Compare as _Compare

        return _Compare(result=_Compare.EQUAL, target=_Compare.MOD, key=key.encode(), mod_revision=revision)

    @staticmethod
    def op_put(key: str, value: bytes, *, lease: int = 0) -> Op:
        return KVService.txn_op_put(key, value, lease=lease)

    @staticmethod
    def op_delete(key: str) -> Op:
        return KVService.txn_op_delete(key)

    # -- leases ------------------------------------------------------------------------------------
    async def grant(self, ttl: int) -> int:
        try:
            resp = await self._c.lease.grant(ttl, timeout=self._timeout)  # type: ignore[union-attr]
        except _ERRORS as exc:
            raise _map_error(exc, "lease grant") from None
        return int(resp.ID)

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._c.lease.revoke(lease_id, timeout=self._timeout, max_attempts=1)  # type: ignore[union-attr]
        except _ERRORS as exc:
            if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.NOT_FOUND:
                return
            raise _map_error(exc, "lease revoke") from None

    async def keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease once; returns its TTL, 0 when the lease no longer exists."""
        call = self._c.lease.keep_alive(lease_id)  # type: ignore[union-attr]
        try:
            async with asyncio.timeout(self._timeout):
                async for resp in call:
                    return int(resp.TTL)
        except _ERRORS as exc:
            raise _map_error(exc, "lease keepalive") from None
        finally:
            call.cancel()
        return 0

    # -- watch -------------------------------------------------------------------------------------
    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[tuple[int, list[WatchEvent]]]:
        """Yield (revision, events) batches under prefix from start_revision on.

        Reconnects by itself across etcd restarts (resuming after the last revision seen); raises
        Compacted when start_revision is no longer available, so the caller resyncs from a fresh read.
        """
        stream = self._c.watch.watch(  # type: ignore[union-attr]
            prefix, range_end=prefix_range_end(prefix), start_revision=start_revision
        )
        try:
            async for resp in stream:
                if resp.compact_revision > 0:
                    raise Compacted(
                        f"watch {prefix} from {start_revision}: compacted at {resp.compact_revision}"
                    )
                if resp.canceled:
                    raise StoreUnavailable(f"watch {prefix} canceled: {resp.cancel_reason}")
                if not resp.events:
                    continue
                events = [
                    WatchEvent(
                        key=e.kv.key.decode(),
                        value=bytes(e.kv.value),
                        deleted=e.type == 1,
                        revision=e.kv.mod_revision,
                    )
                    for e in resp.events
                ]
                yield max(e.revision for e in events), events
        except _ERRORS as exc:
            raise _map_error(exc, f"watch {prefix}") from None
        finally:
            await stream.aclose()
