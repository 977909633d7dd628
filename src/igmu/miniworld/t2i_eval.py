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
from igmu.miniworld.world import BACKGROUNDS, COLOURS, SHAPES, sample_scene

JUDGED_FACTORS = ("shape", "colour", "style", "attribute", "background")
JUDGE_EVAL_SEED = 424_242  # prompts and noise of the judge evaluation


def judge_prompts(n: int, seed: int = JUDGE_EVAL_SEED) -> list[tuple[str, dict[str, str]]]:
    """``n`` English prompts naming all five factors, with their labels, balanced over shapes,
    colours and backgrounds (a cycle of 48): "a red circle on a white background", "a blue cross
    with stripes in front of a grey background", "a dotted green square with a white spot on a
    black background" ..."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        scene = sample_scene(
            rng,
            shape=SHAPES[i % 4],
            colour=COLOURS[(i // 4) % 4],
            background=BACKGROUNDS[(i // 16) % 3],
        )
        draws = rng.random(2)
        wording = Wording(
            style_form="adj" if draws[0] < 0.5 else "with",
            background_form="on" if draws[1] < 0.5 else "in_front",
        )
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
    without: str | None = None,
) -> dict[str, Any]:
    """Generate ``n`` images for ``judge_prompts`` and score them with the MiniWorld judges:
    per factor, the share of images the judge reads as the requested value; ``all``: every
    factor right. Also per requested value, and the mean border-ring grey level per requested
    background (what the background rule reads).

    ``without`` (a target such as ``shape=cross``): the model was trained without that concept
    (RETRAIN). Accuracies are then over the prompts that do not ask for it, and ``concept``
    reports the prompts that do: how many, and the share of their images that show it anyway.
    """
    from igmu.miniworld.judge_background import ring_mask
    from igmu.miniworld.judges import Judge, default_judge_dir
    from igmu.miniworld.world import parse_target

    judge = judge or Judge(default_judge_dir())
    items = judge_prompts(n, seed)
    prompts = [p for p, _ in items]
    images = generate(
        pipeline, prompts, [seed + i for i in range(n)], guidance_scale, num_inference_steps
    )
    predicted = judge.predict(images)
    asks_concept = np.zeros(n, dtype=bool)
    report: dict[str, Any] = {}
    if without is not None:
        field, value = parse_target(without)
        asks_concept = np.asarray([labels[field] == value for _, labels in items])
        shown = [predicted[field][i] == value for i in range(n) if asks_concept[i]]
        report["concept"] = {
            "target": without,
            "n": len(shown),
            "residual": float(np.mean(shown)) if shown else None,
        }
    kept = [i for i in range(n) if not asks_concept[i]]
    correct = {
        f: np.asarray([predicted[f][i] == items[i][1][f] for i in kept]) for f in JUDGED_FACTORS
    }
    accuracy = {f: float(c.mean()) for f, c in correct.items()}
    accuracy["all"] = float(np.mean(np.all([correct[f] for f in JUDGED_FACTORS], axis=0)))
    by_value: dict[str, dict[str, float]] = {}
    for f in JUDGED_FACTORS:
        values = sorted({items[i][1][f] for i in kept})
        by_value[f] = {
            v: float(
                np.mean([c for c, i in zip(correct[f], kept, strict=True) if items[i][1][f] == v])
            )
            for v in values
        }
    ring = ring_mask()
    border = {
        b: float(np.mean([images[i][ring].mean() for i in kept if items[i][1]["background"] == b]))
        for b in sorted({items[i][1]["background"] for i in kept})
    }
    return {
        "n": len(kept),
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "accuracy": accuracy,
        "by_value": by_value,
        "border_mean_by_background": border,
        **report,
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
    otherwise). A RETRAIN folder (``world.without`` set) is judged on the prompts without its
    concept, with the concept's residual alongside."""
    folder = Path(folder)
    pipeline = load_pipeline(folder)
    path = folder / METADATA
    metadata = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    judges = metadata.setdefault("judges", {})
    for guidance in guidance_scales:
        started = time.time()
        report = judge_accuracy(
            pipeline,
            n=n,
            guidance_scale=guidance,
            num_inference_steps=num_inference_steps,
            without=(metadata.get("world") or {}).get("without"),
        )
        report["seconds"] = round(time.time() - started, 1)
        key = f"guidance_{guidance:g}"
        if num_inference_steps != DEFAULT_STEPS:
            key += f"_steps_{num_inference_steps}"
        judges[key] = report
        log(f"[t2i] judges, {key}: {json.dumps(report['accuracy'])}")
    write_metadata(folder, metadata)
    return metadata
