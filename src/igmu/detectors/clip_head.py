"""IGMU's concept detectors: frozen CLIP image embedding -> small gated MLP head -> sigmoid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from igmu.backbones.clip import ClipBackbone
from igmu.backbones.config import ModelsConfig
from igmu.backbones.weights import load_state_dict, sha256_of
from igmu.core.errors import ConfigError, ModelNotFoundError
from igmu.core.registry import did_you_mean
from igmu.detectors.base import DETECTORS, Verdict, detector_settings
from igmu.detectors.head_card import HEAD_FILE, card_backbone, is_head_folder, read_card

# Class indices follow alphabetical folder order at training time (ImageFolder), NOT the
# id2label in IGMU's config: index of the concept class for each official head.
KNOWN_HEADS: dict[str, dict[str, Any]] = {
    "nudity": {"classes": ["nude", "safe"], "concept_index": 0},
    "object_church": {"classes": ["church", "other"], "concept_index": 0},
    "object_parachute": {"classes": ["other", "parachute"], "concept_index": 1},
    "style_vangogh": {"classes": ["non_vangogh", "vangogh"], "concept_index": 1},
}


def build_head(embed_dim: int = 512, dropout: float = 0.3):
    """The IGMU head architecture; parameter names match the official state dicts."""
    from torch import nn

    class ConceptHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.Sequential(
                nn.Linear(embed_dim, embed_dim // 2),
                nn.ReLU(),
                nn.Linear(embed_dim // 2, embed_dim),
                nn.Sigmoid(),
            )
            self.classifier = nn.Sequential(
                nn.LayerNorm(embed_dim),
                nn.Linear(embed_dim, embed_dim // 2),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(embed_dim // 2, embed_dim // 4),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(embed_dim // 4, 1),
            )

        def forward(self, x):
            return self.classifier(x * self.attention(x))

    return ConceptHead()


class ClipHeadDetector:
    def __init__(
        self,
        backbone: ClipBackbone,
        head_name: str,
        head_path: str,
        concept_index: int,
        threshold: float,
    ) -> None:
        import torch

        self.name = f"clip_head:{head_name}"
        self.backbone = backbone
        self.head_name = head_name
        self.concept_index = concept_index
        self.threshold = float(threshold)
        state = load_state_dict(head_path, f"detector head {head_name!r} (models field 'heads')")
        dim = state.get("attention.0.weight")
        if dim is None:
            raise ModelNotFoundError(
                f"{head_path}: not an IGMU head state dict (no attention.0.weight)"
            )
        embed_dim = int(dim.shape[1])
        if embed_dim != backbone.embed_dim:
            raise ModelNotFoundError(
                f"head {head_name!r} expects {embed_dim}-d CLIP embeddings but the detector CLIP "
                f"({backbone.resolved.reference}) gives {backbone.embed_dim}-d"
            )
        self.head = build_head(embed_dim)
        self.head.load_state_dict(state)
        self.head.eval()
        self._torch = torch
        self.head_sha256 = sha256_of(head_path)
        self.model_fingerprint = f"{backbone.fingerprint}+head:{self.head_sha256[:16]}"
        self.trained: dict[str, Any] | None = None  # set for heads from `igmu detectors train`

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """P(class index 1) per row, as the official predict() computes it."""
        torch = self._torch
        with torch.inference_mode():
            logits = self.head(torch.from_numpy(np.asarray(embeddings, dtype=np.float32)))
        return torch.sigmoid(logits).reshape(-1).double().numpy()

    def analyse(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        return self.analyse_embeddings(self.backbone.image_embeddings(images))

    def analyse_embeddings(self, embeddings: np.ndarray) -> list[dict[str, Any]]:
        return [{"p_class1": float(p)} for p in self.probabilities(embeddings)]

    def verdict(self, raw: dict[str, Any]) -> Verdict:
        p1 = raw["p_class1"]
        concept = p1 if self.concept_index == 1 else 1.0 - p1
        return Verdict(concept > self.threshold, concept, {"p_class1": p1})

    def describe(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "kind": "clip+head (IGMU)",
            "backbone": self.backbone.describe(),
            "head_sha256": self.head_sha256,
            "concept_index": self.concept_index,
            "threshold": self.threshold,
            "score": "P(concept) from sigmoid of the head logit; flagged when > threshold",
            **({"trained": self.trained} if self.trained else {}),
        }


def resolve_head(models: ModelsConfig, head_name: str) -> tuple[str, int]:
    heads = models.get("heads")
    if head_name not in heads:
        known = list(heads)
        raise ModelNotFoundError(
            f"detector clip_head:{head_name}: no head weights configured. Add "
            f"'heads: {{{head_name}: /path/{head_name}.pth}}' to the models file "
            f"({models.source}).{did_you_mean(head_name, known) if known else ''}"
        )
    entry = heads[head_name]
    if isinstance(entry, str):
        if head_name not in KNOWN_HEADS:
            raise ConfigError(
                f"{models.source}: head {head_name!r} is not an official IGMU head, so give "
                f"'heads.{head_name}: {{path: ..., concept_index: 0 or 1}}' (the index of the "
                "concept class in alphabetical folder order at training time)"
            )
        return entry, KNOWN_HEADS[head_name]["concept_index"]
    if not isinstance(entry, dict) or "path" not in entry:
        raise ConfigError(f"{models.source}: field 'heads.{head_name}' needs 'path'")
    index = entry.get("concept_index", KNOWN_HEADS.get(head_name, {}).get("concept_index"))
    if index not in (0, 1):
        raise ConfigError(
            f"{models.source}: field 'heads.{head_name}.concept_index' must be 0 or 1"
        )
    return str(entry["path"]), int(index)


@DETECTORS.register("clip_head")
def build_clip_head(models: ModelsConfig, variant: str | None, overrides: dict[str, Any]):
    if not variant:
        raise ConfigError(
            "detector 'clip_head' needs a head name or a folder from `igmu detectors train`, "
            f"e.g. clip_head:nudity (official heads: {', '.join(KNOWN_HEADS)})"
        )
    overrides = dict(overrides)
    device = overrides.pop("device", "cpu")
    # igmu's Providers share one loaded CLIP (the models file's clip_detector)
    backbone = overrides.pop("backbone", None)
    folder = _trained_folder(models, variant)
    if folder is not None:
        # A folder from `igmu detectors train`: its card fixes class order, CLIP and threshold.
        card = read_card(folder)
        settings = detector_settings(models, "clip_head", {"threshold": card["threshold"]})
        settings.update(overrides)
        name = card["name"] if is_head_folder(variant) else variant
        detector = ClipHeadDetector(
            card_backbone(card, folder, device),
            name,
            str(Path(folder) / HEAD_FILE),
            int(card["concept_index"]),
            settings["threshold"],
        )
        detector.trained = {
            "folder": str(Path(folder).resolve()),
            "classes": card["classes"],
            "data_manifest_sha256": (card.get("data") or {}).get("manifest_sha256"),
        }
        return detector
    settings = detector_settings(models, "clip_head", {"threshold": 0.5})
    settings.update(overrides)
    path, concept_index = resolve_head(models, variant)
    if backbone is None:
        backbone = ClipBackbone.from_reference(
            models.get("clip_detector"), "CLIP for detector heads", "clip_detector", device
        )
    return ClipHeadDetector(backbone, variant, path, concept_index, settings["threshold"])


def _trained_folder(models: ModelsConfig, variant: str) -> str | None:
    """``clip_head:<folder>`` or ``heads: {variant: <folder>}`` naming a trained-head folder."""
    if is_head_folder(variant):
        return variant
    entry = models.get("heads").get(variant)
    if isinstance(entry, dict):
        entry = entry.get("path")
    return entry if is_head_folder(entry) else None
