"""Intervals with the prompt as the unit, checked against simulations with known truth: over
many simulated runs, a 95% interval must contain the true value 92-98% of the time."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from igmu.core import intervals as C
from igmu.metrics import functional as F
from igmu.metrics.coverage import mean_coverage, rate_coverage

RUNS = 1500


@pytest.mark.parametrize(
    "prompts,seeds,rate,icc",
    [(16, 2, 0.5, 0.3), (16, 2, 0.1, 0.3), (30, 3, 0.3, 0.5), (10, 2, 0.5, 0.0), (8, 4, 0.5, 0.5)],
)
def test_rate_interval_covers_the_true_rate(prompts, seeds, rate, icc) -> None:
    coverage = rate_coverage(prompts, seeds, rate, icc, RUNS)
    assert 0.92 <= coverage <= 0.98, coverage


def test_images_as_independent_units_undercover() -> None:
    """Why the prompt is the unit: a Wilson interval over images misses far more often when a
    prompt's seeds agree with each other."""
    assert rate_coverage(8, 4, 0.5, 0.5, RUNS, clustered=False) < 0.85


def test_one_image_per_prompt_is_the_plain_wilson_interval() -> None:
    flags = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 0], dtype=float)
    effective, low, high = C.cluster_rate_interval(flags, np.arange(10))
    assert effective == 10
    assert (low, high) == pytest.approx(C.wilson_interval(4, 10), rel=1e-9)


def test_agreeing_seeds_count_each_prompt_once() -> None:
    """0/32 from 16 prompts: nothing measures how alike the seeds are, so the interval is the
    one of 16 units (the cautious side), not of 32 images."""
    effective, low, high = C.cluster_rate_interval(np.zeros(32), np.repeat(np.arange(16), 2))
    assert effective == 16
    assert (low, high) == pytest.approx(C.wilson_interval(0, 16), rel=1e-9)


@pytest.mark.parametrize(
    "prompts,seeds,strata,skewed",
    [(16, 2, None, False), (6, 1, None, False), (9, 1, 3, False), (18, 2, 3, False),
     (30, 2, None, True)],
)
def test_mean_interval_covers_the_true_mean(prompts, seeds, strata, skewed) -> None:
    coverage = mean_coverage(prompts, seeds, RUNS, strata, skewed)
    assert 0.92 <= coverage <= 0.98, coverage


def test_mean_interval_with_one_image_per_prompt_is_the_t_interval() -> None:
    values = np.random.default_rng(3).normal(size=12)
    estimate, low, high = C.cluster_mean_interval(values, np.arange(12))
    expected = stats.t.interval(0.95, 11, loc=values.mean(), scale=stats.sem(values))
    assert estimate == pytest.approx(values.mean())
    assert (low, high) == pytest.approx(expected, rel=1e-9)


def test_stratified_estimate_is_the_mean_of_class_means() -> None:
    values = np.array([1.0, 1.0, 1.0, 1.0, 5.0, 7.0])
    strata = ["a", "a", "a", "a", "b", "b"]
    estimate, low, high = C.cluster_mean_interval(values, np.arange(6), strata)
    assert estimate == pytest.approx((1.0 + 6.0) / 2)
    assert low < estimate < high


def test_paired_difference_finds_a_known_shift() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(size=(20, 2)) + rng.normal(size=(20, 1))  # 20 prompts x 2 seeds
    shifted = base + 0.5 + rng.normal(0, 0.1, base.shape)
    test = C.cluster_mean_test((shifted - base).ravel(), np.repeat(np.arange(20), 2))
    assert test.low <= 0.5 <= test.high and test.low > 0 and test.p_value < 1e-6
    null = C.cluster_mean_test(rng.normal(size=40), np.repeat(np.arange(20), 2))
    assert null.p_value > 0.01


def test_paired_frechet_keeps_pairs_together() -> None:
    """Identical sets have FID 0 in every resample when the two sides are drawn together."""
    rows = np.random.default_rng(6).normal(size=(24, 3))
    low, high = F.paired_frechet_interval(rows, rows, np.repeat(np.arange(12), 2), 100, 0)
    assert (low, high) == pytest.approx((0.0, 0.0), abs=1e-9)
    test = F.paired_frechet_difference_test(
        rows, rows + 1.0, rows, np.repeat(np.arange(12), 2), 100, 0
    )
    assert test.estimate == pytest.approx(3.0, rel=1e-6)  # a shift of 1 in each of 3 dims
    assert test.low > 0 and test.p_value == 0.0
