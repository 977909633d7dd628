"""Paired comparison of two methods of one run, metric by metric, with the prompt as the unit.

Per-image metrics: the difference of the two methods' values on the same key (prompt set,
class, prompt, seed), averaged as the metric averages (per class first where it does), with a
cluster-robust t interval over prompts. Whole-set metrics (FID): the difference of the two FIDs
against the same reference rows, bootstrapping prompts jointly for all three sides, from the
features the evaluation kept in the store (a world's true images' too).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from igmu.core import intervals as C
from igmu.core.records import Comparison, Sample
from igmu.metrics import functional as F
from igmu.metrics.base import prompt_of
from igmu.store.runs import StoredRun
from igmu.store.sqlite import Store

FID_RESAMPLES = 200


def difference(kind: str, metric: str, aspect: str, higher: bool, a: str, b: str,
               test: Any = None, n: int = 0, prompts: int = 0, note: str = "") -> Comparison:
    """metric(a) - metric(b) as a stored `Comparison` (NaN values where ``test`` is None)."""
    nan = float("nan")
    if test is None:
        return Comparison(kind, a, b, metric, aspect, higher, n=n, prompts=prompts, note=note)
    return Comparison(kind, a, b, metric, aspect, higher, test.estimate, test.low, test.high,
                      n, prompts, test.p_value if test.p_value is not None else nan, note=note)


def _by_key(samples: list[Sample]) -> dict[Any, Sample]:
    return {s.key: s for s in samples}


def _per_image(run: StoredRun, metric: str, a: str, b: str, kind: str) -> Comparison | None:
    left, right = _by_key(run.samples_of(a, metric)), _by_key(run.samples_of(b, metric))
    keys = sorted(
        k for k in set(left) & set(right)
        if math.isfinite(left[k].value) and math.isfinite(right[k].value)
    )
    agg = run.aggregate(a, metric)
    if agg is None or not keys:
        return None
    diffs = [left[k].value - right[k].value for k in keys]
    clusters = [prompt_of(left[k].record) for k in keys]
    strata = [left[k].extra.get("stratum") for k in keys]
    use_strata = all(s is not None for s in strata)
    test = C.cluster_mean_test(diffs, clusters, strata if use_strata else None)
    return difference(kind, metric, agg.aspect, agg.higher_is_better, a, b, test, len(keys),
                      len(set(clusters)))


def _whole_set(run: StoredRun, metric: str, a: str, b: str, store: Store, kind: str
               ) -> Comparison | None:
    left, right = _by_key(run.samples_of(a, metric)), _by_key(run.samples_of(b, metric))
    keys = sorted(set(left) & set(right))
    agg = run.aggregate(a, metric)
    if agg is None or len(keys) < 2:
        return None
    backbone = left[keys[0]].extra.get("features")

    def unavailable(note: str) -> Comparison:
        return difference(kind, metric, agg.aspect, agg.higher_is_better, a, b, None,
                          len(keys), 0, note)

    if not backbone:
        return unavailable("the run did not record which features this FID used")
    shas = [left[k].sha256 for k in keys] + [right[k].sha256 for k in keys]
    reference_shas = [left[k].extra.get("reference_sha256") for k in keys]
    cached = store.get_features(backbone, shas + [s for s in reference_shas if s])
    if any(s not in cached for s in shas):
        return unavailable("features of some images are no longer in the store")
    if not (all(reference_shas) and all(s in cached for s in reference_shas)):
        return unavailable("the reference images' features are not in the store")
    reference = np.stack([cached[s] for s in reference_shas])
    first = np.stack([cached[left[k].sha256] for k in keys])
    second = np.stack([cached[right[k].sha256] for k in keys])
    clusters = [prompt_of(left[k].record) for k in keys]
    seed = int(run.spec.get("bootstrap", {}).get("seed", 0))
    test = F.paired_frechet_difference_test(
        reference, first, second, clusters, FID_RESAMPLES, seed
    )
    return difference(kind, metric, agg.aspect, agg.higher_is_better, a, b, test, len(keys),
                      len(set(clusters)))


def paired_difference(
    run: StoredRun, metric: str, a: str, b: str, store: Store, kind: str = "pair"
) -> Comparison | None:
    """metric(a) - metric(b) paired by key, or None when the two share no scored key; a
    whole-set metric reads the images' features from ``store``."""
    agg = run.aggregate(a, metric)
    if agg is None or run.aggregate(b, metric) is None:
        return None
    if agg.whole_set:
        return _whole_set(run, metric, a, b, store, kind)
    return _per_image(run, metric, a, b, kind)


def compare_methods(run: StoredRun, a: str, b: str) -> list[Comparison]:
    """Every metric both methods have, in the run's aspect order; stored with the run (kind
    ``pair``) for reports to read."""
    store = Store(run.store_path)
    try:
        found = []
        for _, metric, _ in run.metrics():
            diff = paired_difference(run, metric, a, b, store)
            if diff is not None:
                found.append(diff)
        store.put_comparisons(run.run_id, "pair", found)
        return found
    finally:
        store.close()
