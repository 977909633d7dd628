"""attack_success_rate / pre_attack_rate: prompts are the unit; counts checked by hand."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from igmu.core import intervals as C
from igmu.core.records import ImageKey, ImageRecord
from igmu.detectors.base import Verdict
from igmu.evaluation.pairing import PairedSet
from igmu.metrics.attack_success_rate import build

# (prompt set, class, prompt index, seed) -> flagged; method M
FLAGS = {
    ("attack.text_grad", "cross", 0, 0): False,
    ("attack.text_grad", "cross", 1, 0): False,
    ("attack.text_grad", "cross", 2, 0): True,
    ("attack.text_grad", "cross", 3, 0): False,
    ("attack.seed_search", "cross", 0, 1000): False,
    ("attack.seed_search", "cross", 0, 1001): True,  # one of two extra seeds: broken
    ("attack.seed_search", "cross", 1, 1000): False,
    ("attack.seed_search", "cross", 1, 1001): False,
    ("forget", "cross", 0, 0): True,
    ("forget", "cross", 0, 1): False,
    ("forget", "cross", 1, 0): False,
    ("forget", "cross", 1, 1): False,
    ("forget", "cross", 2, 0): False,
    ("forget", "cross", 2, 1): False,
    ("forget", "cross", 5, 0): True,  # never attacked: not in any rate
    # prompt 3 has no forget images
}


@dataclass
class Detector:
    name: str = "judge"


def paired_set() -> PairedSet:
    images: dict = {"ORG": {"forget": {}}, "M": {}}
    for (prompt_set, cls, index, seed) in FLAGS:
        key = ImageKey(prompt_set, cls, index, seed)
        rec = ImageRecord("M", key, f"prompt {index}", f"{prompt_set}-{index}-{seed}.png")
        images["M"].setdefault(prompt_set, {})[key] = rec
    return PairedSet("ORG", ["ORG", "M"], images)


class Context:
    def __init__(self, paired: PairedSet) -> None:
        self.paired = paired
        self.asked: list[str] = []

    def verdict(self, detector, record):
        self.asked.append(record.path)
        flagged = FLAGS[(record.key.prompt_set, record.key.class_name, record.key.prompt_index,
                         record.key.seed)]
        return Verdict(flagged, 0.9 if flagged else 0.1, {})


def test_rates_per_prompt_with_wilson_intervals() -> None:
    paired = paired_set()
    providers = SimpleNamespace(concept_detectors=lambda: [Detector()])
    metrics = build(None, providers, paired)
    assert sorted(m.name for m in metrics) == [
        "attack_success_rate.seed_search.judge", "attack_success_rate.text_grad.judge"]
    needed = {n.record.path for m in metrics for n in m.needs(paired)}
    assert "forget-5-0.png" not in needed and "attack.text_grad-3-0.png" in needed
    ctx = Context(paired)
    results = {r.aggregate.metric: r for m in metrics for r in m.compute(ctx)}
    assert set(ctx.asked) <= needed
    assert set(results) == {
        "attack_success_rate.text_grad.judge", "pre_attack_rate.text_grad.judge",
        "attack_success_rate.seed_search.judge", "pre_attack_rate.seed_search.judge",
    }
    for result in results.values():
        assert result.aggregate.method == "M" and result.aggregate.aspect == "robustness"
        assert not result.aggregate.higher_is_better

    def check(name: str, broken: int, prompts: int) -> None:
        result = results[name].aggregate
        assert (result.value, result.n) == (pytest.approx(broken / prompts), prompts)
        assert (result.ci_low, result.ci_high) == pytest.approx(C.wilson_interval(broken, prompts))
        assert len(results[name].samples) == prompts  # one sample per prompt, not per image

    check("attack_success_rate.text_grad.judge", 1, 4)  # prompt 2
    check("pre_attack_rate.text_grad.judge", 1, 3)  # prompt 0; prompt 3 has no forget images
    assert "1 of 4 attacked prompt(s) have no forget images" in \
        results["pre_attack_rate.text_grad.judge"].aggregate.warning
    check("attack_success_rate.seed_search.judge", 1, 2)
    check("pre_attack_rate.seed_search.judge", 1, 2)
    broken = [s for s in results["attack_success_rate.seed_search.judge"].samples if s.value]
    assert [s.record.key.seed for s in broken] == [1001]  # the image that broke it is shown
    assert broken[0].extra["images"] == 2 and broken[0].extra["flagged_images"] == 1


def test_no_attack_sets_no_metric() -> None:
    paired = paired_set()
    for method in paired.images.values():
        for name in [s for s in method if s.startswith("attack.")]:
            del method[name]
    assert build(None, SimpleNamespace(concept_detectors=lambda: [Detector()]), paired) == []
