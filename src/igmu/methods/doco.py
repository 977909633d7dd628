r"""DoCo — concept domain correction with concept-preserving gradient surgery (Wu et al., AAAI
2025, arXiv:2405.15304; code github.com/yongliang-wu/DoCo, commit ebf6ff4: ``train.py``,
``DoCo/gan.py``, ``DoCo/gradient_clip.py``, ``DoCo/model_pipeline.py``, ``DoCo/utils.py``,
``DoCo/scheduling_ddpm.py``).

Adversarial training aligns the output domain of the concept with the anchor's. On a noised
anchor image x_t (the original model's own image of the anchor prompt c_a), the trained model's
denoised estimate for the concept prompt c, x̂₀(x_t, c), is the *fake*, the frozen original's
x̂₀(x_t, c_a) the *real*; a PatchGAN D (logits per patch, BCE) learns to tell them apart and the
model learns to fool it, while a prior-preservation loss on other anchor images keeps the anchor:

.. math::

    \mathcal{L}_D = \mathrm{BCE}(D(\hat x_0^{\theta_0}(x_t, c_a)), 0)
        + \mathrm{BCE}(D(\hat x_0^{\theta}(x_t, c)), 1), \qquad
    \mathcal{L}_{adv} = \mathrm{BCE}(D(\hat x_0^{\theta}(x_t, c)), 0), \qquad
    \mathcal{L}_{p} = \| \epsilon_\theta(x'_t, c_a, t') - \epsilon \|^2

(train.py l. 1239-1265: the anchor is label 0). x̂₀ is the scheduler's ``pred_original_sample``
(``step_batch``, scheduling_ddpm.py l. 393-405), clipped where the pipeline's scheduler clips.
For the first ``warm_up`` steps only D trains (l. 1239). Then the model's update is the
*concept-preserving gradient*: g_adv and g_p are each clipped to total norm ``max_grad_norm``
(``norm_grad``, l. 1225-1236), and for every cross-attention tensor whose gradients conflict
(gradient_clip.py l. 21-31)

.. math::

    \cos = \langle \hat g_{adv}, \hat g_p \rangle < 0 \;\Rightarrow\;
    g_{adv} \leftarrow g_{adv} - \lambda \cos\, \hat g_p, \qquad \hat g = g / (\|g\| + 10^{-8})

and only g_adv is applied (the prior loss acts through the projection alone). This subtracts
λ·cos times the *unit* prior gradient, which is the exact projection (PCGrad, ``surgery=pcgrad``:
g_adv − λ⟨g_adv, ĝ_p⟩ĝ_p) only where ‖g_adv‖ = 1; after clipping ‖g_adv‖ ≤ 1, so the authors'
form over-corrects towards the prior's descent. ``surgery=none`` is the authors' branch without
``--gradient_clip``: L_adv + 0.1 · ``prior_weight`` · L_p (l. 1243-1257).

Data as the authors' (derived from Concept Ablation, as igmu's CA, whose prompt choice is
reused): the task's in-context ``unlearning.erase`` pairs as (target, anchor) prompts (else
concept words with ``anchor``; ``"{anchor}, in the style of {c}"`` for styles); ``images``
anchor images drawn by the original model (DDIM ``image_steps`` steps, guidance
``image_guidance``; x0 in the UNet's input space). A step takes ``batch_size`` prior rows and
as many concept rows (the authors' shuffled instance list against the unshuffled class list,
utils.py l. 198, 270-341), each flipped with p = 0.5 (``hflip``), in one UNet call; t uniform;
the prior target follows the scheduler's prediction type (v for the MiniWorld). No gradient
flows through the <sot> position of the cross-attention keys and values (the authors'
attention processor, model_pipeline.py l. 91-95). AdamW (0.9, 0.999, weight decay 1e-2), D
Adam (0.5, 0.999), constant rates. Kept from the authors' code: D's gradients are not zeroed
between the model's step and D's, so D's update also carries ∇_D L_adv (pulling its fake logits
towards 1/2); ``d_keeps_g_grad = false`` gives the textbook L_D.

Defaults (SD-1.x): the README's object/nudity commands — ``steps`` 2000, ``warm_up`` 1000,
``batch_size`` 8, ``lr`` 4.8e-5 (6e-6 × 8, ``--scale_lr``, one device), ``d_lr`` 1e-4 (0 = by
task: the style command's 5e-4 for styles), ``surgery_lambda`` 1, ``params`` xattn-kv
(``cross-attn``; ``unet`` = ``full-weight``, where only ``attn2`` gets the surgery, as the
authors'), 1000 images (``--num_class_images``) at 25 steps, guidance 6.

Discriminator: the authors' PatchGAN (gan.py l. 13-35: 4×4 stride-2 convolutions of 64, 128,
256, 512 channels, BatchNorm after all but the first, LeakyReLU 0.2, a 4×4 convolution to one
logit per patch) on the UNet's input channels: four blocks on SD's 64×64 latents, a 3×3 patch
map. Scaled by depth: ``d_depth`` 0 takes log₂(side) − 2 blocks (at most 4), the same 3×3 map on
smaller inputs — three blocks on the MiniWorld's 32×32 RGB pixels (its UNet's input space: D
judges the denoised images themselves), one on the tests' 8×8 latents; SDXL's 128×128 latents
keep four (7×7). The MiniWorld defaults (``world_defaults``: the sampling scaled to the world,
fewer steps and images) have no recorded grid yet; at them DoCo lowers ORG's residual on
mini_object (the slow test).

Deliberate differences: (1) the images are the original model's own and the pairs the task's
(the authors sample SD with DPM-Solver from ChatGPT-written or LAION captions); (2) no resize
augmentation and its "a far away"/"zoomed in" prompt prefixes (utils.py l. 287-306): they
would put words outside a task's prompts; (3) x̂₀ is clipped only where the pipeline's own
scheduler config clips (the MiniWorld), not by DDPMScheduler's default (SDXL's Euler config has
no ``clip_sample``); (4) the discriminator's depth below 64 (above); (5) the prior target's
prediction type (the authors' is ε); (6) no ``embedding`` parameter group.

Published form: the authors' ``delta.bin`` is ``{"unet": {name: tensor}}`` over every trained
tensor; igmu writes the same tensors to ``doco_unet.safetensors`` keyed ``unet.<name>`` (what
igmu's loader makes of the nested pickle), loaded by the models file's ``weights:`` field.
``probe`` fixed draws measure ‖x̂₀^θ(x_t, c) − x̂₀^{θ0}(x_t, c_a)‖² before and after training.
Deterministic on CPU with ``seed``.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

from igmu.methods._concept_training import (
    ImageSampler,
    ShuffledBatches,
    TrainingNoise,
    autocast,
    check_image_training,
    in_group,
    latent_shape,
    parameter_group,
)
from igmu.methods.base import EditOutcome, UnlearningMethod, register_method, require, unique
from igmu.methods.concept_ablation import target_and_anchor_prompts
from igmu.methods.pipeline import adapter_of
from igmu.tasks import Task

PARAMS = ("xattn-kv", "unet")
SURGERY = ("authors", "pcgrad", "none")
WEIGHTS_FILE = "doco_unet.safetensors"
IMAGE_SEED_OFFSET = 7_919
PROBE_SEED_OFFSET = 1_000_003
DISCRIMINATOR_SEED_OFFSET = 104_729


def discriminator_depth(side: int, depth: int = 0) -> int:
    """Downsampling blocks: ``depth``, or (0) log2(side) - 2, at most the authors' 4."""
    return depth or max(1, min(4, int(math.log2(max(side, 1))) - 2))


