"""What keeps a number trustworthy: inputs checked against the task, paths that cannot leak
files into a shared report, a store that will not mix schema versions, a blur that fails
closed, and the operability details a user meets first."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from helpers import read_csv, read_json, run_cli
from igmu.core.errors import ConfigError
from igmu.dataset.layouts import read_manifest
from igmu.report.data import is_sensitive
from igmu.store import Store
from igmu.store.sqlite import SCHEMA_VERSION
from igmu.tasks import load_task
from test_bad_input import GOOD_ROW, cli, cli_fails, evaluate_args

# --------------------------------------------------------------------------------------------
# manifests and layouts


def manifest_with(tmp_path: Path, *rows: dict) -> Path:
    path = tmp_path / "images" / "manifest.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "change,fragments",
    [
        ({"class_name": "chapel"}, ["'class_name'", "'chapel'", "not a class"]),
        ({"prompt_index": 9999}, ["'prompt_index'", "out of range"]),
        ({"seed": -1}, ["'seed'", "0..9223372036854775807", "got -1"]),
        ({"prompt": "a mosque at dawn"}, ["'prompt'", "another version of the task"]),
        ({"path": "../outside.png"}, ["'path'", "outside the manifest's folder",
                                      "--allow-outside-paths"]),
    ],
)
def test_manifest_rows_are_checked_against_the_task(
    tmp_path: Path, change: dict, fragments: list[str]
) -> None:
    manifest = manifest_with(tmp_path, GOOD_ROW, {**GOOD_ROW, "method": "ESD", **change})
    with pytest.raises(ConfigError) as info:
        read_manifest(manifest, load_task("church"))
    assert f"{manifest}:2:" in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_manifest_paths_are_absolute_and_outside_paths_need_consent(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.png"
    manifest = manifest_with(tmp_path, GOOD_ROW, {**GOOD_ROW, "method": "ESD",
                                                 "path": str(outside)})
    with pytest.raises(ConfigError, match="outside the manifest's folder"):
        read_manifest(manifest, load_task("church"))
    records = read_manifest(manifest, load_task("church"), allow_outside_paths=True)
    assert [r.path for r in records] == [
        str((manifest.parent / "ORG" / "0_0_0.png").resolve()), str(outside.resolve())
    ]


def test_attack_rows_keep_their_own_prompt(tmp_path: Path) -> None:
    attack = {**GOOD_ROW, "prompt_set": "attack.text_grad", "prompt": "xq zv a church"}
    records = read_manifest(manifest_with(tmp_path, GOOD_ROW, attack), load_task("church"))
    assert records[1].prompt == "xq zv a church"
    bad = {**attack, "prompt_index": 9999}
    with pytest.raises(ConfigError, match="out of range"):
        read_manifest(manifest_with(tmp_path, GOOD_ROW, bad), load_task("church"))


def test_layout_link_out_of_the_folder_is_refused(
    capsys: pytest.CaptureFixture[str], church_demo: Path, tiny_models: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "private.png"
    target = church_demo / "forgot" / "ESD" / "0_0_1.png"
    secret.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(secret)
    err = cli_fails(capsys, *evaluate_args(church_demo, tmp_path / "run", "--models",
                                           tiny_models))
    assert str(target) in err and "--allow-outside-paths" in err


def test_images_hints(capsys: pytest.CaptureFixture[str], church_demo: Path,
                      tmp_path: Path) -> None:
    err = cli_fails(capsys, *evaluate_args(church_demo.parent, tmp_path / "run"))
    assert "give one of them as --images" in err and str(church_demo) in err
    manifest = manifest_with(tmp_path, GOOD_ROW)
    err = cli_fails(capsys, *evaluate_args(manifest.parent, tmp_path / "run", "--layout",
                                           "manifest"))
    assert f"--images {manifest}" in err
    err = cli_fails(capsys, *evaluate_args(manifest, tmp_path / "run", "--layout", "igmu"))
    assert "--layout manifest" in err


def test_corrupt_image_is_recorded_and_skipped_with_allow_missing(
    capsys: pytest.CaptureFixture[str], tiny_models: Path, church_demo: Path, tmp_path: Path
) -> None:
    culprit = church_demo / "forgot" / "ESD" / "0_0_3.png"
    culprit.write_bytes(culprit.read_bytes()[:100])
    code, out, err = cli(capsys, *evaluate_args(church_demo, tmp_path / "run", "--models",
                                                tiny_models, "--allow-missing"))
    assert code == 0, err
    assert str(culprit) in out  # the table's "left out" lines name it
    run = read_json(tmp_path / "run" / "run.json")
    assert any(str(culprit) in line and "unreadable" in line for line in run["left_out"])
    esd = [r for r in read_csv(tmp_path / "run" / "metrics.csv")
           if r["method"] == "ESD" and r["metric"].startswith("residual_rate")]
    assert esd and all(r["n"] == "4" for r in esd)  # scored on the other four


# --------------------------------------------------------------------------------------------
# the store


def test_store_refuses_another_schema_and_migrates_the_previous(tmp_path: Path) -> None:
    path = tmp_path / "igmu.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(ConfigError, match="schema version 99"):
        Store(path)
    # A version-1 store (no prompt count) is brought up to date, caches kept.
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
            "CREATE TABLE aggregates (run_id TEXT NOT NULL, method TEXT NOT NULL, metric TEXT "
            "NOT NULL, aspect TEXT NOT NULL, value REAL, ci_low REAL, ci_high REAL, n INTEGER "
            "NOT NULL, higher_is_better INTEGER NOT NULL, whole_set INTEGER NOT NULL, warning "
            "TEXT NOT NULL, PRIMARY KEY (run_id, method, metric));"
            "CREATE TABLE features (backbone TEXT NOT NULL, sha256 TEXT NOT NULL, vector BLOB "
            "NOT NULL, PRIMARY KEY (backbone, sha256));"
            "INSERT INTO features VALUES ('b', 's', x'00');"
        )
    store = Store(old)
    assert store.counts()["features"] == 1
    store.close()
    with sqlite3.connect(old) as db:
        assert db.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)


def test_rerun_refreshes_fingerprints(church_demo: Path, tiny_models: Path,
                                      tmp_path: Path) -> None:
    args = ["evaluate", "--task", "church", "--images", church_demo, "--models", tiny_models,
            "--metrics", "residual_rate", "--quiet"]
    run_cli(*args, "--out", tmp_path / "run")
    store_path = tmp_path / "igmu.sqlite"
    with sqlite3.connect(store_path) as db:
        db.execute("UPDATE runs SET fingerprints_json='{\"packages\": {\"torch\": \"0.0\"}}'")
    run_cli(*args, "--out", tmp_path / "run")
    with sqlite3.connect(store_path) as db:
        stored = json.loads(db.execute("SELECT fingerprints_json FROM runs").fetchone()[0])
    assert stored["packages"]["torch"] != "0.0"


# --------------------------------------------------------------------------------------------
# NSFW blur fails closed


def test_blur_is_decided_by_the_task_and_fails_closed() -> None:
    assert is_sensitive({"task": {"node": "nsfw.attribute"}})
    assert not is_sensitive({"task": {"node": "object.entity"}})
    assert is_sensitive({"task": {"node": "object.entity", "sensitive_content": True}})
    assert is_sensitive({"task": {"node": "no.such.node"}})
    assert is_sensitive({})


def test_report_blurs_a_nudity_run_whose_run_json_lacks_the_catigmu_section(
    church_demo: Path, tiny_models: Path, tmp_path: Path
) -> None:
    from igmu.report.data import load_report_data

    out = tmp_path / "run"
    run_cli("evaluate", "--task", "church", "--images", church_demo, "--models", tiny_models,
            "--metrics", "residual_rate", "--out", out, "--quiet")
    run = read_json(out / "run.json")
    assert run["spec"]["task"]["sensitive_content"] is False
    run.pop("catigmu")
    with sqlite3.connect(tmp_path / "igmu.sqlite") as db:  # make the stored run a nudity one
        spec = json.loads(db.execute("SELECT spec_json FROM runs").fetchone()[0])
        spec["task"] = {"node": "nsfw.attribute"}
        db.execute("UPDATE runs SET spec_json=?", (json.dumps(spec),))
    (out / "run.json").write_text(json.dumps(run), encoding="utf-8")
    assert load_report_data(out).sensitive
    run_cli("report", out)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'class="thumb nsfw"' in html


# --------------------------------------------------------------------------------------------
# operability


def test_report_of_a_folder_of_runs_and_markdown_to_stdout(
    church_demo: Path, tiny_models: Path, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        run_cli("evaluate", "--task", "church", "--images", church_demo, "--models",
                tiny_models, "--metrics", "residual_rate", "--out", tmp_path / "runs" / name,
                "--quiet")
    result = run_cli("report", tmp_path)  # a folder of runs: one report, a tab per run
    assert "2 runs, one tab each" in result.stdout
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.count('<section class="task"') == 2
    assert not (tmp_path / "-").exists()
    result = run_cli("report", tmp_path / "runs" / "a", "--format", "md", "--out", "-")
    assert result.stdout.startswith("## church\n\n### Verdict\n\n| method |")
    assert not Path("-").exists()


def test_error_after_a_progress_bar_starts_its_own_line(tmp_path: Path, church_demo: Path,
                                                        tiny_models: Path) -> None:
    """An image that fails mid-run (progress bar drawn) gets its error on a line of its own."""
    culprit = church_demo / "unrelated" / "UCE" / "Airplane" / "2_0_4.png"
    culprit.write_bytes(culprit.read_bytes()[:100])
    result = run_cli("evaluate", "--task", "church", "--images", church_demo, "--models",
                     tiny_models, "--out", tmp_path / "run", "--batch-size", "2", check=False)
    assert result.returncode != 0
    assert "scoring images" in result.stderr  # the bar was drawn
    line = next(x for x in result.stderr.split("\n") if "igmu: error:" in x)  # not at \r
    assert line.startswith("igmu: error:"), result.stderr


def test_compare_two_methods_on_every_metric(church_demo: Path, tiny_models: Path,
                                             tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_cli("evaluate", "--task", "church", "--images", church_demo, "--models", tiny_models,
            "--out", out, "--quiet")
    result = run_cli("compare", out, "--a", "UCE", "--b", "ESD", "--out", "-")
    rows = {r["metric"]: r for r in read_csv_text(result.stdout)}
    metrics = {r["metric"] for r in read_csv(out / "metrics.csv") if r["method"] == "UCE"}
    assert set(rows) == metrics
    # UCE's unrelated images are ORG's pixels, ESD's another seed: UCE is closer to ORG, but
    # on this layout's one prompt (five seeds) nothing can be decided: no interval, no call.
    lpips = rows["lpips"]
    assert float(lpips["difference"]) < 0 and lpips["ci_low"] == lpips["ci_high"] == ""
    assert {r["verdict"] for r in rows.values()} == {"cannot be decided: 1 prompt"}
    assert rows["fid"]["difference"] != ""  # FID compared from the stored features
    bad = run_cli("compare", out, "--a", "UCF", "--b", "ESD", check=False)
    assert bad.returncode != 0 and "Did you mean 'UCE'" in bad.stderr


def read_csv_text(text: str) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def test_mini_tasks_use_their_world_without_a_models_file(tmp_path: Path) -> None:
    """generate (and every command) finds the shipped MiniWorld models for a mini task; a
    models file's relative paths are relative to the file."""
    out = tmp_path / "gen"
    run_cli("generate", "--task", "mini_object", "--method", "ORG", "--out", out,
            "--max-prompts-per-class", "1", "--prompt-sets", "forget", "--steps", "2",
            "--quiet")
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert rows and rows[0]["model"].endswith("miniworld/weights/t2i")
    printed = run_cli("models", "--world", "mini").stdout
    assert "miniworld/weights/t2i" in printed and "kind: miniworld" in printed
    from igmu.backbones.config import load_models_config

    (tmp_path / "sub").mkdir()
    file = tmp_path / "sub" / "models.yaml"
    (tmp_path / "sub" / "uce").mkdir()
    file.write_text(yaml.safe_dump({"methods": {"UCE": "uce", "X": "org/model"}}))
    methods = load_models_config(file).get("methods")
    assert methods["UCE"] == {"model": str((tmp_path / "sub" / "uce").resolve())}
    assert methods["X"] == {"model": "org/model"}  # a hub id stays a hub id


