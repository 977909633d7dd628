"""The folder `igmu detectors train` writes: ``head.safetensors`` + ``detector.json``.

The card names the class order the head was trained with (``classes``, ``concept_index``), the
CLIP backbone whose embeddings it reads (reference, weights sha256, preprocessing), the data
(manifest sha256) and the default threshold. ``clip_head:<folder>`` and the models file's
``heads: {name: <folder>}`` load such a folder; the head then runs on the card's backbone, never
on another CLIP that happens to have the same width.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from igmu.core.errors import ConfigError, IGMUError, ModelNotFoundError
from igmu.core.files import read_text

CARD = "detector.json"
HEAD_FILE = "head.safetensors"
CARD_SCHEMA = "igmu.detector/1"


def is_head_folder(value: Any) -> bool:
    return isinstance(value, str) and (Path(value).expanduser() / CARD).is_file()


def read_card(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder).expanduser()
    path = folder / CARD
    try:
        card = json.loads(read_text(path, "detector card"))
    except FileNotFoundError:
        raise ConfigError(
            f"{folder}: no {CARD}; not a folder written by `igmu detectors train`"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(card, dict) or card.get("schema") != CARD_SCHEMA:
        raise ConfigError(f"{path}: field 'schema' must be {CARD_SCHEMA!r}")
    if card.get("concept_index") not in (0, 1):
        raise ConfigError(f"{path}: field 'concept_index' must be 0 or 1")
    if not (folder / HEAD_FILE).is_file():
        raise ModelNotFoundError(f"{folder}: {HEAD_FILE} is missing beside {CARD}")
    return card


def shipped_clips() -> list[str]:
    """The CLIPs the registered worlds ship (the MiniWorld's), as their models files name them."""
    from igmu.worlds import WORLDS

    found = []
    for name in WORLDS.names():
        try:
            clip = WORLDS.get(name).models().get("clip_detector")
        except IGMUError:  # a world whose models are not installed
            continue
        if isinstance(clip, str):
            found.append(clip)
    return found


def card_backbone(card: dict[str, Any], folder: str | Path, device: str = "cpu"):
    """The CLIP the head was trained on: the card's reference, else its resolved location, else
    a CLIP a world ships (the MiniWorld's); each only if its weights hash is the card's."""
    from igmu.backbones.clip import ClipBackbone
    from igmu.backbones.resolve import resolve_pretrained

    info = card.get("backbone") or {}
    want = info.get("weights_sha256")
    tried = []
    for candidate in (info.get("reference"), info.get("location"), *shipped_clips()):
        if not candidate or candidate in tried:
            continue
        tried.append(candidate)
        try:
            resolved = resolve_pretrained(candidate, "CLIP of a trained head", "backbone")
        except ModelNotFoundError:
            continue
        if resolved.weights_sha256 == want:
            return ClipBackbone.from_reference(
                resolved.location, "CLIP for detector heads", "backbone", device
            )
    raise ModelNotFoundError(
        f"{Path(folder) / CARD}: the CLIP this head was trained on (weights sha256 "
        f"{str(want)[:16]}...) is not at {', '.join(tried) or '(no reference)'}"
    )
