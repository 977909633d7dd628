"""A run folder (run.json written by `igmu evaluate`) and its records in the store, read back.

What reports, `igmu compare` and the demo's summary read: never the CSV exports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igmu.core.constants import ORG
from igmu.core.errors import ConfigError
from igmu.core.records import REPORTED_ASPECTS, Aggregate, Comparison, Sample
from igmu.store.sqlite import Store

RUN_FILE = "run.json"


@dataclass
class StoredRun:
    run_dir: Path
    run_id: str
    task: str
    spec: dict[str, Any]
    fingerprints: dict[str, Any]
    run_file: dict[str, Any]  # run.json as written
    left_out: list[str]
    aggregates: list[Aggregate]
    samples: list[Sample]
    store_path: Path
    comparisons: list[Comparison] = field(default_factory=list)  # what the report compares

    @property
    def reference_method(self) -> str:
        return str(self.spec.get("reference_method", ORG))

    @property
    def methods(self) -> list[str]:
        """The reference method first, then the others by name."""
        found = {a.method for a in self.aggregates} | {s.method for s in self.samples}
        ref = self.reference_method
        return [ref] * (ref in found) + sorted(found - {ref})

    def metrics(self) -> list[tuple[str, str, bool]]:
        """(aspect, metric, higher_is_better) in aspect order."""
        seen = {(a.aspect, a.metric, a.higher_is_better) for a in self.aggregates}
        return sorted(seen, key=lambda c: (REPORTED_ASPECTS.index(c[0]), c[1]))

    def aggregate(self, method: str, metric: str) -> Aggregate | None:
        for a in self.aggregates:
            if a.method == method and a.metric == metric:
                return a
        return None

    def samples_of(self, method: str, metric: str) -> list[Sample]:
        return [s for s in self.samples if s.method == method and s.metric == metric]


def is_run_dir(folder: Path) -> bool:
    return (Path(folder) / RUN_FILE).is_file()


def find_run_dirs(folder: Path) -> list[Path]:
    """``folder`` itself when it is a run folder, else the run folders below it (a demo's
    ``runs/<task>/``), sorted; an error naming what was expected when there are none."""
    folder = Path(folder)
    if is_run_dir(folder):
        return [folder]
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    found = sorted(p.parent for p in folder.glob(f"*/{RUN_FILE}"))
    found += sorted(p.parent for p in folder.glob(f"runs/*/{RUN_FILE}"))
    if not found:
        raise ConfigError(
            f"{folder}: not a run folder (no {RUN_FILE}) and no run folders below it "
            f"(<folder>/<run>/{RUN_FILE} or <folder>/runs/<task>/{RUN_FILE}); run "
            "`igmu evaluate` or `igmu demo` first"
        )
    return found


def load_run(run_dir: Path) -> StoredRun:
    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no {RUN_FILE}); run `igmu evaluate` first")
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
        run_id, store_path = run["run_id"], Path(run["store"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{run_file}: unreadable run file ({exc})") from None
    if not store_path.is_file():
        raise ConfigError(f"{run_file}: its store {store_path} does not exist")
    store = Store(store_path)
    try:
        stored = store.run(run_id)
        if stored is None:
            raise ConfigError(f"{store_path}: has no run {run_id} (named by {run_file})")
        aggregates = store.aggregates(run_id)
        samples = store.samples(run_id)
        comparisons = store.comparisons(run_id)
    finally:
        store.close()
    return StoredRun(
        run_dir=run_dir,
        run_id=run_id,
        task=stored["task"],
        spec=stored["spec"],
        fingerprints=stored["fingerprints"],
        run_file=run,
        left_out=stored["left_out"],
        aggregates=aggregates,
        samples=samples,
        store_path=store_path,
        comparisons=comparisons,
    )
