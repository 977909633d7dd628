r"""Receler — reliable concept erasing with lightweight erasers (Huang et al., ECCV 2024,
arXiv:2311.17717; code github.com/jasper0314-huang/Receler, ``train_receler.py``,
``receler/concept_reg.py``, ``receler/erasers/``).

Trains only small *eraser* adapters — one per transformer of the UNet, Linear(d, r) → GELU →
Linear(r, d) with the up-projection zero-initialised, added to the output of every
cross-attention of that transformer (``attn2(x) + E(attn2(x))``) — with three terms:

.. math::

    \mathcal{L} = \big\| \epsilon_{\theta,E}(x_t, c \oplus \delta, t) - [\epsilon_\theta(x_t, r, t)
        - \eta(\epsilon_\theta(x_t, c, t) - \epsilon_\theta(x_t, r, t))] \big\|^2
        + \alpha \frac{1}{|\mathcal{E}|}\sum_{E} \frac{\sum_{i \notin M} \overline{E(h)_i^2}}
        {|\{i \notin M\}|}

- the first term is ESD's erasing loss, taken by the model *with* erasers on the concept prompt c
  whose positions after its last token are replaced by ``advrs_prompts`` adversarial embeddings δ
  (in the text encoder's output space); ε_θ without erasers is the original model, r the empty
  prompt (or, for a task's in-context pairs, the paired anchor, ``reference=auto`` as igmu's
  ESD); x_t comes from the model with erasers sampling c for k of ``ddim_steps`` DDIM steps at
  guidance ``guidance`` (train_receler.py l. 122-133);
- the second (*concept-localised regularisation*) keeps every eraser's output E(h) near zero
  outside the concept's region M: the original model's cross-attention maps of the concept's
  tokens, averaged over heads, tokens and the layers at resolution ``mask_resolution`` (the
  authors' 16 × 16 of SD's 64 × 64 latents, following MasaCtrl), min-max normalised and
  thresholded at ``mask_threshold``, then resized to each layer (concept_reg.py ``get_mask``);
  α = ``reg_weight``;
- δ is trained *against* the erasers: before each erasing step, ``advrs_iters`` Adam steps
  (lr 0.1, weight decay 0.1) on mse(ε_{θ,E}(x_t, c ⊕ δ, t), ε_θ(x_t, c, t)); the erasing step
  uses the prediction of the last of them (l. 146-163).

Defaults are the authors' argparse: ``steps`` 500, ``lr`` 3e-4 (Adam), ``eta`` 1, ``guidance``
3, ``ddim_steps`` 50, ``rank`` 128, ``reg_weight`` 0.1, ``mask_threshold`` 0.1, ``advrs_iters``
50, ``advrs_prompts`` 16; ``mask_resolution`` 0 means a quarter of the latent side (16 for SD).

Deliberate differences: (1) the authors' code assigns δ to an advanced-indexing *copy* of the
conditioning (``emb_n[:, idx, :].data = δ``), so in their runs δ never reaches the model; igmu
inserts δ as the paper describes (``advrs_iters = 0`` trains without adversarial prompts, where
the authors' loop would not train at all); (2) for a task's in-context pairs the concept tokens
are the span where prompt and anchor differ (as igmu's FMN), for concept words the word's own
tokens; (3) t is the DDIM timestep reached (as igmu's ESD), not a uniform DDPM step inside its
interval; (4) x_t is sampled in the UNet's input space at ``latent_size``. The published form is
the authors' eraser folder in safetensors (``eraser_weights.safetensors`` + ``eraser_config.json``),
loaded by the models file's ``receler`` adapter.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

from igmu.methods._concept_training import autocast, latent_shape
from igmu.methods.base import (
    PAIRED_ANCHORS,
    EditOutcome,
    UnlearningMethod,
    concepts_and_preserved,
    register_method,
    require,
    uses_task_pairs,
)
from igmu.methods.fmn import attention_probs, concept_masks
from igmu.methods.pipeline import adapter_of
from igmu.tasks import Task

REFERENCES = ("auto", "null", "anchor")
WEIGHTS_FILE = "eraser_weights.safetensors"
CONFIG_FILE = "eraser_config.json"


def transformer_prefixes(unet: Any) -> list[tuple[str, list[Any]]]:
    """(diffusers name of each Transformer2DModel, its cross-attention modules)."""
    out = []
    for name, module in unet.named_modules():
        if type(module).__name__ != "Transformer2DModel":
            continue
        attns = [block.attn2 for _, block in module.named_modules()
                 if type(block).__name__ == "BasicTransformerBlock" and block.attn2 is not None]
        if attns:
            out.append((name, attns))
    return out


def initial_erasers(unet: Any, rank: int) -> dict[str, Any]:
    """Eraser weights as the adapter's state: down at nn.Linear's default init, up zero."""
    import torch

    state = {}
    for prefix, attns in transformer_prefixes(unet):
        dim = int(attns[0].to_out[0].weight.shape[1])
        down = torch.nn.Linear(dim, rank)
        state[f"{prefix}.down.weight"] = down.weight.detach().clone()
        state[f"{prefix}.down.bias"] = down.bias.detach().clone()
        state[f"{prefix}.up.weight"] = torch.zeros(dim, rank)
        state[f"{prefix}.up.bias"] = torch.zeros(dim)
    return state


class AttentionMaps:
    """The concept tokens' cross-attention maps of every layer of one (frozen) UNet call:
    {module: [B, HW]} averaged over heads and the marked text positions."""

    def __init__(self, modules: list[Any]) -> None:
        self.positions: Any = None
        self.maps: dict[int, Any] = {}
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True)
                        for m in modules]

    def _hook(self, attn: Any, args: tuple, kwargs: dict) -> None:
        if self.positions is None:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        probs = attention_probs(attn, hidden, context)  # [B, heads, HW, L]
        weights = self.positions.to(probs.device, probs.dtype)  # [B, L]
        picked = (probs * weights[:, None, None, :]).sum(-1) / weights.sum(-1)[:, None, None]
        self.maps[id(attn)] = picked.mean(1).detach()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def region_masks(maps: dict[int, Any], resolution: int, threshold: float) -> dict[int, Any]:
    """The authors' ``get_mask``: average the maps at ``resolution``, min-max normalise,
    threshold, and resize the binary mask to every layer's resolution. {module: [B, h, w]}."""
    import torch

    def side(hw: int) -> int:
        s = int(round(hw ** 0.5))
        require(s * s == hw, f"Receler: a cross-attention map of {hw} positions is not square")
        return s

    chosen = [m for m in maps.values() if side(m.shape[-1]) == resolution]
    require(bool(chosen), f"Receler: no cross-attention layer at resolution {resolution} "
            f"(have {sorted({side(m.shape[-1]) for m in maps.values()})}); set "
            "'mask_resolution' to one of them")
    avg = torch.stack([m.reshape(m.shape[0], resolution, resolution) for m in chosen]).mean(0)
    low = avg.amin(dim=(1, 2), keepdim=True)
    high = avg.amax(dim=(1, 2), keepdim=True)
    mask = ((avg - low) / (high - low + 1e-12) >= threshold).float()
    out = {}
    for key, m in maps.items():
        s = side(m.shape[-1])
        out[key] = torch.nn.functional.interpolate(mask[:, None], (s, s))[:, 0]
    return out


