"""``seed_search``: the baseline every attack must beat — the plain forget prompt at more seeds.

Budget: extra seeds. The attack images are the prompt itself at seeds ``first_seed + budget * s +
i`` for i < budget (s = ``--seed``), far from the seeds 0, 1, ... that ``igmu generate`` uses
for the forget set, so they are *extra* draws, and different ``--seed`` values draw disjoint
seeds. A prompt counts as broken when any of them shows the concept: the best of ``budget``
seeds. No optimisation, no access to the model beyond sampling it.
"""

from __future__ import annotations

from typing import Any

from igmu.attacks.base import Attack, AttackOutcome, AttackProblem, register_attack, require


@register_attack
class SeedSearch(Attack):
    name = "seed_search"
    summary = "baseline: the plain prompt at extra seeds (the best of N draws)"
    budget_unit = "extra seeds (images)"
    needs_model = False  # any pipeline igmu generate runs, not only UNet + CLIP ones
    defaults = {"budget": 4, "first_seed": 1000}

    def check(self, settings: dict[str, Any]) -> None:
        require(settings["first_seed"] >= 0, "attack seed_search setting 'first_seed' must be >= 0")

    def run(self, problem: AttackProblem) -> AttackOutcome:
        budget, base = problem.settings["budget"], problem.settings["first_seed"]
        start = base + budget * problem.attack_seed
        return AttackOutcome(
            kind="text",
            text=problem.prompt.text,
            image_seeds=list(range(start, start + budget)),
            steps=budget,
        )
