r"""SalUn — saliency unlearning (Fan et al., ICLR 2024, arXiv:2310.12508; code
github.com/OPTML-Group/Unlearn-Saliency, folder ``SD``: ``train-scripts/generate_mask.py``,
``train-scripts/random_label.py``, ``train-scripts/nsfw_removal.py``).

Two stages on the UNet.

1. **Weight saliency.** The gradient of the forgetting loss — the negated denoising loss of the
   classifier-free-guided prediction on images of the concept —

   .. math::

       g = \nabla_\theta \sum_{\text{batches}} -\big\| \epsilon - \big[(1 + w)\,
           \epsilon_\theta(x_t, c, t) - w\, \epsilon_\theta(x_t, \varnothing, t)\big]\big\|^2

   is summed over one pass of the forget images (batches of ``batch_size``, t uniform, ∅ the
   empty prompt, w = ``mask_guidance``; generate_mask.py l. 33-69), and the mask m keeps the
   ``mask_ratio`` share of all UNet weights with the largest |g| (one global ranking over every
   tensor, l. 71-107; threshold 0.5, l. 78).

2. **Random-label forgetting on the salient weights.** Fine-tune with

   .. math::

       \mathcal{L} = \big\| \epsilon_\theta(x^f_t, c, t) - \mathrm{sg}[\epsilon_\theta(x^f_t, c',
           t)] \big\|^2 + \alpha\, \big\| \epsilon_\theta(x^r_t, c_r, t) - \epsilon \big\|^2

   where the concept prompt c's prediction on a forget image is pulled onto the *current*
   model's (stop-gradient) prediction for another prompt c' (the authors' "pseudo" label: the
   next Imagenette class, or "a photo of a person wearing clothes" for nudity) at the same x_t,
   plus α = ``alpha`` times the ordinary denoising loss on a retain image with its prompt
   (random_label.py l. 78-128); the gradient is multiplied by the mask before every Adam step
   (l. 132-139), so the weights outside the mask never change.

- Data: the authors train on Imagenette photos of the class (objects) or on 800 images the
  original model generated (nudity, README). igmu uses the *original* model's own images:
  ``images`` forget images of the erase prompts and ``images`` retain images of the preserved
  prompts (each cycled), DDIM ``image_steps`` steps at guidance ``image_guidance``, seeded; x0
  is in the UNet's input space (latents, no VAE round trip; pixels for the MiniWorld).
- Prompts: the erase prompts (default: the task's in-context ``unlearning.erase`` prompts, else
  its concept name and words); c' = each prompt's paired anchor (the same scene without the
  concept) for a task's pairs, else ``anchor`` (default: the first preserved prompt, "another
  class"); retain prompts: the preserved prompts (default: the task's ``unlearning.preserve``,
  else its unrelated and related class names).
- Denoising targets follow the scheduler's prediction type (ε for SD, v for the MiniWorld).
- Parameters changed (``params``): ``unet`` — every UNet tensor (``--train_method full``, the
  README's command); ``xattn`` — only the ``attn2`` tensors. ``edited_parameters`` lists the
  trained tensors with at least one salient weight; only the masked entries change.

Defaults (SD-1.x) are the authors': ``mask_ratio`` 0.5 (generate_mask.py l. 78),
``mask_guidance`` 7.5 (``--c_guidance``, l. 231), ``batch_size`` 8 (random_label.py l. 236,
generate_mask.py l. 238), ``alpha`` 0.5, ``lr`` 1e-5, ``epochs`` 5 and ``params`` unet (the SD
README's ``random_label.py`` command), Adam without weight decay (random_label.py l. 56);
``images`` 800 (the README's 800 generated images per set), 50 DDIM steps at guidance 7.5 for
them. The forget images are taken in order and the retain images reshuffled every pass (the
authors' DataLoaders, dataset.py l. 144-164). Deterministic on CPU with ``seed``.
"""

from __future__ import annotations

import random
from typing import Any

from igmu.methods._concept_training import (
    ImageSampler,
    ShuffledBatches,
    TrainingNoise,
    autocast,
    latent_shape,
    parameter_group,
)
from igmu.methods.base import (
    EditOutcome,
    UnlearningMethod,
    concepts_and_preserved,
    erase_anchors,
    register_method,
    require,
)
from igmu.methods.pipeline import adapter_of
from igmu.tasks import Task

PARAMS = ("unet", "xattn")
FORGET_SEED_OFFSET = 7_919
RETAIN_SEED_OFFSET = 15_485_863
MASK_SEED_OFFSET = 2_750_159


