"""Simulations with a known truth that measure how often igmu's 95% intervals contain it.

Used by tests/test_intervals.py (each setting must cover 92-98%) and by
``python benchmarks/interval_coverage.py``, which prints the table in
docs/design/metrics-and-intervals.md.
"""

from __future__ import annotations

import numpy as np

from igmu.core import intervals as C


def clustered_flags(
    rng: np.random.Generator, prompts: int, seeds: int, rate: float, icc: float
) -> np.ndarray:
    """Beta-binomial: each prompt has its own rate (mean ``rate``, intra-prompt correlation
    ``icc``); its seeds are Bernoulli draws of it. Rows of a prompt are contiguous."""
    if icc > 0:
        a, b = rate * (1 - icc) / icc, (1 - rate) * (1 - icc) / icc
        per_prompt = rng.beta(a, b, prompts)
    else:
        per_prompt = np.full(prompts, rate)
    return (rng.random((prompts, seeds)) < per_prompt[:, None]).astype(float).ravel()


def rate_coverage(
    prompts: int, seeds: int, rate: float, icc: float, runs: int, clustered: bool = True,
    seed: int = 0,
) -> float:
    """Share of runs whose rate interval contains ``rate``; ``clustered=False`` measures the
    Wilson interval that counts images as independent."""
    rng = np.random.default_rng([seed, prompts, seeds])
    clusters = np.repeat(np.arange(prompts), seeds)
    hits = 0
    for _ in range(runs):
        flags = clustered_flags(rng, prompts, seeds, rate, icc)
        if clustered:
            _, low, high = C.cluster_rate_interval(flags, clusters)
        else:
            low, high = C.wilson_interval(int(flags.sum()), len(flags))
        hits += low <= rate <= high
    return hits / runs


def mean_coverage(
    prompts: int, seeds: int, runs: int, strata: int | None = None, skewed: bool = False,
    seed: int = 0, domain: tuple[float, float] | None = None,
) -> float:
    """Share of runs whose mean interval contains the true mean: a prompt effect plus image
    noise (sd 1 each; log-normal with sd 0.5 each when ``skewed``), classes = prompt mod
    ``strata`` (the estimate is then the mean of class means, whose truth is the same);
    ``domain``: the interval cut to it first, as a bounded metric's is."""
    rng = np.random.default_rng([seed, prompts, seeds, strata or 0, int(skewed)])
    clusters = np.repeat(np.arange(prompts), seeds)
    groups = None if strata is None else np.repeat(np.arange(prompts) % strata, seeds)
    scale = 0.5 if skewed else 1.0
    truth = float(np.exp(scale**2)) if skewed else 0.0
    hits = 0
    for _ in range(runs):
        draws = rng.normal(0, scale, prompts)[:, None] + rng.normal(0, scale, (prompts, seeds))
        values = np.exp(draws).ravel() if skewed else draws.ravel()
        _, low, high = C.cluster_mean_interval(values, clusters, groups)
        low, high = C.within_domain(low, high, domain)
        hits += low <= truth <= high
    return hits / runs