def patch_discriminator(channels: int, side: int, depth: int = 0, width: int = 64) -> Any:
    """The authors' PatchGAN on [B, channels, side, side]: logits [B, 1, p, p]."""
    from torch import nn

    blocks = discriminator_depth(side, depth)
    require(side >= 2 ** blocks * 2, f"DoCo: a {blocks}-block discriminator needs inputs of at "
            f"least {2 ** blocks * 2} pixels, not {side}; lower 'd_depth'")
    layers: list[Any] = []
    inputs = channels
    for i in range(blocks):
        outputs = width * 2 ** i
        layers.append(nn.Conv2d(inputs, outputs, 4, stride=2, padding=1))
        if i > 0:
            layers.append(nn.BatchNorm2d(outputs))
        layers.append(nn.LeakyReLU(0.2))
        inputs = outputs
    layers.append(nn.Conv2d(inputs, 1, 4, padding=1))
    return nn.Sequential(*layers)


def predicted_x0(noise: TrainingNoise, out: Any, x_t: Any, t: Any, clip: float | None) -> Any:
    """The scheduler's ``pred_original_sample`` of a UNet output, clipped to ±clip if given."""
    a = noise.scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1).float()
    if noise.kind == "epsilon":
        x0 = (x_t - (1 - a).sqrt() * out) / a.sqrt()
    elif noise.kind == "v_prediction":
        x0 = a.sqrt() * x_t - (1 - a).sqrt() * out
    else:
        x0 = out
    return x0 if clip is None else x0.clamp(-clip, clip)


