"""Binary classification metrics for the experts (pure numpy): what training selects on and reports."""

from __future__ import annotations

import numpy as np


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity, specificity (at ``threshold``) and ROC AUC of in-class probabilities.

    ``labels`` are 1 for the expert's class, 0 otherwise. A rate with an empty denominator (no
    positives, say) is NaN rather than a misleading 0 or 1; so is AUC without both classes.
    """
    labels = np.asarray(labels).astype(bool)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 1:
        raise ValueError(f"labels and probs must be 1-d and the same length, got {labels.shape} and {probs.shape}")
    predicted = probs >= threshold
    tp = int(np.sum(predicted & labels))
    tn = int(np.sum(~predicted & ~labels))
    positives, negatives = int(labels.sum()), int((~labels).sum())
    return {
        "accuracy": _ratio(tp + tn, positives + negatives),
        "sensitivity": _ratio(tp, positives),
        "specificity": _ratio(tn, negatives),
        "auc": roc_auc(labels, probs),
        "n": positives + negatives,
        "positives": positives,
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outranks a random negative (ties count 1/2)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (Mann-Whitney U)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    for end in np.append(np.flatnonzero(np.diff(sorted_values)) + 1, len(values)):
        ranks[order[start:end]] = (start + 1 + end) / 2
        start = end
    return ranks


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")
