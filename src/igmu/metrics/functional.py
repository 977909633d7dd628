"""Pure maths behind the metrics; each function is tested against a reference implementation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import linalg

from igmu.core.intervals import (
    CONFIDENCE,
    MIN_PROMPTS,
    MeanTest,
    prompt_count,
    prompt_resamples,
)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    Tr sqrt(S_a S_b) equals the nuclear norm of A^T B / sqrt((n_a-1)(n_b-1)) for centred data
    matrices A, B, so when there are fewer samples than dimensions we never form the d x d
    matrix square root; otherwise we use scipy's sqrtm as in the standard FID code.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (n, d) with equal d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    mean_term = float(np.sum((a.mean(0) - b.mean(0)) ** 2))
    centred_a, centred_b = a - a.mean(0), b - b.mean(0)
    scale_a, scale_b = len(a) - 1, len(b) - 1
    trace_a = float(np.sum(centred_a**2) / scale_a)
    trace_b = float(np.sum(centred_b**2) / scale_b)
    dim = a.shape[1]
    if min(len(a), len(b)) <= dim:
        cross = centred_a @ centred_b.T / np.sqrt(scale_a * scale_b)
        trace_sqrt = float(np.linalg.svd(cross, compute_uv=False).sum())
    else:
        cov_a = centred_a.T @ centred_a / scale_a
        cov_b = centred_b.T @ centred_b / scale_b
        root = linalg.sqrtm(cov_a @ cov_b)
        if np.iscomplexobj(root):
            root = root.real
        trace_sqrt = float(np.trace(root))
    return max(mean_term + trace_a + trace_b - 2.0 * trace_sqrt, 0.0)


def clip_score(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """CLIP score per row: 100 * max(cos(image, text), 0), as in torchmetrics and IGMU."""
    img = np.asarray(image_embeds, dtype=np.float64)
    txt = np.asarray(text_embeds, dtype=np.float64)
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    return 100.0 * np.clip(np.sum(img * txt, axis=1), 0.0, None)


def csdr(reference_scores: np.ndarray, method_scores: np.ndarray) -> np.ndarray:
    """CLIP Score Difference Rate per image, in percent; NaN where the reference score is 0."""
    ref = np.asarray(reference_scores, dtype=np.float64)
    own = np.asarray(method_scores, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.abs(ref - own) / ref * 100.0
    return np.where(ref > 0, rate, np.nan)


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
    if prompt_count(clusters) < MIN_PROMPTS:  # every resample is the one prompt again
        return float("nan"), float("nan")
    draws = [frechet_distance(reference[rows], own[rows])
             for rows in prompt_resamples(clusters, resamples, seed)]
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
    if prompt_count(clusters) < MIN_PROMPTS:
        return MeanTest(point, float("nan"), float("nan"), float("nan"))
    draws = [
        frechet_distance(reference[rows], first[rows])
        - frechet_distance(reference[rows], second[rows])
        for rows in prompt_resamples(clusters, resamples, seed)
    ]
    if not draws:
        return MeanTest(point, point, point, float("nan"))
    values = np.asarray(draws)
    low, high = np.quantile(values, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    p_value = min(1.0, 2 * min(float((values <= 0).mean()), float((values >= 0).mean())))
    return MeanTest(point, float(low), float(high), p_value)
