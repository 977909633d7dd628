"""prompt_accuracy: share of images that show everything their prompt asks for, per a judge.

Ground truth exists where a judge reads every factor a prompt names (the MiniWorld: shape,
colour, texture, white spot and background). An image counts as correct when the judge's most
likely class matches the prompt on every judged factor the prompt names; factors the prompt leaves
open (a background it does not mention) are not checked. Each sample keeps what was asked, what
was drawn and which factors were wrong, so a report can say why an image failed.

- ``prompt_accuracy.unrelated`` / ``.related`` (preservation): did unlearning break what it should
  have left alone? Every named factor is checked.
- ``prompt_accuracy.forget`` (preservation): did the rest of the prompt survive the erasure? The
  concept's own factor (the detector's head) is left out, so an eraser that draws the same subject
  without the concept scores 1 and one that draws a blank or another subject scores 0.

Only detectors with ``prompt_labels(prompt)`` (the MiniWorld judges) give this metric; for other
tasks it is not computed.
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

SETS = ("forget", "unrelated", "related")


class PromptAccuracy:
    higher_is_better = True
    aspect = "preservation"

    def __init__(self, detector: Any, prompt_set: str) -> None:
        self.detector = detector
        self.prompt_set = prompt_set
        self.name = f"prompt_accuracy.{prompt_set}"

    def needs(self, paired: Any) -> list[ImageNeed]:
        return detector_needs(self.detector, paired, self.prompt_set)

    def asked(self, prompt: str) -> dict[str, str]:
        labels = self.detector.prompt_labels(prompt)
        if self.prompt_set == "forget":
            labels.pop(self.detector.head, None)
        return labels

    def compute(self, ctx: Any) -> list[MetricResult]:
        results = []
        for method in ctx.paired.methods:
            records = ctx.paired.records(method, self.prompt_set)
            if not records:
                continue
            samples = []
            for rec in records:
                asked = self.asked(rec.prompt)
                drawn = ctx.verdict(self.detector, rec).details["drawn"]
                wrong = sorted(h for h, want in asked.items() if drawn.get(h) != want)
                samples.append(
                    Sample(
                        method,
                        rec,
                        float(not wrong),
                        {"asked": asked, "drawn": drawn, "wrong": wrong},
                    )
                )
            results.append(rate_result(self, method, samples))
        return results


@METRICS.register("prompt_accuracy")
@requires("a detector that reads every factor a prompt names (the MiniWorld judges, mini_judge:*)")
def build(task: Any, providers: Any, paired: Any) -> list[PromptAccuracy]:
    judges = [d for d in providers.concept_detectors() if hasattr(d, "prompt_labels")]
    if not judges:
        return []
    return [
        PromptAccuracy(judges[0], prompt_set)
        for prompt_set in SETS
        if any(paired.has(m, prompt_set) for m in paired.methods)
    ]
