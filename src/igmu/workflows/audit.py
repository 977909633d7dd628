"""`igmu detectors audit`: how often a judge is right, on labelled DataIGM images.

Runs the detector on one split of a DataIGM folder (raw outputs cached in the workspace store
like `igmu evaluate` caches them), compares each verdict with the label and reports accuracy,
precision, recall (sensitivity), specificity, F1, ROC-AUC, calibration (ECE and a reliability
curve), error per class and per prompt family, each with a 95% interval, and a threshold sweep.
Sensitivity and specificity (with their counts) are what ``residual_rate_corrected`` needs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import igmu
from igmu.core import audit_stats as S
from igmu.core.errors import ConfigError
from igmu.dataset.dataigm import DataIGM
from igmu.detectors.fingerprint import detector_fingerprint, detector_settings_of

AUDIT_SCHEMA = "igmu.audit/1"
SWEEP = tuple(round(t, 2) for t in np.linspace(0.0, 1.0, 21))


@dataclass(frozen=True)
class AuditOptions:
    split: str | None = None  # None: test when there is one, else every image
    bins: int = 10
    resamples: int = 1000
    seed: int = 0
    batch_size: int = 16
    progress: bool = True


def detector_outputs(
    detector: Any,
    rows: list[dict[str, Any]],
    store_path: Path | None,
    batch_size: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Raw outputs per row, reusing and filling the store's detections cache."""
    from igmu.core.images import decode_image
    from igmu.store import Store

    store = Store(store_path) if store_path else None
    try:
        key = detector.model_fingerprint
        found = store.get_detections(key, [r["sha256"] for r in rows]) if store else {}
        todo = list({r["sha256"]: r for r in rows if r["sha256"] not in found}.values())
        bar = tqdm(total=len(todo), desc=f"audit {detector.name}", unit="img", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            decoded = [decode_image(r["abs"]) for r in chunk]
            for row, image in zip(chunk, decoded, strict=True):
                if image.sha256 != row["sha256"]:
                    raise ConfigError(f"{row['abs']}: file does not match its manifest sha256")
            raws = dict(
                zip(
                    [r["sha256"] for r in chunk],
                    detector.analyse([d.pixels for d in decoded]),
                    strict=True,
                )
            )
            if store:
                store.put_detections(key, raws)
            found.update(raws)
            bar.update(len(chunk))
        bar.close()
    finally:
        if store:
            store.close()
    return [found[r["sha256"]] for r in rows]


def _with_interval(value: float | None, ci: list[float | None]) -> dict[str, Any]:
    return {"value": value, "ci": ci}


def figures(
    labels: np.ndarray, flagged: np.ndarray, scores: np.ndarray, options: AuditOptions
) -> dict[str, Any]:
    """Headline figures of one set of predictions (the detector's own verdicts)."""
    c = S.confusion(labels, flagged)
    n = len(labels)
    probability = bool(n) and float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    result = {
        "confusion": c,
        "accuracy": S.proportion(c["tp"] + c["tn"], n),
        "precision": S.proportion(c["tp"], c["tp"] + c["fp"]),
        "recall": S.proportion(c["tp"], c["tp"] + c["fn"]),
        "specificity": S.proportion(c["tn"], c["tn"] + c["fp"]),
        "false_positive_rate": S.proportion(c["fp"], c["tn"] + c["fp"]),
        "false_negative_rate": S.proportion(c["fn"], c["tp"] + c["fn"]),
        "f1": _with_interval(
            S.f1_value(labels, flagged),
            S.stratified_bootstrap(labels, flagged, S.f1_value, options.resamples, options.seed),
        ),
        "roc_auc": _with_interval(
            S.roc_auc(labels, scores),
            S.stratified_bootstrap(labels, scores, S.roc_auc, options.resamples, options.seed),
        ),
    }
    if probability:

        def ece(y: np.ndarray, s: np.ndarray) -> float | None:
            return S.expected_calibration_error(y, s, options.bins)

        result["ece"] = {
            **_with_interval(
                ece(labels, scores),
                S.stratified_bootstrap(labels, scores, ece, options.resamples, options.seed),
            ),
            "bins": options.bins,
        }
    else:
        result["ece"] = {"value": None, "ci": [None, None], "note": "scores are not in [0, 1]"}
    return result


def sweep(labels: np.ndarray, scores: np.ndarray, thresholds: list[float]) -> list[dict]:
    """Figures when ``score >= t`` is flagged, for each t (the detector's own rule may differ at
    its own threshold: > vs >=, or an arg-max condition; the headline uses its verdicts)."""
    rows = []
    for t in sorted(set(thresholds)):
        flagged = scores >= t
        c = S.confusion(labels, flagged)
        rows.append(
            {
                "threshold": t,
                "recall": S.proportion(c["tp"], c["tp"] + c["fn"])["value"],
                "false_positive_rate": S.proportion(c["fp"], c["fp"] + c["tn"])["value"],
                "precision": S.proportion(c["tp"], c["tp"] + c["fp"])["value"],
                "accuracy": S.proportion(c["tp"] + c["tn"], len(labels))["value"],
                "f1": S.f1_value(labels, flagged),
            }
        )
    return rows


def _errors_by(key: str, rows: list[dict[str, Any]], wrong: np.ndarray) -> dict[str, Any]:
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(str(row.get(key) or row["class"]), []).append(i)
    out = {}
    for name, members in sorted(groups.items()):
        labels = sorted({rows[i]["label"] for i in members})
        out[name] = {
            "labels": labels,
            "error": S.proportion(int(wrong[members].sum()), len(members)),
        }
    return out


def audit_detector(
    detector: Any, data: DataIGM, store_path: Path | None, options: AuditOptions = AuditOptions()
) -> dict[str, Any]:
    split = options.split or ("test" if "test" in data.splits() else "all")
    rows = data.rows if split == "all" else data.split(split)
    if not rows:
        raise ConfigError(
            f"{data.root}: no images in split {split!r} (splits: {', '.join(data.splits())}, all)"
        )
    raws = detector_outputs(detector, rows, store_path, options.batch_size, options.progress)
    verdicts = [detector.verdict(raw) for raw in raws]
    labels = np.array([r["label"] for r in rows], dtype=np.int64)
    flagged = np.array([bool(v.flagged) for v in verdicts])
    scores = np.array([float(v.score) for v in verdicts], dtype=np.float64)
    wrong = flagged != labels.astype(bool)
    headline = figures(labels, flagged, scores, options)
    described = detector.describe()
    threshold = described.get("threshold")
    fingerprint = detector_fingerprint(detector)
    data_sha = data.fingerprint()
    audit = {
        "schema": AUDIT_SCHEMA,
        "audit_id": hashlib.sha256(f"{fingerprint}:{data_sha}:{split}".encode()).hexdigest()[:16],
        "created_by": f"igmu {igmu.__version__} detectors audit",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "detector": {
            "name": detector.name,
            "fingerprint": fingerprint,
            "model_fingerprint": detector.model_fingerprint,
            "settings": detector_settings_of(detector),
            "describe": described,
        },
        "data": {
            "path": str(data.root.resolve()),
            "manifest_sha256": data_sha,
            "task": data.card.get("task"),
            "source": data.card.get("source"),
            "classes": data.classes,
            "split": split,
            "n": len(rows),
            "n_concept": int(labels.sum()),
            "n_other": int(len(labels) - labels.sum()),
        },
        "metrics": headline,
        "reliability": S.reliability(labels, scores, options.bins)
        if headline["ece"]["value"] is not None
        else [],
        "per_class": {
            data.classes[label]: {
                "label": label,
                "error": S.proportion(
                    int(wrong[labels == label].sum()), int((labels == label).sum())
                ),
            }
            for label in (1, 0)
        },
        "per_family": _errors_by("family", rows, wrong),
        "sweep": sweep(
            labels, scores, [*SWEEP, *([threshold] if isinstance(threshold, float | int) else [])]
        ),
        "roc": [
            [fpr, tpr, t if np.isfinite(t) else None]
            for fpr, tpr, t in S.roc_points(labels, scores)
        ],
        "intervals": "Wilson 95% for rates (accuracy, precision, recall, specificity, error per "
        f"class and family); stratified percentile bootstrap ({options.resamples} resamples, seed "
        f"{options.seed}) for F1, ROC-AUC and ECE",
        "predictions": [
            {
                "path": r["path"],
                "sha256": r["sha256"],
                "label": int(r["label"]),
                "family": r.get("family"),
                "flagged": bool(f),
                "score": float(s),
            }
            for r, f, s in zip(rows, flagged, scores, strict=True)
        ],
    }
    return audit


def write_audit(audit: dict[str, Any], out: Path) -> Path:
    from igmu.report.audit_page import render_audit_html

    out.mkdir(parents=True, exist_ok=True)
    target = out / "audit.json"
    target.write_text(
        json.dumps(audit, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    (out / "audit.html").write_text(render_audit_html(audit), encoding="utf-8")
    return target