def test_a_shipped_retrain_model_is_a_method_of_its_mini_task(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    """Where the world ships RETRAIN for a task, generate (and every command) knows it."""
    import shutil

    from igmu.backbones.config import load_models_config
    from igmu.generation import GenerateOptions, generate
    from igmu.miniworld import retrain
    from igmu.miniworld.shipped import shipped_models

    t2i, _ = shipped_models()
    folder = tmp_path / "retrain" / "mini_object"
    shutil.copytree(t2i, folder)
    card = json.loads((folder / "igmu_t2i.json").read_text())
    card.setdefault("world", {})["without"] = "shape=cross"
    (folder / "igmu_t2i.json").write_text(json.dumps(card))
    monkeypatch.setattr(retrain, "default_retrain_root", lambda: tmp_path / "retrain")
    models = load_models_config(None, load_task("mini_object"))
    assert models.get("methods")["RETRAIN"]["model"] == str(folder)
    assert "RETRAIN" not in load_models_config(None, load_task("mini_style")).get("methods")
    result = generate(load_task("mini_object"), tmp_path / "gen", models, GenerateOptions(
        methods=["RETRAIN"], prompt_sets=["forget"], max_prompts_per_class=1, progress=False))
    assert [row["method"] for row in result.rows] == ["RETRAIN"]


def test_a_warm_rerun_loads_no_network(church_demo: Path, tiny_models: Path,
                                       tmp_path: Path) -> None:
    """Asked again with the same inputs, evaluate answers from the store: it runs with torch and
    transformers made unimportable, and writes the same files."""
    import os
    import subprocess
    import sys

    args = ["evaluate", "--task", "church", "--images", str(church_demo), "--models",
            str(tiny_models), "--out", str(tmp_path / "run"), "--quiet"]
    run_cli(*args)
    first = (tmp_path / "run" / "metrics.csv").read_bytes()
    blocker = tmp_path / "blocker"
    for name in ("torch", "transformers", "diffusers"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} was loaded')")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    warm = subprocess.run([sys.executable, "-m", "igmu.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == first
    assert read_json(tmp_path / "run" / "run.json")["answered_from_store"] is True
    # any change of an input is a new request: one image touched, the run is scored again
    image = next(church_demo.rglob("*.png"))
    image.write_bytes(image.read_bytes())
    cold = subprocess.run([sys.executable, "-m", "igmu.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert cold.returncode != 0 and "was loaded" in cold.stderr


def test_scores_do_not_depend_on_batch_size_or_cache_history(tmp_path: Path) -> None:
    """metrics.csv byte for byte on MiniWorld images (whose networks do show it): --batch-size
    16, --batch-size 3, and --batch-size 5 into a store where a run on ORG's images alone cached
    their features first, so NEGPROMPT's meet the networks in other company. Every network call
    has one shape (metrics.base.NETWORK_BATCH); with calls of whatever size came, 16 and 3
    differed from line 7 of metrics.csv."""
    import json

    gen = tmp_path / "gen"
    run_cli("generate", "--task", "mini_object", "--method", "ORG,NEGPROMPT",
            "--max-prompts-per-class", "1", "--out", gen, "--quiet", "--threads", "1")
    org_only = gen / "org.jsonl"
    rows = [line for line in (gen / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
            if json.loads(line)["method"] == "ORG"]
    org_only.write_text("\n".join(rows) + "\n", encoding="utf-8")

    def evaluate(images: Path, out: Path, batch: str, threads: str = "1") -> bytes:
        run_cli("evaluate", "--task", "mini_object", "--images", images, "--out", out,
                "--batch-size", batch, "--quiet", "--threads", threads)
        return (out / "metrics.csv").read_bytes()

    first = evaluate(gen / "manifest.jsonl", tmp_path / "a" / "run", "16")
    assert evaluate(gen / "manifest.jsonl", tmp_path / "b" / "run", "3") == first
    evaluate(org_only, tmp_path / "c" / "warm", "16")
    assert evaluate(gen / "manifest.jsonl", tmp_path / "c" / "run", "5") == first
    # the same images scored with 2 threads: the MiniWorld's networks give the same floats
    assert evaluate(gen / "manifest.jsonl", tmp_path / "d" / "run", "16", "2") == first
