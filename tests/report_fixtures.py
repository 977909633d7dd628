"""A manifest-layout run with three methods, built from noise images, for report tests.

Its task is a task file written here (as a user would write one) whose prompts carry markup and
script: the report must show them as text."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from helpers import noise_image, run_cli

INJECTIONS = [
    "<script>window.__pwned = 1</script> a church",
    '"><img src=x onerror="window.__pwned = 2"> a church',
    "a church & a <b>bold</b> tower",
]
UNRELATED = ["a cat on a sofa", "a cat in the grass"]


def write_task(folder: Path, forget: list[str], unrelated: list[str] = UNRELATED) -> Path:
    """An entity task like the built-in church, with the given forget prompts."""
    path = folder / "church_report.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "schema": "igmu.task/1", "name": "church_report", "version": 1,
        "title": "Erase the church (report tests)", "node": "object.entity",
        "concept": {"name": "church", "words": ["church"]}, "igmu": {"key": "object_church"},
        "prompt_sets": {"forget": {"classes": {"church": forget}},
                        "unrelated": {"classes": {"cat": unrelated}}},
    }, sort_keys=False), encoding="utf-8")
    return path


def write_manifest(root: Path, methods: list[str], forget: list[str], unrelated: list[str],
                   seeds: int = 2, size: int = 64, prompt_set: str = "forget",
                   class_name: str = "church", smooth: bool = False) -> Path:
    rows, counter = [], 0
    for method in methods:
        for j, prompt in enumerate(forget):
            for k in range(seeds):
                path = root / method / f"{prompt_set}_{j}_{k}.png"
                noise_image(path, counter, size, smooth)
                counter += 1
                rows.append({"method": method, "prompt_set": prompt_set, "class_name": class_name,
                             "prompt_index": j, "seed": k, "prompt": prompt,
                             "path": str(path.relative_to(root))})
        for j, prompt in enumerate(unrelated):
            for k in range(seeds):
                path = root / method / f"unrelated_{j}_{k}.png"
                noise_image(path, 5000 + j * 10 + k + (counter if method != "ORG" else 0) % 3,
                            size, smooth)
                counter += 1
                rows.append({"method": method, "prompt_set": "unrelated", "class_name": "cat",
                             "prompt_index": j, "seed": k, "prompt": prompt,
                             "path": str(path.relative_to(root))})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def evaluated_run(
    tmp_path: Path, models: Path, methods: tuple[str, ...] = ("ORG", "ESD", "UCE"),
    prompts: list[str] | None = None, seeds: int = 2, size: int = 64, smooth: bool = False,
) -> Path:
    forget = prompts or INJECTIONS
    task = write_task(tmp_path, forget)
    manifest = write_manifest(tmp_path / "images", list(methods), forget, UNRELATED, seeds, size,
                              smooth=smooth)
    out = tmp_path / "runs" / "run"
    run_cli("evaluate", "--task", task, "--images", manifest, "--out", out, "--models", models,
            "--quiet")
    return out
