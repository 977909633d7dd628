r"""ESD-x — Erased Stable Diffusion, cross-attention variant (Gandikota et al., ICCV 2023).

Fine-tunes only the UNet's cross-attention parameters (every parameter of the ``attn2`` modules:
``to_q``, ``to_k``, ``to_v``, ``to_out``; ``params = "xattn-strict"`` trains only ``to_k`` and
``to_v``) so that the edited model's prediction for the concept matches the frozen original's
prediction guided *away* from the concept:

.. math::

    \mathcal{L} = \big\| \epsilon_{\theta'}(x_t, c, t)
        - \big[\epsilon_\theta(x_t, \varnothing, t)
        - \eta\,(\epsilon_\theta(x_t, c, t) - \epsilon_\theta(x_t, \varnothing, t))\big] \big\|^2

with θ the frozen original UNet, c the text embedding of a concept prompt drawn uniformly per step
from the erase prompts (default: the task's in-context ``unlearning.erase`` prompts when it has
them, else its concept name and concept words), ∅ the empty prompt, and η the negative guidance
(``eta``, default 1.0 as in the paper).

``reference`` (igmu's): ``null`` is the paper's ∅ above. ``anchor`` replaces ∅ by the erase
prompt's paired anchor a (the same prompt without the concept), so the guidance pushes away from
the *difference* between c and a, ``ε_θ(x_t, a) - η (ε_θ(x_t, c) - ε_θ(x_t, a))``. With in-context
prompts the paper's form pushes away from the whole prompt (colour, background, ...), not only
the concept. ``auto`` (default): ``anchor`` when the prompts are the task's pairs, else ``null``.

x_t (``x_t = "sample"``, default, as in the authors' code): a DDIM sampler built from the
pipeline's scheduler config runs ``k`` of ``ddim_steps`` steps from Gaussian noise with the
*frozen* model, classifier-free guidance ``guidance`` (default 3) and the concept prompt, with k
uniform in [0, ddim_steps); t is the DDIM timestep reached (``timesteps[k]``), so x_t's noise level
matches t. ``x_t = "noise"`` is a cheap approximation: x_t = scheduler.add_noise(x_0, ε, t) with
x_0, ε ~ N(0, I) in latent space and t a random DDIM timestep.

Adam, batch 1, float32. Defaults follow the paper's ESD-x: 1000 steps, lr 1e-5, η = 1. All noise
comes from a CPU generator seeded with ``seed`` and prompts/steps from ``random.Random(seed)``,
so a run is deterministic on CPU. ``probe`` fixed (prompt, x_t, t) draws, made with a separate
seed before training, measure the ESD loss before and after training (``stats`` in the card).
"""

from __future__ import annotations

import random
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

X_T_MODES = ("sample", "noise")
REFERENCES = ("auto", "null", "anchor")
PARAM_SETS = ("xattn", "xattn-strict")
PROBE_SEED_OFFSET = 1_000_003


def trainable(name: str, params: str) -> bool:
    parts = name.split(".")
    if "attn2" not in parts:  # the cross-attention layers (FamilyAdapter.is_cross_attention_...)
        return False
    if params == "xattn":
        return True
    after = parts[parts.index("attn2") + 1 : parts.index("attn2") + 2]
    return after in (["to_k"], ["to_v"])


