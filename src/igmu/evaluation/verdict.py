"""The comparisons a report shows, computed when a run is evaluated and stored with it.

- The verdict: per unlearned method, one headline metric per aspect, called better / worse /
  not distinguishable from the reference method (ORG) and from the best other method, by paired
  tests whose p-values are Holm-adjusted together (multiplicity control over every call of the
  verdict). Headlines come from the task's CatIGMU guidance (``headlines``: per aspect, metrics
  in order of preference; the first the run has is used). Methods are ranked by a fixed rule
  (docs/design/report.md): first those whose forgetting is better than ORG's, then the fewest
  aspects worse than ORG, then the better forgetting value, then the name.
- The leaderboard's stars: per metric, the unlearned method with the best value, starred only
  when that is more than noise (its paired difference against ORG excludes zero in the better
  direction or, where ORG has no value of its own, against the runner-up).

Every call becomes a `Comparison` row of the run (kinds ``verdict.reference``,
``verdict.best``, ``best``); the report only reads them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from igmu.core import intervals as C
from igmu.core.records import ASPECTS, Comparison
from igmu.evaluation.compare import difference, paired_difference
from igmu.metrics.base import prompt_of
from igmu.store.runs import StoredRun
from igmu.store.sqlite import Store

ALPHA = 0.05
REFERENCE, BEST, STAR = "verdict.reference", "verdict.best", "best"


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
    run: StoredRun, metric: str, method: str, store: Store, kind: str = REFERENCE
) -> Comparison | None:
    """method - ORG on the metric. Where ORG has no value because the metric measures a
    distance to ORG (LPIPS, CSDR), ORG's own value is 0 and the method's values are tested
    against it; a whole-set distance to ORG (FID) has no such test."""
    reference = run.reference_method
    own = run.aggregate(method, metric)
    if own is None:
        return None
    if run.aggregate(reference, metric) is not None:
        return paired_difference(run, metric, method, reference, store, kind)
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
    return difference(kind, metric, own.aspect, own.higher_is_better, method, reference, test,
                      len(samples), len({prompt_of(s.record) for s in samples}))


def _outcome(diff: Comparison, adjusted_p: float) -> str:
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


def _untested(kind: str, method: str, other: str, metric: str | None, run: StoredRun,
                 aspect: str) -> Comparison:
    """A call that could not be tested (no metric, no shared keys): outcome n/a."""
    agg = run.aggregate(method, metric) if metric else None
    higher = agg.higher_is_better if agg is not None else True
    return Comparison(kind, method, other, metric or "", aspect, higher)


def verdict_comparisons(run: StoredRun, store: Store) -> list[Comparison]:
    """Every call of the verdict, Holm-adjusted together, each method's rank in ``rank``."""
    reference = run.reference_method
    unlearned = [m for m in run.methods if m != reference]
    metrics = {aspect: headline_metric(run, aspect) for aspect in ASPECTS}
    pending: list[tuple[str, Comparison]] = []  # (the verdict's column, the call)
    for method in unlearned:
        for aspect, metric in metrics.items():
            has = metric is not None and run.aggregate(method, metric) is not None
            diff = versus_reference(run, metric, method, store) if has else None
            pending.append((aspect, diff or _untested(REFERENCE, method, reference, metric,
                                                         run, aspect)))
            rival = _best_other(run, metric, method, unlearned) if has else None
            if rival is not None:
                diff = paired_difference(run, metric, method, rival, store, BEST)
                pending.append((aspect, diff or _untested(BEST, method, rival, metric, run,
                                                             aspect)))
    testable = [i for i, (_, d) in enumerate(pending) if math.isfinite(d.p_value)]
    adjusted = dict(zip(testable, C.holm([pending[i][1].p_value for i in testable]),
                        strict=True))
    calls = []
    for i, (aspect, diff) in enumerate(pending):
        if i in adjusted:
            calls.append(_with(diff, aspect=aspect, adjusted_p=adjusted[i],
                               outcome=_outcome(diff, adjusted[i])))
        else:
            calls.append(_with(diff, aspect=aspect, outcome="n/a"))
    order = sorted(unlearned, key=lambda m: _order_key(run, calls, metrics, m))
    rank = {m: i for i, m in enumerate(order)}
    return [_with(c, rank=rank[c.method]) for c in calls]


def _with(c: Comparison, **changes: Any) -> Comparison:
    return replace(c, **changes)


def _order_key(run: StoredRun, calls: list[Comparison], metrics: dict[str, str | None],
               method: str) -> tuple[Any, ...]:
    ref = {c.aspect: c for c in calls if c.method == method and c.kind == REFERENCE}
    forgetting = ref["forgetting"]
    worse = sum(c.outcome == "worse" for c in ref.values())
    metric = metrics["forgetting"]
    agg = run.aggregate(method, metric) if metric else None
    value = agg.value if agg is not None else math.inf
    if agg is not None and agg.higher_is_better:
        value = -value
    return (forgetting.outcome != "better", worse, value, method)


def star_comparisons(run: StoredRun, store: Store) -> list[Comparison]:
    """Per metric, the best unlearned method(s) against ORG (or, where ORG has no value, the
    runner-up): outcome ``better`` when the paired difference says so (the star)."""
    ref = run.reference_method
    found = []
    for _, metric, higher in run.metrics():
        values = {
            m: a.value for m in run.methods
            if m != ref and (a := run.aggregate(m, metric)) is not None and a.finite
        }
        if not values:
            continue
        target = max(values.values()) if higher else min(values.values())
        best = sorted(m for m, v in values.items() if v == target)
        reference = run.aggregate(ref, metric)
        if reference is not None and reference.finite:
            rival = ref
        else:
            others = {m: v for m, v in values.items() if m not in best}
            if not others:
                continue
            rival = (max if higher else min)(others, key=lambda m: others[m])
        for method in best:
            diff = paired_difference(run, metric, method, rival, store, STAR)
            if diff is None:
                continue
            outcome = "better" if diff.better == method else "same"
            found.append(_with(diff, outcome=outcome))
    return found


def report_comparisons(run: StoredRun, store: Store) -> list[Comparison]:
    """Everything the report needs compared: the verdict's calls and the leaderboard's stars."""
    return verdict_comparisons(run, store) + star_comparisons(run, store)
