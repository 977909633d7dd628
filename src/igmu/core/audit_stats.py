"""Pure maths of a judge audit: confusion figures, ROC, calibration, Rogan-Gladen correction.

Every function takes plain arrays (labels 0/1, decisions 0/1, scores in [0, 1]) and is tested
against scikit-learn on the same predictions. Intervals: Wilson for proportions (accuracy,
precision, recall, specificity, per-class and per-family error), a seeded stratified percentile
bootstrap for figures that are not proportions (F1, ROC-AUC, ECE).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from igmu.core.intervals import CONFIDENCE, wilson_interval


def _arrays(labels: Any, other: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    x = np.asarray(other, dtype=np.float64).reshape(-1)
    if y.shape != x.shape:
        raise ValueError(f"labels and predictions differ in length: {len(y)} vs {len(x)}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (no concept) or 1 (concept)")
    return y, x


def proportion(k: int, n: int) -> dict[str, Any]:
    """A rate with its Wilson 95% interval; undefined (None) when n = 0."""
    if n == 0:
        return {"value": None, "ci": [None, None], "k": 0, "n": 0}
    low, high = wilson_interval(k, n)
    return {"value": k / n, "ci": [low, high], "k": int(k), "n": int(n)}


def confusion(labels: Any, flagged: Any) -> dict[str, int]:
    y, f = _arrays(labels, flagged)
    f = f.astype(bool)
    return {
        "tp": int(np.sum((y == 1) & f)),
        "fp": int(np.sum((y == 0) & f)),
        "tn": int(np.sum((y == 0) & ~f)),
        "fn": int(np.sum((y == 1) & ~f)),
    }


def f1_value(labels: Any, flagged: Any) -> float | None:
    c = confusion(labels, flagged)
    denominator = 2 * c["tp"] + c["fp"] + c["fn"]
    return 2 * c["tp"] / denominator if denominator else None


def roc_auc(labels: Any, scores: Any) -> float | None:
    """Area under the ROC curve = P(score of a concept image > score of another), ties 1/2
    (the Mann-Whitney statistic); None without both classes."""
    from scipy.stats import rankdata

    y, s = _arrays(labels, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_points(labels: Any, scores: Any) -> list[tuple[float, float, float]]:
    """(false positive rate, true positive rate, threshold) with ``score >= threshold`` flagged,
    one point per distinct score, starting at (0, 0)."""
    y, s = _arrays(labels, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return []
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.diff(s_sorted) != 0, True]
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = np.cumsum(1 - y_sorted)[last_of_run]
    points = [(0.0, 0.0, float("inf"))]
    points += [
        (float(fp / n_neg), float(tp / n_pos), float(t))
        for fp, tp, t in zip(fps, tps, s_sorted[last_of_run], strict=True)
    ]
    return points


def _bins(labels: Any, scores: Any, bins: int) -> list[tuple[int, int, int, float]]:
    """(bin index, count, concept count, mean score) of each non-empty equal-width bin."""
    y, s = _arrays(labels, scores)
    if s.size and (s.min() < 0 or s.max() > 1):
        raise ValueError("calibration needs scores in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges[1:-1], s, side="left")
    counts = np.bincount(index, minlength=bins)
    positives = np.bincount(index, weights=y, minlength=bins)
    sums = np.bincount(index, weights=s, minlength=bins)
    return [
        (b, int(counts[b]), int(positives[b]), float(sums[b] / counts[b]))
        for b in range(bins)
        if counts[b]
    ]


def reliability(labels: Any, scores: Any, bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width bins of the score on [0, 1], closed on the right as scikit-learn's
    calibration_curve (0.5 belongs to (0.4, 0.5], 0 to the first bin): count, mean score,
    observed concept frequency with its Wilson interval. Empty bins are left out."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    curve = []
    for b, n, k, mean in _bins(labels, scores, bins):
        observed = proportion(k, n)
        curve.append(
            {
                "bin": [float(edges[b]), float(edges[b + 1])],
                "n": n,
                "mean_score": mean,
                "observed": observed["value"],
                "observed_ci": observed["ci"],
            }
        )
    return curve


def expected_calibration_error(labels: Any, scores: Any, bins: int = 10) -> float | None:
    """ECE = sum over bins of (bin share) * |observed frequency - mean score|."""
    y, _ = _arrays(labels, scores)
    if y.size == 0:
        return None
    return float(sum(n / y.size * abs(k / n - mean) for _, n, k, mean in _bins(y, scores, bins)))


def stratified_bootstrap(
    labels: Any,
    values: Any,
    statistic: Callable[[np.ndarray, np.ndarray], float | None],
    resamples: int,
    seed: int,
) -> list[float | None]:
    """Percentile 95% interval of ``statistic(labels, values)``, resampling concept and other
    images separately (each resample keeps the audit's class counts)."""
    y, v = _arrays(labels, values)
    if y.size == 0 or statistic(y, v) is None:
        return [None, None]
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in (0, 1) if np.any(y == c)]
    draws = []
    for _ in range(resamples):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        value = statistic(y[idx], v[idx])
        if value is not None:
            draws.append(value)
    if not draws:
        return [None, None]
    low, high = np.quantile(draws, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return [float(low), float(high)]


# --- Rogan-Gladen: the prevalence behind a rate measured by an imperfect judge ---


def rogan_gladen(raw_rate: float, sensitivity: float, specificity: float) -> float | None:
    """True prevalence from an apparent one: (p + Sp - 1) / (Se + Sp - 1), clipped to [0, 1].

    None when the judge is no better than chance (Se + Sp <= 1): nothing can be recovered.
    """
    youden = sensitivity + specificity - 1.0
    if youden <= 0:
        return None
    return float(np.clip((raw_rate + specificity - 1.0) / youden, 0.0, 1.0))


def rogan_gladen_interval(
    k: int,
    n: int,
    tp: int,
    n_pos: int,
    tn: int,
    n_neg: int,
    resamples: int = 4000,
    seed: int = 0,
) -> tuple[float | None, list[float | None], float]:
    """Corrected rate and a 95% interval that carries the audit's own uncertainty.

    Parametric bootstrap: the raw rate (k flagged of n evaluated images), the sensitivity (tp of
    n_pos audited concept images) and the specificity (tn of n_neg audited other images) are
    drawn independently from their Jeffreys posteriors Beta(x + 1/2, m - x + 1/2); each draw is
    corrected in closed form (clipped to [0, 1]; draws with Se + Sp <= 1 count as unknown, i.e.
    anywhere in [0, 1], by taking 0 and 1 alternately), and the interval is the 2.5th and 97.5th
    percentiles. Jeffreys draws keep the uncertainty of an audit that saw no error at all (a
    plain binomial resample of 200/200 would treat Se = 1 as exact). Returns (point, interval,
    share of draws where the judge looked no better than chance).
    """
    if n == 0 or n_pos == 0 or n_neg == 0:
        return None, [None, None], 0.0
    point = rogan_gladen(k / n, tp / n_pos, tn / n_neg)
    rng = np.random.default_rng(seed)
    p = rng.beta(k + 0.5, n - k + 0.5, resamples)
    se = rng.beta(tp + 0.5, n_pos - tp + 0.5, resamples)
    sp = rng.beta(tn + 0.5, n_neg - tn + 0.5, resamples)
    youden = se + sp - 1.0
    useless = youden <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        corrected = np.clip((p + sp - 1.0) / youden, 0.0, 1.0)
    corrected[useless] = np.arange(int(useless.sum())) % 2  # unknown: either end
    low, high = np.quantile(corrected, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    if point is not None:
        low, high = min(float(low), point), max(float(high), point)
    return point, [float(low), float(high)], float(useless.mean())
