"""Run-folder exports: metrics.csv (long format), samples.csv, run.json. Written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from igmu.core.files import write_atomic
from igmu.core.records import METRICS_CSV, REPORTED_ASPECTS, SAMPLES_CSV
from igmu.store import Store
from igmu.tasks.model import Task

# The CSV headers: the task, then the record columns each export shows (igmu.core.records);
# samples.csv calls the extra fields "extra".
METRICS_COLUMNS = ["task", *METRICS_CSV]
SAMPLES_COLUMNS = ["task", *SAMPLES_CSV[:-1], "extra"]


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _fmt(value)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 10))
    return str(value)


def method_order(methods: list[str], reference: str) -> list[str]:
    return [reference] * (reference in methods) + sorted(m for m in methods if m != reference)


RUN_FILE = "run.json"


def mark_unfinished(run_dir: Path) -> None:
    """A run folder is a finished run exactly when it holds run.json, written last: a new run
    into the folder removes the previous one's first, so a run that fails or is killed midway
    never leaves a folder that looks finished (nor the previous run's run.json beside this
    run's metrics.csv)."""
    (run_dir / RUN_FILE).unlink(missing_ok=True)


def write_exports(
    run_dir: Path,
    task: Task,
    run_id: str,
    store: Store,
    spec: dict,
    fingerprints: dict,
    left_out: list[str],
    extra: dict[str, Any] | None = None,
) -> None:
    """``extra``: what the run learnt besides scores (metrics the task's defaults could not
    compute and why, metric notes, the judge audits used); in run.json, not in the run id."""
    mark_unfinished(run_dir)
    aggregates = store.aggregates(run_id)
    order = method_order(sorted({a.method for a in aggregates}), spec["reference_method"])
    aggregates.sort(
        key=lambda a: (order.index(a.method), REPORTED_ASPECTS.index(a.aspect), a.metric)
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRICS_COLUMNS)
    for a in aggregates:
        writer.writerow([task.name, *(_cell(getattr(a, name)) for name in METRICS_CSV)])
    write_atomic(run_dir / "metrics.csv", buffer.getvalue())

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SAMPLES_COLUMNS)
    for s in store.samples(run_id):
        fields = s.fields()
        writer.writerow(
            [task.name, *(_fmt(fields[name]) for name in SAMPLES_CSV[:-1]), fields["extra_json"]]
        )
    write_atomic(run_dir / "samples.csv", buffer.getvalue())

    warnings = [
        {"method": a.method, "metric": a.metric, "warning": a.warning}
        for a in aggregates
        if a.warning
    ]
    run = {
        "run_id": run_id,
        "store": str(store.path.resolve()),
        "spec": spec,
        "fingerprints": fingerprints,
        "left_out": left_out,
        "warnings": warnings,
        "catigmu": {"node": task.node, "kind": task.kind, "guidance": task.guidance},
        **(extra or {}),
    }
    write_atomic(run_dir / RUN_FILE, json.dumps(run, indent=2, sort_keys=True, default=str))
