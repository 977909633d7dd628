"""Intervals with the prompt as the unit: the images of one prompt (its seeds) are not
independent, so every interval here resamples or counts prompts, never images.

- ``cluster_rate_interval``: a Wilson interval at the effective sample size n / deff, where the
  design effect deff compares the cluster-robust variance of the pooled rate with the binomial
  one (Kish; Korn and Graubard's approach for clustered proportions).
- ``cluster_mean_interval``: a t interval with G - 1 degrees of freedom around a (possibly
  stratified) mean, with the cluster-robust (CR1) variance of the estimator; undefined (NaN)
  with fewer than ``MIN_PROMPTS`` prompts.
- ``cluster_mean_test``: the same with a p-value, for paired comparisons of two methods;
  ``prompt_resamples``: bootstrap samples that draw whole prompts (FID's intervals and tests,
  ``igmu.metrics.functional``).
- ``wilson_interval``: the Wilson interval of k successes in n independent trials.
- ``holm``: Holm's step-down adjustment of a family of p-values.

All are tested for coverage against simulations with known truth (tests/test_intervals.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
Z = float(stats.norm.ppf((1 + CONFIDENCE) / 2))
# Fewer prompts than this and a mean's interval (and any test of it) is undefined: the images of
# one prompt are one unit, and one unit has no spread to measure.
MIN_PROMPTS = 2


def prompt_count(clusters: Sequence) -> int:
    return len(set(np.asarray(clusters, dtype=str).tolist()))


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
    # At p = 0 (1) the lower (upper) bound is exactly 0 (1); floating point misses it by ~1e-16.
    low = 0.0 if p <= 0 else max(0.0, float(centre - half))
    high = 1.0 if p >= 1 else min(1.0, float(centre + half))
    return low, high


def wilson_interval(successes: int, total: int) -> tuple[float, float]:
    """The Wilson score interval for ``successes`` out of ``total`` independent trials."""
    if total <= 0:
        return (float("nan"), float("nan"))
    return wilson(successes / total, total)


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
    if groups < MIN_PROMPTS:
        # One prompt: its seeds are one unit, so there is no interval and no test (NaN).
        return MeanTest(estimate, nan, nan, nan)
    if np.ptp(data) == 0:
        # Two or more prompts, all alike: exact as far as this sample can tell.
        return MeanTest(estimate, estimate, estimate, 1.0 if estimate == 0 else 0.0)
    influence = np.bincount(index, weights=weights * centred, minlength=groups)
    variance, dof = _stratified_variance(influence, cluster_strata, groups)
    dof = max(dof, 1)
    se = float(np.sqrt(variance))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, dof)) * se
    p_value = float(2 * stats.t.sf(abs(estimate) / se, dof)) if se > 0 else float(estimate == 0)
    return MeanTest(estimate, estimate - half, estimate + half, p_value)


def within_domain(
    low: float, high: float, domain: tuple[float, float] | None
) -> tuple[float, float]:
    """An interval cut to the metric's domain (an LPIPS mean is never negative). The true mean
    lies in the domain, so the cut interval contains it exactly when the uncut one does:
    coverage is unchanged, and no bound claims a value the metric cannot take."""
    if domain is None:
        return low, high
    lowest, highest = domain
    return (max(low, lowest) if np.isfinite(low) else low,
            min(high, highest) if np.isfinite(high) else high)


def cluster_mean_interval(
    values: Sequence[float], clusters: Sequence, strata: Sequence | None = None
) -> tuple[float, float, float]:
    """(estimate, low, high) of `cluster_mean_test`."""
    test = cluster_mean_test(values, clusters, strata)
    return test.estimate, test.low, test.high


def prompt_resamples(clusters: Sequence, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of bootstrap samples that draw whole prompts (all their rows) with
    replacement; samples with fewer than 2 rows are skipped (no Fréchet distance)."""
    index, groups = _cluster_index(clusters)
    members = [np.flatnonzero(index == g) for g in range(groups)]
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        rows = np.concatenate([members[g] for g in rng.integers(0, groups, groups)])
        if len(rows) >= 2:
            yield rows


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error over every test given)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
