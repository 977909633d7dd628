"""clip_score: 100 * max(cos(E_img(x), E_txt(t)), 0) per image (higher is better).

Attribute tasks score each method's forget image against the concept-stripped prompt (the scene
it should still show); entity tasks score the unrelated images against their own prompts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from igmu.metrics import functional as F
from igmu.metrics.base import (
    METRICS,
    ImageNeed,
    MetricResult,
    Sample,
    TextNeed,
    mean_result,
    requires,
)
from igmu.metrics.fid import primary_set


def stripped_reference(paired: Any, record: Any) -> Any:
    """ORG's image on the concept-stripped prompt with the same key, if there is one."""
    if record.key.prompt_set != "forget":
        return None
    return paired.images[paired.reference_method].get("stripped", {}).get(
        replace(record.key, prompt_set="stripped")
    )


def scored_text(paired: Any, task: Any, record: Any) -> str:
    """The text an image is scored against: its stripped prompt on forget, else its prompt."""
    if record.key.prompt_set != "forget":
        return record.prompt
    ref = stripped_reference(paired, record)
    if ref is not None:
        return ref.prompt
    from igmu.tasks.stripping import strip_concept

    return strip_concept(record.prompt, task.concept_words)


def image_text_score(ctx: Any, backbone: Any, record: Any, text: str) -> float:
    image = ctx.embedding(backbone, record)[None]
    words = ctx.text_embedding(backbone, text)[None]
    return float(F.clip_score(image, words)[0])


class ClipScore:
    name = "clip_score"
    aspect = "alignment"
    higher_is_better = True
    domain = (0.0, 100.0)  # 100 * max(cos, 0)

    def __init__(self, backbone: Any, task: Any, prompt_set: str) -> None:
        self.backbone = backbone
        self.task = task
        self.prompt_set = prompt_set

    def needs(self, paired: Any) -> list[ImageNeed | TextNeed]:
        needs: list[ImageNeed | TextNeed] = []
        for method in paired.methods:
            for rec in paired.records(method, self.prompt_set):
                needs.append(ImageNeed(self.backbone, rec))
                needs.append(TextNeed(self.backbone, scored_text(paired, self.task, rec)))
        return needs

    def compute(self, ctx: Any) -> list[MetricResult]:
        results = []
        for method in ctx.paired.methods:
            samples = []
            for rec in ctx.paired.records(method, self.prompt_set):
                text = scored_text(ctx.paired, self.task, rec)
                extra = {"text": text}
                ref = stripped_reference(ctx.paired, rec)
                if ref is not None:
                    extra["reference"] = ref.path
                score = image_text_score(ctx, self.backbone, rec, text)
                samples.append(Sample(method, rec, score, extra))
            if samples:
                results.append(mean_result(self, method, samples))
        return results


@METRICS.register("clip_score")
@requires(
    "images on the task's main prompt set (forget for attribute tasks, unrelated for entity tasks)"
)
def build(task: Any, providers: Any, paired: Any) -> list[ClipScore]:
    prompt_set = primary_set(task)
    if not any(paired.has(m, prompt_set) for m in paired.methods):
        return []
    return [ClipScore(providers.clip_score(), task, prompt_set)]
