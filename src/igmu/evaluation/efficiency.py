"""The ``efficiency`` aspect: what each method's unlearning cost, read from its method card.

A built-in method's card (``igmu_method.json``, written by ``igmu unlearn``) records the cost
of the unlearning run (``igmu.methods.cost``). For every method of a run whose models-file entry
is such a folder, the evaluation reports it as rows of aspect ``efficiency`` (lower is better),
as UnlearnCanvas and EMMA do, so a closed-form edit and a 1,000-step fine-tune can be weighed:

- ``unlearn_wall_seconds``, ``unlearn_cpu_seconds``: the edit's wall clock and the process's
  CPU time (all threads);
- ``unlearn_peak_memory_mb``: the resident set's peak on CPU, the allocator's on CUDA;
- ``unlearn_parameter_share``: parameters changed or added over the base's UNet and text
  encoders (a tensor counts whole when any value in it changed);
- ``unlearn_written_mb``: what the method's output folder holds.

They are one measurement each (no interval: ``ci_low``/``ci_high`` are empty), on the machine
and thread count the card names (in the row's warning); the seconds and the memory vary from
run to run, unlike every image score. Methods without a card (ORG, NEGPROMPT, a checkpoint from
elsewhere) have no efficiency rows. The cards' sha256 join the run's fingerprints.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from igmu.backbones.config import ModelsConfig
from igmu.core.records import EFFICIENCY, Aggregate
from igmu.pipelines.card import CARD_NAME, read_method_card

MB = 2**20


def card_folder(models: ModelsConfig, method: str) -> Path | None:
    """The folder a models-file entry names (a string, or its ``model``), if it is one."""
    entry = (models.get("methods") or {}).get(method)
    if isinstance(entry, dict):
        entry = entry.get("model")
    if not isinstance(entry, str):
        return None
    folder = Path(entry).expanduser()
    return folder if (folder / CARD_NAME).is_file() else None


def cost_rows(method: str, cost: dict[str, Any]) -> list[Aggregate]:
    """The efficiency aggregates of one card's ``cost``."""
    total = cost.get("total_parameters") or 0
    changed = (cost.get("changed_parameters") or 0) + (cost.get("added_parameters") or 0)
    values = {
        "unlearn_wall_seconds": cost.get("wall_seconds"),
        "unlearn_cpu_seconds": cost.get("cpu_seconds"),
        "unlearn_peak_memory_mb": (cost["peak_memory_bytes"] / MB
                                   if cost.get("peak_memory_bytes") is not None else None),
        "unlearn_parameter_share": changed / total if total else None,
        "unlearn_written_mb": (cost["bytes_written"] / MB
                               if cost.get("bytes_written") is not None else None),
    }
    where = (f"one measurement of the unlearning run ({cost.get('device', '?')}, "
             f"{cost.get('threads', '?')} threads), from the method card; not an image score")
    return [
        Aggregate(method, metric, EFFICIENCY, False, float(value), math.nan, math.nan, 1,
                  whole_set=True, warning=where)
        for metric, value in values.items() if value is not None
    ]


def efficiency(methods: list[str], models: ModelsConfig
               ) -> tuple[list[Aggregate], dict[str, str]]:
    """(efficiency aggregates, {method: sha256 of its card}) for the methods with a card that
    records a cost."""
    rows: list[Aggregate] = []
    prints: dict[str, str] = {}
    for method in methods:
        folder = card_folder(models, method)
        card = read_method_card(folder) if folder is not None else None
        if not card or not isinstance(card.get("cost"), dict):
            continue
        prints[method] = hashlib.sha256((folder / CARD_NAME).read_bytes()).hexdigest()
        rows.extend(cost_rows(method, card["cost"]))
    return rows, prints
