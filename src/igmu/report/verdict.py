"""The verdict: per unlearned method, one headline metric per aspect, called better / worse /
not distinguishable from ORG and from the best other method by paired tests whose p-values are
Holm-adjusted together (multiplicity control over every call of the verdict).

Headlines come from the task's CatIGMU guidance (``headlines``: per aspect, metrics in order of
preference; the first the run has is used). Methods are ordered by a fixed rule, documented in
docs/design/report.md: first those whose forgetting is better than ORG's, then the fewest
aspects worse than ORG, then the better forgetting value, then the name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from igmu.core import intervals as C
from igmu.core.records import ASPECTS, Aggregate
from igmu.evaluation.compare import Difference, paired_difference
from igmu.metrics.base import prompt_of
from igmu.store.runs import StoredRun
from igmu.store.sqlite import Store

ALPHA = 0.05


@dataclass(frozen=True)
class Call:
    """One comparison of the verdict and its outcome after Holm's adjustment."""

    difference: Difference | None  # method - other, or None when not testable
    other: str
    outcome: str  # better | worse | same | n/a
    adjusted_p: float = float("nan")

    @property
    def word(self) -> str:
        return {"better": "better than", "worse": "worse than", "same": "not distinguishable from",
                "n/a": "not comparable with"}[self.outcome]


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

    def row(self, method: str) -> list[Headline]:
        return [self.headlines[(method, aspect)] for aspect in ASPECTS]


def headline_metric(run: StoredRun, aspect: str) -> str | None:
    """The first metric of the task's ``headlines`` for ``aspect`` that the run has; a name
    matches whole or before a suffix (``residual_rate`` -> ``residual_rate.<detector>``), the
    suffixes of the run's first detector winning."""
    wanted = (run.spec.get("task") or {}).get("headlines") or {}
    present = sorted({a.metric for a in run.aggregates if a.aspect == aspect})
    detectors = run.spec.get("detectors") or []
    for name in wanted.get(aspect, []):
        found = [m for m in present if m == name or m.startswith(name + ".")]
        if found:
            for detector in detectors:
                for metric in found:
                    if metric.endswith("." + detector):
                        return metric
            return found[0]
    return None


def versus_reference(
    run: StoredRun, metric: str, method: str, store: Store
) -> Difference | None:
    """method - ORG on the metric. Where ORG has no value because the metric measures a
    distance to ORG (LPIPS, CSDR), ORG's own value is 0 and the method's values are tested
    against it; a whole-set distance to ORG (FID) has no such test."""
    reference = run.reference_method
    own = run.aggregate(method, metric)
    if own is None:
        return None
    if run.aggregate(reference, metric) is not None:
        return paired_difference(run, metric, method, reference, store)
    if own.whole_set:
        return None
    samples = [s for s in run.samples_of(method, metric) if math.isfinite(s.value)]
    if not samples:
        return None
    strata = [s.extra.get("stratum") for s in samples]
    test = C.cluster_mean_test(
        [s.value for s in samples], [prompt_of(s.record) for s in samples],
        strata if all(x is not None for x in strata) else None,
    )
    return Difference(
        metric, own.aspect, own.higher_is_better, method, reference, test.estimate, test.low,
        test.high, len(samples), len({prompt_of(s.record) for s in samples}), test.p_value,
    )


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error over every test given)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _outcome(diff: Difference, adjusted_p: float) -> str:
    if not math.isfinite(adjusted_p) or adjusted_p >= ALPHA:
        return "same"
    higher = diff.value > 0
    return "better" if higher == diff.higher_is_better else "worse"


def _best_other(run: StoredRun, metric: str, method: str, methods: list[str]) -> str | None:
    values = {
        m: a.value for m in methods
        if m != method and (a := run.aggregate(m, metric)) is not None and a.finite
    }
    if not values:
        return None
    higher = run.aggregate(method, metric).higher_is_better
    return (max if higher else min)(values, key=lambda m: values[m])


def build_verdict(run: StoredRun) -> Verdict:
    reference = run.reference_method
    unlearned = [m for m in run.methods if m != reference]
    metrics = {aspect: headline_metric(run, aspect) for aspect in ASPECTS}
    pending: list[tuple[tuple[str, str], str, Difference | None, str]] = []
    store = Store(run.store_path)
    try:
        for method in unlearned:
            for aspect, metric in metrics.items():
                if metric is None or run.aggregate(method, metric) is None:
                    continue
                pending.append(((method, aspect), "ref", versus_reference(run, metric, method,
                                                                          store), reference))
                rival = _best_other(run, metric, method, unlearned)
                if rival is not None:
                    diff = paired_difference(run, metric, method, rival, store)
                    pending.append(((method, aspect), "best", diff, rival))
    finally:
        store.close()
    testable = [i for i, (_, _, d, _) in enumerate(pending)
                if d is not None and math.isfinite(d.p_value)]
    adjusted = dict(zip(testable, holm([pending[i][2].p_value for i in testable]), strict=True))
    calls: dict[tuple[tuple[str, str], str], Call] = {}
    for i, (key, kind, diff, other) in enumerate(pending):
        if i in adjusted:
            calls[(key, kind)] = Call(diff, other, _outcome(diff, adjusted[i]), adjusted[i])
        else:
            calls[(key, kind)] = Call(diff, other, "n/a")
    headlines = {}
    for method in unlearned:
        for aspect, metric in metrics.items():
            aggregate = run.aggregate(method, metric) if metric else None
            na = Call(None, reference, "n/a")
            headlines[(method, aspect)] = Headline(
                method, aspect, metric if aggregate else None, aggregate,
                calls.get(((method, aspect), "ref"), na),
                calls.get(((method, aspect), "best")),
            )
    verdict = Verdict(reference, unlearned, metrics, headlines, len(testable))
    verdict.methods = sorted(unlearned, key=lambda m: _order_key(verdict, m))
    return verdict


def _order_key(verdict: Verdict, method: str) -> tuple[Any, ...]:
    row = {h.aspect: h for h in verdict.row(method)}
    forgetting = row["forgetting"]
    worse = sum(h.vs_reference.outcome == "worse" for h in row.values())
    value = forgetting.aggregate.value if forgetting.aggregate is not None else math.inf
    if forgetting.aggregate is not None and forgetting.aggregate.higher_is_better:
        value = -value
    return (forgetting.vs_reference.outcome != "better", worse, value, method)


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
    return f"not comparable with {call.other}"

