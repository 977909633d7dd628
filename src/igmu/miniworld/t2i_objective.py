"""What one training step of the MiniWorld text-to-image model computes: a batch of renders and
captions, the diffusion loss (epsilon or v, min-SNR-gamma weighted), the EMA of the weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from igmu.miniworld.clip_train import ScenePool, tokenize


class Ema:
    """An exponential moving average of a module's parameters (what is shipped)."""

    def __init__(self, module: Any, decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for p in module.parameters()]

    def update(self, module: Any, step: int) -> None:
        import torch

        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            # One fused call, not one kernel per tensor: on a GPU the loop is launch-bound.
            torch._foreach_lerp_(self.shadow, [p.detach() for p in module.parameters()], 1 - decay)

    def copy_to(self, module: Any) -> Any:
        import torch

        with torch.no_grad():
            for s, p in zip(self.shadow, module.parameters(), strict=True):
                p.copy_(s)
        return module


def snr_weights(alphas_cumprod: Any, t: Any, gamma: float, prediction_type: str) -> Any:
    """Loss weights per timestep, as weights of the squared x0 error they amount to.

    epsilon (the old recipe): min-SNR-gamma (Hang et al. 2023), min(SNR, gamma) / SNR, i.e. x0
    error weighted min(SNR, gamma). That weight is about SNR at high noise: ~0.006 at t = 950,
    2e-9 at t = 999, so nothing asks the model to get the image's layout right where the
    sampler decides it, and the background (read off x_t from t ~ 950 on, where the weight is
    already negligible) was never tied to the caption.

    v: min(SNR + 1, gamma) / (SNR + 1), i.e. x0 error weighted min(SNR + 1, gamma): plain v MSE
    (x0 weight SNR + 1 >= 1) at high noise, clamped to gamma at low noise as min-SNR does.
    """
    alpha = alphas_cumprod[t]
    snr = alpha / (1 - alpha)
    if prediction_type == "v_prediction":
        return (snr + 1).clamp(max=gamma) / (snr + 1)
    return snr.clamp(max=gamma) / snr


class Batcher:
    """Seeded draws of (x0, captions) from a render pool, text states from the frozen encoder."""

    def __init__(
        self,
        pool: ScenePool,
        tokenizer: Any,
        encoder: Any,
        uncond: float,
        device: Any,
        observe: Callable[[list[Any], list[str]], None] | None = None,
    ) -> None:
        import torch

        self.observe = observe
        self.device = device
        self.pool = pool
        self.pixels = torch.from_numpy(pool.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.uncond = uncond
        self.token_ids: dict[str, Any] = {}

    def ids(self, captions: list[str]) -> Any:
        """Token ids, each caption tokenized once: the Python tokenizer costs more than a GPU
        step, and the world's captions repeat (70% of draws over the first 1,000 steps)."""
        import torch

        new = [c for c in dict.fromkeys(captions) if c not in self.token_ids]
        if new:
            self.token_ids.update(zip(new, tokenize(self.tokenizer, new), strict=True))
        return torch.stack([self.token_ids[c] for c in captions])

    def draw(self, rng: np.random.Generator, size: int) -> tuple[Any, Any]:
        import torch

        from igmu.miniworld.captions import caption_mix

        index = rng.integers(0, len(self.pool), size=size)
        captions = [caption_mix(self.pool.scenes[i], rng) for i in index]
        drop = rng.random(size) < self.uncond
        captions = ["" if d else c for c, d in zip(captions, drop, strict=True)]
        if self.observe is not None:
            self.observe([self.pool.scenes[i] for i in index], captions)
        with torch.no_grad():
            states = self.encoder(self.ids(captions).to(self.device))[0]
        return self.pixels[torch.from_numpy(index)].to(self.device), states


def diffusion_loss(
    torch: Any,
    unet: Any,
    scheduler: Any,
    x0: Any,
    states: Any,
    t: Any,
    noise: Any,
    gamma: float,
    bf16: bool,
) -> Any:
    noisy = scheduler.add_noise(x0, noise, t)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        prediction = unet(noisy, t, encoder_hidden_states=states).sample
    kind = scheduler.config.prediction_type
    target = scheduler.get_velocity(x0, noise, t) if kind == "v_prediction" else noise
    per_sample = ((prediction.float() - target) ** 2).mean(dim=(1, 2, 3))
    weights = snr_weights(scheduler.alphas_cumprod.to(t.device), t, gamma, kind)
    return (per_sample * weights).mean()
