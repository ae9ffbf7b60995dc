"""Which models the management API unloaded, shared by every worker process of one service.

The state is a small JSON file in the service's run folder, ``{"generation": n, "unloaded":
[...], "model": the model the last call named}``, replaced atomically under a lock by the
worker that takes a load or unload call. Every worker watches it (a ``stat`` every 20 ms),
applies a new generation to its registry and acknowledges it in ``acks/<pid>``; the worker
that took the call answers once every live worker has acknowledged, so that after an unload
returns no worker serves the model. A worker started later (one replacing a dead one) reads
the state before it loads anything.
The state lives as long as the service: a restarted service serves what its repository and
version policies say, as before.

Without a run folder (one process, e.g. in tests) the state is kept in memory.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

log = logging.getLogger("nnserve.control")

#: Seconds between two looks at the state file.
WATCH_INTERVAL = 0.02


class ModelControl:
    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.generation = 0
        self.unloaded: frozenset[str] = frozenset()
        #: the model the last change named (a load re-reads it even if it was not unloaded)
        self.model = ""
        self._seen: tuple[int, int] | None = None
        if folder is not None:
            (folder / "acks").mkdir(parents=True, exist_ok=True)
            self._read()

    @property
    def _state(self) -> Path:
        assert self.folder is not None
        return self.folder / "models.json"

    def _read(self) -> bool:
        """Load the state file if it changed since the last read; True if it did."""
        try:
            stat = self._state.stat()
        except FileNotFoundError:
            return False
        seen = (stat.st_ino, stat.st_mtime_ns)
        if seen == self._seen:
            return False
        state = orjson.loads(self._state.read_bytes())
        self._seen = seen
        if state["generation"] == self.generation:
            return False
        self.generation = state["generation"]
        self.unloaded = frozenset(state["unloaded"])
        self.model = state.get("model", "")
        return True

    def change(self, name: str, unloaded: bool) -> int:
        """Mark ``name`` unloaded (or not) for every worker; the new generation."""
        if self.folder is None:
            self.unloaded = self.unloaded | {name} if unloaded else self.unloaded - {name}
            self.model = name
            self.generation += 1
            return self.generation
        with open(self.folder / "models.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._read()
            names = self.unloaded | {name} if unloaded else self.unloaded - {name}
            generation = self.generation + 1
            temporary = self._state.with_suffix(f".{os.getpid()}")
            temporary.write_bytes(
                orjson.dumps({"generation": generation, "unloaded": sorted(names), "model": name})
            )
            temporary.replace(self._state)
            self._read()
        return generation

    def acknowledge(self) -> None:
        """This worker serves what the current generation says."""
        if self.folder is not None:
            ack = self.folder / "acks" / str(os.getpid())
            temporary = ack.with_suffix(".tmp")
            temporary.write_text(str(self.generation))
            temporary.replace(ack)

    def forget(self) -> None:
        """This worker is stopping: nobody waits for it any more."""
        if self.folder is not None:
            (self.folder / "acks" / str(os.getpid())).unlink(missing_ok=True)

    def behind(self, generation: int) -> list[int]:
        """Live workers that have not yet acknowledged ``generation`` (dead ones' acks go)."""
        if self.folder is None:
            return []
        waiting = []
        for ack in (self.folder / "acks").iterdir():
            if not ack.name.isdigit():
                continue
            pid = int(ack.name)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                ack.unlink(missing_ok=True)
                continue
            try:
                if int(ack.read_text() or 0) < generation:
                    waiting.append(pid)
            except (FileNotFoundError, ValueError):
                waiting.append(pid)
        return waiting

    async def wait_for(self, generation: int, timeout: float) -> None:
        """Until every live worker has applied ``generation`` (or ``timeout`` seconds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while waiting := self.behind(generation):
            if loop.time() >= deadline:
                log.warning(
                    "workers %s have not applied model change %d after %.0f s",
                    waiting,
                    generation,
                    timeout,
                )
                return
            await asyncio.sleep(WATCH_INTERVAL)

    async def watch(self, apply: Callable[[frozenset[str], str], Awaitable[None]]) -> None:
        """Apply every new generation another worker writes, then acknowledge it."""
        if self.folder is None:
            return
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                changed = self._read()
            except (OSError, ValueError) as exc:
                log.error("cannot read the model-control state: %s", exc)
                continue
            if changed:
                try:
                    await apply(self.unloaded, self.model)
                except Exception:
                    log.exception("applying model change %d failed", self.generation)
                self.acknowledge()
