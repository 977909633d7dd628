"""What every attack shares: the interface, its registry, settings and the outcome it returns.

An attack searches, for one forget prompt of a task, for a conditioning under which the attacked
model draws the erased concept again. It gets an ``AttackProblem`` (the attacked model, the
prompt, ORG's images of it when the attack needs targets, a seeded RNG) and returns an
``AttackOutcome``: plain text, token ids, or token ids with soft embeddings at some positions,
plus the image seeds the engine generates the attack images with.

``budget`` is every attack's cost knob; what it counts is the attack's ``budget_unit``.
Work shared by all prompts of one (model, attack) pair (textual inversion's learned token) is
``prepare``'s; its result is cached on disk by the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from igmu.core.errors import ConfigError
from igmu.core.registry import Registry, did_you_mean
from igmu.core.settings import coerce

FORMAT = "igmu.attack/1"
OUTCOME_KINDS = ("text", "token_ids", "embedding")


@dataclass(frozen=True)
class AttackPrompt:
    """One attacked forget prompt, keyed as its images are in the manifest."""

    class_name: str
    class_index: int
    prompt_index: int
    text: str

    @property
    def key(self) -> str:
        return f"forget/{self.class_name}/{self.prompt_index}"


@dataclass
class AttackProblem:
    model: Any  # igmu.pipelines.attackable.AttackedModel (None for attacks that only sample it)
    task: Any
    prompt: AttackPrompt
    settings: dict[str, Any]
    seed: int  # this prompt's seed (derived from --seed and the prompt)
    attack_seed: int = 0  # --seed itself
    targets: list[Any] = field(default_factory=list)  # ORG's uint8 images of the prompt
    prepared: Any = None  # what ``prepare`` returned


@dataclass
class AttackOutcome:
    """What an attack found. ``kind``: ``text`` (generate from ``text``), ``token_ids``
    (generate from ``token_ids``; ``text`` is a readable rendering) or ``embedding`` (token ids
    whose input embeddings at ``positions`` are replaced by ``vectors``)."""

    kind: str
    text: str
    image_seeds: list[int]
    token_ids: list[int] | None = None
    positions: list[int] | None = None
    vectors: Any = None  # [len(positions), D] tensor; a tuple of one per text encoder (SDXL)
    steps: int = 0
    loss: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in OUTCOME_KINDS:
            raise ValueError(f"outcome kind must be one of {OUTCOME_KINDS}, got {self.kind!r}")
        if self.kind != "text" and self.token_ids is None:
            raise ValueError(f"a {self.kind} outcome needs token_ids")
        if self.kind == "embedding" and (self.vectors is None or not self.positions):
            raise ValueError("an embedding outcome needs positions and vectors")


@dataclass
class PrepareContext:
    model: Any  # igmu.pipelines.attackable.AttackedModel
    task: Any
    settings: dict[str, Any]
    seed: int
    targets: Callable[[list[str], list[int]], list[Any]]  # ORG's images of (texts, seeds)
    store: Any  # igmu.attacks.store.ResultStore
    key: str  # names this shared work in the store


class Attack:
    """Base of a registered attack. Subclasses set the class attributes and ``run``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    budget_unit: ClassVar[str] = ""
    # reads the model's parts (text encoder, ...), not only samples it; needs the attacked UNet
    # (white-box); needs ORG's images of each prompt as targets
    needs_model: ClassVar[bool] = True
    white_box: ClassVar[bool] = False
    needs_targets: ClassVar[bool] = False
    # bump when a change alters what the attack finds (joins the attack fingerprint)
    version: ClassVar[int] = 1
    defaults: ClassVar[dict[str, Any]] = {}

    def settings(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``given`` (unknown keys fail with "did you mean")."""
        merged = dict(self.defaults)
        for key, value in (given or {}).items():
            if key not in self.defaults:
                raise ConfigError(
                    f"attack {self.name} has no setting {key!r}."
                    f"{did_you_mean(key, list(self.defaults))}"
                )
            merged[key] = coerce(value, self.defaults[key], f"attack {self.name} setting {key!r}")
        budget = merged.get("budget")
        if not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"attack {self.name}: --budget must be a positive integer")
        self.check(merged)
        return merged

    def check(self, settings: dict[str, Any]) -> None:
        """Raise ConfigError on settings that cannot work."""

    def target_seeds(self, settings: dict[str, Any]) -> list[int]:
        """Seeds of ORG's images of a prompt that ``run`` gets as targets (none by default)."""
        return list(range(settings["targets"])) if self.needs_targets else []

    def task_identity(self, task: Any, settings: dict[str, Any]) -> Any:
        """What the attack reads from the task besides the attacked prompt (joins every
        result's cache key)."""
        return None

    def prepare(self, ctx: PrepareContext) -> Any:
        """Work shared by every prompt of one attacked model (default: none); called once, only
        when some prompt is not cached; may keep its result in ``ctx.store``."""
        return None

    def run(self, problem: AttackProblem) -> AttackOutcome:
        raise NotImplementedError


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


ATTACKS: Registry[Attack] = Registry("attack", home="igmu.attacks", group="igmu.attacks")


def register_attack(cls: type[Attack]) -> type[Attack]:
    ATTACKS.register(cls.name)(cls())
    return cls


def get_attack(name: str) -> Attack:
    """An attack by name (case-insensitive); unknown names fail with "did you mean"."""
    lowered = name.strip().lower()
    return ATTACKS.get(lowered if lowered in ATTACKS else name.strip())


def attack_names() -> list[str]:
    return ATTACKS.names()
