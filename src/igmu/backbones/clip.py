"""CLIP image and text embeddings through transformers' CLIPModel."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from igmu.backbones.resolve import ResolvedModel, resolve_pretrained
from igmu.backbones.weights import unsafe_pickle_refusal
from igmu.core.errors import ModelNotFoundError

_LOADED: dict[tuple[str, str, str], ClipBackbone] = {}


class ClipBackbone:
    """Projected CLIP embeddings (``get_image_features`` / ``get_text_features``), unnormalised."""

    def __init__(self, resolved: ResolvedModel, role: str, device: str = "cpu") -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.resolved = resolved
        self.role = role
        self.device = device
        try:
            self.model = CLIPModel.from_pretrained(resolved.location).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(resolved.location, use_fast=False)
        except (OSError, ValueError) as exc:
            refusal = unsafe_pickle_refusal(exc, f"{role}: {resolved.reference}")
            if refusal is not None:
                raise refusal from None
            raise ModelNotFoundError(
                f"{role}: {resolved.reference} is not a loadable CLIP model folder "
                f"(needs config.json, weights, preprocessor and tokenizer files): {exc}"
            ) from None
        self._torch = torch
        preprocessing = self.processor.image_processor.to_dict()
        self.preprocessing = {
            k: preprocessing.get(k)
            for k in ("size", "crop_size", "resample", "image_mean", "image_std", "do_center_crop")
        }
        digest = hashlib.sha256(json.dumps(self.preprocessing, sort_keys=True).encode()).hexdigest()
        self.fingerprint = f"clip:{resolved.weights_sha256[:16]}:{digest[:8]}"
        self.embed_dim = int(self.model.config.projection_dim)

    @classmethod
    def from_reference(
        cls, reference: str, role: str, field: str, device: str = "cpu"
    ) -> ClipBackbone:
        """Load once per process and location: detectors and metrics share one instance."""
        resolved = resolve_pretrained(reference, role, field)
        key = (resolved.location, resolved.weights_sha256, device)
        if key not in _LOADED:
            _LOADED[key] = cls(resolved, role, device)
        return _LOADED[key]

    def image_embeddings(self, images: list[np.ndarray]) -> np.ndarray:
        inputs = self.processor(images=list(images), return_tensors="pt")
        with self._torch.inference_mode():
            out = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        return out.float().cpu().numpy()

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        inputs = self.processor(  # a fixed length: the floats then do not depend on the batch
            text=list(texts),
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
        )
        with self._torch.inference_mode():
            out = self.model.get_text_features(
                input_ids=inputs["input_ids"].to(self.device),
                attention_mask=inputs["attention_mask"].to(self.device),
            )
        return out.float().cpu().numpy()

    def describe(self) -> dict:
        return {
            "role": self.role,
            "model": self.resolved.reference,
            "weights_sha256": self.resolved.weights_sha256,
            "preprocessing": self.preprocessing,
            "embed_dim": self.embed_dim,
        }
