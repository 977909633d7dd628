r"""CA — Concept Ablation, model-based variant (Kumari et al., ICCV 2023, arXiv:2303.13516; code
github.com/nupurkmr9/concept-ablation, ``diffusers/train.py`` and ``diffusers/utils.py``).

Fine-tunes the UNet so that its prediction for the *target* prompt (with the concept) matches
its own prediction for the *anchor* prompt (the same scene with the anchor concept instead), on
noised images of the anchor:

.. math::

    \mathcal{L} = \big\| \epsilon_{\theta}(x_t, c^*, t) - \mathrm{sg}\big[\epsilon_{\theta}(x_t,
        c, t)\big] \big\|^2, \qquad x_t = \mathrm{add\_noise}(x_0, \epsilon, t),\; t \sim
        U[0, T)

with x_0 an image the original model generated for the anchor prompt c, c* the target prompt
(the anchor caption with the anchor word replaced by the target, utils.py ``__getprompt__``,
l. 197-199), and the anchor prediction taken from the model being trained, without gradient
(train.py l. 1100-1114, ``loss_type_reverse = model-based``, the default, l. 399-403). The loss
is averaged over the image (the authors' valid-region mask is all ones without augmentation,
l. 1145-1149).

- Pairs: the task's in-context ``unlearning.erase`` pairs are the (target, anchor) prompts: each
  anchor prompt (the scene without the concept) is drawn by the original model, and the model
  learns to draw the same for the prompt with the concept. With concept words (no pairs, or a
  ``concepts`` setting) the anchor prompt is ``anchor`` (default ``painting`` for style tasks,
  the README's style command, with target prompts ``"{anchor}, in the style of {c}"``, utils.py
  l. 179-187; else the empty prompt with target prompt c).
- Anchor images: ``images`` images (the authors' ``--num_class_images``, 1000, train.py l.
  277-283), anchor prompt k mod n for image k, sampled by the original model with DDIM
  ``image_steps`` (25) steps at guidance ``image_guidance`` (6), as train.py l. 728-733; x0 in
  the UNet's input space (latents, no VAE round trip; pixels for the MiniWorld). ``hflip`` flips
  half the images horizontally (``--hflip``; igmu flips x0, which for SD is the latent).
- Parameters changed (``params``): ``xattn-kv`` — the cross-attention key and value
  projections (``--parameter_group cross-attn``, the paper's default for objects and styles,
  train.py l. 59-65, 912-918); ``attn`` — every attention q/k/v/out projection (the authors'
  nudity setting); ``unet`` — every UNet weight (``full-weight``, their memorisation setting).
- Optimiser as the authors': AdamW (betas 0.9/0.999, weight decay 1e-2, train.py l. 437),
  gradient norm clipped to 1.0 (l. 446, 1172-1185), constant learning rate.

Defaults (SD-1.x, the README's object command, ``diffusers/README.md`` l. 48-69): batch
``batch_size`` 4, ``lr`` 8e-6 = 2e-6 × 4 (``--learning_rate=2e-6 --scale_lr``: times the batch
and the device count, train.py l. 861-866, on one device), ``steps`` 200 (the README: "if 1 GPU
increase --max_train_steps to 200"), ``params`` xattn-kv, ``hflip`` on. The images are drawn
in a fresh random order every pass (DataLoader ``shuffle=True``). Noise from CPU generators
seeded with ``seed``; deterministic on CPU. ``probe`` fixed draws measure the loss before and
after training (against the *original* model's anchor prediction, so the two numbers compare).
"""

from __future__ import annotations

import random
from typing import Any

from igmu.methods._concept_training import (
    ImageSampler,
    ShuffledBatches,
    TrainingNoise,
    autocast,
    check_image_training,
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
    uses_task_pairs,
)
from igmu.methods.pipeline import adapter_of
from igmu.tasks import Task

PARAMS = ("xattn-kv", "attn", "unet")
IMAGE_SEED_OFFSET = 7_919
PROBE_SEED_OFFSET = 1_000_003


def target_and_anchor_prompts(task: Task, settings: dict[str, Any]
                              ) -> tuple[list[str], list[str], str]:
    """(target prompts, their anchor prompts, how the anchor was chosen)."""
    concepts, _ = concepts_and_preserved(task, {"concepts": settings["concepts"],
                                                "preserve": []})
    if uses_task_pairs(task, settings):
        return concepts, *erase_anchors(task, settings, concepts, "")
    style = task.node.startswith("style.")
    anchor = settings["anchor"]
    if anchor is None:
        anchor = "painting" if style else ""
    if style:
        return [f"{anchor}, in the style of {c}" for c in concepts], [anchor] * len(
            concepts), anchor
    return list(concepts), [anchor] * len(concepts), anchor


