"""Names that more than one part of igmu relies on; spelled here once.

- Methods: ``ORG`` is the original model (every comparison's reference); ``NEGPROMPT`` is ORG
  with the concept as negative prompt; ``RETRAIN`` is a model trained from scratch without the
  concept (the gold standard of unlearning, shipped for the MiniWorld).
- Prompt sets: the kinds a task may define, in the order reports show them; ``stripped`` is
  derived from ``forget`` and only the reference method is generated on it. Adversarial prompts
  found by ``igmu attack`` live in sets named ``attack.<attack name>``.
- The method card ``igmu unlearn`` writes beside a model.
"""

from __future__ import annotations

ORG = "ORG"
NEGPROMPT = "NEGPROMPT"
RETRAIN = "RETRAIN"

PROMPT_SET_KINDS = ("forget", "stripped", "unrelated", "related", "multilingual", "paraphrase")
ATTACK_SET_PREFIX = "attack."

METHOD_CARD = "igmu_method.json"
METHOD_CARD_SCHEMA = "igmu.method/1"


def attack_set(attack: str) -> str:
    """The prompt-set name of an attack's images, e.g. ``attack.text_grad``."""
    return f"{ATTACK_SET_PREFIX}{attack}"


def is_attack_set(prompt_set: str) -> bool:
    return prompt_set.startswith(ATTACK_SET_PREFIX)
