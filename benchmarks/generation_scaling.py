"""Images/s of the MiniWorld generation with 1 and 2 Ray workers, and the projected GPU figure.

Each run is the Ray backend of `igmu generate` on a fresh local cluster: `RayRunner` (workers
load the shipped MiniWorld model with the same factory as `igmu generate`), the engine's batch
plan, PNGs written by the driver into a fresh cache. Worker start-up (cluster, model load) and one
warm-up batch per worker are timed apart; the timed region is `RayRunner.run` over the job list.
A local single-process run at the same thread count is the baseline, and all runs must give the
same bytes.

Scaling efficiency e = images/s(2 workers) / (2 x images/s(1 worker)). The projected figure for N
GPUs is N x e x (one GPU's images/s), with one GPU's figure from
``benchmarks/generation_throughput.py`` on a GPU (``--gpu-images-per-s``); on a 2-core machine
shared with other work e is a floor, not an estimate, since two CPU workers compete for cores.

Run: python benchmarks/generation_scaling.py [--images 96] [--gpu-images-per-s X]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / "images").rglob("*.png"))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gpu-images-per-s", type=float, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    from igmu.backbones.config import load_models_config
    from igmu.generation.cache import ImageCache
    from igmu.generation.engine import (
        DefaultFactory,
        GenerateOptions,
        batch_plan,
        run_batches_locally,
    )
    from igmu.generation.plan import SettingOverrides, base_settings, plan_jobs, resolve_method
    from igmu.generation.ray_backend import RayRunner
    from igmu.tasks import load_task

    torch.set_num_threads(1)
    task = load_task("mini_object")
    models = load_models_config(None, task)
    settings = base_settings(models, SettingOverrides())
    spec = resolve_method("ORG", task, models, settings)
    per_class = min(60, args.images)
    jobs = plan_jobs(task, "ORG", ["forget"], -(-args.images // per_class), per_class)
    n, batch = len(jobs), args.batch_size
    factory = DefaultFactory("cpu", batch)
    work = Path(tempfile.mkdtemp(prefix="igmu_scaling_"))
    figures: dict[str, Any] = {
        "images": n, "batch_size": batch, "steps": settings.num_inference_steps,
        "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
    }

    t0 = time.perf_counter()
    generator = factory(spec.pipeline_source, spec.field)
    warm = jobs[:batch]
    generator.generate([j.prompt for j in warm], [j.seed for j in warm], settings)
    startup = time.perf_counter() - t0
    batches, keys = batch_plan(jobs, batch, generator.fingerprint, settings, False)
    t0 = time.perf_counter()
    run_batches_locally(generator, jobs, batches, keys, settings, ImageCache(work / "local"),
                        lambda *a: None)
    elapsed = time.perf_counter() - t0
    figures["local_1_thread"] = {"images_per_s": round(n / elapsed, 3),
                                 "startup_s": round(startup, 2)}
    reference = tree(work / "local")
    del generator

    for workers in (1, 2):
        options = GenerateOptions(methods=["ORG"], batch_size=batch, backend="ray",
                                  workers=workers, worker_threads=1)
        t0 = time.perf_counter()
        runner = RayRunner(factory, spec.pipeline_source, spec.field, options)
        runner.ray.get([w.generate.remote([j.prompt for j in warm], [j.seed for j in warm],
                                          settings.as_dict()) for w in runner.workers])
        startup = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            runner.run(jobs, batches, keys, settings, ImageCache(work / f"ray{workers}"),
                       lambda *a: None)
            elapsed = time.perf_counter() - t0
        finally:
            runner.close()
        figures[f"ray_{workers}_workers"] = {
            "images_per_s": round(n / elapsed, 3), "startup_s": round(startup, 2),
            "identical_to_local": tree(work / f"ray{workers}") == reference,
        }
    one, two = figures["ray_1_workers"]["images_per_s"], figures["ray_2_workers"]["images_per_s"]
    efficiency = two / (2 * one)
    figures["scaling_efficiency_2_workers"] = round(efficiency, 3)
    if args.gpu_images_per_s:
        figures["projected_images_per_s"] = {
            f"{g}_gpus": round(g * efficiency * args.gpu_images_per_s, 1) if g > 1
            else args.gpu_images_per_s for g in (1, 2, 4, 8)
        }
    figures["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
