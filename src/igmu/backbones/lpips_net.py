"""LPIPS through the `lpips` package: its linear heads, a torchvision backbone we load safely."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from igmu.backbones.weights import load_state_dict, sha256_of
from igmu.core.errors import MissingExtraError, ModelNotFoundError

NETS = ("alex", "vgg", "squeeze")


class LpipsBackbone:
    """Distance between two RGB images of equal size; inputs scaled to [-1, 1] as lpips expects."""

    def __init__(self, net: str, backbone_weights: str | None, device: str = "cpu") -> None:
        try:
            import lpips
            import torch
        except ImportError:
            raise MissingExtraError("LPIPS", "perceptual", "lpips") from None
        if net not in NETS:
            raise ModelNotFoundError(f"LPIPS: models field 'lpips.net' must be one of {NETS}")
        if not backbone_weights:
            raise ModelNotFoundError(
                f"LPIPS: the {net} backbone needs ImageNet weights and none were given. Set models "
                f"field 'lpips.backbone_weights' to a torchvision {net} state dict "
                "(.safetensors, or .pth holding only tensors)."
            )
        self._torch = torch
        self.net_name = net
        with warnings.catch_warnings():  # torchvision's deprecation notes about lpips' call
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        state = load_state_dict(Path(backbone_weights), "LPIPS backbone (models field 'lpips')")
        load_backbone(self.model, state, net)
        self.model.to(device).eval()
        self.device = device
        self.weights_sha256 = sha256_of(backbone_weights)
        lin_sha = _lin_weights_sha(lpips, net)
        self.fingerprint = f"lpips-{net}:{self.weights_sha256[:12]}:{lin_sha[:12]}"
        self.lin_sha256 = lin_sha

    def distances(self, first: list[np.ndarray], second: list[np.ndarray]) -> np.ndarray:
        torch = self._torch
        a = _to_tensor(torch, first).to(self.device)
        b = _to_tensor(torch, second).to(self.device)
        with torch.inference_mode():
            return self.model(a, b).reshape(-1).double().cpu().numpy()

    def describe(self) -> dict:
        return {
            "role": "lpips",
            "model": f"lpips {self.net_name} (lpips package linear heads v0.1)",
            "weights_sha256": self.weights_sha256,
            "lin_weights_sha256": self.lin_sha256,
            "preprocessing": "RGB scaled to [-1, 1]; method image resized to the reference size",
        }


def _to_tensor(torch, images: list[np.ndarray]):
    batch = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def _lin_weights_sha(lpips_module, net: str) -> str:
    path = Path(lpips_module.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    return sha256_of(path) if path.is_file() else "unknown"


def load_backbone(model, state: dict, net: str) -> None:
    """Copy a torchvision ``features`` state dict into lpips' sliced copy of the network."""
    prefix = "features."
    features = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not features:
        features = dict(state)
    loaded = set()
    for slice_name, block in model.net.named_children():
        if not slice_name.startswith("slice"):
            continue
        for index, layer in block.named_children():
            params = {n: features.get(f"{index}.{n}") for n, _ in layer.named_parameters()}
            if not params:
                continue
            missing = [n for n, v in params.items() if v is None]
            if missing:
                raise ModelNotFoundError(
                    f"LPIPS backbone weights lack features.{index}.{missing[0]} for net {net!r}"
                )
            layer.load_state_dict(params)
            loaded.update(f"{index}.{n}" for n in params)
    if not loaded:
        raise ModelNotFoundError(f"LPIPS backbone weights match no layer of the {net} network")
