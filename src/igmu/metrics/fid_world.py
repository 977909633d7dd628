"""fid_world: Fréchet distance between a method's images and the world's ground truth.

Where a world has an oracle that draws the exact image a prompt describes (the MiniWorld's
renderer), image quality can be measured as the paper measures it on real photographs: FID
against real images of the same prompts. The "real" image of each (prompt, seed) is the world's
(`igmu.worlds.World.true_images`), so ORG gets a fidelity score too (its distance to the truth),
unlike ``fid``, whose reference is ORG itself.

Computed on the ``unrelated`` prompts, which no method should change (aspect fidelity, lower is
better), with the task's FID features. The true images' features are kept in the store under
``reference_sha256`` (a hash of their pixels), so a paired comparison reads them back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from igmu.core.images import pixels_sha256
from igmu.metrics.base import (
    METRICS,
    ImageNeed,
    MetricResult,
    Sample,
    in_fixed_calls,
    provider_key,
    requires,
)
from igmu.metrics.fid import frechet_result
from igmu.worlds import world_of

PROMPT_SET = "unrelated"


class FidWorld:
    name = "fid_world"
    aspect = "fidelity"
    higher_is_better = False

    def __init__(self, backbone: Any, world: Any) -> None:
        self.backbone = backbone
        self.world = world

    def needs(self, paired: Any) -> list[ImageNeed]:
        return [
            ImageNeed(self.backbone, rec)
            for method in paired.methods
            for rec in paired.records(method, PROMPT_SET)
        ]

    def compute(self, ctx: Any) -> list[MetricResult]:
        truth: dict[tuple[str, int], np.ndarray] = {}
        keys: dict[tuple[str, int], str] = {}
        per_method = {m: ctx.paired.records(m, PROMPT_SET) for m in ctx.paired.methods}
        wanted = sorted({(r.prompt, r.key.seed) for recs in per_method.values() for r in recs})
        if wanted:
            images = self.world.true_images([p for p, _ in wanted], [s for _, s in wanted])
            features = in_fixed_calls(self.backbone.image_embeddings, images)
            truth = dict(zip(wanted, features, strict=True))
            keys = {w: pixels_sha256(image) for w, image in zip(wanted, images, strict=True)}
            ctx.remember_features(self.backbone, {keys[w]: truth[w] for w in wanted})
        results = []
        for method, records in per_method.items():
            if len(records) < 2:
                continue
            refs = np.stack([truth[(r.prompt, r.key.seed)] for r in records])
            own = np.stack([ctx.embedding(self.backbone, r) for r in records])
            samples = [
                Sample(method, r, float("nan"), {
                    "whole_set": True, "reference": "world",
                    "reference_sha256": keys[(r.prompt, r.key.seed)],
                    "features": provider_key(self.backbone),
                })
                for r in records
            ]
            results.append(frechet_result(self, method, refs, own, samples, ctx))
        return results


@METRICS.register("fid_world")
@requires("a task of a world with an oracle (the MiniWorld) and at least 2 images per method "
          "on its unrelated prompts")
def build(task: Any, providers: Any, paired: Any) -> list[FidWorld]:
    world = world_of(task)
    if world is None or not world.has_oracle:
        return []
    if not any(len(paired.records(m, PROMPT_SET)) >= 2 for m in paired.methods):
        return []
    return [FidWorld(providers.fid(), world)]
