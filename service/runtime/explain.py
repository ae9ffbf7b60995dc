"""Explanations by occlusion: which parts of an input a prediction rests on, with onnxruntime
alone (no gradients, no torch).

Each part of an instance is replaced by the model's baseline (a typical input from the
training split, :func:`baseline_of`), every perturbed copy of every instance goes through the
graph in ONE batched run (one per sequence length), and a part's attribution is how much the
score drops without it: ``score(input) - score(input with the part replaced)``. The score is
the predicted class's probability (a classifier's ``probabilities`` output, else its last
output), or the first value of the output for a regression model. Positive: the part
supported the answer; negative: it spoke against it.

The parts, by the input's shape:

* ``features`` (``[N, F]``, tabular): each feature, F + 1 samples per instance;
* ``patches`` (``[N, ..., H, W]``, images): square patches of the last two axes (a 7 x 7
  grid by default, 4 x 4 pixels for 28 x 28; ``patch_size`` in the request), every pixel of a
  patch gets its patch's attribution;
* ``sequence`` (``[N, T, C]``, any length T): each time step (all channels), each channel
  (all time steps) and each single cell (T x C), T + C + T·C + 1 samples.

Why occlusion: it needs forward passes only, so it works for any graph the service can run
(MLP, CNN, LSTM, an imported file) and the attribution means what it says (the output without
that part). Layer-wise relevance propagation needs a rule per layer type, written against
the network's modules; attention weights exist only in attention models; gradient methods
(saliency, integrated gradients) need d score / d input, which an inference graph does not
have: it would take exporting a second graph that computes the gradient (PyTorch at publish
time, or onnxruntime-training's gradient builder) and serving it beside the model.

Cost is bounded: at most ``max_samples`` perturbed samples per request; beyond it patches get
coarser (doubled), then a sequence's cells are dropped (time steps and channels remain),
then the request is refused (RequestTooLarge). :class:`ExplainQueue` runs explanations in
threads of their own (at a lower CPU priority) behind a bounded queue, so that they never
take the prediction batchers' threads or queues, nor CPU that predictions want.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from modelrepo import FeatureBaseline
from service.errors import DeadlineExceeded, InvalidInput, Overloaded, RequestTooLarge
from service.runtime.model import ServedModel

Kind = Literal["features", "patches", "sequence"]
T = TypeVar("T")


def kind_of(model: ServedModel) -> Kind | None:
    """What the parts of ``model``'s input are, from its shape; None: not explainable."""
    shape = model.input.shape
    if len(shape) == 2 and shape[1] > 0:
        return "features"
    if len(shape) == 3 and shape[1] == -1 and shape[2] > 0:
        return "sequence"
    if len(shape) >= 3 and all(d > 0 for d in shape[1:]):
        return "patches"
    return None


@dataclass(frozen=True)
class Baseline:
    #: float32, one instance's shape; ``[channels]`` for sequences (every time step)
    values: np.ndarray
    #: ``card``: stored with the model at publish time; ``derived``: from what an older card
    #: carries (its drift deciles, its reference batch)
    origin: Literal["card", "derived"]
    description: str


def baseline_of(model: ServedModel) -> Baseline:
    """The card's explain baseline; for a card written before it existed, the medians of its
    drift deciles (tabular, sequences), else the mean of its reference batch, else zeros."""
    card, kind = model.card, kind_of(model)
    shape = model.input.shape
    want = [shape[-1]] if kind == "sequence" else shape[1:]
    stored = card.explain_baseline
    if stored is not None and stored.shape == want:
        values = np.asarray(stored.data, dtype=np.float32).reshape(want)
        return Baseline(values, "card", stored.description)
    if kind in ("features", "sequence") and len(card.baseline) == shape[-1]:
        medians = np.asarray([_median(b) for b in card.baseline], dtype=np.float32)
        return Baseline(
            medians,
            "derived",
            "median of each feature on the training split, read from the card's drift "
            "deciles (the card has no explain baseline)",
        )
    inputs = [
        np.asarray(t.data, dtype=np.float32).reshape(t.shape)
        for case in card.reference
        for t in case.inputs[:1]
    ]
    if inputs and kind is not None:
        rows = (
            np.concatenate([x.reshape(-1, shape[-1]) for x in inputs])
            if kind == "sequence"
            else np.concatenate(inputs)
        )
        return Baseline(
            rows.mean(axis=0).astype(np.float32),
            "derived",
            f"mean of the card's reference batch ({sum(len(x) for x in inputs)} samples; "
            "the card has no explain baseline)",
        )
    return Baseline(
        np.zeros(want, dtype=np.float32), "derived", "zeros: the card carries no training data"
    )


