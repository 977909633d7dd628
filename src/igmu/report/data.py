"""Everything a report shows: a stored run (run.json and the store it names) plus what the
report decides from it, such as whether its images must be blurred."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from igmu.store.runs import StoredRun, load_run


def is_sensitive(spec: dict[str, Any]) -> bool:
    """Blur unless the task is known to be safe (fail-closed): the task's own flag, recorded in
    the run spec, else its CatIGMU node's guidance; an unknown or missing node blurs."""
    from igmu.core.errors import ConfigError
    from igmu.taxonomy import load_taxonomy

    task = spec.get("task") or {}
    flag = task.get("sensitive_content")
    if isinstance(flag, bool):
        return flag
    node = task.get("node")
    if not isinstance(node, str):
        return True
    try:
        guidance = load_taxonomy().guidance(node)
    except ConfigError:
        return True
    return guidance.get("sensitive_content") is not False


@dataclass
class ReportData(StoredRun):
    @property
    def catigmu(self) -> dict[str, Any]:
        return self.run_file.get("catigmu") or {"node": self.spec.get("task", {}).get("node")}

    @property
    def sensitive(self) -> bool:
        return is_sensitive(self.spec)


def load_report_data(run_dir: Path) -> ReportData:
    run = load_run(run_dir)
    return ReportData(**{name: getattr(run, name) for name in StoredRun.__dataclass_fields__})