def saliency_mask(gradients: dict[str, Any], ratio: float) -> dict[str, Any]:
    """{name: bool mask}: the ``ratio`` share of all entries with the largest |gradient| (one
    ranking over every tensor; ties broken by position, as a stable sort)."""
    import torch

    flat = torch.cat([g.abs().flatten() for g in gradients.values()])
    keep = int(flat.numel() * ratio)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        chosen[order[:keep]] = True
    masks, start = {}, 0
    for name, g in gradients.items():
        masks[name] = chosen[start : start + g.numel()].reshape(g.shape)
        start += g.numel()
    return masks


def cycled(items: list[Any], count: int) -> list[Any]:
    return [items[k % len(items)] for k in range(count)]


@register_method
class SalUn(UnlearningMethod):
    name = "SalUn"
    summary = (
        "Saliency unlearning: a weight mask from the forgetting loss's gradient, then "
        "random-label forgetting (concept -> anchor prompt) plus a retain loss on those weights"
    )
    defaults = {
        "concepts": None,
        "preserve": None,
        # None: the task's paired anchors (unlearning.erase), else the first preserved prompt
        "anchor": None,
        "mask_ratio": 0.5,
        "mask_guidance": 7.5,
        "alpha": 0.5,
        "lr": 1e-5,
        "epochs": 5,
        "batch_size": 8,
        "params": "unet",
        "images": 800,
        "image_steps": 50,
        "image_guidance": 7.5,
        "latent_size": 0,  # 0 = the UNet's sample_size
    }
    # Chosen on mini_object's training prompts only (benchmarks/method_defaults.py).
    world_defaults = {
        "miniworld": {"lr": 1e-4, "images": 120, "image_steps": 8, "image_guidance": 2.0,
                      "mask_guidance": 2.0},
    }

    def check(self, settings: dict[str, Any], task: Task) -> None:
        require(0 < settings["mask_ratio"] <= 1, "SalUn setting 'mask_ratio' must be in (0, 1]")
        require(settings["alpha"] >= 0, "SalUn setting 'alpha' must be >= 0")
        require(settings["lr"] > 0, "SalUn setting 'lr' must be > 0")
        require(settings["epochs"] >= 0, "SalUn setting 'epochs' must be >= 0")
        for key in ("batch_size", "images", "image_steps"):
            require(settings[key] >= 1, f"SalUn setting {key!r} must be >= 1")
        require(settings["latent_size"] >= 0, "SalUn setting 'latent_size' must be >= 0")
        require(settings["params"] in PARAMS, f"SalUn setting 'params' must be one of {PARAMS}")

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        import torch
        from tqdm.auto import tqdm

        concepts, preserved = concepts_and_preserved(task, settings)
        # the random label: each prompt's paired anchor, else another class (a preserved one)
        pseudo, anchor = erase_anchors(task, settings, concepts, preserved[0] if preserved else "")
        require(settings["alpha"] == 0 or bool(preserved),
                "SalUn: the retain term (alpha > 0) needs preserved prompts ('preserve')")

        seed = settings["seed"]
        torch.manual_seed(seed)
        device = torch.device(settings["device"])
        adapter = adapter_of(pipeline)
        unet = pipeline.unet.to(device).float().eval()
        for encoder in adapter.text_encoders:
            encoder.to(device)
        forget_cond = adapter.encode_prompts(concepts).to(device, torch.float32)
        pseudo_cond = adapter.encode_prompts(pseudo).to(device, torch.float32)
        null_cond = adapter.encode_prompts([""]).to(device, torch.float32)
        retain_cond = (adapter.encode_prompts(preserved).to(device, torch.float32)
                       if preserved else None)

        count = settings["images"]
        shape = latent_shape(unet, settings["latent_size"])
        sampler = ImageSampler(pipeline, adapter, settings["image_steps"],
                               settings["image_guidance"], shape, device, settings["dtype"])
        forget_of = cycled(list(range(len(concepts))), count)
        forget_x0 = sampler.sample(
            forget_cond.rows(torch.tensor(forget_of)),
            torch.Generator("cpu").manual_seed(seed + FORGET_SEED_OFFSET), unet)
        retain_of, retain_x0 = [], None
        if retain_cond is not None and settings["alpha"] > 0:
            retain_of = cycled(list(range(len(preserved))), count)
            retain_x0 = sampler.sample(
                retain_cond.rows(torch.tensor(retain_of)),
                torch.Generator("cpu").manual_seed(seed + RETAIN_SEED_OFFSET), unet)
        noise = TrainingNoise(pipeline, "SalUn")
        batch = settings["batch_size"]
        batches = [list(range(s, min(s + batch, count))) for s in range(0, count, batch)]

        def amp() -> Any:
            return autocast(device, settings["dtype"])

        # 1. the saliency mask: |sum of gradients of the negated guided denoising loss|
        all_names = [n for n, _ in unet.named_parameters()]
        unet.requires_grad_(True)
        unet.zero_grad(set_to_none=True)
        mask_gen = torch.Generator("cpu").manual_seed(seed + MASK_SEED_OFFSET)
        w = settings["mask_guidance"]
        for rows in tqdm(batches, desc="SalUn mask", disable=not settings["progress"],
                         leave=False):
            x0 = forget_x0[rows]
            z, t, eps = noise.draw(x0, mask_gen)
            z, t, eps, x0 = z.to(device), t.to(device), eps.to(device), x0.to(device)
            cond = forget_cond.rows(torch.tensor([forget_of[k] for k in rows]))
            with amp():
                both = adapter.predict_noise(torch.cat([z, z]), torch.cat([t, t]),
                                             cond.cat(null_cond.expand(len(rows))), unet=unet)
            out_c, out_null = both.float().chunk(2)
            guided = (1 + w) * out_c - w * out_null
            loss = -torch.nn.functional.mse_loss(noise.target(x0, eps, t), guided)
            loss.backward()  # gradients add up over the batches, as the authors'
        gradients = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                     for n, p in unet.named_parameters()}
        unet.zero_grad(set_to_none=True)
        masks = saliency_mask({n: gradients[n].cpu() for n in all_names},
                              settings["mask_ratio"])
        del gradients

        # 2. random-label forgetting + retain loss, gradients masked
        names, params = parameter_group(unet, settings["params"], "SalUn")
        device_masks = {n: masks[n].to(device) for n in names}
        optimizer = torch.optim.Adam(params, lr=settings["lr"])
        generator = torch.Generator("cpu").manual_seed(seed)
        retain_batches = ShuffledBatches(count, random.Random(seed))
        steps = settings["epochs"] * len(batches)
        losses, touched = [], set()
        bar = tqdm(range(steps), desc="SalUn", disable=not settings["progress"], leave=False)
        for step in bar:
            rows = batches[step % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            if retain_x0 is not None:
                picked = retain_batches.take(len(rows))
                x0 = retain_x0[picked]
                z, t, eps = noise.draw(x0, generator)
                z, t, eps, x0 = z.to(device), t.to(device), eps.to(device), x0.to(device)
                cond = retain_cond.rows(torch.tensor([retain_of[k] for k in picked]))
                with amp():
                    out = adapter.predict_noise(z, t, cond, unet=unet)
                retain_loss = torch.nn.functional.mse_loss(out.float(), noise.target(x0, eps, t))
                total = settings["alpha"] * retain_loss
            x0 = forget_x0[rows]
            z, t, _ = noise.draw(x0, generator)
            z, t = z.to(device), t.to(device)
            index = torch.tensor([forget_of[k] for k in rows])
            with amp():
                forget_out = adapter.predict_noise(z, t, forget_cond.rows(index), unet=unet)
                with torch.no_grad():
                    pseudo_out = adapter.predict_noise(z, t, pseudo_cond.rows(index), unet=unet)
            loss = torch.nn.functional.mse_loss(forget_out.float(), pseudo_out.float()) + total
            loss.backward()
            for n, p in zip(names, params, strict=True):
                if p.grad is not None:
                    p.grad.mul_(device_masks[n])
                    if bool(device_masks[n].any()):
                        touched.add(n)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
        bar.close()
        unet.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)

        salient = sum(int(masks[n].sum()) for n in all_names)
        total_weights = sum(int(masks[n].numel()) for n in all_names)
        hyperparameters = {key: settings[key] for key in (
            "mask_ratio", "mask_guidance", "alpha", "lr", "epochs", "batch_size", "params",
            "images", "image_steps", "image_guidance")}
        hyperparameters.update(
            steps=steps, compute_dtype=settings["dtype"], optimizer="Adam",
            latent_shape=list(shape), image_sampler="DDIM (original model)",
        )
        return EditOutcome(
            concepts=concepts,
            preserved=preserved,
            anchor=anchor,
            hyperparameters=hyperparameters,
            edited_parameters=[n for n in names if n in touched],
            stats={
                "salient_weights": salient,
                "unet_weights": total_weights,
                "salient_trained_weights": sum(int(masks[n].sum()) for n in names),
                "train_loss": [float(f"{v:.6g}") for v in losses],
            },
        )
