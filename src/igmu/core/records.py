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
# What the unlearning itself cost (from each method's card; lower is better): reported beside
# the paper's five aspects, but not part of the verdict or the radar, which judge the images.
EFFICIENCY = "efficiency"
REPORTED_ASPECTS = (*ASPECTS, EFFICIENCY)



@dataclass(frozen=True)
class Column:
    """One field of a stored record: its name and its SQLite type (with constraints)."""

    name: str
    sql: str


def names(columns: tuple[Column, ...]) -> tuple[str, ...]:
    return tuple(c.name for c in columns)


def table_sql(table: str, columns: tuple[Column, ...], key: tuple[str, ...]) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a record's table: ``run_id`` first, then its columns."""
    fields = ", ".join(f"{c.name} {c.sql}" for c in columns)
    return (f"CREATE TABLE IF NOT EXISTS {table} (run_id TEXT NOT NULL, {fields}, "
            f"PRIMARY KEY (run_id, {', '.join(key)}));")


def insert_sql(table: str, columns: tuple[Column, ...]) -> str:
    """An insert naming every column (the table's physical order does not matter)."""
    fields = ("run_id", *names(columns))
    return f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})"


def select_sql(table: str, columns: tuple[Column, ...], order: str) -> str:
    return f"SELECT {', '.join(names(columns))} FROM {table} WHERE run_id=? ORDER BY {order}"


TEXT, REAL, INTEGER = "TEXT NOT NULL", "REAL", "INTEGER NOT NULL"

SAMPLE_COLUMNS = (
    Column("method", TEXT), Column("metric", TEXT), Column("aspect", TEXT),
    Column("prompt_set", TEXT), Column("class_name", TEXT), Column("prompt_index", INTEGER),
    Column("seed", INTEGER), Column("prompt", TEXT), Column("path", TEXT),
    Column("sha256", TEXT), Column("value", REAL), Column("extra_json", TEXT),
)
SAMPLE_KEY = ("method", "metric", "prompt_set", "class_name", "prompt_index", "seed")
AGGREGATE_COLUMNS = (
    Column("method", TEXT), Column("metric", TEXT), Column("aspect", TEXT),
    Column("value", REAL), Column("ci_low", REAL), Column("ci_high", REAL), Column("n", INTEGER),
    Column("higher_is_better", INTEGER), Column("whole_set", INTEGER), Column("warning", TEXT),
    Column("prompts", "INTEGER NOT NULL DEFAULT 0"),
)
AGGREGATE_KEY = ("method", "metric")
COMPARISON_COLUMNS = (
    Column("kind", TEXT), Column("method", TEXT), Column("other", TEXT), Column("metric", TEXT),
    Column("aspect", TEXT), Column("higher_is_better", INTEGER), Column("value", REAL),
    Column("ci_low", REAL), Column("ci_high", REAL), Column("n", INTEGER),
    Column("prompts", INTEGER), Column("p_value", REAL), Column("adjusted_p", REAL),
    Column("outcome", TEXT), Column("rank", INTEGER), Column("note", TEXT),
)
COMPARISON_KEY = ("kind", "method", "aspect", "metric", "other")
# The exports' columns: which record fields each CSV shows, in its order (task first).
METRICS_CSV = ("method", "aspect", "metric", "value", "ci_low", "ci_high", "n", "prompts",
               "higher_is_better")
SAMPLES_CSV = ("method", "aspect", "metric", "prompt_set", "class_name", "prompt_index", "seed",
               "prompt", "path", "sha256", "value", "extra_json")


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

    def fields(self) -> dict[str, Any]:
        """The stored value of every column (`SAMPLE_COLUMNS`)."""
        key = self.record.key
        return {
            "method": self.method,
            "metric": self.metric,
            "aspect": self.aspect,
            "prompt_set": key.prompt_set,
            "class_name": key.class_name,
            "prompt_index": key.prompt_index,
            "seed": key.seed,
            "prompt": self.record.prompt,
            "path": self.record.path,
            "sha256": self.sha256,
            "value": _nullable(self.value),
            "extra_json": json.dumps(self.extra, sort_keys=True, default=float),
        }

    def row(self) -> tuple:
        fields = self.fields()
        return tuple(fields[name] for name in names(SAMPLE_COLUMNS))

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

    def fields(self) -> dict[str, Any]:
        """The stored value of every column (`AGGREGATE_COLUMNS`)."""
        return {
            "method": self.method,
            "metric": self.metric,
            "aspect": self.aspect,
            "value": _nullable(self.value),
            "ci_low": _nullable(self.ci_low),
            "ci_high": _nullable(self.ci_high),
            "n": self.n,
            "higher_is_better": int(self.higher_is_better),
            "whole_set": int(self.whole_set),
            "warning": self.warning,
            "prompts": self.prompts,
        }

    def row(self) -> tuple:
        fields = self.fields()
        return tuple(fields[name] for name in names(AGGREGATE_COLUMNS))

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


OUTCOMES = ("better", "worse", "same", "n/a")


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two methods on one metric, as the evaluation stored it.

    ``value`` = metric(method) - metric(other) on the keys both have, with its 95% interval,
    ``p_value`` and, for the comparisons of a verdict, ``adjusted_p`` (Holm) and ``outcome``
    (better / worse / same / n/a for ``method``). ``kind`` says what it is for:
    ``verdict.reference`` and ``verdict.best`` (the verdict's calls against the reference
    method and the best other method; ``rank`` is the method's place in the verdict),
    ``best`` (a leaderboard column's best method against its rival: starred when better) and
    ``pair`` (asked for by ``igmu compare``)."""

    kind: str
    method: str
    other: str
    metric: str
    aspect: str
    higher_is_better: bool
    value: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    n: int = 0
    prompts: int = 0
    p_value: float = float("nan")
    adjusted_p: float = float("nan")
    outcome: str = "n/a"
    rank: int = 0
    note: str = ""

    @property
    def tested(self) -> bool:
        return math.isfinite(self.value)

    @property
    def significant(self) -> bool:
        return math.isfinite(self.ci_low) and (self.ci_low > 0 or self.ci_high < 0)

    @property
    def better(self) -> str | None:
        """The method whose value is better by an interval that excludes no difference."""
        if not self.significant:
            return None
        first_higher = self.ci_low > 0
        return self.method if first_higher == self.higher_is_better else self.other

    def fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "method": self.method, "other": self.other,
            "metric": self.metric, "aspect": self.aspect,
            "higher_is_better": int(self.higher_is_better), "value": _nullable(self.value),
            "ci_low": _nullable(self.ci_low), "ci_high": _nullable(self.ci_high), "n": self.n,
            "prompts": self.prompts, "p_value": _nullable(self.p_value),
            "adjusted_p": _nullable(self.adjusted_p), "outcome": self.outcome,
            "rank": self.rank, "note": self.note,
        }

    def row(self) -> tuple:
        fields = self.fields()
        return tuple(fields[name] for name in names(COMPARISON_COLUMNS))

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Comparison:
        return cls(
            kind=row["kind"], method=row["method"], other=row["other"], metric=row["metric"],
            aspect=row["aspect"], higher_is_better=bool(row["higher_is_better"]),
            value=_nan(row["value"]), ci_low=_nan(row["ci_low"]), ci_high=_nan(row["ci_high"]),
            n=int(row["n"]), prompts=int(row["prompts"]), p_value=_nan(row["p_value"]),
            adjusted_p=_nan(row["adjusted_p"]), outcome=row["outcome"], rank=int(row["rank"]),
            note=row["note"] or "",
        )
