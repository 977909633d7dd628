"""DataIGM on the MiniWorld, with the truth (the figures in docs/design/dataigm.md).

1. `igmu data build` of a mini task with the shipped text-to-image model, `igmu detectors train`
   of a CLIP head on the shipped tiny CLIP, `igmu detectors audit` of the head and of the shipped
   judge on the held-out test split.
2. A deliberately biased judge: the trained head with its threshold raised so that it misses
   about --miss of the concept images of the val split. It is audited at that threshold on a
   DataIGM built by the MiniWorld renderer (`--oracle`, exact labels), and then scores the forget
   images of ORG and of PARTIAL, an eraser that removes the concept from a known share of images
   (the renderer draws both, so the true residual rate is known exactly). `igmu evaluate` reports
   the raw and the corrected residual rate; the script says which interval covers the truth.

    python benchmarks/dataigm_miniworld.py --work DIR [--task mini_object] [--images-per-prompt 4]

Every step is a CLI command (printed) and is cached: a rerun into the same DIR reuses images,
features and detector outputs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

TARGETS = {"mini_object": "shape=cross", "mini_style": "style=stripes",
           "mini_attribute": "attribute"}


def igmu(*args: object) -> str:
    command = [sys.executable, "-m", "igmu.cli.main", *map(str, args)]
    print("$ igmu " + " ".join(map(str, args)), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    print(done.stdout.rstrip() + f"\n  ({time.perf_counter() - started:.0f} s)", flush=True)
    return done.stdout


def partial_manifest(root: Path, task_name: str, target: str, keep: float, seeds: int) -> float:
    """ORG and PARTIAL on the task's forget prompts, drawn by the renderer at seeds 1000+."""
    from PIL import Image

    from igmu.miniworld.oracle import oracle_image
    from igmu.tasks import load_task

    rows, present = [], []
    class_name, prompts = load_task(task_name).prompt_set("forget").classes[0]
    for j, prompt in enumerate(prompts):
        for s in range(seeds):
            for method in ("ORG", "PARTIAL"):
                kept = zlib.crc32(f"{j}-{s}".encode()) % 1000 < keep * 1000
                erase = method == "PARTIAL" and not kept
                path = root / method / f"{j}_{s}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(oracle_image(prompt, 1000 + s, without=target if erase else None)
                                ).save(path)
                rows.append({"method": method, "prompt_set": "forget", "class_name": class_name,
                             "prompt_index": j, "seed": 1000 + s, "prompt": prompt,
                             "path": str(path.relative_to(root))})
                if method == "PARTIAL":
                    present.append(not erase)
    task = load_task(task_name)
    if task.reference == "stripped":  # attribute tasks pair with ORG on the stripped prompts
        for j, prompt in enumerate(task.prompt_set("stripped").classes[0][1]):
            for s in range(seeds):
                path = root / "ORG-stripped" / f"{j}_{s}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(oracle_image(prompt, 1000 + s)).save(path)
                rows.append({"method": "ORG", "prompt_set": "stripped", "class_name": class_name,
                             "prompt_index": j, "seed": 1000 + s, "prompt": prompt,
                             "path": str(path.relative_to(root))})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return float(np.mean(present))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--task", default="mini_object", choices=sorted(TARGETS))
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--miss", type=float, default=0.3, help="share the biased judge misses")
    parser.add_argument("--keep", type=float, default=0.5, help="PARTIAL keeps the concept in")
    parser.add_argument("--eval-seeds", type=int, default=2)
    args = parser.parse_args()
    work, task, target = args.work, args.task, TARGETS[args.task]
    data, oracle_data = work / "data" / task, work / "data" / f"{task}-oracle"
    head, ws = work / "detectors" / f"{task}-head", work / "ws"
    summary: dict = {"task": task}

    igmu("data", "build", "--task", task, "--out", data, "--images-per-prompt",
         args.images_per_prompt, "--quiet")
    igmu("detectors", "train", "--data", data, "--out", head, "--store", ws / "igmu.sqlite",
         "--quiet")
    igmu("detectors", "audit", "--detector", head, "--data", data, "--out", ws / "audit-head",
         "--quiet")
    igmu("detectors", "audit", "--detector", f"mini_judge:{target}", "--data", data,
         "--out", ws / "audit-judge", "--quiet")
    card = json.loads((head / "detector.json").read_text())
    summary["head"] = {s: card["metrics"][s]["accuracy"] for s in card["metrics"]}
    summary["data_disagreements"] = len(json.loads((data / "datacard.json").read_text())
                                        ["disagreements"])
    for name in ("audit-head", "audit-judge"):
        audit = json.loads((ws / name / "audit.json").read_text())
        summary[name] = {k: audit["metrics"][k] for k in
                         ("accuracy", "recall", "specificity", "roc_auc", "ece")}

    # The biased judge: threshold at the --miss quantile of P(concept) on val concept images.
    from igmu.backbones.clip import ClipBackbone
    from igmu.dataset.dataigm import read_dataigm
    from igmu.detectors.clip_head import ClipHeadDetector
    from igmu.workflows.features import clip_features

    dataset = read_dataigm(data)
    backbone = ClipBackbone.from_reference(card["backbone"]["reference"], "CLIP", "backbone")
    detector = ClipHeadDetector(backbone, "h", str(head / "head.safetensors"), 1, 0.5)
    concept_val = [r for r in dataset.split("val") if r["label"] == 1]
    probs = detector.probabilities(clip_features(backbone, concept_val, ws / "igmu.sqlite",
                                                 progress=False))
    threshold = float(np.quantile(probs, args.miss))
    summary["biased_threshold"] = threshold
    igmu("data", "build", "--task", task, "--out", oracle_data, "--oracle", "--images-per-prompt",
         2, "--split", "0,0,1", "--quiet")
    igmu("detectors", "audit", "--detector", head, "--data", oracle_data, "--threshold",
         threshold, "--out", ws / "audit-biased", "--quiet")
    biased = json.loads((ws / "audit-biased" / "audit.json").read_text())["metrics"]
    summary["audit-biased"] = {k: biased[k] for k in ("recall", "specificity")}

    truth = partial_manifest(work / "eval", task, target, args.keep, args.eval_seeds)
    models = work / "models-biased.yaml"
    models.write_text(json.dumps({"clip_detector": card["backbone"]["reference"],
                                  "clip_score": card["backbone"]["reference"],
                                  "heads": {"biased": str(head.resolve())},
                                  "detectors": {"clip_head": {"threshold": threshold}}}))
    igmu("evaluate", "--task", task, "--images", work / "eval" / "manifest.jsonl", "--layout",
         "manifest", "--out", ws / "run-biased", "--models", models, "--detectors",
         "clip_head:biased", "--metrics", "residual_rate,residual_rate_corrected", "--quiet")
    import csv

    with open(ws / "run-biased" / "metrics.csv", newline="") as handle:
        rows = {(r["method"], r["metric"]): r for r in csv.DictReader(handle)}
    for method, true_rate in (("ORG", 1.0), ("PARTIAL", truth)):
        entry = {"truth": true_rate}
        for metric in ("residual_rate", "residual_rate_corrected"):
            r = rows[(method, f"{metric}.clip_head:biased")]
            low, high = float(r["ci_low"]), float(r["ci_high"])
            entry[metric] = {"value": float(r["value"]), "ci": [low, high], "n": int(r["n"]),
                             "covers_truth": low <= true_rate <= high}
        summary[f"biased_{method}"] = entry
    print(json.dumps(summary, indent=2))
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
