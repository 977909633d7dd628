"""ORG and NEGPROMPT: the untouched model, and the inference-time negative-prompt baseline.

Neither changes a weight. Both write the base pipeline again (safetensors) with a method card, so
every method's output folder loads the same way; NEGPROMPT with ``card_only`` writes only the card
(its ``base`` field says which model to load).

NEGPROMPT's card carries ``"negative_prompt": "<concept>"`` (default: the task's concept name, or
the ``concepts`` given joined by ", "). A generation engine either treats the method name
NEGPROMPT as ORG plus that negative prompt, or reads the card of any model folder and passes
``negative_prompt=card["negative_prompt"]`` to the pipeline call when it is not null: with
classifier-free guidance the negative prompt replaces the empty unconditional prompt, so the
sampler is steered away from the concept. Seeds, steps and guidance stay those of ORG.
"""

from __future__ import annotations

from typing import Any

from igmu.core.constants import NEGPROMPT, ORG
from igmu.methods.base import (
    EditOutcome,
    UnlearningMethod,
    concepts_and_preserved,
    register_method,
)
from igmu.tasks import Task


@register_method
class ORG(UnlearningMethod):
    name = ORG
    summary = "The original model, untouched (the reference every method is compared with)"
    defaults: dict[str, Any] = {}
    changes_weights = False

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        return EditOutcome(concepts=[], preserved=[], hyperparameters={})


@register_method
class NEGPROMPT(UnlearningMethod):
    name = NEGPROMPT
    summary = (
        "Inference-time baseline: the original weights, generated with the concept as the "
        "negative prompt"
    )
    defaults = {"concepts": None, "negative_prompt": None}
    changes_weights = False
    card_only_allowed = True

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        negative = settings["negative_prompt"]
        if negative is None:
            given = settings["concepts"]
            negative = ", ".join(given) if given else task.concept_name
        concepts, _ = concepts_and_preserved(
            task, {"concepts": settings["concepts"] or [negative], "preserve": []}
        )
        return EditOutcome(
            concepts=concepts,
            preserved=[],
            hyperparameters={"negative_prompt": negative},
            negative_prompt=negative,
        )
