"""Resolve a model reference (Hugging Face id or local directory) to a loadable location."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from igmu.backbones.weights import weights_fingerprint
from igmu.core.errors import ModelNotFoundError

HUB_FILES = ["*.json", "*.txt", "*.safetensors", "*.model"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    reference: str  # what the user wrote
    location: str  # local directory to load from
    weights_sha256: str


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ).lower() in ("1", "true", "yes")


def resolve_pretrained(reference: str, what: str, field: str) -> ResolvedModel:
    """A local directory as is; a hub id from the local cache, or downloaded when online."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return ResolvedModel(reference, str(path.resolve()), weights_fingerprint(path))
    if path.exists():
        raise ModelNotFoundError(f"{what} (models field {field!r}): {reference} is not a directory")
    if not HUB_ID.match(reference):
        raise ModelNotFoundError(
            f"{what} (models field {field!r}): local directory {reference} does not exist"
        )
    try:
        from huggingface_hub import snapshot_download

        location = snapshot_download(
            reference, local_files_only=hub_offline(), allow_patterns=HUB_FILES
        )
    except Exception as exc:
        mode = "offline (HF_HUB_OFFLINE is set)" if hub_offline() else "online"
        raise ModelNotFoundError(
            f"{what}: cannot resolve {reference!r} {mode}: {type(exc).__name__}. "
            f"Give a local directory (a save_pretrained folder) in the models file field "
            f"{field!r} (igmu ... --models models.yaml), or run once with network access to cache "
            f"it. For an offline smoke run: igmu models make-tiny DIR."
        ) from None
    return ResolvedModel(reference, location, weights_fingerprint(Path(location)))