def clipped(grads: list[Any], max_norm: float) -> list[Any]:
    """``clip_grad_norm_`` on a list of gradients (None kept): one total norm for all."""
    import torch

    present = [g for g in grads if g is not None]
    if not present:
        return grads
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [None if g is None else g * scale for g in grads]


def preserving_gradient(adv: list[Any], prior: list[Any], surgery: list[bool], mode: str,
                        lam: float) -> tuple[list[Any], int]:
    """(the adversarial gradients after the surgery, how many tensors conflicted): per tensor
    marked in ``surgery`` with cos(g_adv, g_p) < 0, g_adv - lam * s * unit(g_p), s = cos
    (``authors``, gradient_clip.py) or <g_adv, unit(g_p)> (``pcgrad``, the exact projection)."""
    import torch

    out, conflicts = [], 0
    for g, b, on in zip(adv, prior, surgery, strict=True):
        if g is not None and b is not None and on:
            b_unit = b / (torch.linalg.vector_norm(b) + 1e-8)
            cos = torch.dot((g / (torch.linalg.vector_norm(g) + 1e-8)).flatten(),
                            b_unit.flatten())
            if cos < 0:
                conflicts += 1
                s = cos if mode == "authors" else torch.dot(g.flatten(), b_unit.flatten())
                g = g - lam * s * b_unit
        out.append(g)
    return out, conflicts


