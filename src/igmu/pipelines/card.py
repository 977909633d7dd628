"""The method card beside an unlearned model, read back: what loading and sampling the model
folder need from it (its base, the published form's weights, the negative prompt, the sampler
guidance). Written by
`igmu.methods.card.build_card`; reading needs neither torch nor diffusers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from igmu.core.constants import METHOD_CARD, METHOD_CARD_SCHEMA
from igmu.core.errors import ConfigError
from igmu.core.files import read_text

CARD_NAME = METHOD_CARD
CARD_SCHEMA = METHOD_CARD_SCHEMA


def read_method_card(folder: str | Path) -> dict[str, Any] | None:
    """The method card of an output folder, or None when the folder has none."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    try:
        card = json.loads(read_text(path, "method card"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(card, dict) or card.get("schema") != CARD_SCHEMA:
        raise ConfigError(f"{path}: field 'schema' must be {CARD_SCHEMA!r}")
    return card


def negative_prompt_of(folder: str | Path) -> str | None:
    """The negative prompt a model folder must be generated with (NEGPROMPT), else None."""
    card = read_method_card(folder)
    return None if card is None else card.get("negative_prompt")


def sampler_guidance_of(folder: str | Path) -> dict[str, Any] | None:
    """The inference-time guidance (SLD) a model folder must be sampled with, else None."""
    card = read_method_card(folder)
    return None if card is None else card.get("sampler_guidance")
