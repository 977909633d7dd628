"""Typed, frozen task objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from igmu.core.constants import PROMPT_SET_KINDS

__all__ = ["PROMPT_SET_KINDS", "Prompt", "PromptSet", "Task", "UnlearningPrompts"]


@dataclass(frozen=True)
class Prompt:
    prompt_set: str
    class_name: str
    class_index: int
    prompt_index: int
    text: str


@dataclass(frozen=True)
class PromptSet:
    name: str
    classes: tuple[tuple[str, tuple[str, ...]], ...]
    description: str = ""
    derived_from: str | None = None

    def class_names(self) -> list[str]:
        return [name for name, _ in self.classes]

    def class_index(self, class_name: str) -> int | None:
        lowered = class_name.lower()
        for index, (name, _) in enumerate(self.classes):
            if name.lower() == lowered:
                return index
        return None

    def prompts(self) -> list[Prompt]:
        return [
            Prompt(self.name, name, ci, pi, text)
            for ci, (name, texts) in enumerate(self.classes)
            for pi, text in enumerate(texts)
        ]

    def size(self) -> int:
        return sum(len(texts) for _, texts in self.classes)

    def text(self, class_index: int, prompt_index: int) -> str:
        return self.classes[class_index][1][prompt_index]


@dataclass(frozen=True)
class UnlearningPrompts:
    """A task's prompts for training-time unlearning methods (not evaluated).

    ``erase``: (prompt with the concept, the same prompt without it) pairs, so that an editing
    method can map the concept *in context* onto its correct output; ``preserve``: prompts whose
    output must not change.
    """

    erase: tuple[tuple[str, str], ...]
    preserve: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Task:
    name: str
    version: int
    title: str
    node: str
    kind: str
    concept_name: str
    concept_words: tuple[str, ...]
    guidance: dict[str, Any]
    prompt_sets: dict[str, PromptSet]
    source: str
    igmu_key: str | None = None
    description: str = ""
    unlearning: UnlearningPrompts | None = None
    # A world whose models ship with igmu ("miniworld"): commands default to its models.
    world: str | None = None
    # sha256 of the task file's text: what caches of anything derived from the task key on.
    content_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return str(self.guidance["reference"])

    @property
    def is_sensitive(self) -> bool:
        return bool(self.guidance.get("sensitive_content", False))

    def prompt_set(self, name: str) -> PromptSet:
        from igmu.core.errors import ConfigError
        from igmu.core.registry import did_you_mean

        if name not in self.prompt_sets:
            raise ConfigError(
                f"Task {self.name!r} has no prompt set {name!r}."
                f"{did_you_mean(name, list(self.prompt_sets))}"
            )
        return self.prompt_sets[name]