@register_method
class DoCo(UnlearningMethod):
    name = "DoCo"
    summary = (
        "Concept domain correction: a PatchGAN on denoised estimates tells the concept prompt's "
        "from the anchor's, the cross-attention learns to fool it; concept-preserving gradient "
        "surgery against a prior loss"
    )
    defaults = {
        "concepts": None,
        # None: the task's paired anchors (unlearning.erase), else "painting" (styles) or ""
        "anchor": None,
        "steps": 2000,
        "warm_up": 1000,
        "lr": 4.8e-5,
        "d_lr": 0.0,  # 0 = by task: 5e-4 for styles, 1e-4 otherwise (the README's commands)
        "batch_size": 8,
        "params": "xattn-kv",
        "surgery": "authors",
        "surgery_lambda": 1.0,
        "prior_weight": 1.0,
        "d_keeps_g_grad": True,
        "d_depth": 0,  # 0 = log2(side) - 2 blocks, at most 4 (the authors' on SD)
        "d_width": 64,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "hflip": True,
        "images": 1000,
        "image_steps": 25,
        "image_guidance": 6.0,
        "latent_size": 0,  # 0 = the UNet's sample_size
        "probe": 4,
    }
    # Scaled to the world; never chosen on evaluated prompts (no grid recorded yet).
    world_defaults = {
        "miniworld": {"steps": 400, "warm_up": 200, "batch_size": 4, "lr": 1e-4,
                      "images": 120, "image_steps": 8, "image_guidance": 2.0},
    }

    def check(self, settings: dict[str, Any], task: Task) -> None:
        check_image_training("DoCo", settings)
        for key in ("warm_up", "d_depth"):
            require(settings[key] >= 0, f"DoCo setting {key!r} must be >= 0")
        require(settings["d_width"] >= 1, "DoCo setting 'd_width' must be >= 1")
        require(settings["d_lr"] >= 0, "DoCo setting 'd_lr' must be >= 0 (0 = by task)")
        for key in ("surgery_lambda", "prior_weight"):
            require(settings[key] >= 0, f"DoCo setting {key!r} must be >= 0")
        require(settings["params"] in PARAMS, f"DoCo setting 'params' must be one of {PARAMS}")
        require(settings["surgery"] in SURGERY,
                f"DoCo setting 'surgery' must be one of {SURGERY}")

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        import torch
        from tqdm.auto import tqdm

        targets, anchors, anchor_note = target_and_anchor_prompts(task, settings)
        seed = settings["seed"]
        torch.manual_seed(seed)
        device = torch.device(settings["device"])
        adapter = adapter_of(pipeline)
        unet = pipeline.unet.to(device).float().eval()
        for encoder in adapter.text_encoders:
            encoder.to(device)
        frozen = copy.deepcopy(unet).requires_grad_(False)
        target_cond = adapter.encode_prompts(targets).to(device, torch.float32)
        anchor_cond = adapter.encode_prompts(anchors).to(device, torch.float32)

        count, batch = settings["images"], settings["batch_size"]
        shape = latent_shape(unet, settings["latent_size"])
        sampler = ImageSampler(pipeline, adapter, settings["image_steps"],
                               settings["image_guidance"], shape, device, settings["dtype"])
        of_image = [k % len(targets) for k in range(count)]
        x0_all = sampler.sample(anchor_cond.rows(torch.tensor(of_image)),
                                torch.Generator("cpu").manual_seed(seed + IMAGE_SEED_OFFSET),
                                frozen)
        noise = TrainingNoise(pipeline, "DoCo")
        config = pipeline.scheduler.config
        clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample") else None
        d_lr = settings["d_lr"] or (5e-4 if task.node.startswith("style.") else 1e-4)
        with_prior = settings["surgery"] != "none" or settings["prior_weight"] > 0

        torch.manual_seed(seed + DISCRIMINATOR_SEED_OFFSET)
        disc = patch_discriminator(shape[0], min(shape[1:]), settings["d_depth"],
                                   settings["d_width"]).to(device).train()
        d_params = list(disc.parameters())
        d_optimizer = torch.optim.Adam(d_params, lr=d_lr, betas=(0.5, 0.999))
        bce = torch.nn.BCEWithLogitsLoss()

        def amp() -> Any:
            return autocast(device, settings["dtype"])

        def fake_and_real(z: Any, t: Any, inst: list[int], out: Any) -> tuple[Any, Any]:
            index = torch.tensor([of_image[k] for k in inst])
            with torch.no_grad(), amp():
                ref = adapter.predict_noise(z, t, anchor_cond.rows(index), unet=frozen)
            return (predicted_x0(noise, out.float(), z, t, clip),
                    predicted_x0(noise, ref.float(), z, t, clip))

        probe_gen = torch.Generator("cpu").manual_seed(seed + PROBE_SEED_OFFSET)
        probe_rng = random.Random(seed + PROBE_SEED_OFFSET)
        probes = []
        for _ in range(settings["probe"]):
            k = probe_rng.randrange(count)
            z, t, _ = noise.draw(x0_all[k : k + 1], probe_gen)
            probes.append(([k], z.to(device), t.to(device)))

        def probe_gap() -> float | None:
            if not probes:
                return None
            values = []
            for inst, z, t in probes:
                index = torch.tensor([of_image[k] for k in inst])
                with torch.no_grad(), amp():
                    out = adapter.predict_noise(z, t, target_cond.rows(index), unet=unet)
                fake, real = fake_and_real(z, t, inst, out)
                values.append(torch.nn.functional.mse_loss(fake, real))
            return float(sum(values) / len(values))

        before = probe_gap()
        names, params = parameter_group(unet, settings["params"], "DoCo")
        operated = [in_group(n, "xattn") for n in names]  # the authors' surgery: attn2 only
        optimizer = torch.optim.AdamW(params, lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=settings["weight_decay"])
        # the authors' attention processor: no gradient through the <sot> keys and values
        def no_sot_grad(module: Any, args: Any, out: Any) -> Any:
            return torch.cat([out[:, :1].detach(), out[:, 1:]], dim=1)

        hooks = [proj.register_forward_hook(no_sot_grad)
                 for _, proj in adapter.cross_attention_projections(unet)]
        batches = ShuffledBatches(count, random.Random(seed))
        instances = list(range(count))
        random.Random(seed + 1).shuffle(instances)  # the authors' shuffled instance list
        generator = torch.Generator("cpu").manual_seed(seed)
        d_losses, adv_losses, prior_losses, touched = [], [], [], set()
        conflicts = operated_count = 0
        bar = tqdm(range(settings["steps"]), desc="DoCo", disable=not settings["progress"],
                   leave=False)
        try:
            for step in bar:
                rows = batches.take(batch)
                inst = [instances[k] for k in rows]
                x0 = torch.cat([x0_all[inst], x0_all[rows]]) if with_prior else x0_all[inst]
                if settings["hflip"]:
                    flip = torch.rand(len(x0), generator=generator) < 0.5
                    x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
                z, t, eps = noise.draw(x0, generator)
                z, t, eps, x0 = z.to(device), t.to(device), eps.to(device), x0.to(device)
                index = torch.tensor([of_image[k] for k in inst])
                cond = target_cond.rows(index)
                if with_prior:
                    cond = cond.cat(anchor_cond.rows(torch.tensor([of_image[k] for k in rows])))
                train_g = step > settings["warm_up"]  # the authors' global_step > warm_up
                with amp(), torch.set_grad_enabled(train_g):
                    out = adapter.predict_noise(z, t, cond, unet=unet).float()
                n = len(inst)
                fake, real = fake_and_real(z[:n], t[:n], inst, out[:n])
                d_extra: list[Any] = []
                if train_g:
                    logits = disc(fake)
                    adv = bce(logits, torch.zeros_like(logits))
                    prior = (torch.nn.functional.mse_loss(
                        out[n:], noise.target(x0[n:], eps[n:], t[n:])) if with_prior else None)
                    if settings["surgery"] == "none":
                        loss = adv if prior is None else adv + (
                            settings["prior_weight"] * 0.1 * prior)
                        grads = torch.autograd.grad(loss, [*params, *d_params],
                                                    allow_unused=True)
                        g_adv = clipped(list(grads[: len(params)]), settings["max_grad_norm"])
                    else:
                        g_prior = clipped(list(torch.autograd.grad(
                            prior, params, retain_graph=True, allow_unused=True)),
                            settings["max_grad_norm"])
                        grads = torch.autograd.grad(adv, [*params, *d_params],
                                                    allow_unused=True)
                        g_adv, hit = preserving_gradient(
                            clipped(list(grads[: len(params)]), settings["max_grad_norm"]),
                            g_prior, operated, settings["surgery"], settings["surgery_lambda"])
                        conflicts += hit
                        operated_count += sum(operated)
                    d_extra = list(grads[len(params):]) if settings["d_keeps_g_grad"] else []
                    optimizer.zero_grad(set_to_none=True)
                    for name, p, g in zip(names, params, g_adv, strict=True):
                        if g is not None:
                            p.grad = g
                            touched.add(name)
                    optimizer.step()
                    adv_losses.append(adv.item())
                    if prior is not None:
                        prior_losses.append(prior.item())
                # the discriminator: anchor (real) 0, concept (fake) 1, after the model's step
                real_logits, fake_logits = disc(real.detach()), disc(fake.detach())
                d_loss = (bce(real_logits, torch.zeros_like(real_logits))
                          + bce(fake_logits, torch.ones_like(fake_logits)))
                d_optimizer.zero_grad(set_to_none=True)
                d_loss.backward()
                for p, g in zip(d_params, d_extra, strict=False):
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad + g
                d_optimizer.step()
                d_losses.append(d_loss.item())
                bar.set_postfix(d=f"{d_losses[-1]:.3g}",
                                g=f"{adv_losses[-1]:.3g}" if adv_losses else "-")
        finally:
            bar.close()
            for handle in hooks:
                handle.remove()
        unet.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)
        after = probe_gap()

        hyperparameters = {key: settings[key] for key in (
            "steps", "warm_up", "lr", "batch_size", "params", "surgery", "surgery_lambda",
            "prior_weight", "d_keeps_g_grad", "weight_decay", "max_grad_norm", "hflip",
            "images", "image_steps", "image_guidance")}
        hyperparameters.update(
            d_lr=d_lr, d_depth=discriminator_depth(min(shape[1:]), settings["d_depth"]),
            d_width=settings["d_width"], d_optimizer="Adam(0.5, 0.999)", x0_clip=clip,
            compute_dtype=settings["dtype"], optimizer="AdamW", lr_schedule="constant",
            latent_shape=list(shape), image_sampler="DDIM (original model)",
            prior="denoising loss on the anchor images" if with_prior else None,
        )
        return EditOutcome(
            concepts=targets,
            preserved=unique(anchors) if with_prior else [],
            anchor=anchor_note,
            hyperparameters=hyperparameters,
            edited_parameters=[n for n in names if n in touched],
            stats={
                "probe_draws": len(probes),
                "probe_x0_gap_before": before,
                "probe_x0_gap_after": after,
                "discriminator_parameters": int(sum(p.numel() for p in d_params)),
                "conflict_share": conflicts / operated_count if operated_count else None,
                "d_loss": [float(f"{v:.6g}") for v in d_losses],
                "adv_loss": [float(f"{v:.6g}") for v in adv_losses],
                "prior_loss": [float(f"{v:.6g}") for v in prior_losses],
            },
        )

    def write_form(self, pipeline: Any, folder: Path, outcome: EditOutcome
                   ) -> dict[str, Any] | None:
        """The authors' ``delta.bin`` (every trained tensor) as safetensors, ``unet.``-keyed."""
        from safetensors.torch import save_file

        group = outcome.hyperparameters["params"]
        state = {f"unet.{name}": p.detach().to("cpu").contiguous()
                 for name, p in pipeline.unet.named_parameters() if in_group(name, group)}
        save_file(state, str(Path(folder) / WEIGHTS_FILE))
        return {"weights": WEIGHTS_FILE}
