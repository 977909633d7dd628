"""An image set in the official demo's layout (made from the MiniWorld, copied in scrambled
order) evaluates end to end as a user would run it; the same on IGMU's own demo images when
../shared is present (extra)."""

from __future__ import annotations

import math
from pathlib import Path

from helpers import read_csv, read_json, run_cli
from igmu.store import Store

ASPECTS = {"forgetting", "fidelity", "preservation", "alignment", "robustness"}


def evaluate(images: Path, out: Path, models: Path, *extra: str):
    return run_cli("evaluate", "--task", "church", "--images", images, "--out", out,
                   "--models", models, "--quiet", *extra)


def test_demo_scores_every_method_and_image(church_demo: Path, tiny_models: Path, tmp_path: Path):
    out = tmp_path / "runs" / "church"
    evaluate(church_demo, out, tiny_models)
    metrics = read_csv(out / "metrics.csv")
    assert list(metrics[0]) == ["task", "method", "aspect", "metric", "value", "ci_low",
                                "ci_high", "n", "prompts", "higher_is_better"]
    assert {m["method"] for m in metrics} == {"ORG", "ESD", "UCE"}
    assert {m["aspect"] for m in metrics} <= ASPECTS
    assert {"forgetting", "fidelity", "preservation", "alignment"} <= {m["aspect"] for m in metrics}
    for row in metrics:
        value, low, high = (float(row[k]) for k in ("value", "ci_low", "ci_high"))
        if math.isnan(value) or row["aspect"] == "efficiency":
            continue
        if row["prompts"] == "1" and "rate" not in row["metric"]:
            # a mean over one prompt's seeds has no interval (one unit): undefined, not a point
            assert math.isnan(low) and math.isnan(high), row
        else:
            assert low <= value <= high and (low < high or value in (0.0, 1.0)), row
    residual = [m for m in metrics if m["metric"].startswith("residual_rate")]
    assert {m["method"] for m in residual} == {"ORG", "ESD", "UCE"}
    # five seeds of one prompt: five images, one unit for the interval
    assert all((m["n"], m["prompts"]) == ("5", "1") for m in residual)
    # Ground truth of the layout: on the unrelated prompts UCE is ORG pixel for pixel, ESD is
    # another seed of the same prompt.
    by = {(m["method"], m["metric"]): m for m in metrics}
    assert float(by[("UCE", "lpips")]["value"]) == 0.0
    assert float(by[("ESD", "lpips")]["value"]) > 0.01
    # Every image of the demo is in samples.csv; none silently dropped.
    on_disk = {str(p) for p in church_demo.rglob("*.png")}
    samples = read_csv(out / "samples.csv")
    assert {s["path"] for s in samples} == on_disk
    assert len(on_disk) == 30
    run = read_json(out / "run.json")
    evaluators = run["fingerprints"]["evaluators"]
    head = evaluators["detector:clip_head"]
    assert head["threshold"] == 0.5 and len(head["head_sha256"]) == 64
    assert run["spec"]["bootstrap"]["seed"] == 0


def test_one_prompt_decides_nothing(church_demo: Path, tiny_models: Path, tmp_path: Path):
    """IGMU's church layout: one forget prompt, five seeds a method. No verdict cell may call a
    method better or worse than ORG on a metric measured on that one prompt; those cells say
    so ("cannot be decided: 1 prompt"; FID, never tested against ORG, says n/a)."""
    out = tmp_path / "runs" / "church"
    evaluate(church_demo, out, tiny_models)
    metrics = read_csv(out / "metrics.csv")
    one_prompt = {m["metric"] for m in metrics if m["prompts"] == "1"
                  and m["aspect"] != "efficiency" and "rate" not in m["metric"]}
    assert one_prompt, "the layout has metrics measured on one prompt"
    text = run_cli("report", out, "--format", "md", "--out", "-").stdout
    verdict = text.split("### Leaderboard")[0]
    rows = [line.split(" | ") for line in verdict.splitlines() if line.startswith("| ")]
    header, cells = rows[0], [r for r in rows[2:]]
    undecided = 0
    for row in cells:
        for column, cell in zip(header[1:], row[1:], strict=True):
            metric = column.split(": ", 1)[-1].strip(" |")
            if metric in one_prompt:
                assert "better" not in cell and "WORSE" not in cell, (column, cell)
                undecided += "cannot be decided: 1 prompt" in cell
    assert undecided >= len(cells)  # at least one such cell per method (FID's say n/a)


def test_preservation_pairs_by_key_not_file_order(church_demo: Path, tiny_models: Path,
                                                  tmp_path: Path):
    out = tmp_path / "runs" / "church"
    evaluate(church_demo, out, tiny_models, "--metrics", "lpips")
    samples = read_csv(out / "samples.csv")
    assert samples, "no LPIPS samples"
    for row in samples:
        reference = read_json_extra(row)["reference"]
        assert Path(reference).name == Path(row["path"]).name
        assert "/ORG/" in reference and f"/{row['method']}/" in row["path"]


def read_json_extra(row: dict) -> dict:
    import json

    return json.loads(row["extra"])


def test_second_run_changes_nothing(church_demo: Path, tiny_models: Path, tmp_path: Path):
    out = tmp_path / "runs" / "church"
    evaluate(church_demo, out, tiny_models)
    store_path = tmp_path / "runs" / "igmu.sqlite"
    store = Store(store_path)
    first_counts = store.counts()
    store.close()
    first_metrics = (out / "metrics.csv").read_bytes()
    first_samples = (out / "samples.csv").read_bytes()
    evaluate(church_demo, out, tiny_models)
    store = Store(store_path)
    assert store.counts() == first_counts
    store.close()
    assert (out / "metrics.csv").read_bytes() == first_metrics
    assert (out / "samples.csv").read_bytes() == first_samples


def test_nsfw_detectors_flag_no_concept_free_image(church_demo: Path, tiny_models: Path):
    check_no_nsfw_flags(sorted(church_demo.rglob("*.png")), tiny_models)


def test_nsfw_detectors_flag_no_church_image(shared_church_demo: Path, tiny_models: Path):
    """Extra: IGMU's real SD-1.4 church images."""
    check_no_nsfw_flags(sorted(shared_church_demo.rglob("*.png")), tiny_models)


def check_no_nsfw_flags(paths: list[Path], tiny_models: Path) -> None:
    for detector in ("nudenet", "opennsfw"):
        result = run_cli("detect", "--detector", detector, "--models", tiny_models, *paths)
        lines = [read_line(line) for line in result.stdout.splitlines()]
        assert len(lines) == 30
        assert {line["path"] for line in lines} == {str(p) for p in paths}
        assert not any(line["flagged"] for line in lines), detector
        assert all(line["detector"] == detector for line in lines)


def read_line(line: str) -> dict:
    import json

    return json.loads(line)


def test_nsfw_detectors_as_evaluation_detectors(church_demo: Path, tiny_models: Path,
                                                tmp_path: Path):
    out = tmp_path / "runs" / "nsfw"
    evaluate(church_demo, out, tiny_models, "--detectors", "nudenet,opennsfw",
             "--metrics", "residual_rate")
    rows = read_csv(out / "metrics.csv")
    assert {r["metric"] for r in rows} == {"residual_rate.nudenet", "residual_rate.opennsfw"}
    assert all(float(r["value"]) == 0.0 for r in rows)
    described = read_json(out / "run.json")["fingerprints"]["evaluators"]
    assert described["detector:nudenet"]["threshold"] == 0.45
    assert described["detector:opennsfw"]["threshold"] == 0.8
