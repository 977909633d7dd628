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


def test_cut_to_the_domain_keeps_the_coverage() -> None:
    """Positive skewed values (as LPIPS's): cut to [0, inf) the interval covers the true mean in
    exactly the runs the uncut one does."""
    for prompts in (6, 12):
        uncut = mean_coverage(prompts, 2, RUNS, None, True)
        assert mean_coverage(prompts, 2, RUNS, None, True, domain=(0.0, float("inf"))) == uncut


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


def test_bounded_means_keep_their_interval_inside_the_domain() -> None:
    """LPIPS, CSDR and CLIP score means near a bound: the t interval would leave the domain (an
    LPIPS of -0.09); cut to it, the bound is the domain's and the estimate is unchanged."""
    from igmu.core.records import ImageKey, ImageRecord, Sample
    from igmu.metrics.base import mean_result
    from igmu.metrics.clip_score import ClipScore
    from igmu.metrics.csdr import Csdr
    from igmu.metrics.lpips import Lpips

    def samples(values: list[float]) -> list[Sample]:
        return [Sample("UCE", ImageRecord("UCE", ImageKey("unrelated", "c", i, 0), "p", f"{i}"), v)
                for i, v in enumerate(values)]

    near_zero = samples([0.0, 0.0, 0.0, 0.0, 0.4])
    near_hundred = samples([100.0, 100.0, 100.0, 60.0])
    for metric, data, bound in ((Lpips, near_zero, "low"), (Csdr, near_zero, "low"),
                                (ClipScore, near_hundred, "high")):
        shell = object.__new__(metric)  # the class's domain, no network
        shell.name, shell.aspect = metric.__name__.lower(), "alignment"
        raw = C.cluster_mean_interval([s.value for s in data], [str(i) for i in range(len(data))])
        agg = mean_result(shell, "UCE", data).aggregate
        assert agg.value == raw[0]
        if bound == "low":
            assert raw[1] < 0 and agg.ci_low == 0.0 and agg.ci_high == raw[2]
        else:
            assert raw[2] > 100 and agg.ci_high == 100.0 and agg.ci_low == raw[1]
