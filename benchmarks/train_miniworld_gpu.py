"""Train the MiniWorld's ORG and RETRAIN text-to-image models on one GPU and collect them for
shipping.

Each model is one invocation of ``python -m igmu.miniworld.train_t2i`` (the full schedule, the
shipped tiny CLIP kept, the judge evaluation at the end), run as parallel processes on the one
GPU (they are launch-bound: a 1.7M-parameter UNet leaves the GPU idle most of the time) or one
after the other (``--sequential``). The results are laid out as the package wants them::

    OUT/weights/t2i/                    ORG: the whole world (copy to igmu/miniworld/weights/t2i)
    OUT/weights/retrain/<task>/         RETRAIN for <task> (to igmu/miniworld/weights/retrain/)
    OUT/logs/<model>.log                each run's log
    OUT/summary.json                    per model: steps, seconds, judge figures, concept residual

Usage (GPU)::

    bash benchmarks/train_miniworld_gpu.sh OUT
    python benchmarks/train_miniworld_gpu.py --out OUT [--tasks mini_object,...] [--sequential]

CPU check of the logic (about a minute; the CI schedule, or ``--steps N`` on the full one)::

    bash benchmarks/train_miniworld_gpu.sh /tmp/x --device cpu --short --eval-images 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = ("mini_object", "mini_style", "mini_attribute")
ROOT = Path(__file__).resolve().parents[1]


def preflight(device: str) -> dict:
    """Versions and the device, checked before anything starts (a missing wheel fails here)."""
    import diffusers
    import numpy
    import PIL
    import safetensors
    import scipy
    import torch
    import transformers
    import yaml

    import igmu.miniworld.t2i_training  # noqa: F401  (igmu and what training imports)

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy, scipy, pillow, pyyaml, safetensors": [
            numpy.__version__,
            scipy.__version__,
            PIL.__version__,
            yaml.__version__,
            safetensors.__version__,
        ],
        "device": device,
    }
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA GPU")
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    from igmu.miniworld.clip_train import default_clip_dir

    clip = default_clip_dir()
    if not (clip / "config.json").is_file():
        raise SystemExit(f"no shipped tiny CLIP at {clip}: run from an igmu checkout")
    info["clip"] = str(clip)
    return info


def command(name: str, work: Path, args: argparse.Namespace, clip: str) -> list[str]:
    cmd = [sys.executable, "-m", "igmu.miniworld.train_t2i", "--out", str(work / name)]
    cmd += ["--clip", clip, "--device", args.device, "--seed", str(args.seed)]
    cmd += ["--eval-images", str(args.eval_images), "--render-workers", str(args.render_workers)]
    cmd += ["--threads", str(args.threads)]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    if args.short:
        cmd.append("--short")
    if name != "org":
        cmd += ["--retrain-without", name.removeprefix("retrain_")]
    return cmd


def run_all(names: list[str], work: Path, logs: Path, args: argparse.Namespace, clip: str) -> dict:
    """Start the runs (all at once, or one by one); stop what is left at the deadline."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    env["OMP_NUM_THREADS"] = str(args.threads)
    # A GPU session's budget bounds a cuda run; a CPU run takes its hour unless told otherwise.
    limit = args.deadline if args.deadline is not None else (
        420.0 if str(args.device).startswith("cuda") else float("inf"))
    deadline = time.time() + limit
    results: dict[str, dict] = {}
    pending = list(names)
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    while pending or running:
        if pending and time.time() > deadline:
            for name in pending:  # never started: no time left
                results[name] = {"returncode": None, "skipped": "deadline"}
                print(f"{name}: not started (deadline)", flush=True)
            pending.clear()
        while pending and (not args.sequential or not running):
            name = pending.pop(0)
            handle = open(logs / f"{name}.log", "w", encoding="utf-8")  # noqa: SIM115
            process = subprocess.Popen(
                command(name, work, args, clip), stdout=handle, stderr=subprocess.STDOUT, env=env
            )
            running[name] = (process, time.time(), handle)
            print(f"started {name} (pid {process.pid})", flush=True)
        time.sleep(1)
        for name, (process, started, handle) in list(running.items()):
            code = process.poll()
            if code is None and time.time() > deadline:
                # The pipeline folder of the last checkpoint (every 500 steps) stays.
                process.send_signal(signal.SIGTERM)
                try:
                    code = process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait()
            if code is not None:
                handle.close()
                results[name] = {"returncode": code, "wall_s": round(time.time() - started, 1)}
                print(f"{name}: exit {code} after {results[name]['wall_s']} s", flush=True)
                del running[name]
    return results


