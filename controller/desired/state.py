"""DesiredState: one replica's live, versioned view of every node's desired config, built lazily.

Versions are etcd revisions.  `version` is the revision of the last change to any compile input that
changed some agent's config (or the revision of the initial read).  An etcd watch keeps the view
current, so a write made through any replica reaches this replica's Sync streams within the watch
latency; a compacted watch (or an etcd outage) ends in a full re-read.

What is held, and why (a 10,000-node full mesh is 10^8 peer entries, ~26 GB as NodeConfigs):
- the incremental compiler (an index of the spec plus a bounded cache of peer maps), never every
  node's NodeConfig.  A NodeConfig snapshot is built only when an agent asks for one (`snapshot`);
- per change, each affected node's delta (`history.NodeDelta`: the one or two peer entries a one-node
  change touches), in a history bounded by count and bytes.  Live streams and resumes are answered by
  composing the deltas newer than the agent's version; versions older than the history are
  reconstructed from etcd's MVCC history (cheap when the inputs did not change), and only a
  compacted version forces a snapshot.  A change the compiler prices above its delta budget (a
  profile every node uses) builds nothing: its nodes get a snapshot marker in the history and take a
  snapshot, built on demand; nodes it does not touch keep receiving deltas.

Compiler work runs in worker threads (streams keep flowing); a gate serializes it and lets an update
overtake queued snapshot builds, so a change is not delayed by a reconnect storm.  This package must
not speak gRPC.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from meshsec.api.v1 import config_pb2, spec_pb2
from meshsec.controller.ca.kek import Sealer
from meshsec.controller.ca.revocation import covers
from meshsec.controller.desired import announced
from meshsec.controller.desired.contracts import compiler_credentials, diff, new_compiler
from meshsec.controller.desired.history import History, NodeDelta
from meshsec.controller.desired.inputs import Credentials, Inputs, load_inputs
from meshsec.controller.observability import metrics
from meshsec.controller.store import Compacted, Keys, Store, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")


def empty_config(node: str) -> config_pb2.NodeConfig:
    """What a node absent from the spec is told: itself, no peers."""
    return config_pb2.NodeConfig(local=config_pb2.LocalConfig(name=node))


def _node_delta(compiler: Any, name: str) -> NodeDelta:
    """The compiler's record of what its last update did to `name`, kept as bytes."""
    change = getattr(compiler, "changes", {}).get(name)
    if change is not None and hasattr(change, "added"):  # MeshCompiler.NodeChange: bytes already
        if getattr(change, "snapshot", False):  # too large for a delta: nothing was built
            return NodeDelta(snapshot=True)
        if change.node_removed:
            local = config_pb2.LocalConfig(name=name).SerializeToString(deterministic=True)
            return NodeDelta(local, {}, frozenset(change.removed))
        upserts = dict(change.added)
        upserts.update((k, v[1]) for k, v in change.changed.items())
        local_b = change.local.SerializeToString(deterministic=True) if change.local is not None else None
        return NodeDelta(local_b, upserts, frozenset(change.removed))
    d = compiler.delta(name)
    if d is None:
        return NodeDelta()
    return NodeDelta(
        d.local.SerializeToString(deterministic=True) if d.HasField("local") else None,
        {p.name: p.SerializeToString(deterministic=True) for p in d.upsert_peers},
        frozenset(d.remove_peers),
    )


