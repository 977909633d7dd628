"""What every metric shares: needs, per-image samples, aggregates with CIs, the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from igmu.core import intervals as C
from igmu.core.records import Aggregate, ImageRecord, MetricResult, Sample
from igmu.core.registry import Registry

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
    def remember_features(self, provider: Any, vectors: dict[str, np.ndarray]) -> None: ...
    def audits(self, fingerprint: str) -> list[dict[str, Any]]: ...


def is_detector(provider: Any) -> bool:
    return hasattr(provider, "verdict")


NETWORK_BATCH = 8


def provider_key(provider: Any) -> str:
    """Names a network's stored outputs: its fingerprint and the fixed call shape."""
    own = provider.model_fingerprint if is_detector(provider) else provider.fingerprint
    return f"{own}|calls of {NETWORK_BATCH}"


def in_fixed_calls(call: Any, *columns: list[Any]) -> list[Any]:
    """``call(*columns)`` run on chunks of exactly NETWORK_BATCH items (the last one padded with
    copies of its first item), results of the padding dropped; one result per item."""
    count = len(columns[0])
    results: list[Any] = []
    for start in range(0, count, NETWORK_BATCH):
        chunks = [list(column[start : start + NETWORK_BATCH]) for column in columns]
        real = len(chunks[0])
        padded = [chunk + [chunk[0]] * (NETWORK_BATCH - real) for chunk in chunks]
        results.extend(list(call(*padded))[:real])
    return results


class Metric(Protocol):
    name: str
    aspect: str
    higher_is_better: bool

    def needs(self, paired: Any) -> list[ImageNeed | PairNeed | TextNeed]: ...
    def compute(self, ctx: Context) -> list[MetricResult]: ...


# A factory gets (task, providers, paired) and returns the metric instances that apply.
MetricFactory = Callable[[Any, Any, Any], list[Metric]]
METRICS: Registry[MetricFactory] = Registry("metric", home="igmu.metrics", group="igmu.metrics")


def requires(text: str) -> Callable[[MetricFactory], MetricFactory]:
    """What a task and its images must have for the metric to apply; said when it does not."""

    def mark(factory: MetricFactory) -> MetricFactory:
        factory.requires = text  # type: ignore[attr-defined]
        return factory

    return mark


REFERENCE_PAIRS = (
    "ORG's images with the same keys: on the concept-stripped prompts for attribute tasks "
    "(IGMU layout remove_word/ORG), on the unrelated prompts for entity tasks"
)


def prompt_of(record: ImageRecord) -> str:
    """The unit of every interval: a prompt (its seeds are not independent images)."""
    key = record.key
    return f"{key.prompt_set}\x1f{key.class_name}\x1f{key.prompt_index}"


def small_sample_warning(prompts: int) -> str:
    return (
        f"{prompts} prompt(s) < {SMALL_SAMPLE}: the interval is wide, treat as indicative"
        if prompts < SMALL_SAMPLE
        else ""
    )


def rate_result(metric: Metric, method: str, samples: list[Sample]) -> MetricResult:
    """Share of samples whose value is 1; Wilson interval at the effective sample size of the
    prompts (seeds of one prompt count as one unit as far as they agree)."""
    flags = np.array([s.value for s in samples], dtype=np.float64)
    n = len(flags)
    clusters = [prompt_of(s.record) for s in samples]
    prompts = len(set(clusters))
    _, low, high = C.cluster_rate_interval(flags, clusters)
    value = float(flags.mean()) if n else float("nan")
    return make_result(
        metric, method, value, low, high, n, prompts, samples, small_sample_warning(prompts)
    )


def make_result(
    metric: Metric,
    method: str,
    value: float,
    low: float,
    high: float,
    n: int,
    prompts: int,
    samples: list[Sample],
    warning: str,
    whole_set: bool = False,
) -> MetricResult:
    aggregate = Aggregate(
        method,
        metric.name,
        metric.aspect,
        metric.higher_is_better,
        value,
        low,
        high,
        n,
        prompts=prompts,
        whole_set=whole_set,
        warning=warning,
    )
    return MetricResult(aggregate, tuple(samples))


def mean_result(
    metric: Metric, method: str, samples: list[Sample], groups: list[str] | None = None
) -> MetricResult:
    """Mean (or, with ``groups``, mean of group means) of finite values with a t interval over
    prompts, cut to the metric's ``domain`` where it declares one; NaN samples are kept but
    counted out, with a warning."""
    values = np.array([s.value for s in samples], dtype=np.float64)
    finite = np.isfinite(values)
    undefined = int((~finite).sum())
    kept = [s for s, ok in zip(samples, finite, strict=True) if ok]
    clusters = [prompt_of(s.record) for s in kept]
    prompts = len(set(clusters))
    warnings = [small_sample_warning(prompts)]
    if undefined:
        warnings.append(f"{undefined} sample(s) undefined (NaN) and excluded")
    warning = "; ".join(w for w in warnings if w)
    nan = float("nan")
    if not kept:
        return make_result(metric, method, nan, nan, nan, 0, 0, samples, warning)
    strata = None if groups is None else list(np.asarray(groups)[finite])
    value, low, high = C.cluster_mean_interval(values[finite], clusters, strata)
    low, high = C.within_domain(low, high, getattr(metric, "domain", None))
    return make_result(metric, method, value, low, high, len(kept), prompts, samples, warning)


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
