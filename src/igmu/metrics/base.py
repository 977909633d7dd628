"""What every metric shares: needs, per-image samples, aggregates with CIs, the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from igmu.dataset.records import ImageRecord
from igmu.metrics import functional as F
from igmu.registry import Registry

ASPECTS = ("forgetting", "fidelity", "preservation", "alignment", "robustness")
SMALL_SAMPLE = 30
FID_SMALL_SAMPLE = 2000


@dataclass(frozen=True)
class ImageNeed:
    provider: Any  # a backbone (embeddings) or a detector (raw outputs)
    record: ImageRecord


def detector_needs(detector: Any, paired: Any, prompt_set: str) -> list[ImageNeed]:
    """The detector's raw output on every method's images of one prompt set."""
    return [
        ImageNeed(detector, rec)
        for method in paired.methods
        for rec in paired.records(method, prompt_set)
    ]


@dataclass(frozen=True)
class PairNeed:
    provider: Any  # LPIPS
    reference: ImageRecord
    record: ImageRecord


@dataclass(frozen=True)
class TextNeed:
    provider: Any  # a CLIP backbone
    text: str


@dataclass(frozen=True)
class Sample:
    method: str
    record: ImageRecord
    value: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricResult:
    metric: str
    aspect: str
    higher_is_better: bool
    method: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    samples: list[Sample]
    whole_set: bool = False
    warning: str = ""


class Context(Protocol):
    task: Any
    paired: Any
    resamples: int
    seed: int

    def sha(self, record: ImageRecord) -> str: ...
    def embedding(self, provider: Any, record: ImageRecord) -> np.ndarray: ...
    def text_embedding(self, provider: Any, text: str) -> np.ndarray: ...
    def verdict(self, detector: Any, record: ImageRecord) -> Any: ...
    def pair_value(self, provider: Any, reference: ImageRecord, record: ImageRecord) -> float: ...


class Metric(Protocol):
    name: str
    aspect: str
    higher_is_better: bool

    def needs(self, paired: Any) -> list[ImageNeed | PairNeed | TextNeed]: ...
    def compute(self, ctx: Context) -> list[MetricResult]: ...


# A factory gets (task, providers, paired) and returns the metric instances that apply.
MetricFactory = Callable[[Any, Any, Any], list[Metric]]
METRICS: Registry[MetricFactory] = Registry("metric")


def load_all() -> None:
    from igmu.metrics import (  # noqa: F401
        attack_success_rate,
        clip_score,
        csdr,
        fid,
        fid_world,
        lpips,
        person_rate,
        prompt_accuracy,
        related_retention,
        residual_rate,
    )


def small_sample_warning(n: int) -> str:
    return (
        f"n={n} < {SMALL_SAMPLE}: the CI is wide; treat as indicative" if n < SMALL_SAMPLE else ""
    )


def rate_result(
    metric: str, aspect: str, higher_is_better: bool, method: str, samples: list[Sample]
) -> MetricResult:
    flags = np.array([s.value for s in samples], dtype=np.float64)
    k, n = int(flags.sum()), len(flags)
    low, high = F.wilson_interval(k, n)
    return MetricResult(
        metric,
        aspect,
        higher_is_better,
        method,
        k / n if n else float("nan"),
        low,
        high,
        n,
        samples,
        warning=small_sample_warning(n),
    )


def mean_result(
    metric: str,
    aspect: str,
    higher_is_better: bool,
    method: str,
    samples: list[Sample],
    resamples: int,
    seed: int,
    groups: list[str] | None = None,
) -> MetricResult:
    """Mean (or mean of group means) of finite values; NaN samples are kept but counted out."""
    values = np.array([s.value for s in samples], dtype=np.float64)
    finite = np.isfinite(values)
    undefined = int((~finite).sum())
    kept = values[finite]
    warnings = [small_sample_warning(len(kept))]
    if undefined:
        warnings.append(f"{undefined} sample(s) undefined (NaN) and excluded")
    if len(kept) == 0:
        return MetricResult(
            metric,
            aspect,
            higher_is_better,
            method,
            float("nan"),
            float("nan"),
            float("nan"),
            0,
            samples,
            warning="; ".join(w for w in warnings if w),
        )
    if groups is not None:
        group_arr = np.array(groups)[finite]
        value = F.mean_of_group_means(kept, group_arr)
        low, high = F.bootstrap_group_mean_interval(kept, group_arr, resamples, seed)
    else:
        value = float(kept.mean())
        low, high = F.bootstrap_mean_interval(kept, resamples, seed)
    return MetricResult(
        metric,
        aspect,
        higher_is_better,
        method,
        value,
        low,
        high,
        len(kept),
        samples,
        warning="; ".join(w for w in warnings if w),
    )


def reference_pairs(
    paired: Any, task: Any, prompt_set: str, method: str
) -> list[tuple[ImageRecord, ImageRecord]]:
    """(reference image, method image) pairs with the same key.

    On ``forget`` the reference is the original model on the concept-stripped prompt; on every
    other set it is the original model on the same prompt. A method is never paired with itself.
    """
    ref_method = paired.reference_method
    if prompt_set == "forget":
        refs = paired.images[ref_method].get("stripped", {})
        pairs = []
        for rec in paired.records(method, "forget"):
            ref = refs.get(replace(rec.key, prompt_set="stripped"))
            if ref is not None:
                pairs.append((ref, rec))
        return pairs
    if method == ref_method:
        return []
    refs = paired.images[ref_method].get(prompt_set, {})
    return [(refs[rec.key], rec) for rec in paired.records(method, prompt_set) if rec.key in refs]


def paired_aspect(task: Any, prompt_set: str) -> str:
    return "fidelity" if prompt_set == "forget" else "preservation"


def metric_name(base: str, prompt_set: str, primary_set: str) -> str:
    return base if prompt_set == primary_set else f"{base}.{prompt_set}"
