"""The verdict as the evaluation stored it: per unlearned method, one headline metric per
aspect and its calls against the reference method and the best other method (computed and
Holm-adjusted by `igmu.evaluation.verdict`; here only read back and arranged)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from igmu.core.intervals import MIN_PROMPTS
from igmu.core.records import ASPECTS, Aggregate, Comparison
from igmu.store.runs import StoredRun

REFERENCE, BEST = "verdict.reference", "verdict.best"


@dataclass(frozen=True)
class Call:
    """One comparison of the verdict and its outcome after Holm's adjustment."""

    comparison: Comparison | None  # method - other as stored
    other: str
    outcome: str  # better | worse | same | n/a
    adjusted_p: float = float("nan")

    @property
    def undecidable(self) -> bool:
        """Compared on too few prompts for an interval: nothing can be decided."""
        c = self.comparison
        return self.outcome == "n/a" and c is not None and c.n > 0 and c.prompts < MIN_PROMPTS

    @property
    def word(self) -> str:
        return {"better": "better than", "worse": "worse than", "same": "not distinguishable from",
                "n/a": "not comparable with"}[self.outcome]

    def phrase(self) -> str:
        """The call in words, e.g. "worse than ORG", "cannot be decided: 1 prompt"."""
        if self.undecidable:
            prompts = self.comparison.prompts if self.comparison is not None else 0
            return f"cannot be decided: {prompts} prompt{'s' if prompts != 1 else ''}"
        return f"{self.word} {self.other}"


@dataclass(frozen=True)
class Headline:
    method: str
    aspect: str
    metric: str | None
    aggregate: Aggregate | None
    vs_reference: Call
    vs_best: Call | None  # None: no other unlearned method has the metric


@dataclass
class Verdict:
    reference: str
    methods: list[str]  # unlearned methods, in the documented order
    metrics: dict[str, str | None]  # aspect -> headline metric
    headlines: dict[tuple[str, str], Headline]
    tests: int  # comparisons under the Holm adjustment
    stored: bool = True  # False: the run was evaluated by an igmu that stored no verdict

    def row(self, method: str) -> list[Headline]:
        return [self.headlines[(method, aspect)] for aspect in ASPECTS]


def _call(c: Comparison) -> Call:
    return Call(c, c.other, c.outcome, c.adjusted_p)


def stored_verdict(run: StoredRun) -> Verdict:
    """The run's verdict from its stored comparisons."""
    reference = run.reference_method
    rows = [c for c in run.comparisons if c.kind in (REFERENCE, BEST)]
    unlearned = [m for m in run.methods if m != reference]
    by_call = {(c.kind, c.method, c.aspect): c for c in rows}
    metrics: dict[str, str | None] = {aspect: None for aspect in ASPECTS}
    for c in rows:
        if c.kind == REFERENCE and c.metric:
            metrics[c.aspect] = c.metric
    rank = {c.method: c.rank for c in rows}
    headlines = {}
    for method in unlearned:
        for aspect in ASPECTS:
            ref = by_call.get((REFERENCE, method, aspect))
            metric = metrics[aspect]
            aggregate = run.aggregate(method, metric) if metric else None
            best = by_call.get((BEST, method, aspect))
            headlines[(method, aspect)] = Headline(
                method, aspect, metric if aggregate else None, aggregate,
                _call(ref) if ref is not None else Call(None, reference, "n/a"),
                _call(best) if best is not None else None,
            )
    tests = sum(math.isfinite(c.adjusted_p) for c in rows)
    order = sorted(unlearned, key=lambda m: (rank.get(m, len(unlearned)), m))
    return Verdict(reference, order, metrics, headlines, tests, stored=bool(rows) or not unlearned)


def with_best_outcome(headline: Headline) -> str:
    """How a headline stands against the best other method, in words."""
    call = headline.vs_best
    if call is None:
        return "only method"
    if call.outcome == "better":
        return f"best (better than {call.other})"
    if call.outcome == "same":
        return f"tied with {call.other}"
    if call.outcome == "worse":
        return f"behind {call.other}"
    if call.undecidable:
        return f"vs {call.other}: {call.phrase()}"
    return f"not comparable with {call.other}"

