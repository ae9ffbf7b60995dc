"""The run folder (``--checkpoint-dir DIR``: ``DIR/<model>/``): fault tolerance the torchrun way.

After every epoch rank 0 writes ``checkpoint.pt`` (through a temporary file renamed over the
old one): the weights, the optimizer and the scheduler, the best weights so far with their
epoch and the early-stopping count, the history, the next epoch (the DistributedSampler's
epoch), the elapsed time, the run's settings and every process's random state (torch,
numpy, python, the augmentation generator), gathered from all ranks. When torchrun restarts
the workers (``--max-restarts``) or the command is run again, rank 0 reads the checkpoint and
hands every process its part, so the run goes on from the last finished epoch. A published
run leaves ``published.json``: a restart after the publish publishes nothing twice.

Only rank 0 reads or writes the folder, so it must be where rank 0 runs: on several
machines, a shared volume (rank 0 may land on another machine after a restart). The file is
read with ``torch.load(weights_only=True)``: tensors and plain values only, no code.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from training.distributed import Group
from training.errors import TrainingError

CHECKPOINT = "checkpoint.pt"
PUBLISHED = "published.json"
FORMAT = 1

State = dict[str, Any]


def random_state(generator: torch.Generator, rng: np.random.Generator) -> State:
    """This process's random streams: torch's global one (dropout), the augmentation
    generator, the shuffling ``rng`` and python's."""
    return {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": rng.bit_generator.state,
        "python": random.getstate(),
    }


def set_random_state(state: State, generator: torch.Generator, rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])


class RunFolder:
    """One run's folder; ``settings`` (the config and the world size) must match to resume."""

    def __init__(self, path: Path, group: Group, settings: dict[str, Any]) -> None:
        self.path, self.group, self.settings = path, group, settings

    def published(self) -> int | None:
        """The version this run already published (rank 0 looks, every process hears)."""
        version = None
        if self.group.main and (self.path / PUBLISHED).is_file():
            version = int(json.loads((self.path / PUBLISHED).read_text())["version"])
        found: int | None = self.group.share(version)
        return found

    def mark_published(self, version: int, repository: Path) -> None:
        if self.group.main:
            record = {"version": version, "repository": str(repository)}
            _write_atomically(self.path / PUBLISHED, lambda f: f.write(json.dumps(record).encode()))

    def save(self, state: State, rng: State) -> None:
        """Every process's ``rng`` is gathered; rank 0 writes ``state`` with them."""
        streams = self.group.gather(rng)
        if not self.group.main:
            return
        everything = {"format": FORMAT, "settings": self.settings, "rng": streams, **state}
        _write_atomically(self.path / CHECKPOINT, lambda f: torch.save(everything, f))

    def load(self) -> tuple[State, State] | None:
        """``(state, this process's random state)`` of the last checkpoint, or None."""
        found: State | str | None = None
        if self.group.main and (self.path / CHECKPOINT).is_file():
            found = self._read()
        found = self.group.share(found)
        if isinstance(found, str):
            raise TrainingError(found)
        if found is None:
            return None
        return found, found["rng"][self.group.rank]

    def _read(self) -> State | str:
        """The checkpoint, or why it cannot be resumed (a message every process raises)."""
        path = self.path / CHECKPOINT
        try:
            state: State = torch.load(path, weights_only=True)
        except Exception as exc:
            return f"checkpoint {path} is unreadable ({exc}); remove it to start afresh"
        if state.get("format") != FORMAT:
            return f"checkpoint {path} is of another format; remove it to start afresh"
        if state.get("settings") != self.settings:
            return (
                f"checkpoint {path} belongs to another run "
                f"({_differences(state.get('settings', {}), self.settings)}); "
                "use another --checkpoint-dir"
            )
        return state


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """``key saved -> now`` for every setting that differs, the config's flattened."""

    def flat(settings: dict[str, Any]) -> dict[str, Any]:
        return {**settings.get("config", {}), "processes": settings.get("processes")}

    old, new = flat(saved), flat(now)
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in keys)


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``path`` written whole or not at all: a hidden temporary file, flushed, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)
