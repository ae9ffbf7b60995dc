"""The log writer's running totals, kept in a file the writer maps into memory: a writer
started again after a crash (or SIGKILL) continues from the last value, so the totals the
service exports never go backwards and lose nothing. An update is a store into shared
memory (no system call); the kernel keeps the page when the process dies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIELDS = ("written", "dropped", "pruned", "malformed")


class Counters:
    """Named int64 totals, in ``path`` (created zeroed if missing) or in memory (None)."""

    def __init__(self, path: Path | None = None) -> None:
        shape = (len(FIELDS),)
        if path is None:
            self.values: np.ndarray = np.zeros(shape, dtype="<i8")
        else:
            fresh = not path.exists() or path.stat().st_size != 8 * len(FIELDS)
            self.values = np.memmap(path, dtype="<i8", mode="w+" if fresh else "r+", shape=shape)
        self._index = {name: i for i, name in enumerate(FIELDS)}

    def add(self, name: str, n: int) -> None:
        self.values[self._index[name]] += n

    def __getitem__(self, name: str) -> int:
        return int(self.values[self._index[name]])

    def as_dict(self) -> dict[str, int]:
        return {name: int(value) for name, value in zip(FIELDS, self.values, strict=True)}
