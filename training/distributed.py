"""Training on many processes and machines, the PyTorch way: ``torchrun`` starts the same
``python -m training ...`` once per process and tells each one who it is through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); this
module turns that into a :class:`Group`, the one object the loop and the pipeline ask.

    torchrun --standalone --nproc-per-node 2 -m training fashion-cnn --threads 1
    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m training fashion-cnn --checkpoint-dir /shared/runs

- Without torchrun (no ``WORLD_SIZE``, or a world of one) the group is :data:`SINGLE` and
  every method is the identity: nothing changes, not a bit of the figures.
- gloo on CPU, nccl where a GPU is present (one GPU per process, ``LOCAL_RANK``).
- ``--batch-size`` is the *global* batch: each process takes ``batch_size / world_size``
  samples per step from a :class:`torch.utils.data.DistributedSampler` shuffled with the
  seed and the epoch, and DistributedDataParallel averages the gradients, so one step sees
  the same number of samples at the same learning rate as a single process does.
- ``--micro-batches M`` splits each process's part of a step into M shares, each taken
  from a sampler of its own as if it were one more process, its gradients accumulated: one
  process with ``--micro-batches 2`` computes what two torchrun processes do (the same
  samples per share, batch norm over each share, the shares' own dropout and augmentation
  streams), up to the order of float additions.
- Rank 0 alone reads and writes the run folder (``training/checkpoint.py``), exports,
  checks parity, evaluates and publishes; the others never touch the repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from training.batches import minibatches
from training.errors import ConfigError, TrainingError

#: How long a collective waits for the other processes (rank 0 exports and evaluates while
#: the others wait for its verdict). A process that dies is noticed at once, not after this;
#: a process that never comes (its node gave up) is, so it stays well below torch's 30 min.
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"  # gloo | nccl once initialized; "none" for a single process
    restarts: int = 0  # torchrun's TORCHELASTIC_RESTART_COUNT

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints, checkpoints, exports and publishes."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return (
            torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        )

    def local_batch(self, batch_size: int, micro_batches: int = 1) -> int:
        """Samples per share per step: the global batch split evenly over the processes and
        each process's ``micro_batches``."""
        if batch_size % (self.world_size * micro_batches):
            split = f" x {micro_batches} micro-batches" if micro_batches > 1 else ""
            raise ConfigError(
                f"batch size {batch_size} (the global batch) is not divisible by the "
                f"{self.world_size} processes{split}"
            )
        return batch_size // (self.world_size * micro_batches)

    def describe(self, batch_size: int, lr: float) -> dict[str, Any]:
        """For ``run.json``: how the run was spread, with the global batch and its lr."""
        return {
            "processes": self.world_size,
            "backend": self.backend,
            "global_batch_size": batch_size,
            "batch_size_per_process": batch_size // self.world_size,
            "lr": lr,
            "restarts": self.restarts,
        }

    # -- collectives (the identity for a single process) -------------------------------------
    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over every process (float64)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def all(self, flag: bool) -> bool:
        """True when ``flag`` is true on every process; a barrier too."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def share(self, value: Any) -> Any:
        """Rank 0's ``value``, on every process (the others pass anything)."""
        if not self.distributed:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, by rank, on every process."""
        if not self.distributed:
            return [value]
        found: list[Any] = [None] * self.world_size
        dist.all_gather_object(found, value)
        return found

    # -- the model and the data --------------------------------------------------------------
    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` under DistributedDataParallel (rank 0's weights broadcast to all), or
        ``net`` itself. The wrapper shares ``net``'s parameters: train through it, export
        ``net``."""
        if not self.distributed:
            return net
        net.to(self.device)
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)

    def sync_buffers(self, net: nn.Module) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every process, so that every
        process validates the model rank 0 exports."""
        if self.distributed:
            for buffer in net.buffers():
                dist.broadcast(buffer, src=0)

    def part(self, n: int) -> np.ndarray:
        """This process's contiguous share of ``range(n)``; the shares cover it exactly once
        (validation: the sums over the shares are the sums over the whole split)."""
        return np.array_split(np.arange(n), self.world_size)[self.rank]


def shares(group: Group, micro_batches: int) -> range:
    """The shares of every step this process computes, numbered over the whole run: process
    ``r`` has ``r * M ... r * M + M - 1`` of ``world_size * M``."""
    return range(group.rank * micro_batches, (group.rank + 1) * micro_batches)


class EpochOrder:
    """The steps of one epoch, each a list of index arrays into the training split, one per
    share of this process (:func:`shares`). A single process in one share shuffles with
    ``rng`` as it always has; otherwise each share is taken from a DistributedSampler over all
    the shares, shuffled with ``seed + epoch`` (padded so that every share runs the same number
    of steps), in batches of ``batch_size / (world_size * micro_batches)``."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        group: Group,
        rng: np.random.Generator,
        micro_batches: int = 1,
    ) -> None:
        self.n, self.rng = n, rng
        self.batch = group.local_batch(batch_size, micro_batches)
        total = group.world_size * micro_batches
        self.samplers: list[DistributedSampler[int]] = [
            DistributedSampler(
                cast("Dataset[int]", range(n)),
                num_replicas=total,
                rank=share,
                shuffle=True,
                seed=seed,
            )
            for share in (shares(group, micro_batches) if total > 1 else ())
        ]

    def steps(self, epoch: int) -> list[list[np.ndarray]]:
        if not self.samplers:
            return [[index] for index in minibatches(self.n, self.batch, self.rng)]
        parts = []
        for sampler in self.samplers:
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
            parts.append([order[i : i + self.batch] for i in range(0, len(order), self.batch)])
        return [list(step) for step in zip(*parts, strict=True)]


