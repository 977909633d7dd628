"""Judging a MiniWorld text-to-image model: generate images for known prompts, read them back
with the judges, per factor and per requested value."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from igmu.miniworld.captions import Wording, describe
from igmu.miniworld.t2i_model import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    METADATA,
    load_pipeline,
    write_metadata,
)
from igmu.miniworld.world import sample_scene

JUDGED_FACTORS = ("shape", "colour", "style", "attribute")
JUDGE_EVAL_SEED = 424_242  # prompts and noise of the judge evaluation


def judge_prompts(n: int, seed: int = JUDGE_EVAL_SEED) -> list[tuple[str, dict[str, str]]]:
    """``n`` English prompts with their labels, balanced over shapes and colours: "a red
    circle", "a blue cross with stripes", "a dotted green square with a white spot" ..."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        scene = sample_scene(
            rng,
            shape=("circle", "square", "triangle", "cross")[i % 4],
            colour=("red", "green", "blue", "yellow")[(i // 4) % 4],
        )
        wording = Wording(style_form="adj" if rng.random() < 0.5 else "with", background_form=None)
        labels = scene.labels()
        prompts.append((describe(scene, "en", wording), {f: labels[f] for f in JUDGED_FACTORS}))
    return prompts


def generate(
    pipeline: Any,
    prompts: list[str],
    seeds: list[int],
    guidance_scale: float = DEFAULT_GUIDANCE,
    num_inference_steps: int = DEFAULT_STEPS,
    batch: int = 32,
) -> list[np.ndarray]:
    """uint8 images, one CPU generator per image (so an image depends on its seed alone)."""
    import torch

    from igmu.generation.base import to_uint8_images

    images: list[np.ndarray] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch]]
        out = pipeline(
            prompt=chunk,
            generator=generators,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            output_type="np",
        )
        images += to_uint8_images(out.images)
    return images


def judge_accuracy(
    pipeline: Any,
    n: int = 192,
    guidance_scale: float = DEFAULT_GUIDANCE,
    num_inference_steps: int = DEFAULT_STEPS,
    judge: Any = None,
    seed: int = JUDGE_EVAL_SEED,
) -> dict[str, Any]:
    """Generate ``n`` images for ``judge_prompts`` and score them with the MiniWorld judges:
    per factor, the share of images the judge reads as the requested value; ``all``: every
    factor right. Also per requested value."""
    from igmu.miniworld.judges import Judge, default_judge_dir

    judge = judge or Judge(default_judge_dir())
    items = judge_prompts(n, seed)
    prompts = [p for p, _ in items]
    images = generate(
        pipeline, prompts, [seed + i for i in range(n)], guidance_scale, num_inference_steps
    )
    predicted = judge.predict(images)
    correct = {
        f: np.asarray([predicted[f][i] == items[i][1][f] for i in range(n)]) for f in JUDGED_FACTORS
    }
    accuracy = {f: float(c.mean()) for f, c in correct.items()}
    accuracy["all"] = float(np.mean(np.all([correct[f] for f in JUDGED_FACTORS], axis=0)))
    by_value: dict[str, dict[str, float]] = {}
    for f in JUDGED_FACTORS:
        values = sorted({labels[f] for _, labels in items})
        by_value[f] = {
            v: float(np.mean([correct[f][i] for i in range(n) if items[i][1][f] == v]))
            for v in values
        }
    return {
        "n": n,
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "accuracy": accuracy,
        "by_value": by_value,
        "judge": getattr(judge, "fingerprint", None),
    }


def evaluate_folder(
    folder: str | Path,
    guidance_scales: tuple[float, ...] = (1.5, 2.0, 3.0),
    num_inference_steps: int = DEFAULT_STEPS,
    n: int = 192,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Judge a pipeline folder at several guidance scales; merge into its ``igmu_t2i.json``
    (``judges``, keyed ``guidance_<g>`` at the default steps, ``guidance_<g>_steps_<s>``
    otherwise)."""
    folder = Path(folder)
    pipeline = load_pipeline(folder)
    path = folder / METADATA
    metadata = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    judges = metadata.setdefault("judges", {})
    for guidance in guidance_scales:
        started = time.time()
        report = judge_accuracy(
            pipeline, n=n, guidance_scale=guidance, num_inference_steps=num_inference_steps
        )
        report["seconds"] = round(time.time() - started, 1)
        key = f"guidance_{guidance:g}"
        if num_inference_steps != DEFAULT_STEPS:
            key += f"_steps_{num_inference_steps}"
        judges[key] = report
        log(f"[t2i] judges, {key}: {json.dumps(report['accuracy'])}")
    write_metadata(folder, metadata)
    return metadata
