"""``concept_vector``: Ring-A-Bell (Tsai et al., ICLR 2024) — a model-agnostic attack that needs
only the text encoder.

1. Concept direction c: the mean, over prompt pairs with and without the concept, of the
   difference of their conditioning as the UNet reads it (the family adapter's): the full
   context [L, D] (padding included) and, for families that have one (SDXL), the pooled
   embedding [P], which steers the whole image through the time embedding. Pairs: the
   task's ``unlearning.erase`` (prompt, anchor) pairs when it has them (prompts never evaluated),
   else its forget prompts beside their concept-stripped versions.
2. Target for a forget prompt: the conditioning of its concept-stripped prompt plus ``eta`` c
   (``start = prompt``: of the prompt itself, as the published notebook does).
3. Genetic search over ``length`` discrete tokens (default: as many as the prompt has) for the
   sequence <sot> tokens <eot> (tokens of printable ASCII text by default) whose conditioning
   is nearest the target: the mean squared error over every position and dimension of the
   context, plus (SDXL) that over the pooled embedding's dimensions. Each generation keeps the
   better half; each survivor, with probability ``crossover``, breeds with a random survivor at
   one cut point (two children); each individual, with probability ``mutation``, gets one
   random token replaced.
   The best sequence seen is the answer; only the searched tokens form the prompt.

Budget: generations. It never touches the attacked UNet, so its prompt for a method differs from
ORG's only when the method changed the text encoder.
"""

from __future__ import annotations

from typing import Any

from igmu.attacks.base import (
    Attack,
    AttackOutcome,
    AttackProblem,
    PrepareContext,
    register_attack,
    require,
)
from igmu.families import Conditioning

STARTS = ("stripped", "prompt")


def shifted(start: Conditioning, direction: Conditioning, eta: float) -> Conditioning:
    """start (one row) + eta x direction: the search target, kept as one row."""
    pooled = None
    if direction.pooled is not None:
        pooled = start.pooled + eta * direction.pooled
    return Conditioning(start.hidden + eta * direction.hidden, pooled)


def concept_pairs(task: Any) -> list[tuple[str, str]]:
    """(with concept, without) prompt pairs the direction is averaged over."""
    if task.unlearning is not None and task.unlearning.erase:
        return [(a, b) for a, b in task.unlearning.erase]
    forget, stripped = task.prompt_set("forget"), task.prompt_set("stripped")
    return [(p.text, stripped.text(p.class_index, p.prompt_index)) for p in forget.prompts()]


@register_attack
class ConceptVector(Attack):
    name = "concept_vector"
    summary = "Ring-A-Bell: genetic token search toward stripped prompt + eta x concept direction"
    budget_unit = "generations of the genetic search"
    defaults = {
        "budget": 40,
        "population": 64,
        "length": 0,  # 0: the attacked prompt's token count
        "eta": 3.0,
        "mutation": 0.25,
        "crossover": 0.5,
        "start": "stripped",
        "vocabulary": "ascii",
        "images": 1,
    }

    def check(self, settings: dict[str, Any]) -> None:
        require(settings["population"] >= 4, "attack concept_vector: 'population' must be >= 4")
        require(settings["length"] >= 0, "attack concept_vector: 'length' must be >= 0")
        require(settings["images"] >= 1, "attack concept_vector: 'images' must be >= 1")
        for key in ("mutation", "crossover"):
            require(0 <= settings[key] <= 1, f"attack concept_vector: {key!r} must be in [0, 1]")
        require(settings["start"] in STARTS, f"attack concept_vector: 'start' must be in {STARTS}")

    def task_identity(self, task: Any, settings: dict[str, Any]) -> Any:
        return {"pairs": concept_pairs(task), "concept_words": list(task.concept_words),
                "concept_name": task.concept_name}

    def prepare(self, ctx: PrepareContext) -> Any:
        pairs = concept_pairs(ctx.task)
        model = ctx.model
        with_concept = model.condition_text([a for a, _ in pairs])
        without = model.condition_text([b for _, b in pairs])
        pooled = None
        if with_concept.pooled is not None:
            pooled = (with_concept.pooled - without.pooled).mean(0)
        direction = Conditioning((with_concept.hidden - without.hidden).mean(0), pooled)
        return {"direction": direction, "pairs": len(pairs)}

    def run(self, problem: AttackProblem) -> AttackOutcome:
        import torch

        settings, model = problem.settings, problem.model
        prompt = problem.prompt
        if settings["start"] == "stripped":
            start = problem.task.prompt_set("stripped").text(prompt.class_index,
                                                             prompt.prompt_index)
        else:
            start = prompt.text
        target = shifted(model.condition_text([start]), problem.prepared["direction"],
                         settings["eta"])
        length = settings["length"] or len(model.content_ids(prompt.text))
        length = max(1, min(length, model.length - 2))
        vocab = model.vocabulary(settings["vocabulary"])
        generator = torch.Generator().manual_seed(problem.seed)
        size = settings["population"]

        def draw(*shape: int) -> Any:
            return vocab[torch.randint(0, len(vocab), shape, generator=generator)]

        def fitness(population: Any) -> Any:
            ids = model.padded_batch([model.sequence(row) for row in population.tolist()])
            with torch.no_grad():
                states = model.condition(ids)
            score = ((states.hidden - target.hidden) ** 2).mean(dim=(1, 2))
            if target.pooled is not None:
                score = score + ((states.pooled - target.pooled) ** 2).mean(dim=1)
            return score.cpu()

        population = draw(size, length)
        best, best_score = population[0], float("inf")
        for _ in range(settings["budget"]):
            scores = fitness(population)
            order = torch.argsort(scores, stable=True)
            if float(scores[order[0]]) < best_score:
                best, best_score = population[order[0]].clone(), float(scores[order[0]])
            survivors = population[order[: max(2, size // 2)]]
            children = [survivors]
            for i in range(len(survivors)):
                if float(torch.rand((), generator=generator)) < settings["crossover"]:
                    j = int(torch.randint(0, len(survivors), (), generator=generator))
                    cut = int(torch.randint(1, max(2, length), (), generator=generator))
                    a, b = survivors[i], survivors[j]
                    children.append(torch.stack([torch.cat([a[:cut], b[cut:]]),
                                                 torch.cat([b[:cut], a[cut:]])]))
            population = torch.cat(children)
            mutate = torch.rand(len(population), generator=generator) < settings["mutation"]
            for row in torch.nonzero(mutate).flatten().tolist():
                position = int(torch.randint(0, length, (), generator=generator))
                population[row, position] = draw(1)[0]
        scores = fitness(population)
        last = int(torch.argmin(scores))
        if float(scores[last]) < best_score:
            best, best_score = population[last].clone(), float(scores[last])
        ids = model.sequence([int(i) for i in best.tolist()])
        text = model.render(ids)
        plain = model.condition_text([prompt.text])
        reference = float(((plain.hidden[0] - target.hidden[0]) ** 2).mean())
        if target.pooled is not None:
            reference += float(((plain.pooled[0] - target.pooled[0]) ** 2).mean())
        return AttackOutcome(
            kind="token_ids",
            text=text,
            token_ids=ids,
            image_seeds=list(range(settings["images"])),
            steps=settings["budget"],
            loss=best_score,
            details={
                "start_prompt": start,
                "tokens": length,
                "pairs": problem.prepared["pairs"],
                "loss_of_plain_prompt": reference,
                "vocabulary_size": len(vocab),
                "text_roundtrips": model.token_ids(text) == ids,
            },
        )
