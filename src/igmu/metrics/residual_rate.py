"""residual_rate: share of images on forget-style prompts a detector still flags (lower is better).

On ``forget`` prompts it measures forgetting; on ``multilingual`` and ``paraphrase`` prompts it
measures robustness (the concept reached without its English name).
"""

from __future__ import annotations

from typing import Any

from igmu.metrics.base import (
    METRICS,
    ImageNeed,
    MetricResult,
    Sample,
    detector_needs,
    rate_result,
    requires,
)

SETS = {
    "forget": ("residual_rate", "forgetting"),
    "multilingual": ("multilingual_residual_rate", "robustness"),
    "paraphrase": ("paraphrase_residual_rate", "robustness"),
}


class ResidualRate:
    higher_is_better = False

    def __init__(self, detector: Any, prompt_set: str) -> None:
        self.detector = detector
        self.prompt_set = prompt_set
        base, self.aspect = SETS[prompt_set]
        self.name = f"{base}.{detector.name}"

    def needs(self, paired: Any) -> list[ImageNeed]:
        return detector_needs(self.detector, paired, self.prompt_set)

    def compute(self, ctx: Any) -> list[MetricResult]:
        results = []
        for method in ctx.paired.methods:
            records = ctx.paired.records(method, self.prompt_set)
            if not records:
                continue
            samples = []
            for rec in records:
                verdict = ctx.verdict(self.detector, rec)
                samples.append(
                    Sample(
                        method,
                        rec,
                        float(verdict.flagged),
                        {"score": verdict.score, **verdict.details},
                    )
                )
            results.append(rate_result(self, method, samples))
        return results


@METRICS.register("residual_rate")
@requires("images on the forget, multilingual or paraphrase prompts")
def build(task: Any, providers: Any, paired: Any) -> list[ResidualRate]:
    metrics = []
    for detector in providers.concept_detectors():
        for prompt_set in SETS:
            if any(paired.has(m, prompt_set) for m in paired.methods):
                metrics.append(ResidualRate(detector, prompt_set))
    return metrics
