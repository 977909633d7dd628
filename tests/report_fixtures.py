"""A manifest-layout run with three methods, built from noise images, for report tests."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import noise_image, run_cli

INJECTIONS = [
    "<script>window.__pwned = 1</script> a church",
    '"><img src=x onerror="window.__pwned = 2"> a church',
    "a church & a <b>bold</b> tower",
]


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
    tmp_path: Path, models: Path, task: str = "church",
    methods: tuple[str, ...] = ("ORG", "ESD", "UCE"), prompts: list[str] | None = None,
    seeds: int = 2, size: int = 64, smooth: bool = False,
) -> Path:
    manifest = write_manifest(tmp_path / "images", list(methods), prompts or INJECTIONS,
                              ["a cat on a sofa", "a cat in the grass"], seeds, size,
                              smooth=smooth)
    out = tmp_path / "runs" / "run"
    run_cli("evaluate", "--task", task, "--images", manifest, "--layout", "manifest",
            "--out", out, "--models", models, "--quiet")
    return out
