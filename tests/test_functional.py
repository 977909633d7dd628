"""The pure maths against independent reference computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from igmu.core import intervals as C
from igmu.metrics import functional as F


def reference_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The standard FID formula (pytorch-fid / torch-fidelity) with scipy's sqrtm."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.trace(root.real))


@pytest.mark.parametrize("n_a,n_b,dim", [(40, 50, 16), (200, 150, 8), (12, 9, 64)])
def test_frechet_matches_scipy_sqrtm(n_a: int, n_b: int, dim: int) -> None:
    rng = np.random.default_rng(n_a)
    a = rng.normal(size=(n_a, dim))
    b = rng.normal(loc=0.3, scale=1.2, size=(n_b, dim))
    ours = F.frechet_distance(a, b)
    assert ours == pytest.approx(reference_frechet(a, b), rel=1e-4)


def test_frechet_of_identical_sets_is_zero() -> None:
    a = np.random.default_rng(0).normal(size=(30, 8))
    assert F.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_clip_score_formula() -> None:
    img = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    txt = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert F.clip_score(img, txt) == pytest.approx([100.0, 100 / np.sqrt(2), 0.0])


def test_csdr_formula_and_undefined_reference() -> None:
    out = F.csdr([30.0, 20.0, 0.0], [27.0, 25.0, 10.0])
    assert out[:2] == pytest.approx([10.0, 25.0])
    assert np.isnan(out[2])


def test_wilson_interval_matches_closed_form() -> None:
    k, n, z = 3, 10, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = C.wilson_interval(k, n)
    assert (low, high) == pytest.approx((centre - half, centre + half), rel=1e-6)