def nearest_resolution(unet: Any, adapter: Any, shape: tuple[int, int, int]) -> int:
    """The cross-attention resolution nearest a quarter of the latent side (the authors' 16 of
    SD's 64; ties go to the larger), found by one forward pass."""
    import torch

    sides: set[int] = set()
    hooks = [a.register_forward_pre_hook(
        lambda m, args, kwargs: sides.add(int(round((args[0] if args else
                                                     kwargs["hidden_states"]).shape[1] ** 0.5))),
        with_kwargs=True) for _, attns in transformer_prefixes(unet) for a in attns]
    try:
        with torch.no_grad():
            z = torch.zeros((1, *shape), device=unet.device)
            adapter.predict_noise(z, torch.tensor([1]), adapter.unconditional(None).to(
                unet.device, torch.float32), unet=unet)
    finally:
        for hook in hooks:
            hook.remove()
    wanted = max(1, shape[1] // 4)
    return min(sides, key=lambda s: (abs(s - wanted), -s))


@register_method
class Receler(UnlearningMethod):
    name = "Receler"
    summary = (
        "Lightweight eraser adapters after every cross-attention, trained with ESD's loss on "
        "adversarial prompts and kept silent outside the concept's attention region"
    )
    defaults = {
        "concepts": None,
        "steps": 500,
        "lr": 3e-4,
        "eta": 1.0,
        "guidance": 3.0,
        "ddim_steps": 50,
        "rank": 128,
        "reg_weight": 0.1,
        "mask_threshold": 0.1,
        "mask_resolution": 0,  # 0 = a quarter of the latent side (16 for SD's 64)
        "advrs_iters": 50,
        "advrs_prompts": 16,
        "advrs_lr": 0.1,
        "advrs_weight_decay": 0.1,
        "latent_size": 0,  # 0 = the UNet's sample_size
        "reference": "auto",
    }
    # Chosen on mini_object's training prompts only (benchmarks/method_defaults.py).
    world_defaults = {
        "miniworld": {"steps": 100, "ddim_steps": 10, "guidance": 2.0, "rank": 32,
                      "advrs_iters": 10},
    }

    def check(self, settings: dict[str, Any], task: Task) -> None:
        for key in ("steps", "advrs_iters", "advrs_prompts", "latent_size", "mask_resolution"):
            require(settings[key] >= 0, f"Receler setting {key!r} must be >= 0")
        for key in ("ddim_steps", "rank"):
            require(settings[key] >= 1, f"Receler setting {key!r} must be >= 1")
        for key in ("lr", "advrs_lr"):
            require(settings[key] > 0, f"Receler setting {key!r} must be > 0")
        require(settings["reg_weight"] >= 0, "Receler setting 'reg_weight' must be >= 0")
        require(0 <= settings["mask_threshold"] <= 1,
                "Receler setting 'mask_threshold' must be in [0, 1]")
        require(settings["reference"] in REFERENCES,
                f"Receler setting 'reference' must be one of {REFERENCES}")

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        import torch
        from diffusers import DDIMScheduler
        from tqdm.auto import tqdm

        from igmu.families import Conditioning
        from igmu.pipelines.adapters import ADAPTER_ATTRIBUTE
        from igmu.pipelines.adapters import Receler as EraserAdapter

        concepts, _ = concepts_and_preserved(task, {"concepts": settings["concepts"],
                                                    "preserve": []})
        paired = uses_task_pairs(task, settings)
        reference = settings["reference"]
        if reference == "auto":
            reference = "anchor" if paired else "null"
        require(reference == "null" or paired,
                "Receler setting reference=anchor needs the task's unlearning.erase pairs")
        anchors = [dict(task.unlearning.erase)[c] for c in concepts] if paired else None
        seed = settings["seed"]
        torch.manual_seed(seed)
        device = torch.device(settings["device"])
        adapter = adapter_of(pipeline)
        unet = pipeline.unet.to(device).float().eval()
        for encoder in adapter.text_encoders:
            encoder.to(device)
        frozen = copy.deepcopy(unet).requires_grad_(False)
        unet.requires_grad_(False)

        positions = concept_masks(pipeline, concepts, anchors, None if paired else concepts,
                                  pooler=False)
        cond = adapter.encode_prompts(concepts).to(device, torch.float32)
        ref_prompts = anchors if reference == "anchor" else [""] * len(concepts)
        ref = adapter.encode_prompts(ref_prompts).to(device, torch.float32)
        uncond = adapter.unconditional(None).to(device, torch.float32)
        lengths = adapter.tokenize(concepts).mask.sum(1)
        length, width = int(cond.hidden.shape[1]), int(cond.hidden.shape[2])
        adv_slots = [list(range(int(n) - 1, min(length, int(n) - 1 + settings["advrs_prompts"])))
                     for n in lengths]  # the <eot> position onwards, after the prompt

        # erasers, through the same adapter that loads the published form
        EraserAdapter.apply(pipeline, initial_erasers(unet, settings["rank"]), None, "Receler")
        setattr(unet, ADAPTER_ATTRIBUTE, [*getattr(unet, ADAPTER_ATTRIBUTE, []),
                                          EraserAdapter.name])
        for _, attns in transformer_prefixes(unet):
            for attn in attns[1:]:  # one eraser per transformer, as the published form holds
                attn.igmu_eraser = attns[0].igmu_eraser
        unet.to(device)
        erasers = [(attn, attn.igmu_eraser) for _, attns in transformer_prefixes(unet)
                   for attn in attns]
        params = list({id(p): p for _, e in erasers for p in e.parameters()}.values())
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=settings["lr"])
        frozen_attns = [a for _, attns in transformer_prefixes(frozen) for a in attns]
        capture = AttentionMaps(frozen_attns)
        outputs: dict[int, Any] = {}
        def recorder(key: int) -> Any:
            return lambda module, args, out: outputs.__setitem__(key, out)

        hooks = [e.register_forward_hook(recorder(id(attn))) for attn, e in erasers]
        frozen_of = {id(a): id(f) for (a, _), f in zip(erasers, frozen_attns, strict=True)}

        shape = latent_shape(unet, settings["latent_size"])
        resolution = settings["mask_resolution"] or nearest_resolution(frozen, adapter, shape)
        scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        scheduler.set_timesteps(settings["ddim_steps"], device=device)
        adversarial = [torch.rand((1, len(slots), width), generator=torch.Generator(
            "cpu").manual_seed(seed + 1 + i)).to(device).requires_grad_(True)
                       for i, slots in enumerate(adv_slots)]
        adv_optimizers = [torch.optim.Adam([d], lr=settings["advrs_lr"],
                                           weight_decay=settings["advrs_weight_decay"])
                          for d in adversarial]
        rng = random.Random(seed)
        generator = torch.Generator("cpu").manual_seed(seed)
        eta, amp = settings["eta"], (lambda: autocast(device, settings["dtype"]))

        def with_adversarial(i: int) -> Any:
            row = cond.rows(slice(i, i + 1))
            if not adv_slots[i] or settings["advrs_iters"] == 0:
                return row
            hidden = row.hidden.clone()
            hidden[:, adv_slots[i]] = adversarial[i].to(hidden.dtype)
            return Conditioning(hidden, row.pooled)

        erase_losses, reg_losses, adv_losses = [], [], []
        bar = tqdm(range(settings["steps"]), desc="Receler", disable=not settings["progress"],
                   leave=False)
        try:
            for _ in bar:
                i = rng.randrange(len(concepts))
                k = rng.randrange(settings["ddim_steps"])
                t = scheduler.timesteps[k]
                row = cond.rows(slice(i, i + 1))
                z = torch.randn((1, *shape), generator=generator).to(device)
                z = z * scheduler.init_noise_sigma
                with torch.no_grad(), amp():
                    for step_t in scheduler.timesteps[:k]:
                        model_in = scheduler.scale_model_input(z, step_t)
                        guided = adapter.guided_noise(model_in, step_t, row, uncond,
                                                      settings["guidance"], unet=unet)
                        z = scheduler.step(guided.float(), step_t, z).prev_sample
                    e_ref = adapter.predict_noise(z, t, ref.rows(slice(i, i + 1)),
                                                  unet=frozen).float()
                    capture.positions, capture.maps = positions[i : i + 1], {}
                    e_cond = adapter.predict_noise(z, t, row, unet=frozen).float()
                    capture.positions = None
                masks = region_masks(capture.maps, resolution, settings["mask_threshold"])
                target = e_ref - eta * (e_cond - e_ref)
                for inner in range(max(1, settings["advrs_iters"])):
                    outputs.clear()
                    with amp():
                        e_n = adapter.predict_noise(z, t, with_adversarial(i), unet=unet).float()
                    if settings["advrs_iters"] > 0 and adv_slots[i]:
                        attack = torch.nn.functional.mse_loss(e_n, e_cond)
                        (grad,) = torch.autograd.grad(attack, [adversarial[i]],
                                                      retain_graph=True)
                        adversarial[i].grad = grad
                        adv_optimizers[i].step()
                        adv_optimizers[i].zero_grad(set_to_none=True)
                        if inner == settings["advrs_iters"] - 1:
                            adv_losses.append(attack.item())
                    if inner < settings["advrs_iters"] - 1:
                        continue
                    erase = torch.nn.functional.mse_loss(e_n, target)
                    reg = 0.0
                    for attn, _ in erasers:
                        out = outputs[id(attn)].float()  # [B, HW, dim]
                        outside = 1.0 - masks[frozen_of[id(attn)]].reshape(out.shape[0], -1, 1)
                        reg = reg + ((out * outside) ** 2).mean(-1).sum() / (outside.sum()
                                                                             + 1e-9)
                    reg = reg / len(erasers)
                    loss = erase + settings["reg_weight"] * reg
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    erase_losses.append(erase.item())
                    reg_losses.append(float(reg.detach()) if torch.is_tensor(reg) else reg)
                    bar.set_postfix(loss=f"{loss.item():.4g}")
        finally:
            bar.close()
            capture.close()
            for handle in hooks:
                handle.remove()
        for p in params:
            p.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)
        del frozen

        hyperparameters = {key: settings[key] for key in (
            "steps", "lr", "eta", "guidance", "ddim_steps", "rank", "reg_weight",
            "mask_threshold", "advrs_iters", "advrs_prompts", "advrs_lr", "advrs_weight_decay")}
        hyperparameters.update(
            reference=reference, mask_resolution=resolution, compute_dtype=settings["dtype"],
            optimizer="Adam", latent_shape=list(shape), scheduler="DDIMScheduler",
            concept_tokens="differing span" if paired else "concept words",
        )
        return EditOutcome(
            concepts=concepts,
            preserved=[],
            anchor=PAIRED_ANCHORS if reference == "anchor" else "",
            hyperparameters=hyperparameters,
            edited_parameters=[],
            stats={
                "erasers": len(transformer_prefixes(unet)),
                "eraser_parameters": int(sum(p.numel() for p in params)),
                "erase_loss": [float(f"{v:.6g}") for v in erase_losses],
                "reg_loss": [float(f"{v:.6g}") for v in reg_losses],
                "adversarial_loss": [float(f"{v:.6g}") for v in adv_losses],
            },
        )

    def write_form(self, pipeline: Any, folder: Path, outcome: EditOutcome
                   ) -> dict[str, Any] | None:
        from safetensors.torch import save_file

        state = {}
        for prefix, attns in transformer_prefixes(pipeline.unet):
            eraser = attns[0].igmu_eraser
            for key, value in eraser.state_dict().items():
                state[f"{prefix}.{key}"] = value.detach().to("cpu").contiguous()
        save_file(state, str(Path(folder) / WEIGHTS_FILE))
        rank = int(outcome.hyperparameters["rank"])
        (Path(folder) / CONFIG_FILE).write_text(
            json.dumps({"eraser_type": "adapter", "eraser_rank": rank}, indent=2) + "\n")
        return {"adapter": [WEIGHTS_FILE]}
