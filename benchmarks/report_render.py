"""Report size and render time for a 3-method, 100-image run (target: <= 15 MB, <= 3 s).

Builds tiny random models and noise images, evaluates them, writes the HTML report, then opens it
in headless Chromium and times navigation until the load event and all grid images decoded.

    python benchmarks/report_render.py [--images 100] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from igmu.backbones.config import load_models_config
from igmu.evaluation.engine import EvaluationOptions, evaluate
from igmu.report.data import load_report_data
from igmu.report.page import render_html
from igmu.tasks import load_task
from igmu.testing.tiny import make_tiny

METHODS = ("ORG", "ESD", "UCE")


def smooth_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Low-frequency colour noise: compresses like a generated picture, unlike white noise."""
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


def build_run(root: Path, images: int, size: int) -> Path:
    task = load_task("church")
    forget = task.prompt_set("forget").classes[0][1]
    unrelated = task.prompt_set("unrelated").classes
    per_method = images // len(METHODS)
    rng = np.random.default_rng(0)
    rows = []
    for method in METHODS:
        for i in range(per_method):
            if i % 2 == 0:
                prompt_set, class_name, index = "forget", "church", (i // 2) % len(forget)
                prompt = forget[index]
            else:
                class_name, prompts = unrelated[(i // 2) % len(unrelated)]
                prompt_set, index, prompt = "unrelated", 0, prompts[0]
            seed = i
            path = root / "images" / method / f"{prompt_set}_{class_name}_{index}_{seed}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            smooth_image(rng, size).save(path)
            rows.append(
                {
                    "method": method,
                    "prompt_set": prompt_set,
                    "class_name": class_name,
                    "prompt_index": index,
                    "seed": seed,
                    "prompt": prompt,
                    "path": str(path),
                }
            )
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    models = load_models_config(make_tiny(root / "tiny"))
    out = root / "runs" / "run"
    evaluate(task, manifest, out, models, EvaluationOptions(layout="manifest", progress=False))
    return out


def render_time(html: Path, chromium: str, repeats: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            start = time.perf_counter()
            page.goto(html.resolve().as_uri(), wait_until="load")
            page.wait_for_function(
                "Array.from(document.querySelectorAll('img[data-img]'))"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            times.append(time.perf_counter() - start)
            page.close()
        browser.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="images in the run (3 methods)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = build_run(Path(tmp), args.images, args.size)
        start = time.perf_counter()
        html, problems = render_html(load_report_data(run_dir))
        build_seconds = time.perf_counter() - start
        path = run_dir / "report.html"
        path.write_text(html, encoding="utf-8")
        size_mb = path.stat().st_size / 1e6
        print(f"images: {args.images} ({len(METHODS)} methods, {args.size}px)")
        print(f"report size: {size_mb:.2f} MB (target <= 15 MB)")
        print(f"report build: {build_seconds:.2f} s")
        if problems:
            print(f"problems: {problems}")
        if not Path(args.chromium).exists():
            print(f"render time: skipped, no chromium at {args.chromium}")
            return 0
        times = render_time(path, args.chromium, args.repeats)
        print(
            "render time in Chromium (load + all images decoded): "
            + ", ".join(f"{t:.2f} s" for t in times)
            + f"; best {min(times):.2f} s (target <= 3 s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
