"""The run folder (``--checkpoint-dir DIR``: ``DIR/<model>/``): fault tolerance the torchrun way.

After every epoch rank 0 writes ``checkpoint.pt`` (through a temporary file renamed over the
old one): the weights, the optimizer and the scheduler, the best weights so far with their
epoch and the early-stopping count, the history, the next epoch (the DistributedSampler's
epoch), the elapsed time, the run's settings and every process's random state (torch's and
the augmentation generator's per share of a step, numpy's, python's), gathered from all
ranks. When torchrun restarts the workers (``--max-restarts``) or the command is run again,
rank 0 reads the checkpoint and hands every process its part, so the run goes on from the
last finished epoch. A published run leaves ``published.json``: a restart after the publish
publishes nothing twice. The run's id (``run-id``, made at its first start) goes into the
``run.json`` of the version it publishes, so that a crash between publishing and writing
``published.json`` is no hole either: the restarted run finds its version in the repository
and reports it.

Only rank 0 reads or writes the folder, so it must be where rank 0 runs: on several
machines, a shared volume (rank 0 may land on another machine after a restart). The file is
read with ``torch.load(weights_only=True)``: tensors and plain values only, no code.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from training.distributed import Group
from training.errors import TrainingError

CHECKPOINT = "checkpoint.pt"
PUBLISHED = "published.json"
RUN_ID = "run-id"
FORMAT = 2  # 2: a random state per share of a step

State = dict[str, Any]


def random_state(
    dropout: list[torch.Tensor], generators: list[torch.Generator], rng: np.random.Generator
) -> State:
    """This process's random streams: per share of a step (``--micro-batches``) torch's
    global one (dropout) and the augmentation generator; the shuffling ``rng`` and python's."""
    return {
        "torch": list(dropout),
        "generator": [generator.get_state() for generator in generators],
        "numpy": rng.bit_generator.state,
        "python": random.getstate(),
    }


def set_random_state(
    state: State, generators: list[torch.Generator], rng: np.random.Generator
) -> list[torch.Tensor]:
    """Restores the streams; returns the shares' torch states (the loop sets each in turn)."""
    for generator, saved in zip(generators, state["generator"], strict=True):
        generator.set_state(saved)
    rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])
    return list(state["torch"])


class RunFolder:
    """One run's folder; ``settings`` (the config and the world size) must match to resume."""

    def __init__(self, path: Path, group: Group, settings: dict[str, Any]) -> None:
        self.path, self.group, self.settings = path, group, settings

    def run_id(self) -> str:
        """This run's id: made at its first start and kept in the folder, so that a restart
        is the same run (rank 0 reads or writes it, every process hears)."""
        found = None
        if self.group.main:
            path = self.path / RUN_ID
            if not path.is_file():
                _write_atomically(path, lambda f: f.write(uuid.uuid4().hex.encode()))
            found = path.read_text().strip()
        run_id: str = self.group.share(found)
        return run_id

    def published(self, repository: Path, name: str) -> int | None:
        """The version this run already published (rank 0 looks, every process hears): the
        one ``published.json`` names, or else a version of ``name`` whose ``run.json``
        carries this run's id (published just before a crash), then recorded."""
        version = None
        if self.group.main and (self.path / PUBLISHED).is_file():
            version = int(json.loads((self.path / PUBLISHED).read_text())["version"])
        elif self.group.main and (self.path / RUN_ID).is_file():
            version = _version_of_run(repository / name, (self.path / RUN_ID).read_text().strip())
            if version is not None:
                self.mark_published(version, repository)
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


def open_run(
    checkpoints: Path | None, name: str, group: Group, config: dict[str, Any], repository: Path
) -> tuple[RunFolder | None, int | None]:
    """``(the run folder checkpoints/name, or None without checkpoints; the version this run
    already published, or None)``; says so on rank 0 when it has published."""
    if checkpoints is None:
        return None, None
    folder = RunFolder(checkpoints / name, group, {"config": config, "processes": group.world_size})
    done = folder.published(repository, name)
    if done is not None and group.main:
        print(f"{name}: this run already published version {done} (run folder "
              f"{folder.path}); nothing to do", flush=True)  # fmt: skip
    return folder, done


def _version_of_run(model_root: Path, run_id: str) -> int | None:
    """The version under ``model_root`` whose ``run.json`` carries ``run_id``, if any."""
    versions = sorted(int(p.name) for p in model_root.glob("[0-9]*") if p.name.isdigit())
    for version in versions:
        try:
            run = json.loads((model_root / str(version) / "run.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(run, dict) and run.get("run_id") == run_id:
            return version
    return None


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
