"""Faithfulness of the occlusion explanations on real test samples of the committed models:
removing the k parts an explanation ranks highest (replacing them by the baseline) lowers the
predicted class's probability more than removing k parts drawn at random, on average over
at least 100 test samples per model. ``-s`` prints the figures the README quotes."""

from __future__ import annotations

import numpy as np
import pytest

from service.runtime import explain as ex
from service.runtime.model import ServedModel
from tests.support.paths import MODELS, require_fashion_mnist
from training import data

K = 3
DRAWS = 5  # random draws of k parts per sample


def _test_split(name: str) -> list[np.ndarray]:
    if name == "breast-cancer-ann":
        return list(np.asarray(data.load_breast_cancer().x_test, dtype=np.float32))
    if name == "fashion-cnn":
        require_fashion_mnist()
        images = np.asarray(data.load_fashion_mnist().x_test[:200], dtype=np.float32)
        return list(images)
    sequences = data.load_japanese_vowels().x_test
    assert isinstance(sequences, list)
    return sequences


def _ranked(explanation: ex.Explanation, part: ex.Parts) -> np.ndarray:
    """The indices of the parts whose removal is scored, best first: features, patches (one
    value per patch, read from its first pixel), time steps."""
    if part.kind == "sequence":
        assert explanation.time_steps is not None
        return np.argsort(-explanation.time_steps)
    assert explanation.attributions is not None
    per_part = np.asarray([explanation.attributions[m].flat[0] for m in part.masks])
    return np.argsort(-per_part)


def _drop(
    model: ServedModel, x: np.ndarray, masks: np.ndarray, base: np.ndarray, target: int
) -> np.ndarray:
    """The target probability's drop when each union of masks is replaced by the baseline."""
    removed = np.where(masks, base, x[None]).astype(np.float32)
    probabilities = model.run(np.concatenate([x[None], removed]))[1][:, target]
    return probabilities[0] - probabilities[1:]


@pytest.mark.parametrize("name", ["breast-cancer-ann", "fashion-cnn", "vowels-lstm"])
def test_top_k_parts_matter_more_than_random_ones(name: str) -> None:
    model = ServedModel.load(MODELS / name / "1")
    baseline = ex.baseline_of(model)
    rng = np.random.default_rng(0)
    samples = _test_split(name)
    assert len(samples) >= 100
    top: list[float] = []
    random: list[float] = []
    for x in samples:
        chosen = ex.plan(model, [x[None]], None, 4096)
        part = chosen.groups[0][1]
        explanation = ex.explain(model, chosen, baseline)[0][0]
        assert explanation.target is not None
        count = part.steps if part.kind == "sequence" else len(part.masks)
        best = _ranked(explanation, part)[:K]
        draws = [rng.choice(count, size=K, replace=False) for _ in range(DRAWS)]
        unions = np.stack([part.masks[ix].any(axis=0) for ix in [best, *draws]])  # time steps first
        drops = _drop(model, x, unions, baseline.values, explanation.target)
        top.append(float(drops[0]))
        random.append(float(drops[1:].mean()))
    mean_top, mean_random = float(np.mean(top)), float(np.mean(random))
    wins = float(np.mean(np.asarray(top) > np.asarray(random)))
    print(
        f"\nfaithfulness {name}: n={len(samples)}, k={K}, baseline {baseline.origin}: "
        f"mean drop top-k {mean_top:.4f}, random k {mean_random:.4f}, "
        f"top-k larger on {wins:.0%} of samples"
    )
    assert mean_top > mean_random
