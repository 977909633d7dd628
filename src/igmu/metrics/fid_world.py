"""fid_world: Fréchet distance between a method's images and the world's ground truth.

Where a renderer draws the exact image a prompt describes (the MiniWorld), image quality can be
measured as the paper measures it on real photographs: FID against real images of the same
prompts. Here the "real" image of each (prompt, seed) is the MiniWorld renderer's, so ORG gets a
fidelity score too (its distance to the truth), unlike ``fid``, whose reference is ORG itself.

Computed on the ``unrelated`` prompts, which no method should change (aspect fidelity, lower is
better), with the task's FID features. Prompts the MiniWorld cannot parse are an error, so the
metric is listed only by MiniWorld tasks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from igmu.core.errors import ConfigError
from igmu.metrics.base import METRICS, ImageNeed, MetricResult, Sample, requires
from igmu.metrics.fid import frechet_result

PROMPT_SET = "unrelated"


def ground_truth_image(prompt: str, seed: int) -> np.ndarray:
    from igmu.miniworld.oracle import oracle_image, parse_caption

    if "shape" not in parse_caption(prompt):
        raise ConfigError(
            f"metric fid_world: {prompt!r} names no MiniWorld shape; fid_world needs MiniWorld "
            "prompts (remove it from the task's guidance.metrics)"
        )
    return oracle_image(prompt, seed)


class FidWorld:
    name = "fid_world"
    aspect = "fidelity"
    higher_is_better = False

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone

    def needs(self, paired: Any) -> list[ImageNeed]:
        return [
            ImageNeed(self.backbone, rec)
            for method in paired.methods
            for rec in paired.records(method, PROMPT_SET)
        ]

    def compute(self, ctx: Any) -> list[MetricResult]:
        truth: dict[tuple[str, int], np.ndarray] = {}
        per_method = {m: ctx.paired.records(m, PROMPT_SET) for m in ctx.paired.methods}
        wanted = sorted({(r.prompt, r.key.seed) for recs in per_method.values() for r in recs})
        if wanted:
            features = self.backbone.image_embeddings(
                [ground_truth_image(p, s) for p, s in wanted]
            )
            truth = dict(zip(wanted, features, strict=True))
        results = []
        for method, records in per_method.items():
            if len(records) < 2:
                continue
            refs = np.stack([truth[(r.prompt, r.key.seed)] for r in records])
            own = np.stack([ctx.embedding(self.backbone, r) for r in records])
            samples = [
                Sample(method, r, float("nan"), {
                    "whole_set": True, "reference": "renderer",
                    "features": self.backbone.fingerprint,
                })
                for r in records
            ]
            results.append(frechet_result(self, method, refs, own, samples, ctx))
        return results


@METRICS.register("fid_world")
@requires("at least 2 images per method on the unrelated prompts of a MiniWorld task")
def build(task: Any, providers: Any, paired: Any) -> list[FidWorld]:
    if not any(len(paired.records(m, PROMPT_SET)) >= 2 for m in paired.methods):
        return []
    return [FidWorld(providers.fid())]
