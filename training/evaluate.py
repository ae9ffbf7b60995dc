"""Figures computed from a model's outputs: test metrics and per-feature baselines."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from modelrepo import ClassMetrics, FeatureBaseline, TestMetrics


def test_metrics(logits: np.ndarray, y: np.ndarray, labels: list[str]) -> TestMetrics:
    """Accuracy, mean cross-entropy, per-class precision/recall/F1 and the confusion matrix."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(y)), y].mean())
    predicted = logits.argmax(axis=1)
    classes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=classes, zero_division=0
    )
    return TestMetrics(
        accuracy=float((predicted == y).mean()),
        loss=loss,
        n=len(y),
        per_class=[
            ClassMetrics(
                label=labels[i],
                precision=float(precision[i]),
                recall=float(recall[i]),
                f1=float(f1[i]),
                support=int(support[i]),
            )
            for i in classes
        ],
        confusion_matrix=confusion_matrix(y, predicted, labels=classes).tolist(),
    )


def feature_baselines(
    x: np.ndarray | list[np.ndarray], names: list[str], bins: int = 10
) -> list[FeatureBaseline]:
    """Decile histograms of each feature (each sequence channel) on the training split.

    The reference distribution for input-drift (PSI) metrics; the outer edges are open.
    """
    matrix = np.concatenate(x) if isinstance(x, list) else x
    baselines = []
    for column, name in enumerate(names):
        values = matrix[:, column].astype(np.float64)
        inner = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(inner) + 1)
        baselines.append(
            FeatureBaseline(
                name=name,
                bin_edges=[float(e) for e in inner],
                fractions=[float(c) for c in counts / counts.sum()],
            )
        )
    return baselines