class _Gate:
    """Serializes compiler use across threads; a waiting update goes before queued snapshot builds."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._updates_waiting = 0

    @contextlib.contextmanager
    def use(self, update: bool) -> Iterator[None]:
        with self._cond:
            if update:
                self._updates_waiting += 1
            while self._busy or (not update and self._updates_waiting):
                self._cond.wait()
            if update:
                self._updates_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class DesiredState:
    """Call run() in a task; `ready` is set after the first successful read."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        *,
        history: int = 64,
        history_bytes: int = 64 << 20,
        compiler_cache_peers: int = 200_000,
        compiler_delta_peers: int = 100_000,
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._psk_master: bytes | None = None
        self.revision = 0  # highest etcd revision observed (watch)
        self.version = 0  # revision of the last compile-input change (streams see this)
        self.inputs: Inputs | None = None
        self.history = History(history, history_bytes)
        self._cache_peers = compiler_cache_peers
        self._delta_peers = compiler_delta_peers  # above: a change is sent as snapshots, not deltas
        # Owned by the worker threads, under the gate:
        self._gate = _Gate()
        self._compiler: Any = None
        self._compiled_version = 0  # the version the compiler's state is at
        self._compiled_digest = ""
        self._good: Inputs | None = None  # the inputs the compiler is at
        self._old: collections.OrderedDict[str, Any] = collections.OrderedDict()  # digest -> compiler
        # Loop side:
        self._digest = ""
        self._old_inputs: collections.OrderedDict[int, asyncio.Future[Inputs]] = collections.OrderedDict()
        self._updates = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="desired-update")
        self._builds = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="desired-build")
        self._changed = asyncio.Event()
        self._cond = asyncio.Condition()
        self.ready = asyncio.Event()
        # Figures for logs, benchmarks and metrics.
        self.last_compile_seconds = 0.0
        self.last_changed_nodes = 0
        self.snapshots_built = 0
        # version -> time.monotonic() of the watch event that caused it (for the push-latency metric)
        self._seen_at: collections.OrderedDict[int, float] = collections.OrderedDict()

    # -- reading ---------------------------------------------------------------------------------
    @property
    def spec(self) -> spec_pb2.MeshSpec:
        return self.inputs.spec if self.inputs else spec_pb2.MeshSpec()

    @property
    def creds(self) -> Credentials | None:
        return self.inputs.creds if self.inputs else None

    def is_revoked(
        self, fingerprint: str, *, node: str | None = None, not_before: dt.datetime | None = None
    ) -> bool:
        """A listed fingerprint, or (given the certificate's node name and notBefore) a certificate
        issued before its node was revoked: the list cannot name expired or concurrently issued ones."""
        if self.inputs is None:
            return False
        if fingerprint in self.inputs.creds.revoked_fingerprints:
            return True
        if node is None or not_before is None:
            return False
        return covers(self.inputs.revoked_nodes.get(node), not_before)

    async def _in(self, pool: concurrent.futures.Executor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    def _build(self, node: str) -> tuple[int, config_pb2.NodeConfig]:
        with self._gate.use(update=False):
            version, compiler = self._compiled_version, self._compiler
            try:
                data = compiler.config_bytes(node) if compiler is not None else None
            except KeyError:
                data = None
        cfg = empty_config(node) if data is None else config_pb2.NodeConfig.FromString(data)
        cfg.version = version
        return version, cfg

    async def snapshot(self, node: str) -> config_pb2.NodeConfig:
        """The node's whole NodeConfig, built now (the only place one is materialized); its version
        may be ahead of `self.version` by an update not yet published."""
        _, cfg = await self._in(self._builds, lambda: self._build(node))
        self.snapshots_built += 1
        return cfg

    async def wait_change(self, version: int, timeout: float) -> bool:
        """Wait until `version` moves past the given one; False on timeout."""
        if self.version > version:
            return True
        event = self._changed
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return self.version > version

    async def wait_revision(self, revision: int, timeout: float) -> bool:
        """Wait until this replica has seen `revision` (read-your-writes after an apply)."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self.revision >= revision), timeout)
            except TimeoutError:
                return False
        return True

    async def delta_since(self, node: str, version: int) -> config_pb2.NodeConfigDelta | None:
        """What an agent holding `version` needs to be current (from_version=version; empty when it
        is current already), or None when only a snapshot can help."""
        if version <= 0:
            return None
        if version > self.revision and not await self.wait_revision(version, 1.0):
            return None  # from the future (another etcd?) or this replica lags badly
        if version >= self.version:
            return config_pb2.NodeConfigDelta(from_version=version, to_version=version)
        d = self.history.delta_since(node, version)
        if d is not None:
            return None if d.snapshot else d.to_message(version, self.version)
        return await self._delta_from_etcd(node, version)

    async def _delta_from_etcd(self, node: str, version: int) -> config_pb2.NodeConfigDelta | None:
        """Older than the history: read the inputs at `version` from etcd's MVCC history (shared by
        every agent holding it); recompile only if they differ from the current ones."""
        task = self._old_inputs.get(version)
        if task is None:  # one read per version, however many agents resume from it at once
            task = asyncio.ensure_future(
                load_inputs(self._store, self._sealer, revision=version, psk_master=self._psk_master)
            )
            self._old_inputs[version] = task
            while len(self._old_inputs) > 8:
                self._old_inputs.popitem(last=False)
        try:
            old = await asyncio.shield(task)
        except (Compacted, StoreError) as exc:
            if self._old_inputs.get(version) is task:
                del self._old_inputs[version]  # retry later: etcd may be back
            log.info("resume of %s from version %d needs a snapshot: %s", node, version, exc)
            return None

        def work() -> config_pb2.NodeConfigDelta | None:
            with self._gate.use(update=False):
                now_version, now_digest = self._compiled_version, self._compiled_digest
                if old.digest() == now_digest:
                    return config_pb2.NodeConfigDelta(from_version=version, to_version=now_version)
                if self._compiler is None:
                    return None
                try:
                    before = self._old_compiler(old)
                    held = _config(before, node)
                    now = _config(self._compiler, node)
                except Exception:  # a spec this compiler cannot handle: a snapshot will do
                    log.exception("cannot recompile version %d for %s", version, node)
                    return None
            held.version, now.version = version, now_version
            return diff(held, now)

        return await self._in(self._builds, work)

    def _old_compiler(self, inputs: Inputs) -> Any:
        """A compiler at old inputs (called under the gate); the last two are kept."""
        key = inputs.digest()
        compiler = self._old.get(key)
        if compiler is None:
            compiler = new_compiler(inputs.creds, cache_peers=0)
            compiler.update(inputs.spec)
            self._old[key] = compiler
            while len(self._old) > 2:
                self._old.popitem(last=False)
        return compiler

    # -- keeping current -------------------------------------------------------------------------
    def _update(self, inputs: Inputs) -> dict[str, NodeDelta] | None:
        """In the update thread: move the compiler to `inputs`; the changed nodes' deltas, or None
        when the compiler was (re)built and every agent must be treated as new."""
        with self._gate.use(update=True):
            try:
                if self._compiler is None:
                    compiler = new_compiler(inputs.creds, self._cache_peers, self._delta_peers)
                    compiler.update(inputs.spec)
                    self._compiler, out = compiler, None
                else:
                    out = self._credentials_only(inputs)
                    if out is None:
                        creds = compiler_credentials(inputs.creds)
                        changed = self._compiler.update(inputs.spec, creds)
                        out = {name: _node_delta(self._compiler, name) for name in sorted(changed)}
                    out = {name: d for name, d in out.items() if d}
            except Exception:
                self._rebuild()
                raise
            if out is None or out:
                self._compiled_version = inputs.revision
            self._compiled_digest = inputs.digest()
            self._good = inputs
            return out

    def _credentials_only(self, inputs: Inputs) -> dict[str, NodeDelta] | None:
        """A change of only the credentials (a revoke, a CA rollover step) with the same spec: the
        compiler's `update_credentials`, which rebuilds LocalConfigs and no PeerConfig.  None: the
        spec changed too, or a compiler without that call (then `update` does it all)."""
        good, compiler = self._good, self._compiler
        update_credentials = getattr(compiler, "update_credentials", None)
        if good is None or update_credentials is None or good.spec_revision != inputs.spec_revision:
            return None
        changed = update_credentials(compiler_credentials(inputs.creds))
        return {name: _node_delta(compiler, name) for name in sorted(changed)}

    def _rebuild(self) -> None:
        """After a compiler failure its state is unknown: rebuild it at the last good inputs."""
        self._compiler = None
        if self._good is not None:
            try:
                compiler = new_compiler(self._good.creds, self._cache_peers, self._delta_peers)
                compiler.update(self._good.spec)
                self._compiler = compiler
            except Exception:
                log.exception("cannot rebuild the compiler at version %d", self._compiled_version)

    def seen_at(self, version: int) -> float | None:
        """time.monotonic() when this replica's watch saw the change that made `version` (recent ones)."""
        return self._seen_at.get(version)

    async def _install(self, inputs: Inputs, seen_at: float | None = None) -> None:
        seen_at = time.monotonic() if seen_at is None else seen_at
        digest = inputs.digest()
        if digest != self._digest:
            t0 = time.perf_counter()
            try:
                deltas = await self._in(self._updates, lambda: self._update(inputs))
            except Exception:  # a compiler bug: keep serving the last good state, say so once
                log.exception(
                    "cannot compile the spec at revision %d; serving version %d",
                    inputs.revision,
                    self.version,
                )
                self._digest = ""
            else:
                self._digest = digest
                seconds = time.perf_counter() - t0
                self.last_compile_seconds = seconds
                metrics.COMPILE_SECONDS.observe(seconds)
                if deltas is None:
                    self.history.reset(inputs.revision)
                    self.last_changed_nodes = -1
                    log.info("desired state at version %d: compiled in %.2f s", inputs.revision, seconds)
                    self._publish(inputs.revision)
                elif deltas:
                    if not self.history.append(inputs.revision, deltas):
                        log.info(
                            "version %d changed %d nodes, more than the history holds: snapshots follow",
                            inputs.revision,
                            len(deltas),
                        )
                    self.last_changed_nodes = len(deltas)
                    log.debug(
                        "version %d: %d nodes changed, compiled in %.3f s",
                        inputs.revision,
                        len(deltas),
                        seconds,
                    )
                    self._publish(inputs.revision)
                if deltas is None or deltas:
                    self._seen_at[inputs.revision] = seen_at
                    while len(self._seen_at) > 256:
                        self._seen_at.popitem(last=False)
        self.inputs = inputs
        await self._advance(inputs.revision)

    def _publish(self, version: int) -> None:
        """Wake every Sync stream once (one event set, not a condition re-checked per stream)."""
        self.version = version
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def _advance(self, revision: int) -> None:
        async with self._cond:
            self.revision = max(self.revision, revision)
            self._cond.notify_all()

    async def run(self) -> None:
        failing = False
        try:
            while True:
                try:
                    if self._psk_master is None:
                        from meshsec.controller.ca.authority import load_psk_master

                        self._psk_master = await load_psk_master(self._store, self._sealer)
                    inputs = await load_inputs(self._store, self._sealer, psk_master=self._psk_master)
                    await self._install(inputs)
                    self.ready.set()
                    if failing:
                        log.info("etcd reachable again; desired state at version %d", self.version)
                    failing = False
                    async for revision, events in self._store.watch_prefix(Keys.ROOT, inputs.revision + 1):
                        changes = [e.revision for e in events if announced.is_compile_input(e.key)]
                        if changes:  # version = the revision of the change itself (e.g. the Apply txn)
                            seen = time.monotonic()
                            inputs = await load_inputs(
                                self._store, self._sealer, revision=max(changes), psk_master=self._psk_master
                            )
                            await self._install(inputs, seen)
                        await self._advance(revision)
                except Compacted as exc:
                    log.info("watch fell behind compaction (%s); re-reading everything", exc)
                except StoreError as exc:
                    if not failing:
                        log.warning(
                            "etcd unavailable: %s; serving version %d until it is back", exc, self.version
                        )
                    failing = True
                    await asyncio.sleep(0.5)
                except Exception:  # a compiler bug must not stop the watch for good
                    log.exception("desired state: unexpected error; re-reading in 1 s")
                    await asyncio.sleep(1.0)
        finally:
            self._updates.shutdown(wait=False, cancel_futures=True)
            self._builds.shutdown(wait=False, cancel_futures=True)


def _config(compiler: Any, node: str) -> config_pb2.NodeConfig:
    try:
        return config_pb2.NodeConfig.FromString(compiler.config_bytes(node))
    except KeyError:
        return empty_config(node)
