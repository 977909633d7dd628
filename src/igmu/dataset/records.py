"""One generated image and the key that pairs it with others."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class ImageKey:
    prompt_set: str
    class_name: str
    prompt_index: int
    seed: int

    def __str__(self) -> str:
        return f"{self.prompt_set}/{self.class_name}/{self.prompt_index}/{self.seed}"


@dataclass(frozen=True)
class ImageRecord:
    method: str
    key: ImageKey
    prompt: str
    path: str

    @property
    def prompt_set(self) -> str:
        return self.key.prompt_set