def _median(feature: FeatureBaseline) -> float:
    """The decile edge where the training split's cumulative share reaches one half."""
    edges = feature.bin_edges
    if not edges:
        return 0.0
    crossed = int(np.searchsorted(np.cumsum(feature.fractions), 0.5))
    return float(edges[min(crossed, len(edges) - 1)])


@dataclass(frozen=True)
class Parts:
    """The parts of one instance shape: one mask (True = replaced) per perturbed copy."""

    kind: Kind
    masks: np.ndarray  # bool [parts, *instance shape]
    patch: int | None = None  # patches: the side in pixels
    #: sequences: the masks are ``steps`` time steps, then ``channels`` channels, then (if
    #: ``cells``) every single cell
    steps: int = 0
    channels: int = 0
    cells: bool = False

    @property
    def samples(self) -> int:
        return len(self.masks) + 1


def default_patch(shape: list[int]) -> int:
    """Patches of a 7 x 7 grid over the last two axes (4 pixels for 28 x 28)."""
    return max(1, math.ceil(max(shape[-2:]) / 7))


def parts(kind: Kind, shape: tuple[int, ...], patch: int = 0, cells: bool = True) -> Parts:
    """The masks for an instance of ``shape`` (patch side ``patch`` for images)."""
    if kind == "features":
        return Parts(kind, np.eye(shape[0], dtype=bool))
    if kind == "sequence":
        steps, channels = shape
        masks = [np.eye(steps, dtype=bool)[:, :, None].repeat(channels, axis=2)]
        masks.append(np.eye(channels, dtype=bool)[:, None, :].repeat(steps, axis=1))
        if cells:
            masks.append(np.eye(steps * channels, dtype=bool).reshape(-1, steps, channels))
        return Parts(kind, np.concatenate(masks), steps=steps, channels=channels, cells=cells)
    height, width = shape[-2:]
    grid: list[np.ndarray] = []
    for top in range(0, height, patch):
        for left in range(0, width, patch):
            mask = np.zeros(shape, dtype=bool)
            mask[..., top : top + patch, left : left + patch] = True
            grid.append(mask)
    return Parts(kind, np.stack(grid), patch=patch)


@dataclass(frozen=True)
class Explanation:
    """One instance's explanation."""

    #: float32 in the instance's shape (per feature; per pixel, its patch's value; per cell);
    #: None for a sequence whose cells were left out to stay within the cap
    attributions: np.ndarray | None
    #: the predicted class (classifiers) or None (regression: the output's first value)
    target: int | None
    score: float  # the target's score on the unperturbed input
    outputs: list[np.ndarray]  # every output of the unperturbed instance (for the prediction)
    time_steps: np.ndarray | None = None  # sequences: per time step
    channels: np.ndarray | None = None  # sequences: per channel


@dataclass(frozen=True)
class Plan:
    """What a request's explanation will run: the parts of each group of one shape."""

    kind: Kind
    groups: list[tuple[np.ndarray, Parts]]  # (instances [n, ...], their parts)

    @property
    def samples(self) -> int:
        return sum(len(batch) * p.samples for batch, p in self.groups)


def plan(model: ServedModel, batches: list[np.ndarray], patch: int | None, cap: int) -> Plan:
    """The parts to occlude in ``batches`` (validated inputs, one shape each) within ``cap``
    perturbed samples: patches doubled, then a sequence's cells dropped, then refused."""
    kind = kind_of(model)
    if kind is None:
        raise InvalidInput(
            f"model {model.name!r}: explanations need an input of shape [N, F], [N, T, C] or "
            f"[N, ..., H, W] with fixed sizes; its input is {model.input.shape}"
        )
    shape = model.input.shape
    side = max(shape[-2:]) if kind == "patches" else 0
    if patch is not None and not (kind == "patches" and 1 <= patch <= side):
        raise InvalidInput(
            f"parameters.patch_size: expected an integer from 1 to {side} (images only), "
            f"got {patch}"
            if kind == "patches"
            else f"parameters.patch_size: model {model.name!r} takes no image; leave it out"
        )
    size = patch or (default_patch(shape) if kind == "patches" else 0)
    cells = True
    while True:
        chosen = Plan(kind, [(b, parts(kind, b.shape[1:], size, cells)) for b in batches])
        if chosen.samples <= cap:
            return chosen
        if kind == "patches" and size < side:
            size = min(side, size * 2)
        elif kind == "sequence" and cells:
            cells = False
        else:
            raise RequestTooLarge(
                f"explaining {sum(len(b) for b in batches)} instance(s) needs "
                f"{chosen.samples} perturbed samples, over the limit of {cap} per request "
                "(NNSERVE_EXPLAIN_MAX_SAMPLES): send fewer instances or shorter sequences"
            )


