"""Which model versions are served: loading, version policy, hot reload, look-ups, leases.

``served`` is a dict replaced as a whole on every change (never mutated in place): a swap is
one assignment on the event loop. Each served version is a :class:`ServedVersion` record: the
immutable model, its batcher and metrics, and its leases. A request leases the version it
resolved (:meth:`Registry.lease`), so it finishes on the version it started on; a retired
version is released once its leases and its queue have drained.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from modelrepo import CARD_FILE, MODEL_FILE, ModelCard, RepositoryError, scan, version_dir
from service.errors import LoadError, ModelNotFound, ModelNotReady
from service.observability.metrics import Metrics, VersionMetrics
from service.repository.control import ModelControl
from service.repository.policy import ModelPolicy, read_policy
from service.runtime.batcher import Batcher, RunHook
from service.runtime.model import ServedModel

log = logging.getLogger("nnserve.registry")


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str
    stamp: tuple[int, ...]  # the files' (mtime, size): a changed file is tried again


@dataclass(eq=False, slots=True)
class ServedVersion:
    """The registry's record of one serving version: what serving it acquired. A request
    leases it for the length of a ``with`` block."""

    model: ServedModel
    batcher: Batcher
    metrics: VersionMetrics
    #: Requests that leased this version and have not finished.
    leases: int = field(default=0)

    def __enter__(self) -> ServedVersion:
        self.leases += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.leases -= 1


@dataclass(frozen=True)
class VersionState:
    name: str
    version: int
    state: str  # READY | UNAVAILABLE
    reason: str


def _stamp(folder: Path) -> tuple[int, ...]:
    stamp: list[int] = []
    for name in (CARD_FILE, MODEL_FILE):
        try:
            st = (folder / name).stat()
            stamp += [st.st_mtime_ns, st.st_size]
        except OSError:
            stamp += [0, 0]
    return tuple(stamp)


class Registry:
    def __init__(
        self,
        root: Path,
        metrics: Metrics,
        default_policy: ModelPolicy,
        executor: Executor,
        *,
        threads: int = 1,
        self_check: bool = True,
        bare_models: Literal["serve", "refuse"] = "serve",
        drain_timeout_s: float = 30.0,
        on_load: Callable[[ModelCard], None] | None = None,
        on_unload: Callable[[ModelCard], None] | None = None,
        on_run: RunHook | None = None,
        control: ModelControl | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self.metrics = metrics
        self.default_policy = default_policy
        self.executor = executor
        self.threads = threads
        self.self_check = self_check
        self.bare_models = bare_models
        self.drain_timeout_s = drain_timeout_s
        self.on_load = on_load
        self.on_unload = on_unload
        self.on_run = on_run
        #: called after the served set (or the models found) changed: a load, unload, swap
        self.on_change = on_change
        self.served: dict[str, dict[int, ServedVersion]] = {}
        self.failures: dict[tuple[str, int], Failure] = {}
        self.expected: set[str] = set()
        #: unloaded through the management API, in this or another worker of the service
        self.control = control or ModelControl()
        self.unloaded: set[str] = set(self.control.unloaded)
        self.found: dict[str, list[int]] = {}
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    # -- synchronising with the repository -------------------------------------------------
    async def sync(self, only: str | None = None) -> None:
        """Bring the served set in line with the repository and the version policies.

        New versions are loaded and self-checked beside the serving ones, then swapped in;
        versions that leave the policy (or the repository) are retired after they drain.
        """
        async with self._lock:
            try:
                found = await asyncio.to_thread(scan, self.root, True)
            except RepositoryError as exc:
                log.error("cannot scan the model repository: %s", exc)
                found = {}
            known, self.found = self.found.keys(), found
            self.expected = set(found) - self.unloaded
            served = dict(self.served)
            for name in sorted(set(found) | set(served)):
                if only is not None and name != only:
                    continue
                versions = [] if name in self.unloaded else found.get(name, [])
                chosen = await self._choose(name, versions, served.get(name, {}))
                if chosen:
                    served[name] = chosen
                else:
                    served.pop(name, None)
            previous, self.served = self.served, served
            if previous != served or known != found.keys():
                self._changed()
            for name, retired in previous.items():
                for version, record in retired.items():
                    if served.get(name, {}).get(version) is not record:
                        self._retire(record)
            if previous.keys() != served.keys() or any(
                previous[n].keys() != served[n].keys() for n in served if n in previous
            ):
                log.info("serving %s", {n: sorted(v) for n, v in served.items()} or "nothing")

    async def _choose(
        self, name: str, versions: list[int], current: dict[int, ServedVersion]
    ) -> dict[int, ServedVersion]:
        try:
            policy = read_policy(self.root / name, self.default_policy)
        except ValueError as exc:
            log.error("ignoring invalid serving settings of %s: %s", name, exc)
            policy = self.default_policy
        candidates, wanted = policy.versions.choose(versions)
        chosen: dict[int, ServedVersion] = {}
        for version in candidates:
            if wanted is not None and len(chosen) >= wanted:
                break
            record = current.get(version)
            if record is None:
                record = await self._load(name, version, policy)
            if record is not None:
                chosen[version] = record
        if not chosen and current and versions:
            # nothing new passes its checks: whatever was serving keeps serving
            still_there = {v: m for v, m in current.items() if v in versions}
            return still_there
        return chosen

    async def _load(self, name: str, version: int, policy: ModelPolicy) -> ServedVersion | None:
        folder = version_dir(self.root, name, version)
        stamp = _stamp(folder)
        known = self.failures.get((name, version))
        if known is not None and known.stamp == stamp:
            return None  # refused before, unchanged since: not retried
        try:
            model = await asyncio.to_thread(
                ServedModel.load,
                folder,
                threads=self.threads,
                self_check=self.self_check,
                bare=self.bare_models,
            )
        except LoadError as exc:
            self.failures[(name, version)] = Failure(exc.reason, str(exc), stamp)
            self.metrics.load_failed(name, exc.reason)
            log.error(
                "refused %s version %d: %s",
                name,
                version,
                exc,
                extra={"model": name, "version": version, "reason": exc.reason},
            )
            return None
        self.failures.pop((name, version), None)
        metrics = self.metrics.version_loaded(model.card, model.load_seconds)
        batcher = Batcher(model, policy.batching, self.executor, metrics, self.on_run)
        served = ServedVersion(model, batcher, metrics)
        if self.on_load is not None:
            self.on_load(model.card)
        log.info(
            "loaded %s version %d in %.3fs",
            name,
            version,
            model.load_seconds,
            extra={"model": name, "version": version},
        )
        return served

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _retire(self, served: ServedVersion) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(served))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain(self, served: ServedVersion) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while served.leases > 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await served.batcher.close(max(0.0, deadline - loop.time()))
        model = served.model
        self.metrics.version_unloaded(model.card)
        if self.on_unload is not None:
            self.on_unload(model.card)
        log.info(
            "released %s version %d",
            model.name,
            model.version,
            extra={"model": model.name, "version": model.version},
        )

    # -- management --------------------------------------------------------------------------
    async def load(self, name: str) -> None:
        """Serve ``name`` again, in every worker of the service before this returns."""
        await self._change(name, unloaded=False)
        if name not in self.found:
            raise ModelNotFound(f"no model {name!r} in the repository")
        if not self.served.get(name):
            reasons = sorted({f.reason for (n, _), f in self.failures.items() if n == name})
            raise ModelNotReady(f"model {name!r} could not be loaded: {', '.join(reasons)}")

    async def unload(self, name: str) -> None:
        if name not in self.served and name not in self.found:
            raise ModelNotFound(f"unknown model {name!r}")
        await self._change(name, unloaded=True)

    async def _change(self, name: str, unloaded: bool) -> None:
        generation = await asyncio.to_thread(self.control.change, name, unloaded)
        await self.apply(self.control.unloaded, name)
        self.control.acknowledge()
        await self.control.wait_for(generation, timeout=max(30.0, self.drain_timeout_s))

    async def apply(self, unloaded: frozenset[str], named: str = "") -> None:
        """Serve what the management state says: ``unloaded`` models not at all, and the
        ``named`` model's versions as the repository has them now."""
        changed = (self.unloaded ^ unloaded) | ({named} if named else set())
        self.unloaded = set(unloaded)
        for name in sorted(changed):
            await self.sync(only=name)

    def index(self) -> list[VersionState]:
        states = []
        for name in sorted(set(self.found) | set(self.served)):
            served = self.served.get(name, {})
            for version in sorted(set(self.found.get(name, [])) | set(served)):
                failure = self.failures.get((name, version))
                if version in served:
                    states.append(VersionState(name, version, "READY", ""))
                elif failure is not None:
                    states.append(VersionState(name, version, "UNAVAILABLE", failure.message))
                elif name in self.unloaded:
                    states.append(VersionState(name, version, "UNAVAILABLE", "unloaded"))
                else:
                    states.append(
                        VersionState(
                            name, version, "UNAVAILABLE", "not selected by the version policy"
                        )
                    )
        return states

    async def close(self) -> None:
        """Shutdown: retire everything and wait for the drains."""
        async with self._lock:
            previous, self.served = self.served, {}
            self._changed()
            for versions in previous.values():
                for record in versions.values():
                    self._retire(record)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except Exception:  # keep polling whatever one pass hit
                log.exception("repository poll failed")

    # -- look-ups ----------------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ServedVersion:
        """The served version asked for (its text, as a client wrote it), or the newest
        served one; raises ModelNotFound / ModelNotReady."""
        number = None if version is None else self.parse_version(version)
        versions = self.served.get(name)
        if not versions:
            if name in self.unloaded:
                raise ModelNotReady(
                    f"model {name!r} is unloaded (management API); load it to serve it again"
                )
            if name in self.expected or any(n == name for n, _ in self.failures):
                raise ModelNotReady(
                    f"model {name!r} is not ready: no version passed its load checks"
                )
            raise ModelNotFound(
                f"unknown model {name!r}; available: {sorted(self.served) or 'none'}"
            )
        if number is None:
            return versions[max(versions)]
        served = versions.get(number)
        if served is None:
            raise ModelNotFound(
                f"model {name!r} has no version {number} being served; served: {sorted(versions)}"
            )
        return served

    def newest(self, name: str) -> ServedModel | None:
        versions = self.served.get(name)
        return versions[max(versions)].model if versions else None

    def ready(self) -> bool:
        return bool(self.expected) and all(self.served.get(n) for n in self.expected)

    @staticmethod
    def parse_version(text: str) -> int:
        if not text.isdigit() or text.startswith("0") or len(text) > 18:
            raise ModelNotFound(f"version {text!r} is not a positive integer")
        return int(text)