SINGLE = Group()

Made = TypeVar("Made")
Published = TypeVar("Published")


def publish_from_rank_zero(
    group: Group,
    name: str,
    make: Callable[[], Made],
    publish: Callable[[Made], Published],
    discard: Callable[[Made], None],
) -> Published | None:
    """After training, in every process: rank 0 makes the candidate (export, parity check,
    evaluation); if every process is still there (the commit point) it publishes it and
    tells the others, or why it could not, and every process fails with the reason. Rank 0
    returns what ``publish`` returned, the others None."""
    candidate: Made | None = None
    failure: BaseException | None = None
    if group.main:
        try:
            candidate = make()
        except BaseException as exc:
            failure = exc
    try:
        ready = group.all(failure is None)  # every process is there: the commit point
    except BaseException:
        if candidate is not None:
            discard(candidate)
        raise
    if not ready:
        message = group.share(None if failure is None else f"{failure}")
        if failure is not None:
            raise failure
        raise TrainingError(f"rank 0 could not export {name} ({message}): nothing published")
    if not group.main:
        outcome = group.share(None)
        if isinstance(outcome, str):
            raise TrainingError(f"rank 0 could not publish {name} ({outcome})")
        return None
    assert candidate is not None
    try:
        result = publish(candidate)
    except BaseException as exc:
        group.share(f"{exc}")
        raise
    group.share(None)
    return result


def from_environment(environ: dict[str, str] | None = None) -> Group:
    """The group torchrun's variables describe (not yet initialized: backend "none")."""
    env = os.environ if environ is None else environ
    try:
        world_size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        restarts = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError as exc:
        raise ConfigError(f"torchrun's environment is not understood: {exc}") from exc
    if world_size <= 1:
        return SINGLE
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world_size}")
    return Group(rank, world_size, local_rank, "none", restarts)


@contextmanager
def launched() -> Iterator[Group]:
    """The process group for the duration of the block: initialized from torchrun's
    environment (gloo on CPU, nccl with a GPU) and destroyed after; :data:`SINGLE` without
    torchrun."""
    group = from_environment()
    if not group.distributed:
        yield group
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(group.local_rank)
    dist.init_process_group(backend, timeout=TIMEOUT)
    group = Group(group.rank, group.world_size, group.local_rank, backend, group.restarts)
    try:
        yield group
    finally:
        dist.destroy_process_group()
