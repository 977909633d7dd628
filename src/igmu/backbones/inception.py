"""Inception-v3 pool features for FID, through torch-fidelity's FID-compatible network."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from igmu.backbones.weights import load_state_dict, sha256_of
from igmu.core.errors import MissingExtraError, ModelNotFoundError

FEATURE = "2048"


class InceptionBackbone:
    """2048-d pool3 features of the FID Inception (inputs: uint8 RGB, resized to 299 inside)."""

    def __init__(self, weights: str | None, device: str = "cpu") -> None:
        try:
            import torch
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise MissingExtraError(
                "FID with Inception-v3", "perceptual", "torch-fidelity"
            ) from None
        if not weights:
            raise ModelNotFoundError(
                "FID feature extractor: Inception-v3 needs a weights file and none was given. "
                "Set models field 'fid.weights' to the FID Inception state dict "
                "(pt_inception-2015-12-05-6726825d.pth, as torch-fidelity/pytorch-fid use), "
                "or set 'fid.kind: clip' to use a CLIP image tower (recorded as such)."
            )
        path = Path(weights)
        state = load_state_dict(path, "FID Inception-v3 (models field 'fid.weights')")
        self._torch = torch
        self.net = _build(FeatureExtractorInceptionV3, state)
        self.net.to(device).eval()
        self.device = device
        self.weights_sha256 = sha256_of(path)
        self.fingerprint = f"inception-v3-fid:{self.weights_sha256[:16]}"
        self.embed_dim = 2048

    def image_embeddings(self, images: list[np.ndarray]) -> np.ndarray:
        torch = self._torch
        result = np.empty((len(images), self.embed_dim), dtype=np.float64)
        by_shape: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):  # batch same-size images; each is resized to 299
            by_shape.setdefault(image.shape, []).append(index)
        for indices in by_shape.values():
            batch = np.stack([images[i] for i in indices])
            tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
            with torch.inference_mode():
                out = self.net(tensor.to(self.device))
            result[indices] = out[0].reshape(len(indices), -1).double().cpu().numpy()
        return result

    def describe(self) -> dict:
        return {
            "role": "fid",
            "model": "inception-v3 (torch-fidelity, FID-compatible)",
            "weights_sha256": self.weights_sha256,
            "preprocessing": "uint8 RGB, bilinear resize to 299 inside the network",
            "embed_dim": 2048,
        }


def _build(cls, state: dict):
    import tempfile

    import torch

    # torch-fidelity loads its weights from a path with torch.load; hand it the checked tensors.
    with tempfile.TemporaryDirectory() as tmp:
        checked = Path(tmp) / "inception.pth"
        torch.save(state, checked)
        return cls("inception-v3-compat", [FEATURE], feature_extractor_weights_path=str(checked))
