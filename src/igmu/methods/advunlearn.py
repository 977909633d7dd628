r"""AdvUnlearn — defensive unlearning with adversarial training (Zhang et al., NeurIPS 2024,
arXiv:2405.15234; code github.com/OPTML-Group/AdvUnlearn, ``train-scripts/AdvUnlearn.py``).

A bi-level (min-max) fine-tuning of the **text encoder** (the UNet stays frozen). The upper level
(defence) is ESD's unlearning loss taken on an *adversarial* version of the concept prompt plus a
utility-retaining regulariser on a retain prompt set; the lower level (attack) finds that
adversarial prompt against the text encoder being trained:

.. math::

    \min_{\phi}\; \big\| \epsilon_\theta(x_t, E_\phi(c \oplus \delta^*), t)
        - [\epsilon_\theta(x_t, r, t) - \eta(\epsilon_\theta(x_t, c, t)
        - \epsilon_\theta(x_t, r, t))] \big\|^2
        + \gamma\, \frac{1}{B}\sum_{p \in \mathcal{R}}
          \big\| \epsilon_\theta(x^p_t, E_\phi(p), t) - \epsilon_\theta(x^p_t, p, t) \big\|^2

    \delta^* = \arg\min_{\delta}\; \big\| \epsilon_\theta(x_t, E_\phi(c \oplus \delta), t)
        - \epsilon_\theta(x_t, c, t) \big\|^2

- φ: the text encoder being trained; θ: the frozen UNet; "ε_θ(x, c, t)" with a prompt written
  for its *original* text-encoder embedding (E_φ0, computed once before training).
- c: a concept prompt, drawn per attack round (``attack_every`` steps) uniformly from the erase
  prompts (default: the task's in-context ``unlearning.erase`` prompts when it has them, else
  its concept name and concept words); r: the reference, ∅ (the empty prompt) as in the paper
  or, for the task's pairs, the paired anchor (``reference``, as igmu's ESD, see esd.py).
- δ: ``attack_tokens`` *soft* token embeddings (continuous vectors in the text encoder's
  input-embedding space) inserted after ``<sot>`` (``attack_type = prefix``, the authors'
  ``prefix_k``) or before ``<eot>`` (``suffix``). The attack minimises the distance between the
  edited model's prediction under c ⊕ δ and the original model's prediction for c — i.e. it
  looks for the input that makes the unlearned encoder regenerate the concept. Adam on δ,
  ``attack_steps`` steps at ``attack_lr``, each with fresh x_t, t (``attack_method = pgd``, the
  authors' name for it; ``fast_at`` uses the sign of the gradient). δ starts at the embeddings of
  random vocabulary tokens (``attack_init = random``) or at the previous round's δ (``latest``).
  The first ``warmup`` steps train on c itself (no attack), as the authors' ``warmup_iter``.
- 𝓡: ``retain_batch`` prompts per step drawn without replacement (reshuffled when fewer than a
  batch remain, as the authors' ``PromptDataset``) from the retain set (default: the task's
  ``unlearning.preserve`` prompts, else the class names of its unrelated and related sets);
  γ = ``retain_weight``.
- x_t (as ESD): the frozen model samples ``k`` of ``ddim_steps`` DDIM steps from Gaussian noise
  at classifier-free guidance ``guidance`` with the original embedding of the prompt (c for the
  unlearning and attack terms, each retain prompt for its own term), k uniform, t =
  ``timesteps[k]``; the retain batch is drawn at the same k and t as c.

Parameters changed (``params = full``, the authors' ``text_encoder_full`` with ``component =
all``): every tensor of the text encoder's transformer layers (``text_model.encoder.*``) and its
final layer norm; token and position embeddings stay. ``attn`` / ``ffn``: only the layers'
self-attention / MLP tensors (the authors' ``component``). On SDXL both text encoders are
trained (their adversarial tokens are one soft vector per encoder at the same positions).
``edited_parameters`` lists the tensors that changed (``text_encoder.<name>``,
``text_encoder_2.<name>``); tensors that receive no gradient (SDXL reads the penultimate layer)
are not listed.

Published form: the fine-tuned text encoder as a ``CLIPTextModel`` folder (config + safetensors),
loaded by the models file as ``{text_encoder: <folder>}`` (the authors' Hugging Face model
``OPTML-Group/AdvUnlearn`` holds such folders); `write_form` writes ``text_encoder/`` (and
``text_encoder_2/`` for SDXL) and returns those fields.

Defaults (SD-1.x) are the authors': ``train-scripts/AdvUnlearn.py`` argparse (line numbers of
commit 9d23124): ``steps`` 1000 (``--iterations``, l. 249), ``lr`` 1e-5 (l. 251), ``eta`` 1
(``--negative_guidance``, l. 227), ``guidance`` 3 (``--start_guidance``, l. 226), ``ddim_steps``
50 (l. 234), ``retain_batch`` 5 (l. 240), ``attack_method`` pgd (l. 247), ``attack_tokens`` 1
(``--adv_prompt_num``, l. 254), ``attack_type`` prefix (l. 256), ``attack_steps`` 30 (l. 258),
``attack_every`` 1 (``--adv_prompt_update_step``, l. 259), ``attack_lr`` 1e-3 (l. 260),
``warmup`` 200 (``--warmup_iter``, l. 261), ``params`` full (``--train_method
text_encoder_full``, l. 245, ``--component all``, l. 248); ``retain_weight`` 0.3 and
``attack_init`` random from the README's training command (``--retain_train reg
--retain_loss_w 0.3 --attack_init random``; argparse has 1.0 and latest). Adam, batch 1 for the
concept. Noise comes from CPU generators seeded with ``seed`` and choices from
``random.Random(seed)``: deterministic on CPU.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
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

REFERENCES = ("auto", "null", "anchor")
PARAM_SETS = ("full", "attn", "ffn")
ATTACK_METHODS = ("pgd", "fast_at")
ATTACK_INITS = ("random", "latest")
ATTACK_TYPES = ("prefix", "suffix")
TEXT_ROLES = ("text_encoder", "text_encoder_2")
PROBE_SEED_OFFSET = 1_000_003


def trainable(name: str, params: str) -> bool:
    """Whether a text-encoder parameter (``CLIPTextModel`` naming) is trained."""
    parts = name.split(".")
    if "final_layer_norm" in parts:
        return params == "full"
    if "encoder" not in parts or "layers" not in parts:
        return False  # embeddings, text projection
    if params == "attn":
        return "self_attn" in parts
    if params == "ffn":
        return "mlp" in parts
    return True


def text_roles(pipeline: Any) -> list[str]:
    return [role for role in TEXT_ROLES if getattr(pipeline, role, None) is not None]


class _Trainer:
    """The frozen UNet and the original embeddings (fixed), the text encoder(s) being trained,
    the x_t sampler, and the attack."""

    def __init__(self, pipeline: Any, settings: dict[str, Any], concepts: list[str],
                 references: dict[str, str] | None, retain: list[str]) -> None:
        import copy

        import torch
        from diffusers import DDIMScheduler

        from igmu.pipelines.attackable import AttackedModel

        self.settings = settings
        self.device = torch.device(settings["device"])
        self.roles = text_roles(pipeline)
        self.unet = pipeline.unet.to(self.device).float().eval().requires_grad_(False)
        adapter = adapter_of(pipeline)
        for encoder in adapter.text_encoders:
            encoder.to(self.device)
        # Original embeddings, before any training (E_phi0 of the docstring).
        encoded = adapter.encode_prompts(["", *concepts]).to(dtype=torch.float32)
        null = encoded.rows(slice(0, 1))
        self.uncond = adapter.unconditional(None).to(dtype=torch.float32)
        self.cond = {c: encoded.rows(slice(i + 1, i + 2)) for i, c in enumerate(concepts)}
        self.reference = {c: null for c in concepts}
        if references is not None:
            ref = adapter.encode_prompts([references[c] for c in concepts]).to(dtype=torch.float32)
            self.reference = {c: ref.rows(slice(i, i + 1)) for i, c in enumerate(concepts)}
        self.retain = retain
        self.retain_cond = (adapter.encode_prompts(retain).to(dtype=torch.float32)
                            if retain else None)
        # Private copies of the text encoders: the caller's pipeline is never modified.
        self.originals = {role: getattr(pipeline, role) for role in self.roles}
        trained = {role: copy.deepcopy(m).float().eval() for role, m in self.originals.items()}
        pipeline.register_modules(**trained)
        self.model = AttackedModel(
            pipeline, SimpleNamespace(negative_prompt=None, guidance_scale=settings["guidance"]),
            self.device,
        )  # token handling and differentiable conditioning of the trained encoders
        self.adapter = self.model.family
        self.encoders = trained
        self.names: dict[str, list[str]] = {}
        self.params = []
        for role, module in trained.items():
            self.names[role] = []
            for name, param in module.named_parameters():
                if trainable(name, settings["params"]):
                    param.requires_grad_(True)
                    self.names[role].append(name)
                    self.params.append(param)
        self.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        self.scheduler.set_timesteps(settings["ddim_steps"], device=self.device)
        config = self.unet.config
        size = settings["latent_size"] or config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.shape = (config.in_channels, height, width)
        self.vocab = self.model.vocabulary("all")
        self.placeholder = int(self.vocab[0])

    # -----------------------------------------------------------------------------------------
    # frozen-model quantities

    def autocast(self) -> Any:
        import torch

        from igmu.pipelines.load import torch_dtype

        dtype = torch_dtype(self.settings["dtype"])
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def sample_to(self, k: int, cond: Any, generator: Any) -> Any:
        """x_t after ``k`` guided DDIM steps of the frozen model from fresh noise, one row per
        row of ``cond``."""
        import torch

        batch = len(cond)
        noise = torch.randn((batch, *self.shape), generator=generator).to(self.device)
        z = noise * self.scheduler.init_noise_sigma
        with torch.no_grad(), self.autocast():
            for step_t in self.scheduler.timesteps[:k]:
                model_in = self.scheduler.scale_model_input(z, step_t)
                guided = self.adapter.guided_noise(model_in, step_t, cond,
                                                   self.uncond.expand(batch),
                                                   self.settings["guidance"], unet=self.unet)
                z = self.scheduler.step(guided.float(), step_t, z).prev_sample
        return z

    def draw(self, concept: str, rng: random.Random, generator: Any) -> tuple[Any, Any, int]:
        k = rng.randrange(self.settings["ddim_steps"])
        return self.sample_to(k, self.cond[concept], generator), self.scheduler.timesteps[k], k

    def predict(self, z: Any, t: Any, cond: Any) -> Any:
        with self.autocast():
            return self.adapter.predict_noise(z, t, cond, unet=self.unet).float()

    def frozen(self, z: Any, t: Any, cond: Any) -> Any:
        import torch

        with torch.no_grad():
            return self.predict(z, t, cond)

    def target(self, z: Any, t: Any, concept: str) -> Any:
        """ESD's negatively guided target e_r - eta (e_c - e_r) of the frozen model."""
        e_ref = self.frozen(z, t, self.reference[concept])
        e_cond = self.frozen(z, t, self.cond[concept])
        return e_ref - self.settings["eta"] * (e_cond - e_ref)

    # -----------------------------------------------------------------------------------------
    # prompts through the trained encoder(s)

    def plain(self, prompt: str) -> tuple[Any, list[int]]:
        return self.model.padded(self.model.token_ids(prompt)), []

    def adversarial_ids(self, prompt: str) -> tuple[Any, list[int]]:
        """(padded ids with placeholders, the soft tokens' positions) of c ⊕ δ."""
        k = self.settings["attack_tokens"]
        content = self.model.content_ids(prompt)[: self.model.length - 2 - k]
        if self.settings["attack_type"] == "prefix":
            ids = self.model.sequence([self.placeholder] * k + content)
            positions = list(range(1, 1 + k))
        else:
            ids = self.model.sequence(content + [self.placeholder] * k)
            positions = list(range(1 + len(content), 1 + len(content) + k))
        return self.model.padded(ids), positions

    def encode(self, ids: Any, positions: list[int], vectors: Any = None) -> Any:
        return self.model.condition(ids, positions or None, vectors if positions else None)

    def random_vectors(self, generator: Any) -> tuple[Any, ...]:
        """Soft tokens initialised at the input embeddings of random vocabulary tokens."""
        import torch

        k = self.settings["attack_tokens"]
        picks = self.vocab[torch.randint(0, len(self.vocab), (k,), generator=generator)]
        return tuple(table.weight.detach()[picks].float().clone()
                     for table in self.model.embedding_tables)

    def attack(self, concept: str, start: tuple[Any, ...], rng: random.Random,
               generator: Any) -> tuple[tuple[Any, ...], list[float]]:
        """δ* for ``concept`` against the current encoder(s): Adam on the soft tokens."""
        import torch

        ids, positions = self.adversarial_ids(concept)
        vectors = tuple(v.detach().clone().requires_grad_(True) for v in start)
        optimizer = torch.optim.Adam(vectors, lr=self.settings["attack_lr"])
        losses = []
        for _ in range(self.settings["attack_steps"]):
            z, t, _ = self.draw(concept, rng, generator)
            wanted = self.frozen(z, t, self.cond[concept])
            loss = torch.nn.functional.mse_loss(
                self.predict(z, t, self.encode(ids, positions, vectors)), wanted)
            grads = torch.autograd.grad(loss, vectors)  # no gradient reaches the encoder
            for vector, grad in zip(vectors, grads, strict=True):
                vector.grad = grad.sign() if self.settings["attack_method"] == "fast_at" else grad
            optimizer.step()
            losses.append(loss.item())
        return tuple(v.detach() for v in vectors), losses

    def retain_batch(self, order: list[int], rng: random.Random) -> list[int]:
        """Indices of the next retain prompts, without replacement (refilled when short)."""
        size = min(self.settings["retain_batch"], len(self.retain))
        if len(order) < size:
            order[:] = list(range(len(self.retain)))
        picked = rng.sample(order, size)
        for index in picked:
            order.remove(index)
        return picked

    def retain_loss(self, picked: list[int], k: int, generator: Any) -> Any:
        import torch

        cond = self.retain_cond.rows(picked)
        z = self.sample_to(k, cond, generator)
        t = self.scheduler.timesteps[k]
        wanted = self.frozen(z, t, cond)
        prompts = [self.retain[i] for i in picked]
        ids = self.model.padded_batch([self.model.token_ids(p) for p in prompts])
        return torch.nn.functional.mse_loss(self.predict(z, t, self.encode(ids, [])), wanted)

    def changed(self) -> list[str]:
        """``role.name`` of every trained tensor that differs from the original encoder's."""
        import torch

        out = []
        for role, names in self.names.items():
            before = dict(self.originals[role].named_parameters())
            after = dict(self.encoders[role].named_parameters())
            for name in names:
                if not torch.equal(before[name].detach().cpu(), after[name].detach().cpu()):
                    out.append(f"{role}.{name}")
        return out


