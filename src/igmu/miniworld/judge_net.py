"""The MiniWorld judges' network and file format: a small multi-head CNN, its preprocessing.

``build_net`` is the architecture (conv blocks -> linear features -> one linear head per label);
``images_to_array`` the preprocessing every judge applies (RGB uint8 -> bilinear resize to the
input size -> [-1, 1]). Training lives in ``judge_train``, loading and inference in ``judges``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from igmu.core.errors import ConfigError

SCHEMA = "igmu.miniworld.judge/1"
WEIGHTS = "judge.safetensors"
METADATA = "judge.json"
WORLD_HEADS = ("shape", "colour", "style", "attribute")
DEFAULT_ARCH = {"widths": [16, 32, 64], "feature_dim": 128, "input_size": 32}


def build_net(widths: Sequence[int], feature_dim: int, input_size: int, heads: dict[str, int]):
    """Conv blocks (conv-ReLU-conv-ReLU-maxpool) -> linear features -> one linear head per label."""
    import torch
    from torch import nn

    if input_size % (2 ** len(widths)):
        raise ConfigError(f"judge input size {input_size} must be divisible by 2^{len(widths)}")

    class JudgeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks = []
            channels = 3
            for width in widths:
                blocks.append(
                    nn.Sequential(
                        nn.Conv2d(channels, width, 3, padding=1),
                        nn.ReLU(),
                        nn.Conv2d(width, width, 3, padding=1),
                        nn.ReLU(),
                    )
                )
                channels = width
            self.blocks = nn.ModuleList(blocks)
            self.pool = nn.MaxPool2d(2)
            side = input_size // 2 ** len(widths)
            self.features = nn.Sequential(
                nn.Flatten(), nn.Linear(channels * side * side, feature_dim), nn.ReLU()
            )
            self.heads = nn.ModuleDict({n: nn.Linear(feature_dim, k) for n, k in heads.items()})

        def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
            maps = []
            for block in self.blocks:
                x = block(x)
                maps.append(x)
                x = self.pool(x)
            return maps

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = self.pool(block(x))
            return self.features(x)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            feats = self.embed(x)
            return {name: head(feats) for name, head in self.heads.items()}

    return JudgeNet()


def images_to_array(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """N x 3 x size x size float32 in [-1, 1]; any input size is resized (PIL bilinear)."""
    from PIL import Image

    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(f"image {i}: expected H x W x 3 RGB, got shape {array.shape}")
        array = np.ascontiguousarray(array[..., :3], dtype=np.uint8)
        if array.shape[:2] != (size, size):
            array = np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR))
        out[i] = array.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
    return out
