"""DesiredState: one replica's live, versioned view of every node's NodeConfig.

Versions are etcd revisions.  `version` is the revision of the last change to any compile input that
this replica has seen (or the revision of its initial read); every node's current config carries it.
An etcd watch keeps the view current, so a write made through any replica reaches this replica's Sync
streams within the watch latency; a compacted watch (or an etcd outage) ends in a full re-read.

Compilation is incremental (the compiler reports which agents a change touches; only those configs
are rebuilt, in a worker thread so streams keep flowing).  For resumes, a base (every config at one
version) plus a bounded list of per-change entries (only the configs that changed) answers "what did
the agent hold at version v"; versions older than the base are recompiled from etcd's MVCC history at
v, and only a compacted v forces a snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from meshsec.api.v1 import config_pb2, spec_pb2
from meshsec.controller.ca.kek import Sealer
from meshsec.controller.desired.contracts import compile_configs, compiler_credentials, new_compiler
from meshsec.controller.desired.inputs import Credentials, Inputs, load_inputs
from meshsec.controller.store import Compacted, Keys, Store, StoreError

log = logging.getLogger(__name__)

Configs = dict[str, config_pb2.NodeConfig]
Changes = dict[str, config_pb2.NodeConfig | None]  # None: the agent is gone


def empty_config(node: str) -> config_pb2.NodeConfig:
    """What a node absent from the spec is told: itself, no peers."""
    return config_pb2.NodeConfig(local=config_pb2.LocalConfig(name=node))


class DesiredState:
    """Call run() in a task; `ready` is set after the first successful read."""

    def __init__(self, store: Store, sealer: Sealer, *, history: int = 64) -> None:
        self._store = store
        self._sealer = sealer
        self._psk_master: bytes | None = None
        self.revision = 0  # highest etcd revision observed (watch)
        self.version = 0  # revision of the last compile-input change
        self.inputs: Inputs | None = None
        self.configs: Configs = {}
        self._compiler: object | None = None
        self._base: tuple[int, Configs] = (0, {})  # every config at one version
        self._history: collections.deque[tuple[int, Changes]] = collections.deque()  # newer changes
        self._history_len = history
        self._digest = ""
        self._cond = asyncio.Condition()
        self._old_cache: collections.OrderedDict[int, Configs] = collections.OrderedDict()
        self.ready = asyncio.Event()

    # -- reading ---------------------------------------------------------------------------------
    @property
    def spec(self) -> spec_pb2.MeshSpec:
        return self.inputs.spec if self.inputs else spec_pb2.MeshSpec()

    @property
    def creds(self) -> Credentials | None:
        return self.inputs.creds if self.inputs else None

    def is_revoked(self, fingerprint: str) -> bool:
        return bool(self.inputs) and fingerprint in self.inputs.creds.revoked_fingerprints  # type: ignore[union-attr]

    def content(self, node: str, configs: Configs | None = None) -> config_pb2.NodeConfig:
        """The node's config without its version (version 0), for comparisons."""
        cfg = (self.configs if configs is None else configs).get(node)
        return cfg if cfg is not None else empty_config(node)

    def current(self, node: str) -> config_pb2.NodeConfig:
        cfg = config_pb2.NodeConfig()
        cfg.CopyFrom(self.content(node))
        cfg.version = self.version
        return cfg

    async def wait_change(self, version: int, timeout: float) -> bool:
        """Wait until `version` moves past the given one; False on timeout."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self.version != version), timeout)
            except TimeoutError:
                return False
        return True

    async def wait_revision(self, revision: int, timeout: float) -> bool:
        """Wait until this replica has seen `revision` (read-your-writes after an apply)."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self.revision >= revision), timeout)
            except TimeoutError:
                return False
        return True

    async def held_at(self, node: str, version: int) -> config_pb2.NodeConfig | None:
        """The content an agent holding `version` has, or None when only a snapshot can help."""
        if version <= 0:
            return None
        if version > self.revision and not await self.wait_revision(version, 1.0):
            return None  # from the future (another etcd?) or this replica lags badly
        if version >= self.version:
            return self.content(node)
        base_version, base = self._base
        if self._compiler is not None and base_version <= version:
            for changed_at, changes in reversed(self._history):
                if changed_at <= version and node in changes:
                    return changes[node] or empty_config(node)
            return self.content(node, base)
        configs = self._old_cache.get(version)
        if configs is None:
            try:
                inputs = await load_inputs(
                    self._store, self._sealer, revision=version, psk_master=self._psk_master
                )
            except (Compacted, StoreError) as exc:
                log.info("resume of %s from version %d needs a snapshot: %s", node, version, exc)
                return None
            try:
                configs = compile_configs(inputs.spec, inputs.creds)
            except Exception:  # a spec this compiler cannot handle: a snapshot will do
                return None
            self._old_cache[version] = configs
            while len(self._old_cache) > 8:
                self._old_cache.popitem(last=False)
        return self.content(node, configs)

    # -- keeping current -------------------------------------------------------------------------
    @staticmethod
    def _compile(compiler: object | None, inputs: Inputs) -> tuple[object, Changes]:
        """Run in a worker thread: update (or build) the compiler, return it and the changed configs."""
        if compiler is None:
            compiler = new_compiler(inputs.creds)
            changed = compiler.update(inputs.spec)  # type: ignore[attr-defined]
        else:
            changed = compiler.update(inputs.spec, compiler_credentials(inputs.creds))  # type: ignore[attr-defined]
        out: Changes = {}
        for name in sorted(changed):
            try:
                out[name] = compiler.config(name)  # type: ignore[attr-defined]
            except KeyError:
                out[name] = None
        return compiler, out

    async def _install(self, inputs: Inputs) -> None:
        digest = inputs.digest()
        if digest != self._digest:
            self._digest = digest
            first = self._compiler is None
            try:
                # The thread owns the compiler meanwhile; readers only see it once it is consistent.
                compiler, changes = await asyncio.to_thread(self._compile, self._compiler, inputs)
            except Exception:  # a compiler bug: keep serving the last good state, say so once
                log.exception(
                    "cannot compile the spec at revision %d; serving version %d",
                    inputs.revision,
                    self.version,
                )
                self._compiler = None  # its state is unknown now: rebuild from scratch next time
                self._digest = ""
            else:
                self._compiler = compiler
                if first or changes:
                    configs = {} if first else dict(self.configs)  # a new compiler reports every agent
                    for name, cfg in changes.items():
                        if cfg is None:
                            configs.pop(name, None)
                        else:
                            configs[name] = cfg
                    self.configs = configs
                    self.version = inputs.revision
                    if first:
                        self._base, self._history = (inputs.revision, configs), collections.deque()
                    else:
                        self._remember(inputs.revision, changes)
        self.inputs = inputs
        await self._advance(inputs.revision)

    def _remember(self, version: int, changes: Changes) -> None:
        """Append a change; fold the oldest into the base beyond the history length."""
        self._history.append((version, changes))
        while len(self._history) > self._history_len:
            old_version, old = self._history.popleft()
            base = dict(self._base[1])
            for name, cfg in old.items():
                if cfg is None:
                    base.pop(name, None)
                else:
                    base[name] = cfg
            self._base = (old_version, base)

    async def _advance(self, revision: int) -> None:
        async with self._cond:
            self.revision = max(self.revision, revision)
            self._cond.notify_all()

    async def run(self) -> None:
        failing = False
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
                    changes = [e.revision for e in events if Keys.is_compile_input(e.key)]
                    if changes:  # version = the revision of the change itself (e.g. the Apply txn)
                        inputs = await load_inputs(
                            self._store, self._sealer, revision=max(changes), psk_master=self._psk_master
                        )
                        await self._install(inputs)
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
