"""`igmu demo` end to end with the shipped MiniWorld weights: the README's main job, and the
ground truth the MiniWorld exists for (per the judges, on the demo's own images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import read_csv, run_cli

pytest.importorskip("torch")
pytest.importorskip("diffusers")

TASKS = ("mini_attribute", "mini_object", "mini_style")
METHODS = ("ORG", "UCE", "ESD", "NEGPROMPT")
ATTACKS = ("text_grad", "seed_search")
ASPECTS = {"forgetting", "fidelity", "preservation", "alignment", "robustness"}
RESIDUAL = {
    "mini_attribute": "residual_rate.mini_judge:attribute",
    "mini_object": "residual_rate.mini_judge:shape=cross",
    "mini_style": "residual_rate.mini_judge:style=stripes",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    result = run_cli("demo", "--out", out, "--quiet", timeout=1200)
    return out, result.stdout


def value(rows: list[dict], task: str, method: str, metric: str) -> float:
    (row,) = [r for r in rows if (r["task"], r["method"], r["metric"]) == (task, method, metric)]
    return float(row["value"])


def test_demo_scores_every_method_on_every_aspect_and_task(demo) -> None:
    out, stdout = demo
    rows = read_csv(out / "metrics.csv")
    for task in TASKS:
        for method in METHODS:
            aspects = {r["aspect"] for r in rows if (r["task"], r["method"]) == (task, method)}
            assert aspects == ASPECTS, (task, method, aspects)
        report = (out / "runs" / task / "report.html").read_text(encoding="utf-8")
        assert all(method in report for method in METHODS)
        assert f"== {task} ==" in stdout
    assert "wrote" in stdout and "metrics.csv" in stdout


def test_demo_ground_truth(demo) -> None:
    """ORG draws the concept; UCE and ESD erase it (<= 20% residual) while unrelated prompts are
    still drawn correctly (>= 80%) and the rest of each forget prompt survives."""
    rows = read_csv(demo[0] / "metrics.csv")
    for task in TASKS:
        assert value(rows, task, "ORG", RESIDUAL[task]) >= 0.8
        for method in ("UCE", "ESD"):
            assert value(rows, task, method, RESIDUAL[task]) <= 0.2, (task, method)
            assert value(rows, task, method, "prompt_accuracy.unrelated") >= 0.8, (task, method)
            assert value(rows, task, method, "prompt_accuracy.forget") >= 0.8, (task, method)
        # the baseline that changes no weights changes no judgement either
        assert value(rows, task, "NEGPROMPT", "prompt_accuracy.unrelated") >= 0.8


def test_demo_attacks_every_method_and_retrain_resists(demo) -> None:
    """Robustness by attack on the first forget prompts: the attacks find the concept on ORG and
    NEGPROMPT (>= 90%), pre- and post-attack rates stand side by side, prompts are the unit; on
    mini_object RETRAIN (trained without the cross) stays far below ORG."""
    rows = read_csv(demo[0] / "metrics.csv")
    detector = RESIDUAL["mini_object"].split(".", 1)[1]
    for task in TASKS:
        judge = RESIDUAL[task].split(".", 1)[1]
        methods = (*METHODS, "RETRAIN") if task == "mini_object" else METHODS
        for method in methods:
            for attack in ATTACKS:
                post = [r for r in rows if (r["task"], r["method"], r["metric"]) == (
                    task, method, f"attack_success_rate.{attack}.{judge}")]
                pre = [r for r in rows if (r["task"], r["method"], r["metric"]) == (
                    task, method, f"pre_attack_rate.{attack}.{judge}")]
                assert len(post) == len(pre) == 1, (task, method, attack)
                assert post[0]["prompts"] == pre[0]["prompts"] == "4"
                if method in ("ORG", "NEGPROMPT"):
                    assert float(post[0]["value"]) >= 0.9, (task, method, attack)
    for attack in ATTACKS:
        metric = f"attack_success_rate.{attack}.{detector}"
        assert value(rows, "mini_object", "RETRAIN", metric) <= 0.25, attack
    assert value(rows, "mini_object", "RETRAIN", RESIDUAL["mini_object"]) <= 0.1
    assert value(rows, "mini_object", "RETRAIN", "prompt_accuracy.unrelated") >= 0.8


def test_demo_rerun_reuses_everything_and_gives_the_same_numbers(demo) -> None:
    out, _ = demo
    before = (out / "metrics.csv").read_bytes()
    run_cli("demo", "--out", out, "--quiet")
    assert (out / "metrics.csv").read_bytes() == before
    models = sorted(p.name for p in (out / "models" / "mini_object").iterdir() if p.is_dir())
    assert [m.split("-")[0] for m in models] == ["ESD", "UCE"]  # nothing retrained


def test_demo_rejects_unknown_tasks(tmp_path) -> None:
    result = run_cli("demo", "--out", tmp_path, "--tasks", "mini_objekt", check=False)
    assert result.returncode != 0
    assert "Did you mean 'mini_object'" in result.stderr
