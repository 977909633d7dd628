"""Intervals with the prompt as the unit: the images of one prompt (its seeds) are not
independent, so every interval here resamples or counts prompts, never images.

- ``cluster_rate_interval``: a Wilson interval at the effective sample size n / deff, where the
  design effect deff compares the cluster-robust variance of the pooled rate with the binomial
  one (Kish; Korn and Graubard's approach for clustered proportions).
- ``cluster_mean_interval``: a t interval with G - 1 degrees of freedom around a (possibly
  stratified) mean, with the cluster-robust (CR1) variance of the estimator.
- ``paired_frechet_interval``: FID's bootstrap resampling prompts, with both sides of each pair
  drawn together.
- ``cluster_mean_test`` / ``paired_frechet_difference_test``: the same with a p-value, for
  paired comparisons of two methods.

All are tested for coverage against simulations with known truth (tests/test_intervals.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from igmu.metrics.functional import CONFIDENCE, frechet_distance

Z = float(stats.norm.ppf((1 + CONFIDENCE) / 2))


def _cluster_index(clusters: Sequence) -> tuple[np.ndarray, int]:
    _, index = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    return index, int(index.max()) + 1 if len(index) else 0


def wilson(p: float, n: float) -> tuple[float, float]:
    """The Wilson score interval for a rate ``p`` observed on ``n`` (possibly effective,
    non-integer) independent units."""
    if n <= 0:
        return (float("nan"), float("nan"))
    z2 = Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def design_effect(flags: np.ndarray, index: np.ndarray, groups: int) -> float:
    """Variance of the pooled rate under cluster sampling over its binomial variance.

    Undefined when every image agrees (rate 0 or 1): then nothing says how alike a prompt's
    seeds are, and each prompt is counted as one unit (deff = mean cluster size)."""
    n = len(flags)
    p = flags.mean()
    if groups < 2 or p in (0.0, 1.0):
        return n / max(groups, 1)
    sums = np.bincount(index, weights=flags, minlength=groups)
    sizes = np.bincount(index, minlength=groups)
    robust = groups / (groups - 1) * np.sum((sums - p * sizes) ** 2) / n**2
    return float(robust / (p * (1 - p) / n))


def cluster_rate_interval(flags: Sequence[float], clusters: Sequence) -> tuple[float, float, float]:
    """(effective n, low, high) for the share of 1s among ``flags``, ``clusters`` naming each
    image's prompt. With one image per prompt this is the plain Wilson interval."""
    values = np.asarray(flags, dtype=np.float64)
    n = len(values)
    if n == 0:
        return 0.0, float("nan"), float("nan")
    index, groups = _cluster_index(clusters)
    deff = design_effect(values, index, groups)
    # Between fully correlated seeds (one unit per prompt) and independent images.
    effective = float(np.clip(n / max(deff, 1e-12), groups, n))
    low, high = wilson(float(values.mean()), effective)
    return effective, low, high


def _stratified_variance(
    influence: np.ndarray, cluster_strata: np.ndarray | None, groups: int
) -> tuple[float, int]:
    """(variance of the estimate, degrees of freedom) from the clusters' influences: CR1 within
    each stratum. A stratum with a single prompt has no within-stratum variance to measure, so
    then the whole sample is treated as unstratified (wider, never narrower)."""
    if cluster_strata is None:
        return groups / (groups - 1) * float(np.sum(influence**2)), groups - 1
    labels, sizes = np.unique(cluster_strata, return_counts=True)
    if sizes.min() < 2:
        centred = influence - influence.mean()
        return groups / (groups - 1) * float(np.sum(centred**2)), groups - 1
    variance = 0.0
    for label, size in zip(labels, sizes, strict=True):
        part = influence[cluster_strata == label]
        variance += size / (size - 1) * float(np.sum(part**2))
    return variance, groups - len(labels)


@dataclass(frozen=True)
class MeanTest:
    """A mean over prompts with its 95% interval and the two-sided p-value of "mean = 0"."""

    estimate: float
    low: float
    high: float
    p_value: float


