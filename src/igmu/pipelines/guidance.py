r"""Inference-time guidance: a method that changes how a model is *sampled*, not its weights.

Safe Latent Diffusion (SLD; Schramowski et al., CVPR 2023, arXiv:2211.05105; code
github.com/ml-research/safe-latent-diffusion, the same algorithm as diffusers'
``StableDiffusionPipelineSafe``) adds a third UNet pass per step, on a *safety concept* S, and
steers classifier-free guidance away from it:

.. math::

    \bar\epsilon = \epsilon_u + s_g(\epsilon_p - \epsilon_u - \gamma_i), \quad
    \gamma_i = \mu \odot (\epsilon_S - \epsilon_u) + s_m \nu_i, \quad
    \nu_{i+1} = \beta_m \nu_i + (1 - \beta_m)\gamma_i, \\
    \mu = \min(1, s_S |\epsilon_p - \epsilon_S|) \text{ where } \epsilon_p - \epsilon_S < \lambda,
    \text{ else } 0,

with :math:`\gamma_i` subtracted from step :math:`\delta` (warm-up) on and the momentum
:math:`\nu` accumulated from the first step, all element-wise on the UNet's output.

How igmu samples with it, on any pipeline of a known family (SD-1.x/2.x, SDXL, the MiniWorld):
``sampling_with(guidance, pipeline, rows, steps)`` installs a forward hook on the pipeline's UNet
for one pipeline call. With classifier-free guidance the pipelines batch ``[uncond; cond]``; the
hook adds the safety pass (the family adapter's ``predict_noise`` on the conditional half's
latents and timestep, with the safety concept's conditioning) and returns
``[eps_u; eps_p - gamma_i]``, so the pipeline's own ``u + g (c - u)`` is SLD's. Without
classifier-free guidance (scale <= 1) SLD does nothing, as in diffusers.

``guided_prediction`` is the same guidance for a loss at a random timestep (attacks on the model
as sampled): no sampling history there, so the momentum is zero and the warm-up is read from the
timestep (gamma applies where t lies past the first ``warmup`` share of the schedule).

Deliberate differences from the authors' code: (1) the warm-up is a share of the sampling steps
(``warmup = delta / 50``: the presets' delta at the authors' 50 steps), so it keeps its meaning at
the MiniWorld's 8-25 steps (at 50 steps it is the authors' step count exactly); (2) the safety
pass is a UNet call of its own rather than a third of one 3B batch (same values up to float
rounding); (3) on v-prediction models (the MiniWorld) SLD is computed on the epsilon the v
implies (``epsilon_factors``), the units its scale and threshold are defined in, and the
correction is mapped back to v.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

from igmu.core.errors import ConfigError

SLD = "sld"

# The paper's configurations (Table 2; diffusers' SafetyConfig), warm-up as a share of 50 steps.
PRESETS: dict[str, dict[str, float]] = {
    "weak": {"scale": 200.0, "warmup": 15 / 50, "threshold": 0.0, "momentum_scale": 0.0,
             "momentum_beta": 0.0},
    "medium": {"scale": 1000.0, "warmup": 10 / 50, "threshold": 0.01, "momentum_scale": 0.3,
               "momentum_beta": 0.4},
    "strong": {"scale": 2000.0, "warmup": 7 / 50, "threshold": 0.025, "momentum_scale": 0.5,
               "momentum_beta": 0.7},
    "max": {"scale": 5000.0, "warmup": 0.0, "threshold": 1.0, "momentum_scale": 0.5,
            "momentum_beta": 0.7},
}


@dataclass(frozen=True)
class SafeLatentGuidance:
    """SLD's settings; part of `GenerationSettings` (so of every image's cache key)."""

    concept: str
    scale: float = 1000.0  # s_S
    warmup: float = 0.2  # delta, as a share of the sampling steps
    threshold: float = 0.01  # lambda
    momentum_scale: float = 0.3  # s_m
    momentum_beta: float = 0.4  # beta_m
    kind: str = SLD

    def __post_init__(self) -> None:
        if self.kind != SLD:
            raise ConfigError(f"sampler_guidance: field 'kind' must be {SLD!r}, got {self.kind!r}")
        if not isinstance(self.concept, str) or not self.concept.strip():
            raise ConfigError("sampler_guidance: field 'concept' must be non-empty text")
        for name in ("scale", "warmup", "threshold", "momentum_scale", "momentum_beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                    value):
                raise ConfigError(f"sampler_guidance: field {name!r} must be a finite number")
            object.__setattr__(self, name, float(value))
        if self.scale < 0 or self.momentum_scale < 0:
            raise ConfigError("sampler_guidance: 'scale' and 'momentum_scale' must be >= 0")
        for name in ("warmup", "momentum_beta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"sampler_guidance: field {name!r} must lie in [0, 1]")

    @classmethod
    def from_dict(cls, values: Any, where: str) -> SafeLatentGuidance:
        if isinstance(values, SafeLatentGuidance):
            return values
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: sampler_guidance must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: sampler_guidance has unknown fields {unknown}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{where}: sampler_guidance: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def warmup_steps(self, steps: int) -> int:
        """delta in steps for a sampling of ``steps`` steps."""
        return int(round(self.warmup * steps))


def safety_term(guidance: SafeLatentGuidance, e_uncond: Any, e_cond: Any, e_safety: Any,
                momentum: Any) -> tuple[Any, Any]:
    """(gamma_i, nu_{i+1}) of one step, element-wise on the UNet's outputs."""
    import torch

    gap = e_cond - e_safety
    scale = torch.clamp(gap.abs() * guidance.scale, max=1.0)
    scale = torch.where(gap >= guidance.threshold, torch.zeros_like(scale), scale)
    gamma = (e_safety - e_uncond) * scale + guidance.momentum_scale * momentum
    return gamma, guidance.momentum_beta * momentum + (1 - guidance.momentum_beta) * gamma


