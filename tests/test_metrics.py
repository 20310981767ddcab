"""Expert metrics against hand-computed confusion matrices and a brute-force AUC."""

import itertools
import math

import numpy as np
import pytest

from dualcam.maps.metrics import binary_metrics, roc_auc


def test_known_confusion_matrix():
    # 4 positives: 3 found (one at exactly the threshold); 6 negatives: 4 rejected
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    probs = [0.9, 0.5, 0.7, 0.2, 0.1, 0.3, 0.6, 0.8, 0.0, 0.4]
    m = binary_metrics(np.array(labels), np.array(probs))
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert (m["n"], m["positives"]) == (10, 4)


def test_auc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 6, 60) / 5  # many ties
    pairs = [(p, n) for p, n in itertools.product(scores[labels == 1], scores[labels == 0])]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert roc_auc(labels, scores) == pytest.approx(expected)
    assert roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_undefined_rates_are_nan_not_zero():
    m = binary_metrics(np.array([0, 0, 0]), np.array([0.1, 0.7, 0.2]))
    assert math.isnan(m["sensitivity"]) and math.isnan(m["auc"])
    assert m["specificity"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same length"):
        binary_metrics(np.array([1, 0]), np.array([0.5]))
