"""The efficiency aspect: each method's unlearning cost, read from its card (no torch)."""

from __future__ import annotations

import hashlib
import json
import math

from igmu.backbones.config import ModelsConfig, all_defaults
from igmu.core.records import ASPECTS, EFFICIENCY, REPORTED_ASPECTS
from igmu.evaluation.efficiency import efficiency
from igmu.pipelines.card import CARD_NAME, CARD_SCHEMA

COST = {"wall_seconds": 12.5, "cpu_seconds": 24.0, "peak_memory_bytes": 3 * 2**20,
        "peak_memory_kind": "resident set", "changed_tensors": 2, "changed_parameters": 300,
        "added_tensors": 1, "added_parameters": 100, "total_parameters": 4000,
        "changed_share": 0.075, "bytes_written": 2**21, "device": "cpu", "threads": 2}


def test_cost_rows_from_cards(tmp_path) -> None:
    folder = tmp_path / "uce"
    folder.mkdir()
    card = {"schema": CARD_SCHEMA, "method": "UCE", "cost": COST}
    (folder / CARD_NAME).write_text(json.dumps(card))
    old = tmp_path / "old"  # a card from before costs were recorded
    old.mkdir()
    (old / CARD_NAME).write_text(json.dumps({"schema": CARD_SCHEMA, "method": "ESD"}))
    models = ModelsConfig({**all_defaults(), "methods": {
        "UCE": str(folder), "ESD": {"model": str(old)}, "CKPT": {"unet": str(tmp_path / "x")}}},
        "(test)")
    rows, cards = efficiency(["ORG", "UCE", "ESD", "CKPT", "NEGPROMPT"], models)
    assert cards == {"UCE": hashlib.sha256((folder / CARD_NAME).read_bytes()).hexdigest()}
    values = {r.metric: r for r in rows}
    assert {r.method for r in rows} == {"UCE"} and {r.aspect for r in rows} == {EFFICIENCY}
    assert values["unlearn_wall_seconds"].value == 12.5
    assert values["unlearn_cpu_seconds"].value == 24.0
    assert values["unlearn_peak_memory_mb"].value == 3.0
    assert values["unlearn_parameter_share"].value == (300 + 100) / 4000
    assert values["unlearn_written_mb"].value == 2.0
    for row in rows:  # one measurement: no interval, lower is better, the machine named
        assert not row.higher_is_better and row.n == 1
        assert math.isnan(row.ci_low) and math.isnan(row.ci_high)
        assert "cpu, 2 threads" in row.warning
    # reported after the paper's five aspects; the verdict and the radar keep the five
    assert REPORTED_ASPECTS == (*ASPECTS, EFFICIENCY) and EFFICIENCY not in ASPECTS
