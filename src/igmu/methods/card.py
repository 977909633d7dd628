"""The method card: ``igmu_method.json`` beside (or, for inference-time methods, instead of) an
unlearned model. One writer (`build_card`) and one reader (`read_method_card`), which generation
uses too; reading needs neither torch nor diffusers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from igmu.core.constants import METHOD_CARD, METHOD_CARD_SCHEMA
from igmu.core.errors import ConfigError

if TYPE_CHECKING:
    from igmu.methods.base import EditOutcome, UnlearningMethod
    from igmu.methods.pipeline import BaseInfo
    from igmu.tasks import Task

CARD_NAME = METHOD_CARD
CARD_SCHEMA = METHOD_CARD_SCHEMA


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
    if negative is not None:
        usage = (
            f"Weights are the base model's. Generate with negative_prompt={negative!r} in place "
            "of the empty unconditional prompt (classifier-free guidance), same seeds and steps "
            "as ORG."
        )
    else:
        usage = "Generate as with ORG (empty negative prompt); the weights carry the edit."
    return {
        "schema": CARD_SCHEMA,
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
        "generation": {"negative_prompt": negative, "usage": usage},
        "software": software_versions(),
    }


def read_method_card(folder: str | Path) -> dict[str, Any] | None:
    """The method card of an output folder, or None when the folder has none."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(card, dict) or card.get("schema") != CARD_SCHEMA:
        raise ConfigError(f"{path}: field 'schema' must be {CARD_SCHEMA!r}")
    return card


def negative_prompt_of(folder: str | Path) -> str | None:
    """The negative prompt a model folder must be generated with (NEGPROMPT), else None."""
    card = read_method_card(folder)
    return None if card is None else card.get("negative_prompt")
