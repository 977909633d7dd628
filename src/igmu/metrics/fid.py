"""fid: Fréchet distance between a method's images and the original model's reference images.

Whole-set metric (lower is better), aspect fidelity. On ``forget`` (attribute tasks) the
reference is ORG on concept-stripped prompts; on ``unrelated`` (entity tasks) it is ORG on the
same prompts; ``fid.related`` (preservation) compares near neighbours. The feature extractor
(Inception, CLIP or the MiniWorld judges) is recorded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from igmu.metrics import functional as F
from igmu.metrics.base import (
    FID_SMALL_SAMPLE,
    METRICS,
    REFERENCE_PAIRS,
    ImageNeed,
    MetricResult,
    Sample,
    make_result,
    metric_name,
    prompt_of,
    provider_key,
    reference_pairs,
    requires,
)


class Fid:
    higher_is_better = False

    def __init__(self, backbone: Any, task: Any, prompt_set: str, primary_set: str) -> None:
        self.backbone = backbone
        self.task = task
        self.prompt_set = prompt_set
        self.name = metric_name("fid", prompt_set, primary_set)
        # FID judges the quality of a whole image distribution against the original model's:
        # fidelity on the task's main reference set, preservation on near neighbours.
        self.aspect = "preservation" if prompt_set == "related" else "fidelity"

    def _pairs(self, paired: Any, method: str):
        return reference_pairs(paired, self.task, self.prompt_set, method)

    def needs(self, paired: Any) -> list[ImageNeed]:
        return [
            ImageNeed(self.backbone, rec)
            for method in paired.methods
            for pair in self._pairs(paired, method)
            for rec in pair
        ]

    def compute(self, ctx: Any) -> list[MetricResult]:
        results = []
        for method in ctx.paired.methods:
            pairs = self._pairs(ctx.paired, method)
            if len(pairs) < 2:
                continue
            refs = np.stack([ctx.embedding(self.backbone, ref) for ref, _ in pairs])
            own = np.stack([ctx.embedding(self.backbone, rec) for _, rec in pairs])
            samples = [
                Sample(method, rec, float("nan"), {
                    "whole_set": True, "reference": ref.path, "reference_sha256": ctx.sha(ref),
                    "features": provider_key(self.backbone),
                })
                for ref, rec in pairs
            ]
            results.append(frechet_result(self, method, refs, own, samples, ctx))
        return results


def frechet_result(
    metric: Any, method: str, refs: np.ndarray, own: np.ndarray, samples: list, ctx: Any
) -> MetricResult:
    """A whole-set FID result (lower is better) with its bias-centred bootstrap interval."""
    value = F.frechet_distance(refs, own)
    clusters = [prompt_of(s.record) for s in samples]
    low, high = F.paired_frechet_interval(refs, own, clusters, min(ctx.resamples, 200), ctx.seed)
    n = len(own)
    warning = ""
    if n < FID_SMALL_SAMPLE:
        warning = (
            f"FID estimated from n={n} images per set: the estimator's bias depends on n, so "
            f"compare it only with FIDs at the same n (>= {FID_SMALL_SAMPLE} for absolute values)"
        )
    prompts = len(set(clusters))
    return make_result(
        metric, method, value, low, high, n, prompts, samples, warning, whole_set=True
    )


def primary_set(task: Any) -> str:
    return "forget" if task.reference == "stripped" else "unrelated"


@METRICS.register("fid")
@requires(REFERENCE_PAIRS)
def build(task: Any, providers: Any, paired: Any) -> list[Fid]:
    prompt_set = primary_set(task)
    if not any(reference_pairs(paired, task, prompt_set, m) for m in paired.methods):
        return []
    return [Fid(providers.fid(), task, prompt_set, prompt_set)]
