"""The MiniWorld judges as an IGMU detector: ``mini_judge:<target>``.

Targets: ``shape=<shape>``, ``colour=<colour>`` (or ``color=``), ``style=<style>``,
``background=<white|grey|black>`` (an exact rule on the border pixels, ``judge_background``)
and ``attribute`` (the white spot; also ``attribute=spot``). An image is flagged when the
judge's most likely class for the target's head is the target and its probability exceeds
``threshold`` (default 0: the plain arg-max decision). The score is P(target).

``analyse`` stores every head's class probabilities, so one raw output serves every target and
the cache key (``model_fingerprint``, the judge weights' sha256) does not depend on the target.

Weights: the models file's ``miniworld: {judges: DIR}`` (``DIR`` holds ``judge.safetensors`` +
``judge.json``); ``judges: null`` means the judges shipped with igmu.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from igmu.backbones.config import ModelsConfig
from igmu.core.errors import ConfigError
from igmu.core.registry import did_you_mean
from igmu.detectors.base import DETECTORS, Verdict, detector_settings
from igmu.miniworld.judges import WEIGHTS, Judge, default_judge_dir

MODELS_FIELD = "miniworld"


def parse_variant(variant: str, classes: dict[str, list[str]]) -> tuple[str, str]:
    """``shape=cross`` -> (shape, cross), checked against the judge's heads and classes."""
    text = variant.strip()
    if text in ("attribute", "spot"):
        text = "attribute=spot"
    head, sep, value = text.partition("=")
    head = {"color": "colour"}.get(head.strip(), head.strip())
    value = value.strip()
    if not sep or not value:
        raise ConfigError(
            f"detector mini_judge:{variant}: the target must be <head>=<class> or 'attribute' "
            f"(heads: {', '.join(classes)})"
        )
    if head not in classes:
        raise ConfigError(
            f"detector mini_judge:{variant}: the judges have no head {head!r}."
            f"{did_you_mean(head, list(classes))}"
        )
    if value not in classes[head]:
        raise ConfigError(
            f"detector mini_judge:{variant}: head {head!r} has no class {value!r}."
            f"{did_you_mean(value, classes[head])}"
        )
    return head, value


class MiniJudgeDetector:
    def __init__(self, judge: Judge, target: str, threshold: float = 0.0) -> None:
        self.judge = judge
        self.head, self.target = parse_variant(target, judge.classes)
        self.name = f"mini_judge:{target}"
        self.threshold = float(threshold)
        self.model_fingerprint = judge.fingerprint

    def analyse(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        probs = self.judge.predict_proba(images)
        return [
            {
                "probs": {
                    head: {c: float(p[i, k]) for k, c in enumerate(self.judge.classes[head])}
                    for head, p in probs.items()
                }
            }
            for i in range(len(images))
        ]

    def verdict(self, raw: dict[str, Any]) -> Verdict:
        probs = raw["probs"][self.head]
        predicted = max(probs, key=lambda c: (probs[c], c == self.target))
        score = float(probs[self.target])
        flagged = predicted == self.target and score > self.threshold
        # Every head's most likely class, for metrics that check the whole prompt.
        drawn = {head: max(p, key=p.__getitem__) for head, p in raw["probs"].items()}
        return Verdict(flagged, score, {"head": self.head, "predicted": predicted, "drawn": drawn})

    def prompt_labels(self, prompt: str) -> dict[str, str]:
        """What a MiniWorld caption asks of each judged head: only the factors it names
        (shape, colour, texture, spot, background); a caption with a subject but no texture or
        spot word asks for a plain subject without a spot."""
        from igmu.miniworld.oracle import parse_caption

        asked = parse_caption(prompt)
        labels = {}
        for head in self.judge.classes:
            if head == "attribute" and "attribute" in asked:
                labels[head] = "spot" if asked["attribute"] else "no_spot"
            elif head in asked and head != "attribute":
                labels[head] = str(asked[head])
        return labels

    def describe(self) -> dict[str, Any]:
        head_meta = self.judge.head_info(self.head)
        return {
            "detector": self.name,
            "kind": "MiniWorld judge (multi-head CNN trained on rendered images)",
            "judges": str(self.judge.folder),
            "weights_sha256": self.judge.weights_sha256,
            "head": self.head,
            "target": self.target,
            "classes": self.judge.classes[self.head],
            "held_out_accuracy": head_meta.get("accuracy"),
            "held_out_ci": head_meta.get("ci"),
            "held_out_n": head_meta.get("n"),
            "rule": head_meta.get("rule"),
            "input_size": self.judge.input_size,
            "threshold": self.threshold,
            "score": "P(target) from the head's softmax; flagged when the target is the most "
            "likely class and P(target) > threshold",
        }


_JUDGES: dict[tuple[str, int], Judge] = {}


def load_judges(folder: str) -> Judge:
    """One Judge per weights file per process (every target shares the network)."""
    weights = Path(folder) / WEIGHTS
    key = (str(Path(folder).resolve()), weights.stat().st_mtime_ns if weights.is_file() else 0)
    if key not in _JUDGES:
        _JUDGES[key] = Judge(folder)
    return _JUDGES[key]


def resolve_judges_dir(models: ModelsConfig) -> str:
    if MODELS_FIELD not in models.values:
        raise ConfigError(
            f"detector mini_judge needs the models-file field 'miniworld: {{judges: DIR}}' "
            f"({models.source} has none; igmu's built-in defaults must define 'miniworld', "
            "with judges: null for the judges shipped in igmu/miniworld/weights/judges)"
        )
    section = models.get(MODELS_FIELD)
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"{models.source}: field 'miniworld' must be a mapping")
    folder = section.get("judges")
    if folder is None:
        return str(default_judge_dir())
    if not isinstance(folder, str):
        raise ConfigError(f"{models.source}: field 'miniworld.judges' must be a folder path")
    return folder


@DETECTORS.register("mini_judge")
def build_mini_judge(models: ModelsConfig, variant: str | None, overrides: dict[str, Any]):
    if not variant:
        raise ConfigError(
            "detector 'mini_judge' needs a target, e.g. mini_judge:shape=cross, "
            "mini_judge:style=stripes, mini_judge:attribute"
        )
    settings = detector_settings(models, "mini_judge", {"threshold": 0.0})
    settings.update(overrides)
    return MiniJudgeDetector(
        load_judges(resolve_judges_dir(models)), variant, settings["threshold"]
    )
