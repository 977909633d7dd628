"""Robustness probes: adversarial prompt search against an unlearned text-to-image model.

``run_attacks`` (``igmu attack``) searches, for each of the first K forget prompts of a task, an
adversarial conditioning against each method's model, writes ``DIR/attacks.jsonl`` and generates
the attack images into ``DIR``'s content-addressed cache and manifest (prompt set
``attack.<name>``), which ``igmu evaluate`` scores. Attacks: ``text_grad`` (UnlearnDiffAtk),
``concept_vector`` (Ring-A-Bell), ``textual_inversion`` (Concept Inversion / CCE) and
``seed_search`` (the baseline).
"""

from igmu.attacks.base import (
    ATTACKS,
    Attack,
    AttackOutcome,
    AttackProblem,
    AttackPrompt,
    attack_names,
    get_attack,
    register_attack,
)

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackOutcome",
    "AttackProblem",
    "AttackPrompt",
    "attack_names",
    "get_attack",
    "register_attack",
]
