"""What the fine-tuning methods FMN, SalUn and CA share (a private helper, not a method).

- `ImageSampler`: the *original* model's own images of prompts, as the UNet's input (x0 in
  latent space for SD/SDXL, pixels for the MiniWorld): DDIM from Gaussian noise with
  classifier-free guidance, the pipeline's own unconditional branch, noise from a CPU
  generator (one noise tensor per image, drawn in order, so batching does not change it).
- `TrainingNoise`: the forward process of the pipeline's training schedule (a
  ``DDPMScheduler`` built from the pipeline's scheduler config): random t, x_t, and the target
  of the denoising loss for the scheduler's prediction type (epsilon, v, sample).
- `parameter_group`: the UNet parameters a method trains, by the authors' group names.
- `autocast`: mixed precision in the settings' compute dtype around float32 master weights.
- `ShuffledBatches`: images drawn in a fresh random order every pass (a shuffling DataLoader).
- `check_image_training`: the checks of the settings FMN and CA share.
"""

from __future__ import annotations

from typing import Any

from igmu.methods.base import require

# UNet parameter groups: the authors' names (FMN ``only_optimize_ca``, CA ``--parameter_group``,
# SalUn ``--train_method``) mapped onto diffusers parameter names.
PARAMETER_GROUPS = ("unet", "xattn", "xattn-kv", "attn")


def in_group(name: str, group: str) -> bool:
    """Whether UNet parameter ``name`` is trained in ``group``: ``unet`` every parameter,
    ``xattn`` every parameter of the cross-attention layers (``attn2``), ``xattn-kv`` their key
    and value projections (``attn2.to_k``, ``attn2.to_v``), ``attn`` the q/k/v/out projections
    of every attention layer, self- and cross-attention (CA's ``attn``)."""
    parts = name.split(".")
    if group == "unet":
        return True
    if group == "attn":
        return any(p in ("to_q", "to_k", "to_v", "to_out") for p in parts)
    if "attn2" not in parts:
        return False
    if group == "xattn":
        return True
    after = parts[parts.index("attn2") + 1 : parts.index("attn2") + 2]
    return after in (["to_k"], ["to_v"])


def parameter_group(unet: Any, group: str, method: str) -> tuple[list[str], list[Any]]:
    """(names, parameters) of ``group`` in ``unet``; every other parameter is frozen."""
    require(group in PARAMETER_GROUPS,
            f"{method} setting 'params' must be one of {PARAMETER_GROUPS}")
    unet.requires_grad_(False)
    names, params = [], []
    for name, param in unet.named_parameters():
        if in_group(name, group):
            param.requires_grad_(True)
            names.append(name)
            params.append(param)
    require(bool(params), f"{method}: the UNet has no parameters in group {group!r}")
    return names, params


def autocast(device: Any, dtype_name: str) -> Any:
    """Mixed precision in ``dtype_name`` (off for float32), as ESD."""
    import torch

    from igmu.pipelines.load import torch_dtype

    dtype = torch_dtype(dtype_name)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def latent_shape(unet: Any, latent_size: int) -> tuple[int, int, int]:
    """(channels, height, width) of the UNet's input; ``latent_size`` 0 = its sample_size."""
    config = unet.config
    size = latent_size or config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(config.in_channels), int(height), int(width)


class ImageSampler:
    """The original model's images of prompts (see the module docstring)."""

    def __init__(self, pipeline: Any, adapter: Any, steps: int, guidance: float,
                 shape: tuple[int, int, int], device: Any, dtype_name: str = "float32") -> None:
        from diffusers import DDIMScheduler

        self.adapter = adapter
        self.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        self.scheduler.set_timesteps(steps, device=device)
        self.guidance = float(guidance)
        self.shape = shape
        self.device = device
        self.dtype_name = dtype_name

    def sample(self, cond: Any, generator: Any, unet: Any, batch: int = 16) -> Any:
        """x0 [N, C, h, w] (float32, CPU) for the N rows of conditioning ``cond``."""
        import torch

        count = len(cond)
        noise = [torch.randn((1, *self.shape), generator=generator) for _ in range(count)]
        uncond = self.adapter.unconditional(None).to(self.device, torch.float32)
        out = []
        for start in range(0, count, batch):
            rows = cond.rows(slice(start, start + batch)).to(self.device, torch.float32)
            z = torch.cat(noise[start : start + batch]).to(self.device)
            z = z * self.scheduler.init_noise_sigma
            with torch.no_grad(), autocast(self.device, self.dtype_name):
                for t in self.scheduler.timesteps:
                    model_in = self.scheduler.scale_model_input(z, t)
                    guided = self.adapter.guided_noise(model_in, t, rows, uncond.expand(len(rows)),
                                                       self.guidance, unet=unet)
                    z = self.scheduler.step(guided.float(), t, z).prev_sample
            out.append(z.float().cpu())
        return torch.cat(out)


class TrainingNoise:
    """The training forward process and the denoising target of the pipeline's schedule."""

    def __init__(self, pipeline: Any, method: str) -> None:
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.steps = int(self.scheduler.config.num_train_timesteps)
        self.kind = self.scheduler.config.prediction_type
        require(self.kind in ("epsilon", "v_prediction", "sample"),
                f"{method}: the scheduler's prediction_type {self.kind!r} is not supported")

    def draw(self, x0: Any, generator: Any) -> tuple[Any, Any, Any]:
        """(x_t, t, noise): t uniform in [0, T) per row, as the authors' training loops."""
        import torch

        t = torch.randint(0, self.steps, (int(x0.shape[0]),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x0, noise, t = x0.to(torch.float32), noise.to(x0.device), t.to(x0.device)
        return self.scheduler.add_noise(x0, noise, t), t, noise

    def target(self, x0: Any, noise: Any, t: Any) -> Any:
        """What the UNet is trained to output: the noise, the velocity, or x0."""
        if self.kind == "epsilon":
            return noise
        if self.kind == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, t)
        return x0


class ShuffledBatches:
    """Indices 0..count-1 in a fresh ``rng`` order every pass; ``take(n)`` the next n (a pass
    is appended when fewer than n remain, as a shuffling DataLoader that drops nothing)."""

    def __init__(self, count: int, rng: Any) -> None:
        self.count, self.rng, self.order = count, rng, []

    def take(self, n: int) -> list[int]:
        if len(self.order) < n:
            fresh = list(range(self.count))
            self.rng.shuffle(fresh)
            self.order += fresh
        picked, self.order = self.order[:n], self.order[n:]
        return picked


def check_image_training(method: str, settings: dict[str, Any]) -> None:
    """The settings of a fine-tune on the original model's images (FMN, CA)."""
    for key in ("steps", "probe", "latent_size"):
        require(settings[key] >= 0, f"{method} setting {key!r} must be >= 0")
    for key in ("batch_size", "images", "image_steps"):
        require(settings[key] >= 1, f"{method} setting {key!r} must be >= 1")
    require(settings["lr"] > 0, f"{method} setting 'lr' must be > 0")
    require(settings["weight_decay"] >= 0, f"{method} setting 'weight_decay' must be >= 0")
    require(settings["max_grad_norm"] > 0, f"{method} setting 'max_grad_norm' must be > 0")
    require(settings["image_guidance"] >= 0, f"{method} setting 'image_guidance' must be >= 0")