def explain(model: ServedModel, chosen: Plan, baseline: Baseline) -> list[list[Explanation]]:
    """Run ``chosen`` (one onnxruntime run per group); explanations per group, in order."""
    explained = []
    for batch, part in chosen.groups:
        n, instance = len(batch), batch.shape[1:]
        copies = np.empty((n, part.samples, *instance), dtype=np.float32)
        copies[:, 0] = batch
        copies[:, 1:] = np.where(part.masks[None], baseline.values, batch[:, None])
        outputs = model.run(copies.reshape(n * part.samples, *instance))
        explained.append(_attribute(model, part, outputs, n))
    return explained


def _attribute(
    model: ServedModel, part: Parts, outputs: list[np.ndarray], n: int
) -> list[Explanation]:
    index = model.probabilities_index if model.probabilities_index is not None else -1
    scored = outputs[index].reshape(n, part.samples, -1)
    if model.card.labels:
        targets: list[int | None] = scored[:, 0].argmax(axis=1).tolist()
        scores = np.take_along_axis(scored, scored[:, :1].argmax(axis=2)[:, :, None], 2)[..., 0]
    else:
        targets, scores = [None] * n, scored[..., 0]
    drops = (scores[:, :1] - scores[:, 1:]).astype(np.float32)  # [n, parts]
    if not np.isfinite(drops).all():
        raise InvalidInput(
            f"model {model.name!r}: the input's values are so large that the model's outputs "
            "overflow (NaN or infinity) when parts of it are replaced"
        )
    first = [o.reshape(n, part.samples, *o.shape[1:])[:, 0] for o in outputs]
    found = []
    for i in range(n):
        mine = [o[i : i + 1] for o in first]
        if part.kind == "sequence":
            steps, channels = part.steps, part.channels
            cells = drops[i, steps + channels :].reshape(steps, channels) if part.cells else None
            found.append(
                Explanation(
                    cells,
                    targets[i],
                    float(scores[i, 0]),
                    mine,
                    drops[i, :steps],
                    drops[i, steps : steps + channels],
                )
            )
        else:  # every element lies in exactly one part
            spread = np.tensordot(drops[i], part.masks.astype(np.float32), axes=1)
            found.append(Explanation(spread, targets[i], float(scores[i, 0]), mine))
    return found


#: The explain threads' nice value: above the event loop and the prediction threads (0), so
#: that on a busy CPU the scheduler gives explanations what predictions leave.
NICE = 10


def _lower_priority() -> None:
    """Lower the calling (explain) thread's CPU priority; Linux sets nice per thread."""
    # not Linux, or not allowed: same priority as the rest, still in threads of their own
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


@dataclass(frozen=True)
class Explained:
    """A request's explanations: what ran, against which baseline, per group of one shape."""

    plan: Plan
    baseline: Baseline
    groups: list[list[Explanation]]


class ExplainQueue:
    """Explain traffic's own admission: ``threads`` explanations run at once, in threads of
    their own (never the prediction batchers'), ``waiting`` more may wait; beyond that
    :class:`Overloaded` at once, and a request waits no longer than its deadline. Each
    request runs at most ``max_samples`` perturbed samples (:func:`plan`)."""

    def __init__(self, threads: int, waiting: int, max_samples: int) -> None:
        self.executor = ThreadPoolExecutor(
            threads, thread_name_prefix="explain", initializer=_lower_priority
        )
        self.slots = asyncio.Semaphore(threads)
        self.limit = threads + waiting
        self.max_samples = max_samples
        self.admitted = 0
        #: per served model, computed once (weak: a retired version takes its own along)
        self._baselines: weakref.WeakKeyDictionary[ServedModel, Baseline] = (
            weakref.WeakKeyDictionary()
        )

    def baseline(self, model: ServedModel) -> Baseline:
        found = self._baselines.get(model)
        if found is None:
            found = self._baselines[model] = baseline_of(model)
        return found

    async def explain(
        self, model: ServedModel, batches: list[np.ndarray], patch: int | None, deadline: float
    ) -> Explained:
        """Explanations of ``batches`` (validated inputs, one shape each) within the cap."""
        chosen = plan(model, batches, patch, self.max_samples)
        baseline = self.baseline(model)
        groups = await self.run(functools.partial(explain, model, chosen, baseline), deadline)
        return Explained(chosen, baseline, groups)

    async def run(self, work: Callable[[], T], deadline: float) -> T:
        if self.admitted >= self.limit:
            raise Overloaded(
                f"the explanation queue is full ({self.admitted} explanations running or "
                "waiting); retry shortly",
                retry_after_s=1,
            )
        self.admitted += 1
        try:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                    await self.slots.acquire()
            except TimeoutError:
                raise DeadlineExceeded("the request's deadline passed while it waited") from None
            try:
                return await asyncio.get_running_loop().run_in_executor(self.executor, work)
            finally:
                self.slots.release()
        finally:
            self.admitted -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=True)
