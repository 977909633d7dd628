"""csdr: CLIP Score Difference Rate, |CS(x_org, p-) - CS(x, p-)| / CS(x_org, p-) * 100.

Per image (lower is better). x_org is the original model's image for the concept-stripped prompt
p- with the same key; p- has ALL concept words removed (IGMU's code left them in). On entity
tasks the same formula runs on unrelated (or related) prompts against ORG's image.
"""

from __future__ import annotations

from typing import Any

from igmu.metrics import functional as F
from igmu.metrics.base import (
    METRICS,
    REFERENCE_PAIRS,
    ImageNeed,
    MetricResult,
    Sample,
    TextNeed,
    mean_result,
    metric_name,
    reference_pairs,
    requires,
)
from igmu.metrics.clip_score import image_text_score, scored_text
from igmu.metrics.fid import primary_set


class Csdr:
    aspect = "alignment"
    higher_is_better = False
    domain = (0.0, float("inf"))  # |a - b| / a in percent

    def __init__(self, backbone: Any, task: Any, prompt_set: str, primary: str) -> None:
        self.backbone = backbone
        self.task = task
        self.prompt_set = prompt_set
        self.name = metric_name("csdr", prompt_set, primary)

    def needs(self, paired: Any) -> list[ImageNeed | TextNeed]:
        needs: list[ImageNeed | TextNeed] = []
        for method in paired.methods:
            for ref, rec in reference_pairs(paired, self.task, self.prompt_set, method):
                needs += [
                    ImageNeed(self.backbone, ref),
                    ImageNeed(self.backbone, rec),
                    TextNeed(self.backbone, scored_text(paired, self.task, rec)),
                ]
        return needs

    def compute(self, ctx: Any) -> list[MetricResult]:
        results = []
        for method in ctx.paired.methods:
            samples = []
            for ref, rec in reference_pairs(ctx.paired, self.task, self.prompt_set, method):
                text = scored_text(ctx.paired, self.task, rec)
                ref_score = image_text_score(ctx, self.backbone, ref, text)
                own_score = image_text_score(ctx, self.backbone, rec, text)
                rate = float(F.csdr([ref_score], [own_score])[0])
                samples.append(
                    Sample(
                        method,
                        rec,
                        rate,
                        {
                            "text": text,
                            "clip_score_reference": ref_score,
                            "clip_score": own_score,
                            "reference": ref.path,
                        },
                    )
                )
            if samples:
                results.append(mean_result(self, method, samples))
        return results


@METRICS.register("csdr")
@requires(REFERENCE_PAIRS)
def build(task: Any, providers: Any, paired: Any) -> list[Csdr]:
    prompt_set = primary_set(task)
    if not any(reference_pairs(paired, task, prompt_set, m) for m in paired.methods):
        return []
    return [Csdr(providers.clip_score(), task, prompt_set, prompt_set)]
