r"""ConceptPrune — skilled-neuron pruning (Chavhan et al., ICLR 2025, arXiv:2405.19237; code
github.com/ruchikachavhan/concept-prune: ``wanda/wanda.py``, ``wanda/save_union_over_time.py``,
``neuron_receivers/wanda_receiver.py``).

Training-free. The original model samples every prompt pair — a *target* prompt with the concept
and its *base* prompt without it — and records, per denoising step s and per transformer block
l, the inputs of the feed-forward network's second Linear (``ff.net.2``: the GEGLU output, one
row per token and image of the classifier-free-guidance batch, each row normalised to unit L2
norm; wanda_receiver.py l. 35-55). Their column norms (one per FFN neuron j, accumulated over
every row of every prompt: ``A_j = (Σ_rows a_j²)^{1/2}``, ``ColumnNormCalculator``,
utils/base_utils.py l. 236-243) give Wanda scores (Sun et al. 2023) per weight:

.. math::

    S^{\mathrm{target}}_{ij} = |W_{ij}|\, A^{\mathrm{target}}_j, \qquad
    S^{\mathrm{base}}_{ij} = |W_{ij}|\, A^{\mathrm{base}}_j, \qquad
    M^{(s,l)}_{ij} = [\, j \in \mathrm{top}_k(S^{\mathrm{target}}_{i\cdot})\,] \wedge
                     [\, S^{\mathrm{target}}_{ij} > S^{\mathrm{base}}_{ij} \,]

with k = ⌊``skill_ratio`` × d_ff⌋ per output row i (wanda.py l. 180-201): the weights among a
row's top-k on the concept that the concept activates more than the base prompts do — the
"skilled neurons". The pruned model zeroes, in every ``ff.net.2`` weight, the union of the masks
of the first ``timesteps`` steps, keeping a weight's mask where it is set in more than
``select_ratio`` × ``timesteps`` of them (save_union_over_time.py l. 93-108, applied at l.
112-118). ``form = per_step`` keeps one mask per step instead, applied at its own step (the
authors' ``remove_neurons.py`` check of the masks).

Parameters changed: none are rewritten — the masks are applied as the authors' published form,
pruning masks the models file loads (``pipelines/adapters.py``, kind ``concept_prune``):
``concept_prune_masks.safetensors`` with keys ``"<step>_<layer>"`` (layers in the order the UNet
runs them), one dense boolean mask of the weight's shape each; the union is written as the single
step 0, which the adapter applies at every step. ``edit`` applies the same adapter to the
in-memory pipeline (mask buffers added to the UNet, weights untouched), so the edited pipeline
and the loaded output are one model; ``write_form`` returns ``{"adapter": [...]}``.

Prompts: a task's in-context ``unlearning.erase`` pairs (prompt -> target, anchor -> base, the
authors' pairs such as "a parachute in a room" / "a room", utils/prompts.py l. 161-164); with
concept words (no pairs, or a ``concepts`` setting) each concept prompt is paired with the empty
prompt (the authors' form for memorised prompts, prompts.py l. 190). Each prompt is sampled once
from the same seeded noise (the authors reseed before every prompt, base_receiver.py l. 90),
``ddim_steps`` steps of the pipeline's own scheduler type at guidance ``guidance``; the step of a
UNet call is read from its timestep as the adapter does, ``s = ⌊(T - t)·S / T⌋``.

Defaults (SD-1.x) are the authors': ``skill_ratio`` 0.02 for objects (``scripts/wanda.sh``: the
church/garbage-truck/Imagenette lines, ``--skill_ratio 0.02``), 0.01 for artist styles (the Van
Gogh/Monet/... lines) and otherwise (``configs/wanda_config.yaml`` l. 5); ``timesteps`` 10 and
``select_ratio`` 0.0 (every ``save_union_over_time.py`` line of wanda.sh); 50 sampling steps and
guidance 7.5 (the diffusers pipeline defaults the authors sample with, base_receiver.py l. 92),
seed 0 (wanda_config.yaml l. 12).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from igmu.methods.base import (
    PAIRED_ANCHORS,
    EditOutcome,
    UnlearningMethod,
    concepts_and_preserved,
    register_method,
    require,
    uses_task_pairs,
)
from igmu.methods.pipeline import adapter_of
from igmu.tasks import Task

FORMS = ("union", "per_step")
MASK_FILE = "concept_prune_masks.safetensors"


def default_skill_ratio(task: Task) -> float:
    if task.node.startswith("style."):
        return 0.01
    if task.node.startswith("object."):
        return 0.02
    return 0.01


def prune_layers(unet: Any) -> list[Any]:
    """The ``ff.net.2`` Linears in the order the UNet runs them (the adapter's order)."""
    from igmu.pipelines.adapters import ConceptPrune as PruneAdapter

    return PruneAdapter.layers(unet)


def mask_step(t: Any, steps: int, train_steps: int) -> int:
    """The mask step of a UNet call at timestep t (as the concept_prune adapter reads it)."""
    value = float(t.flatten()[0]) if hasattr(t, "flatten") else float(t)
    return min(steps - 1, max(0, int((train_steps - value) * steps // train_steps)))


class ActivationNorms:
    """Column norms of the unit-normalised inputs of every ``ff.net.2`` layer, per step."""

    def __init__(self, layers: list[Any], steps: int) -> None:
        self.layers = layers
        self.steps = steps
        self.step = 0
        self.active = False
        self.squares: dict[tuple[int, int], Any] = {}
        self.handles = [layer.register_forward_pre_hook(self._hook) for layer in layers]
        self.index = {id(layer): j for j, layer in enumerate(layers)}

    def _hook(self, module: Any, args: tuple) -> None:
        if not self.active:
            return
        import torch

        x = args[0].detach().float()
        rows = torch.nn.functional.normalize(x.reshape(-1, x.shape[-1]), p=2, dim=1)
        key = (self.step, self.index[id(module)])
        total = rows.pow(2).sum(0).double().cpu()
        self.squares[key] = total if key not in self.squares else self.squares[key] + total

    def norms(self, step: int, layer: int) -> Any:
        import torch

        width = self.layers[layer].weight.shape[1]
        squares = self.squares.get((step, layer), torch.zeros(width, dtype=torch.float64))
        return squares.sqrt().float()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def skilled_mask(weight: Any, target_norms: Any, base_norms: Any, skill_ratio: float) -> Any:
    """Wanda's per-row top-k of |W| * A_target, kept where it beats |W| * A_base (bool, the
    weight's shape)."""
    import torch

    magnitude = weight.detach().abs().float().cpu()
    target = magnitude * target_norms[None, :]
    base = magnitude * base_norms[None, :]
    k = int(skill_ratio * target.shape[1])
    top = torch.zeros(target.shape, dtype=torch.bool)
    if k > 0:
        index = torch.sort(target, dim=1, descending=True, stable=True).indices[:, :k]
        top.scatter_(1, index, True)
    return top & (target > base)


def record(pipeline: Any, prompts: list[str], settings: dict[str, Any], layers: list[Any],
           ) -> ActivationNorms:
    """Sample every prompt with the original model, recording the FFN activation norms."""
    import torch
    from tqdm.auto import tqdm

    from igmu.methods._concept_training import autocast, latent_shape

    adapter = adapter_of(pipeline)
    device = torch.device(settings["device"])
    unet = pipeline.unet
    steps = settings["ddim_steps"]
    scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    train_steps = int(pipeline.scheduler.config.num_train_timesteps)
    shape = latent_shape(unet, settings["latent_size"])
    uncond = adapter.unconditional(None).to(device, torch.float32)
    cond = adapter.encode_prompts(prompts).to(device, torch.float32)
    norms = ActivationNorms(layers, steps)
    bar = tqdm(range(len(prompts)), desc="ConceptPrune", disable=not settings["progress"],
               leave=False)
    try:
        for i in bar:
            generator = torch.Generator("cpu").manual_seed(settings["seed"])
            z = torch.randn((1, *shape), generator=generator).to(device)
            scheduler.set_timesteps(steps, device=device)
            z = z * scheduler.init_noise_sigma
            row = cond.rows(slice(i, i + 1))
            with torch.no_grad(), autocast(device, settings["dtype"]):
                for t in scheduler.timesteps:
                    norms.step = mask_step(t, steps, train_steps)
                    norms.active = True
                    model_in = scheduler.scale_model_input(z, t)
                    guided = adapter.guided_noise(model_in, t, row, uncond, settings["guidance"],
                                                  unet=unet)
                    norms.active = False
                    z = scheduler.step(guided.float(), t, z).prev_sample
    finally:
        norms.active = False
        norms.close()
        bar.close()
    return norms


@register_method
class ConceptPrune(UnlearningMethod):
    name = "ConceptPrune"
    summary = (
        "Training-free pruning of the feed-forward weights whose Wanda scores on "
        "concept prompts top each row and exceed those on the prompts without the concept"
    )
    defaults = {
        "concepts": None,
        "skill_ratio": None,  # None: 0.02 for objects, 0.01 for styles and others
        "timesteps": 10,
        "select_ratio": 0.0,
        "form": "union",
        "ddim_steps": 50,
        "guidance": 7.5,
        "latent_size": 0,  # 0 = the UNet's sample_size
    }
    # Chosen on mini_object's training prompts only (benchmarks/method_defaults.py).
    world_defaults = {"miniworld": {"ddim_steps": 8, "guidance": 2.0, "timesteps": 2}}

    def check(self, settings: dict[str, Any], task: Task) -> None:
        skill = settings["skill_ratio"]
        skill = default_skill_ratio(task) if skill is None else float(skill)
        require(0 < skill <= 1, "ConceptPrune setting 'skill_ratio' must be in (0, 1]")
        require(settings["ddim_steps"] >= 1, "ConceptPrune setting 'ddim_steps' must be >= 1")
        require(1 <= settings["timesteps"] <= settings["ddim_steps"],
                f"ConceptPrune setting 'timesteps' ({settings['timesteps']}) must be in "
                f"[1, ddim_steps ({settings['ddim_steps']})]: the masks of the first "
                "'timesteps' sampling steps are pooled")
        require(0 <= settings["select_ratio"] < 1,
                "ConceptPrune setting 'select_ratio' must be in [0, 1)")
        require(settings["form"] in FORMS, f"ConceptPrune setting 'form' must be one of {FORMS}")
        require(settings["latent_size"] >= 0, "ConceptPrune setting 'latent_size' must be >= 0")
        require(settings["guidance"] >= 0, "ConceptPrune setting 'guidance' must be >= 0")

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        import torch

        from igmu.pipelines.adapters import ADAPTER_ATTRIBUTE
        from igmu.pipelines.adapters import ConceptPrune as PruneAdapter

        skill = settings["skill_ratio"]
        skill = default_skill_ratio(task) if skill is None else float(skill)
        concepts, _ = concepts_and_preserved(task, {"concepts": settings["concepts"],
                                                    "preserve": []})
        paired = uses_task_pairs(task, settings)
        bases = [dict(task.unlearning.erase)[c] for c in concepts] if paired else [""] * len(
            concepts)
        device = torch.device(settings["device"])
        adapter = adapter_of(pipeline)
        unet = pipeline.unet.to(device).float().eval()
        for encoder in adapter.text_encoders:
            encoder.to(device)
        layers = prune_layers(unet)
        require(bool(layers), "ConceptPrune: the UNet has no feed-forward (ff.net.2) layers")
        steps = settings["ddim_steps"]
        target = record(pipeline, concepts, settings, layers)
        base = record(pipeline, bases, settings, layers)

        state: dict[str, Any] = {}
        pruned_per_layer = []
        tau = settings["timesteps"]
        for j, layer in enumerate(layers):
            per_step = [skilled_mask(layer.weight, target.norms(s, j), base.norms(s, j), skill)
                        for s in range(steps)]
            if settings["form"] == "per_step":
                for s, mask in enumerate(per_step):
                    state[f"{s}_{j}"] = mask
                pruned_per_layer.append(float(torch.stack(per_step[:tau]).float().mean()))
            else:
                count = torch.stack(per_step[:tau]).sum(0)
                union = count > settings["select_ratio"] * tau
                state[f"0_{j}"] = union
                pruned_per_layer.append(float(union.float().mean()))
        PruneAdapter.apply(pipeline, state, None, "ConceptPrune")
        setattr(unet, ADAPTER_ATTRIBUTE, [*getattr(unet, ADAPTER_ATTRIBUTE, []),
                                          PruneAdapter.name])

        total = sum(int(layer.weight.numel()) for layer in layers)
        pruned = sum(int(m.sum()) for key, m in state.items() if key.startswith("0_")) if (
            settings["form"] == "union") else None
        hyperparameters = {key: settings[key] for key in (
            "timesteps", "select_ratio", "form", "ddim_steps", "guidance")}
        hyperparameters.update(
            skill_ratio=skill, compute_dtype=settings["dtype"],
            scheduler=type(pipeline.scheduler).__name__, base_prompts="task anchors" if paired
            else "empty prompt",
        )
        return EditOutcome(
            concepts=concepts,
            preserved=[],
            anchor=PAIRED_ANCHORS if paired else "",
            hyperparameters=hyperparameters,
            edited_parameters=[],
            stats={
                "layers": len(layers),
                "mask_steps": steps if settings["form"] == "per_step" else 1,
                "pruned_weights": pruned,
                "ffn2_weights": total,
                "pruned_share_per_layer": [round(v, 6) for v in pruned_per_layer],
            },
        )

    def write_form(self, pipeline: Any, folder: Path, outcome: EditOutcome
                   ) -> dict[str, Any] | None:
        from safetensors.torch import save_file

        holder = pipeline.unet.igmu_concept_prune  # the masks edit applied (adapter buffers)
        masks = {name[len("mask_"):]: mask.to("cpu").contiguous()
                 for name, mask in holder.named_buffers()}
        save_file(masks, str(Path(folder) / MASK_FILE))
        return {"adapter": [MASK_FILE]}
