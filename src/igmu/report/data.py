"""Everything a report shows, read from a run folder's run.json and the store it names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from igmu.constants import ORG
from igmu.errors import ConfigError
from igmu.results import ASPECTS, Aggregate, Sample
from igmu.store import Store


@dataclass
class ReportData:
    run_dir: Path
    run_id: str
    task: str
    spec: dict[str, Any]
    fingerprints: dict[str, Any]
    catigmu: dict[str, Any]
    left_out: list[str]
    aggregates: list[Aggregate]
    samples: list[Sample]

    @property
    def reference_method(self) -> str:
        return str(self.spec.get("reference_method", ORG))

    @property
    def methods(self) -> list[str]:
        found = {a.method for a in self.aggregates} | {s.method for s in self.samples}
        ref = self.reference_method
        return [ref] * (ref in found) + sorted(found - {ref})

    @property
    def sensitive(self) -> bool:
        return bool(self.catigmu.get("guidance", {}).get("sensitive_content", False))

    def metrics(self) -> list[tuple[str, str, bool]]:
        """(aspect, metric, higher_is_better) columns in aspect order."""
        seen = {(a.aspect, a.metric, a.higher_is_better) for a in self.aggregates}
        return sorted(seen, key=lambda c: (ASPECTS.index(c[0]), c[1]))

    def aggregate(self, method: str, metric: str) -> Aggregate | None:
        for a in self.aggregates:
            if a.method == method and a.metric == metric:
                return a
        return None


def load_report_data(run_dir: Path) -> ReportData:
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no run.json); run `igmu evaluate` first")
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
        run_id, store_path = run["run_id"], Path(run["store"])
    except (json.JSONDecodeError, KeyError) as exc:
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
    finally:
        store.close()
    return ReportData(
        run_dir=run_dir,
        run_id=run_id,
        task=stored["task"],
        spec=stored["spec"],
        fingerprints=stored["fingerprints"],
        catigmu=run.get("catigmu", {}),
        left_out=stored["left_out"],
        aggregates=aggregates,
        samples=samples,
    )
