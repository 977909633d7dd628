"""Audit maths against scikit-learn, and the Rogan-Gladen correction against its closed form
and a coverage simulation."""

from __future__ import annotations

import numpy as np
import pytest

from igmu.core import audit_stats as S

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (extra 'test')")
calibration = pytest.importorskip("sklearn.calibration", reason="scikit-learn (extra 'test')")


def predictions(seed: int, n: int = 300, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    scores = np.clip(0.35 * labels + rng.normal(0.35, 0.2, n), 0, 1)
    if ties:
        scores = np.round(scores, 1)  # many tied scores
    return labels, scores


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_figures_equal_sklearn(seed: int, ties: bool) -> None:
    y, s = predictions(seed, ties=ties)
    flagged = s >= 0.5
    c = S.confusion(y, flagged)
    assert S.proportion(c["tp"] + c["tn"], len(y))["value"] == pytest.approx(
        sklearn_metrics.accuracy_score(y, flagged)
    )
    assert c["tp"] / (c["tp"] + c["fp"]) == pytest.approx(
        sklearn_metrics.precision_score(y, flagged)
    )
    assert c["tp"] / (c["tp"] + c["fn"]) == pytest.approx(sklearn_metrics.recall_score(y, flagged))
    assert S.f1_value(y, flagged) == pytest.approx(sklearn_metrics.f1_score(y, flagged))
    assert S.roc_auc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, s))
    fpr, tpr, _ = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    ours = np.array([(p[0], p[1]) for p in S.roc_points(y, s)])
    np.testing.assert_allclose(ours[:, 0], fpr)
    np.testing.assert_allclose(ours[:, 1], tpr)


def test_calibration_equals_sklearn() -> None:
    y, s = predictions(3)
    s[:3] = [0.0, 1.0, 0.5]  # edges: 0 and 1 in the end bins, 0.5 in (0.4, 0.5]
    prob_true, prob_pred = calibration.calibration_curve(y, s, n_bins=10, strategy="uniform")
    curve = S.reliability(y, s, 10)
    np.testing.assert_allclose([b["observed"] for b in curve], prob_true)
    np.testing.assert_allclose([b["mean_score"] for b in curve], prob_pred)
    counts = np.array([b["n"] for b in curve])
    expected = float(np.sum(counts / len(y) * np.abs(prob_true - prob_pred)))
    assert S.expected_calibration_error(y, s, 10) == pytest.approx(expected)


def test_undefined_figures_and_bootstrap() -> None:
    y = np.zeros(20, dtype=int)
    s = np.linspace(0, 1, 20)
    assert S.roc_auc(y, s) is None
    assert S.roc_points(y, s) == []
    assert S.proportion(0, 0)["value"] is None
    assert S.stratified_bootstrap(y, s, S.roc_auc, 50, 0) == [None, None]
    y2, s2 = predictions(4)
    low, high = S.stratified_bootstrap(y2, s2, S.roc_auc, 300, 0)
    assert low < S.roc_auc(y2, s2) < high
    assert S.stratified_bootstrap(y2, s2, S.roc_auc, 300, 0) == [low, high]  # seeded


@pytest.mark.parametrize(
    "p,se,sp", [(0.3, 0.8, 0.95), (0.02, 0.9, 0.97), (0.9, 0.7, 0.9), (0.5, 1.0, 1.0)]
)
def test_rogan_gladen_closed_form(p: float, se: float, sp: float) -> None:
    expected = min(max((p + sp - 1) / (se + sp - 1), 0.0), 1.0)
    assert S.rogan_gladen(p, se, sp) == pytest.approx(expected)
    # exact counts: the interval function's point estimate is the same closed form
    k, n, tp, n_pos, tn, n_neg = round(p * 200), 200, round(se * 100), 100, round(sp * 100), 100
    point, (low, high), _ = S.rogan_gladen_interval(k, n, tp, n_pos, tn, n_neg, 2000, 0)
    assert point == pytest.approx(S.rogan_gladen(k / n, tp / n_pos, tn / n_neg))
    assert low <= point <= high
    assert S.rogan_gladen(0.5, 0.4, 0.5) is None  # Se + Sp <= 1: nothing to recover


def test_rogan_gladen_interval_covers() -> None:
    """Simulate audits and evaluations with a known truth: the interval covers it at about the
    nominal rate, and the raw rate's interval does not."""
    from igmu.core.intervals import wilson_interval

    rng = np.random.default_rng(7)
    truth, se, sp, n, n_pos, n_neg, reps = 0.6, 0.7, 0.97, 200, 150, 150, 300
    hits = raw_hits = 0
    for r in range(reps):
        present = rng.random(n) < truth
        flagged = np.where(present, rng.random(n) < se, rng.random(n) > sp)
        tp, tn = rng.binomial(n_pos, se), rng.binomial(n_neg, sp)
        _, (low, high), _ = S.rogan_gladen_interval(
            int(flagged.sum()), n, int(tp), n_pos, int(tn), n_neg, 2000, r
        )
        hits += low <= truth <= high
        raw_low, raw_high = wilson_interval(int(flagged.sum()), n)
        raw_hits += raw_low <= truth <= raw_high
    assert 0.91 <= hits / reps <= 0.99
    assert raw_hits / reps < 0.05
