"""The method card: ``igmu_method.json`` beside (or, for inference-time methods and published
forms, instead of) an unlearned model. Its one writer is `build_card`; its one reader is
`igmu.pipelines.card.read_method_card`, which loading a model folder needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from igmu.core.constants import METHOD_CARD_SCHEMA

if TYPE_CHECKING:
    from igmu.methods.base import EditOutcome, UnlearningMethod
    from igmu.methods.pipeline import BaseInfo
    from igmu.tasks import Task

def software_versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    from igmu import __version__

    return {
        "igmu": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def build_card(
    method: UnlearningMethod,
    task: Task,
    settings: dict[str, Any],
    base: BaseInfo,
    outcome: EditOutcome,
) -> dict[str, Any]:
    negative = outcome.negative_prompt
    guidance = outcome.sampler_guidance
    if guidance is not None:
        usage = (
            f"Weights are the base model's. Generate with the sampler guidance "
            f"{guidance['kind']!r} away from {guidance['concept']!r} (igmu.pipelines.guidance), "
            "same seeds, steps and guidance scale as ORG."
        )
    elif negative is not None:
        usage = (
            f"Weights are the base model's. Generate with negative_prompt={negative!r} in place "
            "of the empty unconditional prompt (classifier-free guidance), same seeds and steps "
            "as ORG."
        )
    else:
        usage = "Generate as with ORG (empty negative prompt); the weights carry the edit."
    return {
        "schema": METHOD_CARD_SCHEMA,
        "method": method.name,
        "summary": method.summary,
        "task": {
            "name": task.name,
            "version": task.version,
            "concept_name": task.concept_name,
            "source": task.source,
        },
        "concept_words": outcome.concepts,
        "preserved": outcome.preserved,
        "anchor": outcome.anchor,
        "negative_prompt": negative,
        "hyperparameters": outcome.hyperparameters,
        "seed": settings["seed"],
        "device": str(settings["device"]),
        "base": base.as_dict(),
        "weights_changed": method.changes_weights,
        "edited_parameters": outcome.edited_parameters,
        "stats": outcome.stats,
        "sampler_guidance": guidance,
        "generation": {"negative_prompt": negative, "sampler_guidance": guidance,
                       "usage": usage},
        "software": software_versions(),
    }
