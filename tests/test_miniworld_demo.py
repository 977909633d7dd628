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
            # the methods the demo unlearns also report what unlearning cost (their cards)
            expected = ASPECTS | ({"efficiency"} if method in ("UCE", "ESD") else set())
            assert aspects == expected, (task, method, aspects)
        cost = {r["metric"]: r for r in rows
                if (r["task"], r["method"], r["aspect"]) == (task, "ESD", "efficiency")}
        assert float(cost["unlearn_wall_seconds"]["value"]) > 0
        wall = cost["unlearn_wall_seconds"]
        assert wall["ci_low"] in ("", "nan") and wall["higher_is_better"] in ("0", "false")
        assert 0 < float(cost["unlearn_parameter_share"]["value"]) < 1
        report = (out / "runs" / task / "report.html").read_text(encoding="utf-8")
        assert all(method in report for method in METHODS)
        assert f"== {task} ==" in stdout
    assert "wrote" in stdout and "metrics.csv" in stdout


def test_demo_ground_truth(demo) -> None:
    """ORG draws the concept; UCE and ESD erase it; UCE, a minimal closed-form edit, keeps the
    rest of each forget prompt and the unrelated prompts about as well drawn as ORG does; RETRAIN
    (never shown the cross, or the spot) rarely draws one. Measured with the shipped weights
    (README): ORG residual 0.97-1.00, UCE and ESD 0.00, RETRAIN 0.09 (cross) and 0.00 (spot);
    on mini_style the judge reads RETRAIN's unbanded marks as stripes (0.91, not asserted;
    test_miniworld_t2i checks the banding); UCE's prompt accuracies within 0.09 of
    ORG's (n = 9-32 images, so the margin is 0.2)."""
    rows = read_csv(demo[0] / "metrics.csv")
    for task in TASKS:
        assert value(rows, task, "ORG", RESIDUAL[task]) >= 0.9
        for method in ("UCE", "ESD"):
            assert value(rows, task, method, RESIDUAL[task]) <= 0.1, (task, method)
        for prompts in ("prompt_accuracy.forget", "prompt_accuracy.unrelated"):
            org = value(rows, task, "ORG", prompts)
            assert value(rows, task, "UCE", prompts) >= org - 0.2, (task, prompts)
    for task in ("mini_object", "mini_attribute"):  # mini_style's judge misreads RETRAIN (0.91)
        assert value(rows, task, "RETRAIN", RESIDUAL[task]) <= 0.2, task


DOMAINS = {"lpips": (0.0, float("inf")), "csdr": (0.0, float("inf")),
           "clip_score": (0.0, 100.0), "fid": (0.0, float("inf")), "fid_world": (0.0, float("inf"))}


def domain_of(metric: str) -> tuple[float, float] | None:
    base = metric.split(".", 1)[0]
    if "rate" in base or base == "prompt_accuracy":
        return (0.0, 1.0)
    return DOMAINS.get(base)


def test_demo_intervals_lie_in_their_metrics_domain(demo) -> None:
    """Rates in [0, 1], LPIPS, CSDR and FID >= 0, CLIP score in [0, 100]: every bound of every
    interval in the demo's metrics.csv (before, UCE's lpips on mini_object began at -0.089)."""
    rows = read_csv(demo[0] / "metrics.csv")
    checked = 0
    for row in rows:
        domain = domain_of(row["metric"])
        if domain is None or row["aspect"] == "efficiency":
            continue
        for key in ("value", "ci_low", "ci_high"):
            if row[key] not in ("", "nan"):
                assert domain[0] <= float(row[key]) <= domain[1], (row, key)
                checked += 1
    assert checked > 300


def test_demo_attacks_every_method_and_retrain_resists(demo) -> None:
    """Robustness by attack on the first 4 forget prompts: pre- and post-attack rates side by
    side, prompts as the unit; the attacks keep the concept wherever the model draws it (ORG,
    and NEGPROMPT where the negative prompt does not remove it: >= 90%); on mini_object and
    mini_attribute RETRAIN stays far below ORG (measured: ORG 4/4; RETRAIN at most 1/4 - the
    prompt it already drew a judged cross for - and 0/4 spots, with either attack)."""
    rows = read_csv(demo[0] / "metrics.csv")
    for task in TASKS:
        judge = RESIDUAL[task].split(".", 1)[1]
        methods = (*METHODS, "RETRAIN")
        for method in methods:
            for attack in ATTACKS:
                post = [r for r in rows if (r["task"], r["method"], r["metric"]) == (
                    task, method, f"attack_success_rate.{attack}.{judge}")]
                pre = [r for r in rows if (r["task"], r["method"], r["metric"]) == (
                    task, method, f"pre_attack_rate.{attack}.{judge}")]
                assert len(post) == len(pre) == 1, (task, method, attack)
                assert post[0]["prompts"] == pre[0]["prompts"] == "4"
                if method in ("ORG", "NEGPROMPT") and float(pre[0]["value"]) >= 0.9:
                    assert float(post[0]["value"]) >= 0.9, (task, method, attack)
    for task in ("mini_object", "mini_attribute"):
        judge = RESIDUAL[task].split(".", 1)[1]
        for attack in ATTACKS:
            metric = f"attack_success_rate.{attack}.{judge}"
            retrain = value(rows, task, "RETRAIN", metric)
            assert retrain <= 0.25 and value(rows, task, "ORG", metric) - retrain >= 0.75, task


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
