"""The `igmu` command as a user runs it: help everywhere, the task tree, tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import read_csv, run_cli

COMMANDS = [[], ["tasks"], ["tasks", "show"], ["evaluate"], ["detect"], ["models"],
            ["models", "make-tiny"], ["report"], ["generate"], ["unlearn"], ["demo"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "igmu")
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.stdout.startswith("usage: igmu")


def test_tasks_tree_lists_families_kinds_and_tasks() -> None:
    out = run_cli("tasks").stdout
    for text in ("nsfw", "style", "object", "identity", "[attribute]", "[entity]",
                 "- nudity", "- van_gogh", "- church", "- parachute"):
        assert text in out
    assert out.index("nsfw.attribute") < out.index("- nudity") < out.index("style.attribute")


def test_tasks_show_prints_place_guidance_and_sets() -> None:
    out = run_cli("tasks", "show", "nudity").stdout
    assert "CatIGMU: nsfw -> nsfw.attribute -> nudity" in out
    assert "reference: stripped" in out and "subject_retention: person" in out
    for name in ("forget", "stripped", "related", "multilingual", "paraphrase"):
        assert f"  {name}: " in out
    assert "derived from forget" in out
    assert "unlearning prompts" not in out
    mini = run_cli("tasks", "show", "mini_attribute").stdout
    assert "120 erase pairs, 240 preserve prompts" in mini


def test_task_override_wins_over_inherited_guidance(tmp_path: Path) -> None:
    from igmu.tasks import load_task

    path = tmp_path / "dog.yaml"
    path.write_text(yaml.safe_dump({
        "schema": "igmu.task/1", "name": "dog", "version": 2, "title": "Erase dogs",
        "node": "object.entity", "concept": {"name": "dog", "words": ["dogs", "dog"]},
        "guidance": {"detectors": ["nudenet"]},
        "prompt_sets": {"forget": {"classes": {"dog": ["a dog in a park"]}},
                        "unrelated": {"classes": {"cat": ["a cat in a park"]}}},
    }))
    task = load_task(str(path))
    assert task.guidance["detectors"] == ["nudenet"]
    assert task.guidance["reference"] == "unrelated"  # inherited from object.entity
    assert task.prompt_set("stripped").classes == (("dog", ("in a park",)),)


def test_make_tiny_writes_loadable_models(tmp_path: Path) -> None:
    result = run_cli("models", "make-tiny", tmp_path / "tiny")
    models = yaml.safe_load((tmp_path / "tiny" / "models.yaml").read_text())
    assert "models.yaml" in result.stdout
    assert set(models["heads"]) == {"nudity", "object_church", "object_parachute",
                                    "style_vangogh"}
    assert Path(models["clip_detector"], "config.json").is_file()


def write_igmu_prompts(folder: Path) -> str:
    """forgot.json / retain.json in IGMU's format ({task: {class: [prompts]}})."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    airplane = "an airplane parked at a small airfield"
    (folder / "forgot.json").write_text(json.dumps(
        {"object_church": {"Church": ["a church with a tall bell tower"]}}))
    (folder / "retain.json").write_text(json.dumps({"object_church": {
        "Parachute": ["a parachute over a beach"], "Cat": ["a cat on a sofa"],
        "Airplane": [airplane]}}))
    return airplane


def test_igmu_prompt_json_import(church_demo: Path, tiny_models: Path, tmp_path: Path) -> None:
    """File names i_j_k index the prompt JSON the images were made from."""
    airplane = write_igmu_prompts(tmp_path / "prompts")
    out = tmp_path / "run"
    run_cli("evaluate", "--task", "church", "--images", church_demo, "--out", out,
            "--models", tiny_models, "--igmu-prompts", tmp_path / "prompts",
            "--metrics", "clip_score", "--quiet")
    assert {row["prompt"] for row in read_csv(out / "samples.csv")} == {airplane}


def test_igmu_prompt_json_import_official(shared_church_demo: Path, tiny_models: Path,
                                          shared_igmu: Path, tmp_path: Path) -> None:
    """Extra: IGMU's own prompt files and demo images."""
    import json

    out = tmp_path / "run"
    run_cli("evaluate", "--task", "church", "--images", shared_church_demo, "--out", out,
            "--models", tiny_models, "--igmu-prompts", shared_igmu / "prompts",
            "--metrics", "clip_score", "--quiet")
    official = json.loads((shared_igmu / "prompts" / "retain.json").read_text())
    airplane = official["object_church"]["Airplane"][0]
    assert {row["prompt"] for row in read_csv(out / "samples.csv")} == {airplane}


def test_missing_model_is_one_clear_error(church_demo: Path, tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("clip_detector: ./no-such-clip\nheads: {object_church: ./h.pth}\n")
    result = run_cli("evaluate", "--task", "church", "--images", church_demo, "--out",
                     tmp_path / "run", "--models", models, "--quiet", check=False)
    assert result.returncode == 2
    assert "no-such-clip" in result.stderr and "clip_detector" in result.stderr
    assert "Traceback" not in result.stderr
    # A hub id with no network and no local cache: says what to provide.
    models.write_text("clip_detector: nobody/no-such-model\nheads: {object_church: ./h.pth}\n")
    result = run_cli("evaluate", "--task", "church", "--images", church_demo, "--out",
                     tmp_path / "run", "--models", models, "--metrics", "residual_rate",
                     "--quiet", check=False)
    assert result.returncode == 2
    assert "nobody/no-such-model" in result.stderr and "local directory" in result.stderr


def test_device_must_exist(church_demo: Path, tiny_models: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path needs a CPU-only machine")
    result = run_cli("evaluate", "--task", "church", "--images", church_demo, "--out",
                     tmp_path / "run", "--models", tiny_models, "--device", "cuda", check=False)
    assert result.returncode == 2 and "CUDA is not available" in result.stderr
