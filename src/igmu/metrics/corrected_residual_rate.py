"""residual_rate_corrected: the residual rate corrected for the judge's own errors.

A judge with sensitivity Se (share of concept images it flags) and specificity Sp (share of
concept-free images it leaves alone) reports an apparent rate p = Se * pi + (1 - Sp) * (1 - pi)
for a true rate pi. Rogan-Gladen inverts it: pi = (p + Sp - 1) / (Se + Sp - 1), clipped to
[0, 1]. Se and Sp come from the judge's audit (`igmu detectors audit`), found in the workspace
store by the detector's fingerprint (model + threshold + verdict settings); the interval is a
parametric bootstrap over p, Se and Sp (``igmu.core.audit_stats.rogan_gladen_interval``),
so it carries the audit's own uncertainty. Without an audit there is no row, and ``notes`` says
why (for run.json).

The correction assumes the judge errs on the evaluated images as it did on the audited ones:
audit on images like those evaluated (same generator family, same concept).
"""

from __future__ import annotations

from typing import Any

from igmu.core.audit_stats import rogan_gladen_interval
from igmu.core.intervals import cluster_rate_interval
from igmu.detectors.fingerprint import detector_fingerprint
from igmu.metrics.base import (
    METRICS,
    ImageNeed,
    MetricResult,
    Sample,
    detector_needs,
    make_result,
    prompt_of,
    requires,
    small_sample_warning,
)
from igmu.metrics.residual_rate import SETS

DRAWS = 4000


class CorrectedResidualRate:
    higher_is_better = False

    def __init__(self, detector: Any, prompt_set: str) -> None:
        self.detector = detector
        self.prompt_set = prompt_set
        base, self.aspect = SETS[prompt_set]
        self.name = f"{base}_corrected.{detector.name}"
        self.fingerprint = detector_fingerprint(detector)
        self.notes: list[str] = []  # why a row is missing; for run.json
        self.audit: dict[str, Any] | None = None  # summary of the audit used

    def needs(self, paired: Any) -> list[ImageNeed]:
        return detector_needs(self.detector, paired, self.prompt_set)

    def _find_audit(self, ctx: Any) -> dict[str, Any] | None:
        store = getattr(ctx, "store_path", None)
        audits = ctx.audits(self.fingerprint) if store else []
        if not audits:
            self.notes.append(
                f"{self.name}: no audit of detector {self.detector.name} (fingerprint "
                f"{self.fingerprint[:16]}) in {store}; run `igmu detectors audit --detector "
                f"{self.detector.name} --data DATAIGM --store {store}`"
            )
            return None
        audit = audits[0]
        metrics = audit["metrics"]
        if not metrics["recall"]["n"] or not metrics["specificity"]["n"]:
            self.notes.append(
                f"{self.name}: audit {audit['audit_id']} lacks concept or concept-free images, "
                "so it gives no sensitivity or no specificity"
            )
            return None
        self.audit = {
            "audit_id": audit["audit_id"],
            "data": audit["data"]["path"],
            "data_manifest_sha256": audit["data"]["manifest_sha256"],
            "split": audit["data"]["split"],
            "sensitivity": metrics["recall"],
            "specificity": metrics["specificity"],
        }
        return audit

    def compute(self, ctx: Any) -> list[MetricResult]:
        self.notes, self.audit = [], None
        audit = self._find_audit(ctx)
        if audit is None:
            return []
        se, sp = audit["metrics"]["recall"], audit["metrics"]["specificity"]
        note = (
            f"corrected with audit {audit['audit_id']} (Se {se['k']}/{se['n']}, Sp "
            f"{sp['k']}/{sp['n']}); assumes the judge errs here as on the audit's images"
        )
        audited_task = ((audit["data"].get("task") or {}) or {}).get("name")
        if audited_task and audited_task != ctx.task.name:
            note += f"; audited on task {audited_task!r} data, evaluated on {ctx.task.name!r}"
        results = []
        for method in ctx.paired.methods:
            records = ctx.paired.records(method, self.prompt_set)
            if not records:
                continue
            flags = [float(ctx.verdict(self.detector, rec).flagged) for rec in records]
            k, n = int(sum(flags)), len(flags)
            # The raw rate's uncertainty with the prompt as the unit: its effective sample size.
            clusters = [prompt_of(rec) for rec in records]
            effective, _, _ = cluster_rate_interval(flags, clusters)
            point, (low, high), useless = rogan_gladen_interval(
                k / n * effective, effective, se["k"], se["n"], sp["k"], sp["n"], DRAWS,
                ctx.seed,
            )
            if point is None:
                self.notes.append(
                    f"{self.name} {method}: the audited judge is no better than chance "
                    f"(Se + Sp <= 1); no corrected rate"
                )
                continue
            extra = {"audit_id": audit["audit_id"], "raw_rate": k / n}
            samples = [Sample(method, rec, f, extra) for rec, f in zip(records, flags, strict=True)]
            prompts = len(set(clusters))
            warnings = [small_sample_warning(prompts), note]
            if useless > 0.01:
                warnings.append(f"{useless:.0%} of bootstrap draws had Se + Sp <= 1")
            results.append(make_result(
                self, method, point, low, high, n, prompts, samples,
                "; ".join(w for w in warnings if w),
            ))
        return results


@METRICS.register("residual_rate_corrected")
@requires("images on the forget, multilingual or paraphrase prompts")
def build(task: Any, providers: Any, paired: Any) -> list[CorrectedResidualRate]:
    return [
        CorrectedResidualRate(detector, prompt_set)
        for detector in providers.concept_detectors()
        for prompt_set in SETS
        if any(paired.has(m, prompt_set) for m in paired.methods)
    ]