def cluster_mean_test(
    values: Sequence[float], clusters: Sequence, strata: Sequence | None = None
) -> MeanTest:
    """The mean of ``values`` (or, with ``strata``, the mean of per-stratum means) with a t
    interval and t test over the cluster-robust variance: prompts, not images, are the unit.

    Each prompt (cluster) must lie in one stratum (a class)."""
    nan = float("nan")
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return MeanTest(nan, nan, nan, nan)
    index, groups = _cluster_index(clusters)
    if strata is None:
        weights = np.full(len(data), 1.0 / len(data))
        centred = data - data.mean()
        estimate = float(data.mean())
        cluster_strata = None
    else:
        labels, s_index = np.unique(np.asarray(strata, dtype=str), return_inverse=True)
        counts = np.bincount(s_index)
        means = np.bincount(s_index, weights=data) / counts
        weights = 1.0 / (len(labels) * counts[s_index])
        centred = data - means[s_index]
        estimate = float(means.mean())
        cluster_strata = np.zeros(groups, dtype=int)
        cluster_strata[index] = s_index
    if groups < 2 or np.ptp(data) == 0:
        # No spread to measure: the estimate is exact as far as this sample can tell.
        return MeanTest(estimate, estimate, estimate, 1.0 if estimate == 0 else 0.0)
    influence = np.bincount(index, weights=weights * centred, minlength=groups)
    variance, dof = _stratified_variance(influence, cluster_strata, groups)
    dof = max(dof, 1)
    se = float(np.sqrt(variance))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, dof)) * se
    p_value = float(2 * stats.t.sf(abs(estimate) / se, dof)) if se > 0 else float(estimate == 0)
    return MeanTest(estimate, estimate - half, estimate + half, p_value)


def cluster_mean_interval(
    values: Sequence[float], clusters: Sequence, strata: Sequence | None = None
) -> tuple[float, float, float]:
    """(estimate, low, high) of `cluster_mean_test`."""
    test = cluster_mean_test(values, clusters, strata)
    return test.estimate, test.low, test.high


def _prompt_resamples(clusters: Sequence, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of bootstrap samples that draw whole prompts (all their rows) with
    replacement; samples with fewer than 2 rows are skipped (no Fréchet distance)."""
    index, groups = _cluster_index(clusters)
    members = [np.flatnonzero(index == g) for g in range(groups)]
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        rows = np.concatenate([members[g] for g in rng.integers(0, groups, groups)])
        if len(rows) >= 2:
            yield rows


def paired_frechet_interval(
    reference: np.ndarray,
    own: np.ndarray,
    clusters: Sequence,
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    """Bias-centred percentile interval of FID(reference, own) for key-paired rows, resampling
    prompts (all of a prompt's pairs, both sides together)."""
    reference, own = np.asarray(reference), np.asarray(own)
    point = frechet_distance(reference, own)
    draws = [frechet_distance(reference[rows], own[rows])
             for rows in _prompt_resamples(clusters, resamples, seed)]
    if not draws:
        return point, point
    values = np.asarray(draws)
    bias = values.mean() - point
    low, high = np.quantile(values - bias, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return max(min(float(low), point), 0.0), max(float(high), point)


def paired_frechet_difference_test(
    reference: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    clusters: Sequence,
    resamples: int,
    seed: int,
) -> MeanTest:
    """FID(ref, first) - FID(ref, second) with a percentile interval and a bootstrap p-value,
    resampling prompts jointly for all three sides (rows are aligned by key)."""
    reference, first, second = (np.asarray(x) for x in (reference, first, second))
    point = frechet_distance(reference, first) - frechet_distance(reference, second)
    draws = [
        frechet_distance(reference[rows], first[rows])
        - frechet_distance(reference[rows], second[rows])
        for rows in _prompt_resamples(clusters, resamples, seed)
    ]
    if not draws:
        return MeanTest(point, point, point, float("nan"))
    values = np.asarray(draws)
    low, high = np.quantile(values, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    p_value = min(1.0, 2 * min(float((values <= 0).mean()), float((values >= 0).mean())))
    return MeanTest(point, float(low), float(high), p_value)
