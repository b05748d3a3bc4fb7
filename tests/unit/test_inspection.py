"""ROC AUC and per-label separation of `poft inspect --by-label`, against plain statements of them."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poft.inspection import roc_auc, separation_by_label


def brute_force_auc(scores: list[float], positive: list[bool]) -> float:
    """Every (positive, other) pair: 1 if the positive scores higher, 1/2 on a tie."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=40))
def test_roc_auc_equals_the_pairwise_count(pairs):
    scores = np.array([float(s) for s, _ in pairs])  # small integers: many ties
    positive = np.array([p for _, p in pairs])
    if positive.all() or not positive.any():
        assert roc_auc(scores, positive) is None
    else:
        assert roc_auc(scores, positive) == pytest.approx(brute_force_auc(list(scores), list(positive)))


def test_separation_by_label_leaves_out_unlabelled_rows_and_missing_scores():
    scores = {"a": np.array([1.0, 2.0, 3.0, np.nan, 5.0]), "ref_score": np.array([5.0, 4.0, 3.0, 2.0, 1.0])}
    classes = np.array(["noisy", "clean", "clean", "clean", ""], dtype=object)
    out = separation_by_label(scores, classes, "kind")
    assert out["classes"] == {"clean": 3, "noisy": 1} and out["n_unlabelled"] == 1
    assert out["scores"]["a"]["auc"] == {"clean": 1.0, "noisy": 0.0}  # row 3 has no finite score
    assert out["scores"]["ref_score"]["auc"]["noisy"] == 1.0
    assert out["scores"]["ref_score"]["mean"]["clean"] == pytest.approx(3.0)