@register_method
class CA(UnlearningMethod):
    name = "CA"
    summary = (
        "Concept Ablation (model-based): fine-tune the cross-attention so the concept prompt's "
        "prediction matches the anchor prompt's on the original model's anchor images"
    )
    defaults = {
        "concepts": None,
        # None: the task's paired anchors (unlearning.erase), else "painting" (styles) or ""
        "anchor": None,
        "steps": 200,
        "lr": 8e-6,
        "batch_size": 4,
        "params": "xattn-kv",
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "hflip": True,
        "images": 1000,
        "image_steps": 25,
        "image_guidance": 6.0,
        "latent_size": 0,  # 0 = the UNet's sample_size
        "probe": 4,
    }
    # Chosen on mini_object's training prompts only (benchmarks/method_defaults.py).
    world_defaults = {
        "miniworld": {"lr": 1e-4, "images": 120, "image_steps": 8, "image_guidance": 2.0},
    }

    def check(self, settings: dict[str, Any], task: Task) -> None:
        check_image_training("CA", settings)
        require(settings["params"] in PARAMS, f"CA setting 'params' must be one of {PARAMS}")

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
        target_cond = adapter.encode_prompts(targets).to(device, torch.float32)
        anchor_cond = adapter.encode_prompts(anchors).to(device, torch.float32)

        count = settings["images"]
        shape = latent_shape(unet, settings["latent_size"])
        sampler = ImageSampler(pipeline, adapter, settings["image_steps"],
                               settings["image_guidance"], shape, device, settings["dtype"])
        of_image = [k % len(targets) for k in range(count)]
        x0_all = sampler.sample(anchor_cond.rows(torch.tensor(of_image)),
                                torch.Generator("cpu").manual_seed(seed + IMAGE_SEED_OFFSET),
                                unet)
        noise = TrainingNoise(pipeline, "CA")

        def amp() -> Any:
            return autocast(device, settings["dtype"])

        def predictions(rows: list[int], z: Any, t: Any, model: Any) -> tuple[Any, Any]:
            index = torch.tensor([of_image[k] for k in rows])
            with amp():
                pred = adapter.predict_noise(z, t, target_cond.rows(index), unet=unet)
                with torch.no_grad():
                    ref = adapter.predict_noise(z, t, anchor_cond.rows(index), unet=model)
            return pred.float(), ref.float()

        probe_gen = torch.Generator("cpu").manual_seed(seed + PROBE_SEED_OFFSET)
        probe_rng = random.Random(seed + PROBE_SEED_OFFSET)
        probes = []
        for _ in range(settings["probe"]):
            k = probe_rng.randrange(count)
            z, t, _ = noise.draw(x0_all[k : k + 1], probe_gen)
            z, t = z.to(device), t.to(device)
            with torch.no_grad():
                ref = predictions([k], z, t, unet)[1]  # the original model's anchor prediction
            probes.append(([k], z, t, ref))

        def probe_loss() -> float | None:
            if not probes:
                return None
            with torch.no_grad():
                values = [torch.nn.functional.mse_loss(predictions(k, z, t, unet)[0], ref)
                          for k, z, t, ref in probes]
            return float(sum(values) / len(values))

        before = probe_loss()
        names, params = parameter_group(unet, settings["params"], "CA")
        optimizer = torch.optim.AdamW(params, lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=settings["weight_decay"])
        batches = ShuffledBatches(count, random.Random(seed))
        generator = torch.Generator("cpu").manual_seed(seed)
        losses, touched = [], set()
        bar = tqdm(range(settings["steps"]), desc="CA", disable=not settings["progress"],
                   leave=False)
        for _ in bar:
            rows = batches.take(settings["batch_size"])
            x0 = x0_all[rows]
            if settings["hflip"]:
                flip = torch.rand(len(rows), generator=generator) < 0.5
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            z, t, _ = noise.draw(x0, generator)
            optimizer.zero_grad(set_to_none=True)
            pred, ref = predictions(rows, z.to(device), t.to(device), unet)
            loss = torch.nn.functional.mse_loss(pred, ref)
            loss.backward()
            touched.update(n for n, p in zip(names, params, strict=True) if p.grad is not None)
            torch.nn.utils.clip_grad_norm_(params, settings["max_grad_norm"])
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
        bar.close()
        unet.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)
        after = probe_loss()

        hyperparameters = {key: settings[key] for key in (
            "steps", "lr", "batch_size", "params", "weight_decay", "max_grad_norm", "hflip",
            "images", "image_steps", "image_guidance")}
        hyperparameters.update(
            loss="model-based", compute_dtype=settings["dtype"], optimizer="AdamW",
            lr_schedule="constant", latent_shape=list(shape),
            image_sampler="DDIM (original model)",
        )
        return EditOutcome(
            concepts=targets,
            preserved=[],
            anchor=anchor_note,
            hyperparameters=hyperparameters,
            edited_parameters=[n for n in names if n in touched],
            stats={
                "probe_draws": len(probes),
                "probe_loss_before": before,
                "probe_loss_after": after,
                "train_loss": [float(f"{v:.6g}") for v in losses],
                "anchor_prompts": len(set(anchors)),
            },
        )
