"""Attacks on the MiniWorld's shipped model, judged by the MiniWorld judges (not by the loss).

The rates go through the attack_success_rate metric, prompts as the unit. The RETRAIN check
(attacks on the model trained without the cross stay far below ORG's rate) runs in
tests/test_miniworld_demo.py on the demo's own attacks.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from igmu.attacks.engine import AttackOptions, run_attacks  # noqa: E402
from igmu.backbones.config import load_models_config  # noqa: E402
from igmu.core.constants import NEGPROMPT, ORG  # noqa: E402
from igmu.core.records import ImageKey, ImageRecord  # noqa: E402
from igmu.detectors.base import build_detector  # noqa: E402
from igmu.evaluation.pairing import PairedSet  # noqa: E402
from igmu.generation import GenerateOptions, generate, read_rows  # noqa: E402
from igmu.metrics.attack_success_rate import build  # noqa: E402
from igmu.tasks import load_task  # noqa: E402
from igmu.workflows.demo import DemoOptions, write_models_file  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def attack_rates(task_name: str, out: Path, methods: dict[str, str], attacked: list[str],
                 attacks: list[str], prompts: int, **options) -> dict[tuple[str, str], object]:
    """{(method, metric name without the detector): MetricResult} of ``attacks`` on the first
    ``prompts`` forget prompts of the ``attacked`` methods; ``methods`` maps method names to
    pipeline folders (ORG and NEGPROMPT are built in)."""
    models = load_models_config(
        write_models_file(out / "models.yaml", methods, DemoOptions()))
    task = load_task(task_name)
    generate(task, out, models, GenerateOptions(
        methods=list(dict.fromkeys([ORG, *attacked])), prompt_sets=["forget"],
        max_prompts_per_class=prompts, progress=False))
    run_attacks(task, out, models, AttackOptions(
        methods=attacked, attacks=attacks, prompts=prompts, progress=False, **options))
    images: dict = {}
    for row in read_rows(out / "manifest.jsonl"):
        key = ImageKey(row["prompt_set"], row["class_name"], row["prompt_index"], row["seed"])
        record = ImageRecord(row["method"], key, row["prompt"], str(out / row["path"]))
        images.setdefault(row["method"], {}).setdefault(row["prompt_set"], {})[key] = record
    paired = PairedSet(ORG, [ORG, *sorted(m for m in images if m != ORG)], images)
    judge = build_detector(task.guidance["detectors"][0], models)
    records = paired.all_records()
    from PIL import Image

    raws = judge.analyse([np.asarray(Image.open(r.path).convert("RGB")) for r in records])
    verdicts = {r.path: judge.verdict(raw) for r, raw in zip(records, raws, strict=True)}
    ctx = SimpleNamespace(paired=paired, verdict=lambda d, r: verdicts[r.path])
    providers = SimpleNamespace(concept_detectors=lambda: [judge])
    return {(res.aggregate.method, res.aggregate.metric.rsplit(".", 1)[0]): res.aggregate
            for metric in build(task, providers, paired) for res in metric.compute(ctx)}


def test_text_grad_breaks_negprompt_and_uce_within_the_default_budget(tmp_path: Path) -> None:
    """NEGPROMPT (the concept as negative prompt) and UCE are attacked as they are sampled. The
    plain prompt is kept out of text_grad's candidates, so every image shows a found prefix;
    judged by the MiniWorld judges, those prefixes draw the cross again on NEGPROMPT and on
    some of the prompts UCE had erased."""
    from igmu.methods import unlearn
    from igmu.miniworld.shipped import shipped_models

    t2i, _ = shipped_models()
    task = load_task("mini_object")
    uce = tmp_path / "UCE"
    unlearn("UCE", str(t2i), task, uce, {"progress": False})
    rates = attack_rates("mini_object", tmp_path / "run", {"UCE": str(uce)}, [NEGPROMPT, "UCE"],
                         ["text_grad"], prompts=4,
                         settings={"text_grad": {"plain_candidate": False}})
    for method in (NEGPROMPT, "UCE"):
        post = rates[(method, "attack_success_rate.text_grad")]
        pre = rates[(method, "pre_attack_rate.text_grad")]
        assert post.n == pre.n == 4  # prompts, not images
    assert rates[(NEGPROMPT, "pre_attack_rate.text_grad")].value == 1.0  # the negative prompt
    assert rates[(NEGPROMPT, "attack_success_rate.text_grad")].value >= 0.75  # removes nothing
    assert rates[("UCE", "pre_attack_rate.text_grad")].value == 0.0
    assert rates[("UCE", "attack_success_rate.text_grad")].value >= 0.25
    assert (ORG, "attack_success_rate.text_grad") not in rates  # ORG was not attacked