class _Trainer:
    def __init__(
        self,
        pipeline: Any,
        settings: dict[str, Any],
        concepts: list[str],
        anchors: dict[str, str] | None = None,
    ) -> None:
        import copy

        import torch
        from diffusers import DDIMScheduler

        self.settings = settings
        self.device = torch.device(settings["device"])
        self.adapter = adapter_of(pipeline)
        self.unet = pipeline.unet.to(self.device).float()
        self.frozen = copy.deepcopy(self.unet).requires_grad_(False).eval()
        self.unet.eval()
        for encoder in self.adapter.text_encoders:
            encoder.to(self.device)
        # ∅ is the empty prompt's encoding; the sampler's unconditional branch is the
        # pipeline's own (the same for SD; zeros for SDXL, as its pipeline samples).
        encoded = self.adapter.encode_prompts(["", *concepts]).to(dtype=torch.float32)
        self.null = encoded.rows(slice(0, 1))
        self.uncond = self.adapter.unconditional(None).to(dtype=torch.float32)
        self.cond = {c: encoded.rows(slice(i + 1, i + 2)) for i, c in enumerate(concepts)}
        self.reference = {c: self.null for c in concepts}
        if anchors is not None:
            anchor = self.adapter.encode_prompts([anchors[c] for c in concepts])
            anchor = anchor.to(dtype=torch.float32)
            self.reference = {c: anchor.rows(slice(i, i + 1)) for i, c in enumerate(concepts)}
        self.concepts = concepts
        self.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        self.scheduler.set_timesteps(settings["ddim_steps"], device=self.device)
        config = self.unet.config
        size = settings["latent_size"] or config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.shape = (1, config.in_channels, height, width)

    def autocast(self) -> Any:
        """Mixed precision in the settings' dtype around float32 master weights (off for
        float32)."""
        import torch

        from igmu.pipelines.load import torch_dtype

        dtype = torch_dtype(self.settings["dtype"])
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def draw(self, rng: random.Random, generator: Any) -> tuple[Any, Any, str]:
        """(x_t, t, concept prompt) for one training step."""
        import torch

        concept = rng.choice(self.concepts)
        k = rng.randrange(self.settings["ddim_steps"])
        t = self.scheduler.timesteps[k]
        cond = self.cond[concept]
        noise = torch.randn(self.shape, generator=generator).to(self.device)
        with torch.no_grad(), self.autocast():
            if self.settings["x_t"] == "noise":
                x0 = torch.randn(self.shape, generator=generator).to(self.device)
                z = self.scheduler.add_noise(x0, noise, t.reshape(1))
            else:
                z = noise * self.scheduler.init_noise_sigma
                g = self.settings["guidance"]
                for step_t in self.scheduler.timesteps[:k]:
                    model_in = self.scheduler.scale_model_input(z, step_t)
                    guided = self.adapter.guided_noise(
                        model_in, step_t, cond, self.uncond, g, unet=self.frozen
                    )
                    z = self.scheduler.step(guided.float(), step_t, z).prev_sample
        return z, t, concept

    def target(self, z: Any, t: Any, concept: str) -> Any:
        import torch

        states = self.reference[concept].cat(self.cond[concept])
        with torch.no_grad(), self.autocast():
            out = self.adapter.predict_noise(torch.cat([z, z]), t, states, unet=self.frozen)
            e_ref, e_cond = out.float().chunk(2)
            return e_ref - self.settings["eta"] * (e_cond - e_ref)

    def loss(self, z: Any, t: Any, concept: str, target: Any) -> Any:
        import torch

        with self.autocast():
            prediction = self.adapter.predict_noise(z, t, self.cond[concept], unet=self.unet)
        return torch.nn.functional.mse_loss(prediction.float(), target)