def summarise(name: str, folder: Path) -> dict:
    path = folder / "igmu_t2i.json"
    if not path.is_file():
        return {"error": f"no {path}"}
    metadata = json.loads(path.read_text(encoding="utf-8"))
    judges = {
        key: {
            "accuracy": report["accuracy"],
            "border_mean_by_background": report.get("border_mean_by_background"),
            "concept": report.get("concept"),
        }
        for key, report in metadata.get("judges", {}).items()
    }
    return {
        "world": metadata.get("world"),
        "steps_done": metadata.get("steps_done"),
        "steps": metadata.get("train", {}).get("steps"),
        "train_seconds": metadata.get("train_seconds"),
        "seconds_per_step": metadata.get("seconds_per_step"),
        "probe_loss": [metadata.get("probe_loss_before"), metadata.get("probe_loss_after_ema")],
        "judges": judges,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--out", type=Path, required=True, help="where weights/, logs/, summary.json go")
    add("--device", default="cuda", help="cuda (default), or cpu for a check of the logic")
    add("--tasks", default=",".join(TASKS), help="RETRAIN tasks, comma-separated ('' for none)")
    add("--no-org", action="store_true", help="skip ORG (RETRAIN only)")
    add("--steps", type=int, default=None, help="override the schedule's steps (CPU check)")
    add("--short", action="store_true", help="the CI schedule (a CPU check of the logic)")
    add("--eval-images", type=int, default=192, help="prompts per guidance scale, judge eval")
    add("--seed", type=int, default=0)
    add("--sequential", action="store_true", help="one model at a time")
    add("--threads", type=int, default=2, help="torch CPU threads per run (1 on a small CPU)")
    add("--render-workers", type=int, default=3, help="processes rendering each run's pool")
    add("--deadline", type=float, default=None,
        help="seconds before unfinished runs stop (default 420 on cuda, none on cpu)")
    add("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)

    started = time.time()
    tasks = [t for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; choose among {', '.join(TASKS)}")
    names = ([] if args.no_org else ["org"]) + [f"retrain_{t}" for t in tasks]
    if not names:
        parser.error("nothing to train")
    info = preflight(args.device)
    print(json.dumps(info), flush=True)
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    scratch = None
    if args.work is None:
        scratch = tempfile.TemporaryDirectory(prefix="igmu-mw-gpu-")
        work = Path(scratch.name)
    else:
        work = args.work
    try:
        runs = run_all(names, work, logs, args, info["clip"])
        summary = {"environment": info, "models": {}}
        for name in names:
            folder = work / name / "t2i"
            target = args.out / "weights" / ("t2i" if name == "org" else f"retrain/{name[8:]}")
            entry = {**runs.get(name, {}), **summarise(name, folder)}
            if (folder / "model_index.json").is_file():
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(folder, target)
                entry["folder"] = str(target.relative_to(args.out))
            summary["models"][name] = entry
    finally:
        if scratch is not None:
            scratch.cleanup()
    summary["wall_s"] = round(time.time() - started, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for name, entry in summary["models"].items():
        judged = entry.get("judges", {}).get("guidance_2", {})
        print(
            f"{name}: exit {entry.get('returncode')}, {entry.get('steps_done')} steps, "
            f"{entry.get('seconds_per_step')} s/step; guidance 2: "
            f"{json.dumps(judged.get('accuracy'))}; concept {json.dumps(judged.get('concept'))}"
        )
    print(f"total {summary['wall_s']} s; summary in {args.out / 'summary.json'}")
    failed = [n for n, e in summary["models"].items() if e.get("returncode") != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