def epsilon_factors(scheduler: Any, t: Any, like: Any) -> tuple[Any, Any]:
    """(a, b) with epsilon = a * prediction + b * x_t at timestep(s) ``t``: (1, 0) for epsilon
    models; (sqrt(abar_t), sqrt(1 - abar_t)) for v-prediction. SLD's scale and threshold are in
    epsilon units, so a v model is guided on its epsilon (the differences scale by a)."""
    import torch

    kind = str(getattr(scheduler.config, "prediction_type", "epsilon"))
    if kind == "epsilon":
        return 1.0, 0.0
    if kind != "v_prediction":
        raise ConfigError(f"SLD supports epsilon and v-prediction models, not {kind!r}")
    steps = torch.as_tensor(t, device="cpu").long().reshape(-1)
    abar = scheduler.alphas_cumprod.to("cpu")[steps].to(device=like.device, dtype=like.dtype)
    shape = (-1, *([1] * (like.ndim - 1)))
    return abar.sqrt().reshape(shape), (1 - abar).sqrt().reshape(shape)


def safety_conditioning(family: Any, guidance: SafeLatentGuidance) -> Any:
    """The safety concept's conditioning, as the pipeline encodes a prompt."""
    return family.encode_prompts([guidance.concept])


@contextmanager
def sampling_with(guidance: SafeLatentGuidance | None, pipeline: Any, rows: int, steps: int
                  ) -> Iterator[None]:
    """Within the block, ``pipeline(...)`` of ``rows`` images and ``steps`` steps samples with
    SLD (nothing changes when ``guidance`` is None)."""
    if guidance is None:
        yield
        return
    from igmu.families import family_of

    family = family_of(pipeline, type(pipeline).__name__)
    unet = family.unet
    param = next(unet.parameters())
    safety = safety_conditioning(family, guidance).to(device=param.device, dtype=param.dtype)
    warm = guidance.warmup_steps(steps)
    state: dict[str, Any] = {"step": 0, "momentum": None, "inside": False}

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if state["inside"]:
            return output
        latents = args[0] if args else kwargs["sample"]
        if int(latents.shape[0]) != 2 * rows:  # no classifier-free guidance: SLD is off
            return output
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        noise = output[0] if isinstance(output, tuple) else output.sample
        e_uncond, e_cond = noise.chunk(2)
        t_cond = t[rows:] if hasattr(t, "ndim") and t.ndim == 1 and t.shape[0] == 2 * rows else t
        state["inside"] = True
        try:
            e_safety = family.predict_noise(latents[rows:], t_cond, safety, module)
        finally:
            state["inside"] = False
        a, b = epsilon_factors(pipeline.scheduler, t_cond, e_cond)
        x_t = latents[rows:]
        eps = [a * e + b * x_t for e in (e_uncond, e_cond, e_safety)]
        if state["momentum"] is None:
            state["momentum"] = e_cond.new_zeros(e_cond.shape)
        gamma, state["momentum"] = safety_term(guidance, *eps, state["momentum"])
        if state["step"] >= warm:
            e_cond = e_cond - gamma / a
        state["step"] += 1
        import torch

        guided = torch.cat([e_uncond, e_cond])
        if isinstance(output, tuple):
            return (guided, *output[1:])
        return type(output)(sample=guided)

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def guided_prediction(family: Any, guidance: SafeLatentGuidance, latents: Any, t: Any,
                      cond: Any, uncond: Any, scale: float, safety: Any, schedule: Any) -> Any:
    """SLD's guided prediction at timestep(s) ``t`` for a loss (no history: zero momentum;
    gamma where ``t`` is past the warm-up share of the schedule), differentiable in ``cond``;
    ``schedule``: a scheduler of the model's noise schedule (its ``alphas_cumprod``)."""
    import torch

    batch = int(latents.shape[0])
    tt = t
    if torch.is_tensor(t) and t.ndim == 1 and int(t.shape[0]) == batch:
        tt = torch.cat([t, t])
    both = uncond.expand(batch).cat(cond.expand(batch))
    e_uncond, e_cond = family.predict_noise(torch.cat([latents, latents]), tt, both).chunk(2)
    e_safety = family.predict_noise(latents, t, safety.expand(batch))
    a, b = epsilon_factors(schedule, t, e_cond)
    eps = [a * e + b * latents for e in (e_uncond, e_cond, e_safety)]
    gamma, _ = safety_term(guidance, *eps, torch.zeros_like(e_cond))
    total = int(schedule.config.num_train_timesteps)
    step = torch.as_tensor(t, device=latents.device).float().reshape(-1)
    past = step <= total * (1.0 - guidance.warmup)
    past = past.reshape(-1, *([1] * (latents.ndim - 1))).to(gamma.dtype)
    return e_uncond + scale * (e_cond - e_uncond - past * gamma / a)
