"""lpips: perceptual distance of each method image to the reference image with the same key.

Per image (lower is better). Same pairing as fid. Averaged per class, then across classes, as
IGMU does for objects.
"""

from __future__ import annotations

from typing import Any

from igmu.metrics.base import (
    METRICS,
    REFERENCE_PAIRS,
    MetricResult,
    PairNeed,
    Sample,
    mean_result,
    metric_name,
    paired_aspect,
    reference_pairs,
    requires,
)
from igmu.metrics.fid import primary_set


class Lpips:
    higher_is_better = False
    domain = (0.0, float("inf"))  # a distance

    def __init__(self, net: Any, task: Any, prompt_set: str, primary: str) -> None:
        self.net = net
        self.task = task
        self.prompt_set = prompt_set
        self.name = metric_name("lpips", prompt_set, primary)
        self.aspect = paired_aspect(task, prompt_set)

    def needs(self, paired: Any) -> list[PairNeed]:
        return [
            PairNeed(self.net, ref, rec)
            for method in paired.methods
            for ref, rec in reference_pairs(paired, self.task, self.prompt_set, method)
        ]

    def compute(self, ctx: Any) -> list[MetricResult]:
        results = []
        for method in ctx.paired.methods:
            pairs = reference_pairs(ctx.paired, self.task, self.prompt_set, method)
            if not pairs:
                continue
            # IGMU averages per class first; the class is each sample's stratum.
            samples = [
                Sample(
                    method, rec, ctx.pair_value(self.net, ref, rec),
                    {"reference": ref.path, "stratum": rec.key.class_name},
                )
                for ref, rec in pairs
            ]
            groups = [rec.key.class_name for _, rec in pairs]
            results.append(
                mean_result(self, method, samples, groups=groups)
            )
        return results


@METRICS.register("lpips")
@requires(REFERENCE_PAIRS)
def build(task: Any, providers: Any, paired: Any) -> list[Lpips]:
    prompt_set = primary_set(task)
    if not any(reference_pairs(paired, task, prompt_set, m) for m in paired.methods):
        return []
    return [Lpips(providers.lpips(), task, prompt_set, prompt_set)]