@register_method
class ESD(UnlearningMethod):
    name = "ESD"
    summary = (
        "Erased Stable Diffusion (ESD-x): fine-tune the cross-attention layers so the concept's "
        "prediction follows the frozen model's negatively guided prediction"
    )
    defaults = {
        "concepts": None,
        "steps": 1000,
        "lr": 1e-5,
        "eta": 1.0,
        "guidance": 3.0,
        "ddim_steps": 50,
        "x_t": "sample",
        "params": "xattn",
        "latent_size": 0,  # 0 = the UNet's sample_size
        "probe": 4,
        "reference": "auto",
    }

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        import torch
        from tqdm.auto import tqdm

        require(settings["steps"] >= 0, "ESD setting 'steps' must be >= 0")
        require(settings["lr"] > 0, "ESD setting 'lr' must be > 0")
        require(settings["ddim_steps"] >= 1, "ESD setting 'ddim_steps' must be >= 1")
        require(settings["probe"] >= 0, "ESD setting 'probe' must be >= 0")
        require(settings["latent_size"] >= 0, "ESD setting 'latent_size' must be >= 0")
        require(settings["x_t"] in X_T_MODES, f"ESD setting 'x_t' must be one of {X_T_MODES}")
        require(
            settings["params"] in PARAM_SETS, f"ESD setting 'params' must be one of {PARAM_SETS}"
        )
        require(
            settings["reference"] in REFERENCES,
            f"ESD setting 'reference' must be one of {REFERENCES}",
        )
        # ESD conditions on the concept alone; preserved concepts are not part of its loss.
        concepts, _ = concepts_and_preserved(task, {"concepts": settings["concepts"],
                                                    "preserve": []})
        paired = uses_task_pairs(task, settings)
        reference = settings["reference"]
        if reference == "auto":
            reference = "anchor" if paired else "null"
        require(
            reference == "null" or paired,
            "ESD setting reference=anchor needs the task's unlearning.erase pairs (and no "
            "'concepts' setting)",
        )
        anchors = dict(task.unlearning.erase) if reference == "anchor" else None
        seed = settings["seed"]
        torch.manual_seed(seed)
        trainer = _Trainer(pipeline, settings, concepts, anchors)

        trainer.unet.requires_grad_(False)
        names, params = [], []
        for name, param in trainer.unet.named_parameters():
            if trainable(name, settings["params"]):
                param.requires_grad_(True)
                names.append(name)
                params.append(param)
        require(bool(params), "ESD: the UNet has no cross-attention (attn2) parameters")
        optimizer = torch.optim.Adam(params, lr=settings["lr"])

        probe_rng = random.Random(seed + PROBE_SEED_OFFSET)
        probe_gen = torch.Generator("cpu").manual_seed(seed + PROBE_SEED_OFFSET)
        probes = []
        for _ in range(settings["probe"]):
            z, t, cond = trainer.draw(probe_rng, probe_gen)
            probes.append((z, t, cond, trainer.target(z, t, cond)))

        def probe_loss() -> float | None:
            if not probes:
                return None
            with torch.no_grad():
                return sum(float(trainer.loss(*p)) for p in probes) / len(probes)

        before = probe_loss()
        rng = random.Random(seed)
        generator = torch.Generator("cpu").manual_seed(seed)
        losses = []
        bar = tqdm(
            range(settings["steps"]), desc="ESD", disable=not settings["progress"], leave=False
        )
        for _ in bar:
            z, t, cond = trainer.draw(rng, generator)
            target = trainer.target(z, t, cond)
            optimizer.zero_grad(set_to_none=True)
            loss = trainer.loss(z, t, cond, target)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4g}", t=int(t))
        bar.close()
        after = probe_loss()

        trainer.unet.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)
        del trainer.frozen
        hyperparameters = {
            key: settings[key]
            for key in ("steps", "lr", "eta", "guidance", "ddim_steps", "x_t", "params")
        }
        hyperparameters["reference"] = reference
        hyperparameters["compute_dtype"] = settings["dtype"]
        hyperparameters.update(
            latent_shape=list(trainer.shape), optimizer="Adam", batch_size=1,
            scheduler="DDIMScheduler",
        )
        if settings["x_t"] == "sample":
            hyperparameters["x_t_model"] = "frozen original"
        return EditOutcome(
            concepts=concepts,
            preserved=[],
            anchor=PAIRED_ANCHORS if anchors else "",
            hyperparameters=hyperparameters,
            edited_parameters=names,
            stats={
                "probe_draws": len(probes),
                "probe_loss_before": before,
                "probe_loss_after": after,
                "train_loss": [float(f"{v:.6g}") for v in losses],
                "trainable_parameters": int(sum(p.numel() for p in params)),
            },
        )
