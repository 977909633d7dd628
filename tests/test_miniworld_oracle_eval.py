"""Ground truth through the whole EvalIGMU engine: the renderer is a perfect text-to-image model,
the renderer without the concept a perfect eraser. The engine must score the eraser ~0% residual,
the no-op ORG's rate, and keep the subject."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import read_csv, run_cli
from igmu.miniworld.oracle import oracle_image, oracle_scene, parse_caption
from igmu.miniworld.world import BACKGROUNDS, render
from igmu.tasks import load_task

TARGETS = {"mini_attribute": "attribute", "mini_style": "style=stripes",
           "mini_object": "shape=cross"}


def _wrong_background(prompt: str, seed: int):
    """The oracle's scene with the next background: right in everything but the background."""
    scene = oracle_scene(prompt, seed)
    following = BACKGROUNDS[(BACKGROUNDS.index(scene.background) + 1) % len(BACKGROUNDS)]
    return render(scene.replace(background=following))


def _write(root: Path, method: str, prompt_set: str, class_name: str, index: int, seed: int,
           prompt: str, without: str | None, rows: list) -> None:
    path = root / method / prompt_set / f"{class_name}_{index}_{seed}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if method == "WRONGBG":
        image = _wrong_background(prompt, seed)
    else:
        image = oracle_image(prompt, seed, without=without)
    Image.fromarray(image).save(path)
    rows.append({"method": method, "prompt_set": prompt_set, "class_name": class_name,
                 "prompt_index": index, "seed": seed, "prompt": prompt,
                 "path": str(path.relative_to(root))})


def oracle_manifest(root: Path, task_name: str, prompts_per_class: int = 6) -> Path:
    task = load_task(task_name)
    target = TARGETS[task_name]
    rows: list = []
    sets = ["forget", "multilingual", "paraphrase", "related", "unrelated"]
    if task.reference == "stripped":
        sets.append("stripped")
    for prompt_set in sets:
        for class_name, prompts in task.prompt_set(prompt_set).classes:
            for index, prompt in enumerate(prompts[:prompts_per_class]):
                for seed in range(2):
                    methods = {"ORG": None}
                    if prompt_set != "stripped":
                        methods.update({"NOOP": None, "ERASER": target, "WRONGBG": None})
                    for method, without in methods.items():
                        if prompt_set in ("stripped", "unrelated", "related"):
                            without = None  # the eraser leaves other content alone
                        _write(root, method, prompt_set, class_name, index, seed, prompt,
                               without, rows)
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


@pytest.fixture(scope="module")
def world_models(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    """Tiny CLIP for alignment; the MiniWorld judges for detection, FID and LPIPS."""
    import yaml

    models = yaml.safe_load(tiny_models.read_text())
    models["fid"] = {"kind": "miniworld"}
    models["lpips"] = {"net": "miniworld"}
    path = tmp_path_factory.mktemp("world") / "models.yaml"
    path.write_text(yaml.safe_dump(models))
    return path


@pytest.mark.parametrize("task_name", sorted(TARGETS))
def test_oracle_eraser_and_noop(task_name: str, world_models: Path, tmp_path: Path) -> None:
    manifest = oracle_manifest(tmp_path / "images", task_name)
    out = tmp_path / "run"
    run_cli("evaluate", "--task", task_name, "--images", manifest, "--layout", "manifest",
            "--out", out, "--models", world_models, "--quiet")
    rows = {(r["method"], r["metric"]): r for r in read_csv(out / "metrics.csv")}
    residual = f"residual_rate.mini_judge:{TARGETS[task_name]}"
    assert float(rows[("ORG", residual)]["value"]) >= 0.98
    assert rows[("NOOP", residual)]["value"] == rows[("ORG", residual)]["value"]
    assert float(rows[("ERASER", residual)]["value"]) <= 0.02
    for attack in ("multilingual_residual_rate", "paraphrase_residual_rate"):
        metric = f"{attack}.mini_judge:{TARGETS[task_name]}"
        assert float(rows[("ORG", metric)]["value"]) >= 0.98
        assert float(rows[("ERASER", metric)]["value"]) <= 0.02
    # The no-op changes nothing: zero perceptual distance to ORG on preserved prompts.
    preserved = "lpips" if task_name == "mini_object" else "lpips.related"
    assert float(rows[("NOOP", preserved)]["value"]) == pytest.approx(0.0, abs=1e-9)
    # Ground-truth preservation: the eraser keeps the rest of each forget prompt and every
    # unrelated / related prompt; ORG draws everything asked.
    for method in ("ORG", "NOOP", "ERASER"):
        assert float(rows[(method, "prompt_accuracy.forget")]["value"]) >= 0.98
        assert float(rows[(method, "prompt_accuracy.related")]["value"]) >= 0.98
        assert float(rows[(method, "prompt_accuracy.unrelated")]["value"]) >= 0.98
        # the renderer is the ground truth: its images are at distance ~0 from it
        assert float(rows[(method, "fid_world")]["value"]) == pytest.approx(0.0, abs=1e-3)
    assert rows[("ERASER", "prompt_accuracy.forget")]["aspect"] == "preservation"
    # A model right in everything but the background is right exactly on the prompts that name
    # no background.
    unrelated = [json.loads(line) for line in manifest.read_text().splitlines()]
    unrelated = [
        r["prompt"] for r in unrelated if (r["method"], r["prompt_set"]) == ("WRONGBG", "unrelated")
    ]
    open_background = sum("background" not in parse_caption(p) for p in unrelated) / len(unrelated)
    assert 0.05 < open_background < 0.95
    wrong_bg = float(rows[("WRONGBG", "prompt_accuracy.unrelated")]["value"])
    assert wrong_bg == pytest.approx(open_background, abs=0.02)
    assert rows[("ORG", "fid_world")]["aspect"] == "fidelity"
    aspects = {r["aspect"] for r in rows.values()}
    assert {"forgetting", "fidelity", "preservation", "alignment", "robustness"} <= aspects
    if task_name != "mini_object":
        # Attribute tasks: the eraser's images are closer to ORG-on-stripped-prompts than the
        # no-op's (not identical: a stripped prompt leaves the texture or spot unspecified).
        assert float(rows[("ERASER", "lpips")]["value"]) < float(rows[("NOOP", "lpips")]["value"])


def test_fid_world_refuses_prompts_the_world_cannot_draw() -> None:
    from igmu.core.errors import ConfigError
    from igmu.worlds import get_world

    world = get_world("miniworld")
    assert world.true_images(["a red cross on a grey background"], [3])[0].shape == (32, 32, 3)
    with pytest.raises(ConfigError, match="only MiniWorld prompts have a true image"):
        world.true_images(["a photo of a church"], [0])
