"""The records every stage shares: an image's key and record, a per-image ``Sample``, an
``Aggregate`` over samples and a ``Comparison`` of two methods.

Metrics make them, the engine stores them, exports write them, the report and the demo read
them back: one definition each, with its columns beside it (`Column`), from which the store's
tables, its inserts and selects and the CSV exports are derived. Undefined values are NaN in
memory, NULL in the store and empty cells in CSV files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


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
    """One image of a method: its key, the prompt it was made from and its file."""

    method: str
    key: ImageKey
    prompt: str
    path: str

    @property
    def prompt_set(self) -> str:
        return self.key.prompt_set


ASPECTS = ("forgetting", "fidelity", "preservation", "alignment", "robustness")

AGGREGATE_COLUMNS = (
    "method",
    "metric",
    "aspect",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "higher_is_better",
    "whole_set",
    "warning",
    "prompts",
)
SAMPLE_COLUMNS = (
    "method",
    "metric",
    "aspect",
    "prompt_set",
    "class_name",
    "prompt_index",
    "seed",
    "prompt",
    "path",
    "sha256",
    "value",
    "extra_json",
)


def _nullable(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class Sample:
    """One image's score on one metric. ``metric``/``aspect``/``sha256`` are filled in by the
    engine when the sample is stored; a metric only says whose image it scored and how."""

    method: str
    record: ImageRecord
    value: float
    extra: dict[str, Any] = field(default_factory=dict)
    metric: str = ""
    aspect: str = ""
    sha256: str = ""

    @property
    def key(self) -> ImageKey:
        return self.record.key

    @property
    def path(self) -> str:
        return self.record.path

    @property
    def prompt(self) -> str:
        return self.record.prompt

    def row(self) -> tuple:
        key = self.record.key
        return (
            self.method,
            self.metric,
            self.aspect,
            key.prompt_set,
            key.class_name,
            key.prompt_index,
            key.seed,
            self.record.prompt,
            self.record.path,
            self.sha256,
            _nullable(self.value),
            json.dumps(self.extra, sort_keys=True, default=float),
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sample:
        key = ImageKey(
            row["prompt_set"], row["class_name"], int(row["prompt_index"]), int(row["seed"])
        )
        return cls(
            method=row["method"],
            record=ImageRecord(row["method"], key, row["prompt"], row["path"]),
            value=_nan(row["value"]),
            extra=json.loads(row["extra_json"] or "{}"),
            metric=row["metric"],
            aspect=row["aspect"],
            sha256=row["sha256"],
        )


@dataclass(frozen=True)
class Aggregate:
    """A metric's value for one method, with its 95% interval and sample size."""

    method: str
    metric: str
    aspect: str
    higher_is_better: bool
    value: float
    ci_low: float
    ci_high: float
    n: int  # images
    prompts: int = 0  # distinct prompts among them: the unit of the interval
    whole_set: bool = False
    warning: str = ""

    @property
    def finite(self) -> bool:
        return math.isfinite(self.value)

    def row(self) -> tuple:
        return (
            self.method,
            self.metric,
            self.aspect,
            _nullable(self.value),
            _nullable(self.ci_low),
            _nullable(self.ci_high),
            self.n,
            int(self.higher_is_better),
            int(self.whole_set),
            self.warning,
            self.prompts,
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Aggregate:
        return cls(
            method=row["method"],
            metric=row["metric"],
            aspect=row["aspect"],
            higher_is_better=bool(row["higher_is_better"]),
            value=_nan(row["value"]),
            ci_low=_nan(row["ci_low"]),
            ci_high=_nan(row["ci_high"]),
            n=int(row["n"]),
            prompts=int(row["prompts"] or 0),
            whole_set=bool(row["whole_set"]),
            warning=row["warning"] or "",
        )


@dataclass(frozen=True)
class MetricResult:
    """What a metric computes for one method: the aggregate and the samples it came from."""

    aggregate: Aggregate
    samples: tuple[Sample, ...]
