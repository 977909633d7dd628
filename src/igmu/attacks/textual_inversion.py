"""``textual_inversion``: Concept Inversion (CCE, Pham et al., ICLR 2024) — textual inversion run
against the erased model.

One new token embedding v (a placeholder right after <sot>; one vector per text encoder, each in
that encoder's embedding space: two for SDXL) is learned once per attacked model and task: the
training texts are the task's concept prompts (its ``unlearning.erase`` prompts, never
evaluated, else its concept name and words; the first ``train_prompts``), each with the
placeholder in front; the training images are ORG's images of those prompts (seeds
0..targets-1). A step draws ``batch`` (image, text) pairs, random timesteps and fresh noise, and
lowers the *attacked* model's denoising loss by AdamW on v alone (every weight of the model stays
fixed). v starts at the mean input embedding of the concept name's tokens, per encoder. When the
method is sampled with a negative prompt (NEGPROMPT) the loss is on the guided prediction with
it, as CCE does for negative-prompt methods.

The attack on a forget prompt is the prompt with the learned token in front. Budget:
optimisation steps of the shared training. The training is done once and kept in
``DIR/attacks/shared``; each row's ``details.shared_wall_seconds`` is its cost, not counted in the
per-prompt ``wall_seconds``.
"""

from __future__ import annotations

import time
from typing import Any

from igmu.attacks.base import (
    Attack,
    AttackOutcome,
    AttackProblem,
    PrepareContext,
    register_attack,
    require,
)
from igmu.attacks.imaging import pack_vectors, vector_names

PLACEHOLDER = "<igmu-ti>"
PROBE_SEED_OFFSET = 104_729


def training_prompts(task: Any, count: int) -> list[str]:
    from igmu.methods.base import default_concepts

    return default_concepts(task)[:count]


@register_attack
class TextualInversion(Attack):
    name = "textual_inversion"
    summary = "Concept Inversion: one learned token embedding against the erased model"
    budget_unit = "optimisation steps (once per model, shared by its prompts)"
    white_box = True
    defaults = {
        "budget": 60,
        "lr": 0.02,
        "weight_decay": 0.01,
        "batch": 4,
        "train_prompts": 8,
        "targets": 1,  # ORG images per training prompt
        "probe": 8,
        "guided_loss": "auto",
        "images": 1,
    }

    def check(self, settings: dict[str, Any]) -> None:
        for key in ("batch", "train_prompts", "targets", "probe", "images"):
            require(settings[key] >= 1, f"attack textual_inversion setting {key!r} must be >= 1")
        require(settings["lr"] > 0, "attack textual_inversion setting 'lr' must be > 0")

    def task_identity(self, task: Any, settings: dict[str, Any]) -> Any:
        return {"train_prompts": training_prompts(task, settings["train_prompts"]),
                "concept_name": task.concept_name}

    def prepare(self, ctx: PrepareContext) -> Any:
        import torch

        stored = ctx.store.load_shared(ctx.key)
        names = vector_names("vector", len(ctx.model.text_encoders))
        if stored is not None:
            tensors, info = stored
            return {"vectors": tuple(tensors[n].to(ctx.model.device) for n in names),
                    "info": info}
        started = time.perf_counter()
        settings, model = ctx.settings, ctx.model
        texts = training_prompts(ctx.task, settings["train_prompts"])
        seeds = list(range(settings["targets"]))
        images = ctx.targets([t for t in texts for _ in seeds], [s for _ in texts for s in seeds])
        x0 = model.to_model_space(images)
        ids = torch.cat([
            model.padded(model.sequence([model.eos_id, *model.content_ids(t)]))
            for t in texts for _ in seeds
        ])
        guided = model.guided(settings["guided_loss"])
        concept = model.content_ids(ctx.task.concept_name)
        vectors = [table.weight.detach()[concept].float().mean(0, keepdim=True).clone()
                   .requires_grad_(True) for table in model.embedding_tables]
        optimizer = torch.optim.AdamW(vectors, lr=settings["lr"],
                                      weight_decay=settings["weight_decay"])
        generator = torch.Generator().manual_seed(ctx.seed)

        def loss_on(draws: Any, rows: Any) -> Any:
            states = model.condition(ids[rows], [1], tuple(vectors))
            return model.loss(draws, states, guided)

        def drawn(count: int, gen: Any) -> tuple[Any, Any]:
            rows = torch.randint(0, len(ids), (count,), generator=gen)
            return model.draw(x0, count, gen, rows), rows

        probe_gen = torch.Generator().manual_seed(ctx.seed + PROBE_SEED_OFFSET)
        probes = [drawn(1, probe_gen) for _ in range(settings["probe"])]

        def probe() -> float:
            with torch.no_grad():
                return sum(float(loss_on(d, r)) for d, r in probes) / len(probes)

        before = probe()
        for _ in range(settings["budget"]):
            draws, rows = drawn(settings["batch"], generator)
            loss = loss_on(draws, rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        info = {
            "train_prompts": texts,
            "probe_loss_before": before,
            "probe_loss_after": probe(),
            "guided_loss": guided,
            "shared_wall_seconds": round(time.perf_counter() - started, 3),
        }
        learned = tuple(v.detach() for v in vectors)
        ctx.store.save_shared(ctx.key, dict(zip(names, learned, strict=True)), info)
        return {"vectors": learned, "info": info}

    def run(self, problem: AttackProblem) -> AttackOutcome:
        model, prepared = problem.model, problem.prepared
        ids = model.sequence([model.eos_id, *model.content_ids(problem.prompt.text)])
        return AttackOutcome(
            kind="embedding",
            text=f"{PLACEHOLDER} {problem.prompt.text}",
            image_seeds=list(range(problem.settings["images"])),
            token_ids=ids,
            positions=[1],
            vectors=pack_vectors(prepared["vectors"]),
            steps=problem.settings["budget"],
            loss=prepared["info"]["probe_loss_after"],
            details={"placeholder": PLACEHOLDER, **prepared["info"]},
        )