@register_method
class AdvUnlearn(UnlearningMethod):
    name = "AdvUnlearn"
    summary = (
        "Adversarial training of the text encoder: ESD's unlearning loss on "
        "attacked concept prompts plus a retain-set regulariser"
    )
    defaults = {
        "concepts": None,
        "preserve": None,
        "steps": 1000,
        "lr": 1e-5,
        "eta": 1.0,
        "guidance": 3.0,
        "ddim_steps": 50,
        "retain_batch": 5,
        "retain_weight": 0.3,
        "warmup": 200,
        "attack_every": 1,
        "attack_steps": 30,
        "attack_lr": 1e-3,
        "attack_tokens": 1,
        "attack_method": "pgd",
        "attack_init": "random",
        "attack_type": "prefix",
        "params": "full",
        "latent_size": 0,  # 0 = the UNet's sample_size
        "probe": 4,
        "reference": "auto",
    }
    # Chosen on mini_object's training prompts only (benchmarks/method_defaults.py).
    world_defaults = {
        "miniworld": {
            "steps": 60, "lr": 1e-4, "guidance": 2.0, "ddim_steps": 10, "warmup": 20,
            "attack_every": 5, "attack_steps": 5, "attack_lr": 5e-3, "retain_batch": 2,
            "retain_weight": 1.0,
        },
    }

    def check(self, settings: dict[str, Any], task: Task) -> None:
        for key in ("steps", "warmup", "probe", "latent_size"):
            require(settings[key] >= 0, f"AdvUnlearn setting {key!r} must be >= 0")
        for key in ("ddim_steps", "attack_every", "attack_tokens", "retain_batch"):
            require(settings[key] >= 1, f"AdvUnlearn setting {key!r} must be >= 1")
        require(settings["attack_steps"] >= 0, "AdvUnlearn setting 'attack_steps' must be >= 0")
        for key in ("lr", "attack_lr"):
            require(settings[key] > 0, f"AdvUnlearn setting {key!r} must be > 0")
        require(settings["retain_weight"] >= 0, "AdvUnlearn setting 'retain_weight' must be >= 0")
        for key, allowed in (("params", PARAM_SETS), ("attack_method", ATTACK_METHODS),
                             ("attack_init", ATTACK_INITS), ("attack_type", ATTACK_TYPES),
                             ("reference", REFERENCES)):
            require(settings[key] in allowed,
                    f"AdvUnlearn setting {key!r} must be one of {allowed}")
        require(settings["attack_tokens"] <= 16, "AdvUnlearn setting 'attack_tokens' must be <= 16")

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        import torch
        from tqdm.auto import tqdm

        concepts, retain = concepts_and_preserved(task, settings)
        paired = uses_task_pairs(task, settings)
        reference = settings["reference"]
        if reference == "auto":
            reference = "anchor" if paired else "null"
        require(reference == "null" or paired,
                "AdvUnlearn setting reference=anchor needs the task's unlearning.erase pairs "
                "(and no 'concepts' setting)")
        references = dict(task.unlearning.erase) if reference == "anchor" else None
        use_retain = bool(retain) and settings["retain_weight"] > 0
        seed = settings["seed"]
        torch.manual_seed(seed)
        trainer = _Trainer(pipeline, settings, concepts, references, retain if use_retain else [])
        require(bool(trainer.params), "AdvUnlearn: the text encoder has no trainable parameters")
        optimizer = torch.optim.Adam(trainer.params, lr=settings["lr"])

        probe_rng = random.Random(seed + PROBE_SEED_OFFSET)
        probe_gen = torch.Generator("cpu").manual_seed(seed + PROBE_SEED_OFFSET)
        probes = []
        for _ in range(settings["probe"]):
            concept = probe_rng.choice(concepts)
            z, t, _ = trainer.draw(concept, probe_rng, probe_gen)
            probes.append((concept, z, t, trainer.target(z, t, concept)))

        def probe_loss() -> float | None:
            if not probes:
                return None
            with torch.no_grad():
                total = 0.0
                for concept, z, t, target in probes:
                    cond = trainer.encode(*trainer.plain(concept))
                    total += float(torch.nn.functional.mse_loss(trainer.predict(z, t, cond),
                                                                target))
                return total / len(probes)

        before = probe_loss()
        rng = random.Random(seed)
        generator = torch.Generator("cpu").manual_seed(seed)
        order: list[int] = []
        losses, retain_losses, attack_rounds = [], [], []
        concept = concepts[0]
        vectors: tuple[Any, ...] | None = None
        bar = tqdm(range(settings["steps"]), desc="AdvUnlearn",
                   disable=not settings["progress"], leave=False)
        for step in bar:
            new_round = step % settings["attack_every"] == 0
            if new_round:
                concept = rng.choice(concepts)
            attacking = step >= settings["warmup"]
            if attacking and (new_round or vectors is None):
                start = vectors if (settings["attack_init"] == "latest" and vectors is not None) \
                    else trainer.random_vectors(generator)
                vectors, attack_losses = trainer.attack(concept, start, rng, generator)
                attack_rounds.append({"step": step, "concept": concept,
                                      "loss_first_last": attack_losses[:1] + attack_losses[-1:]})
            z, t, k = trainer.draw(concept, rng, generator)
            target = trainer.target(z, t, concept)
            optimizer.zero_grad(set_to_none=True)
            if attacking:
                ids, positions = trainer.adversarial_ids(concept)
                cond = trainer.encode(ids, positions, vectors)
            else:
                cond = trainer.encode(*trainer.plain(concept))
            loss = torch.nn.functional.mse_loss(trainer.predict(z, t, cond), target)
            unlearn_value = loss.item()
            if use_retain:
                kept = trainer.retain_loss(trainer.retain_batch(order, rng), k, generator)
                loss = loss + settings["retain_weight"] * kept
                retain_losses.append(kept.item())
            loss.backward()
            optimizer.step()
            losses.append(unlearn_value)
            bar.set_postfix(loss=f"{unlearn_value:.4g}", attack=attacking)
        bar.close()
        after = probe_loss()

        for module in trainer.encoders.values():
            module.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)
        edited = trainer.changed()
        hyperparameters = {key: settings[key] for key in (
            "steps", "lr", "eta", "guidance", "ddim_steps", "retain_batch", "retain_weight",
            "warmup", "attack_every", "attack_steps", "attack_lr", "attack_tokens",
            "attack_method", "attack_init", "attack_type", "params")}
        hyperparameters.update(
            reference=reference, compute_dtype=settings["dtype"], optimizer="Adam",
            trained_modules=trainer.roles, latent_shape=[1, *trainer.shape],
            scheduler="DDIMScheduler", attack_embedding="word (input) embedding",
            retain_regulariser="reg" if use_retain else "none",
        )
        return EditOutcome(
            concepts=concepts,
            preserved=retain if use_retain else [],
            anchor=PAIRED_ANCHORS if references else "",
            hyperparameters=hyperparameters,
            edited_parameters=edited,
            stats={
                "probe_draws": len(probes),
                "probe_loss_before": before,
                "probe_loss_after": after,
                "train_loss": [float(f"{v:.6g}") for v in losses],
                "retain_loss": [float(f"{v:.6g}") for v in retain_losses],
                "attack_rounds": len(attack_rounds),
                "attack_loss_first_last": [
                    [float(f"{v:.6g}") for v in r["loss_first_last"]] for r in attack_rounds],
                "trainable_parameters": int(sum(p.numel() for p in trainer.params)),
            },
        )

    def write_form(self, pipeline: Any, folder: Any, outcome: EditOutcome) -> dict[str, Any]:
        """The fine-tuned text encoder(s) as ``CLIPTextModel`` folders (config + safetensors)."""
        entry = {}
        for role in text_roles(pipeline):
            getattr(pipeline, role).save_pretrained(str(folder / role), safe_serialization=True)
            entry[role] = role
        return entry
