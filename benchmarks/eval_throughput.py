"""Throughput of a full igmu evaluation vs a naive per-metric pipeline, with real-size networks.

Everything is offline and seeded: a real-size CLIP ViT-B/32 (random weights, saved with
save_pretrained), random IGMU detector heads, LPIPS with a random AlexNet backbone, and
(optionally) a random FID Inception-v3. The images are smooth random 512x512 PNGs laid out as
the IGMU folders of the ``church`` task (forgot/ and unrelated/) for ORG and two methods.

Pipelines timed (both build their networks inside the timed region, once per network):

* igmu cold: ``igmu.evaluation.engine.evaluate`` on a fresh store (empty feature cache);
* igmu warm: the same call again on the same store (every network output cached);
* naive: what the official scripts do. Each metric separately re-reads and re-decodes (PIL) every
  image it needs, runs its backbone on one image at a time, shares no features between metrics
  and caches nothing. It uses the same igmu backbone classes (ClipBackbone, ClipHeadDetector,
  LpipsBackbone, InceptionBackbone) and the same aggregate maths, so only orchestration differs;
  the script checks that both pipelines give the same metric values.

Run: python benchmarks/eval_throughput.py [--images-per-set 8] [--fid clip|inception]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from contention import busy_processes
from PIL import Image

METHODS = ("ORG", "ESD", "UCE")
TASK = "church"
IMAGE_SIDE = 512


# --------------------------------------------------------------------------------------------
# Setup: real-size random models and an IGMU image folder
# --------------------------------------------------------------------------------------------


def make_models(folder: Path, fid_kind: str, seed: int) -> tuple[Path, dict[str, Any]]:
    from igmu.testing.tiny import (
        make_random_alexnet_features,
        make_random_clip_b32,
        make_random_inception,
        make_tiny_heads,
    )

    folder.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, Any] = {}
    clip_dir = folder / "clip-vit-b32-random"
    sizes["clip_params"] = make_random_clip_b32(clip_dir, seed)
    heads = make_tiny_heads(folder / "heads", seed)
    alex = folder / "alexnet_features.safetensors"
    make_random_alexnet_features(alex, seed)
    fid: dict[str, Any] = {"kind": "clip", "model": str(clip_dir)}
    if fid_kind == "inception":
        weights = folder / "inception_fid_random.safetensors"
        sizes["inception_params"] = make_random_inception(weights, seed)
        fid = {"kind": "inception", "weights": str(weights)}
    models = {
        "clip_detector": str(clip_dir),
        "clip_score": str(clip_dir),
        "fid": fid,
        "lpips": {"net": "alex", "backbone_weights": str(alex)},
        "heads": heads,
        "person": {"kind": "hog"},
    }
    path = folder / "models.yaml"
    header = "# RANDOM real-size models (benchmarks/eval_throughput.py); scores mean nothing.\n"
    path.write_text(header + yaml.safe_dump(models, sort_keys=False), encoding="utf-8")
    return path, sizes


def smooth_image(rng: np.random.Generator, side: int, noise: float) -> Image.Image:
    """Low-frequency noise upsampled to side x side, plus a little pixel noise (PNG-realistic)."""
    coarse = rng.random((8, 8, 3)) * 255.0
    base = Image.fromarray(coarse.astype(np.uint8)).resize((side, side), Image.BICUBIC)
    pixels = np.asarray(base, dtype=np.float32)
    if noise:
        pixels = pixels + rng.normal(0.0, noise, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def key_names(count: int, classes: list[tuple[str, list[str]]]) -> list[tuple[int, int, int]]:
    """(class index, prompt index, seed) for ``count`` keys, spread round-robin over classes."""
    keys = []
    for i in range(count):
        class_index = i % len(classes)
        slot = i // len(classes)
        prompts = len(classes[class_index][1])
        keys.append((class_index, slot % prompts, slot // prompts))
    return keys


def make_images(root: Path, task: Any, per_set: int, seed: int, noise: float) -> list[Path]:
    rng = np.random.default_rng(seed)
    forget = task.prompt_set("forget").classes
    unrelated = task.prompt_set("unrelated").classes
    written = []
    for method in METHODS:
        for c, j, k in key_names(per_set, forget[:1]):
            path = root / "forgot" / method / f"{c}_{j}_{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            smooth_image(rng, IMAGE_SIDE, noise).save(path)
            written.append(path)
        for c, j, k in key_names(per_set, unrelated):
            path = root / "unrelated" / method / unrelated[c][0] / f"{c}_{j}_{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            smooth_image(rng, IMAGE_SIDE, noise).save(path)
            written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# The naive per-metric pipeline
# --------------------------------------------------------------------------------------------


@dataclass
class NaiveStats:
    decodes: int = 0
    image_forwards: dict[str, int] = field(default_factory=dict)
    text_forwards: int = 0
    text_seconds: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, in order
    _clock: float = field(default_factory=time.perf_counter)

    def forward(self, what: str, n: int = 1) -> None:
        self.image_forwards[what] = self.image_forwards.get(what, 0) + n

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self._clock
        self._clock = now


def read_pil(path: str, stats: NaiveStats) -> np.ndarray:
    """Open, decode and convert one file, every time it is needed (no cache)."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    stats.decodes += 1
    return pixels


def naive_pipeline(task: Any, images: Path, models: Any, stats: NaiveStats) -> dict:
    """Each metric on its own: its own file reads, decodes and forwards, batch size 1."""
    from igmu.backbones.clip import ClipBackbone
    from igmu.backbones.lpips_net import LpipsBackbone
    from igmu.backbones.resolve import ResolvedModel
    from igmu.detectors.clip_head import ClipHeadDetector, resolve_head
    from igmu.evaluation.engine import read_records
    from igmu.evaluation.executor import _resize
    from igmu.evaluation.pairing import pair_images
    from igmu.metrics import functional as F
    from igmu.metrics.base import mean_result, prompt_of, rate_result, reference_pairs
    from igmu.metrics.clip_score import scored_text
    from igmu.metrics.fid import primary_set
    from igmu.metrics.functional import paired_frechet_interval

    def clip(reference: str, role: str) -> ClipBackbone:
        # Official scripts load from a folder without fingerprinting the weights.
        location = str(Path(reference).resolve())
        return ClipBackbone(ResolvedModel(reference, location, "0" * 64), role)

    # Networks: each built once (the official scripts would even load them once per script).
    detector_clip = clip(models.get("clip_detector"), "naive detector CLIP")
    head_path, concept_index = resolve_head(models, task.igmu_key)
    detector = ClipHeadDetector(detector_clip, task.igmu_key, head_path, concept_index, 0.5)
    score_clip = (
        detector_clip
        if models.get("clip_score") == models.get("clip_detector")
        else clip(models.get("clip_score"), "naive CLIP score")
    )
    fid_config = models.get("fid")
    if fid_config.get("kind") == "clip":
        fid_model = fid_config.get("model") or models.get("clip_detector")
        fid_net = (
            detector_clip
            if fid_model == models.get("clip_detector")
            else clip(fid_model, "naive FID CLIP")
        )
    else:
        from igmu.backbones.inception import InceptionBackbone

        fid_net = InceptionBackbone(fid_config.get("weights"))
    lpips_config = models.get("lpips")
    lpips_net = LpipsBackbone(lpips_config.get("net", "alex"), lpips_config.get("backbone_weights"))

    paired = pair_images(read_records(task, images, "igmu"), task, "ORG", False)
    resamples = int(task.guidance.get("bootstrap_resamples", 1000))
    seed = 0
    primary = primary_set(task)
    values: dict[tuple[str, str], float] = {}
    stats.lap("load networks, list images")

    # residual_rate: detector CLIP + head, one image at a time.
    name = f"residual_rate.{detector.name}"
    for method in paired.methods:
        flags = []
        for rec in paired.records(method, "forget"):
            raw = detector.analyse([read_pil(rec.path, stats)])[0]
            stats.forward("clip(detector)")
            flags.append(_Sample(float(detector.verdict(raw).flagged), rec))
        if flags:
            values[(name, method)] = (
                rate_result(_Metric(name, "forgetting", False), method, flags).aggregate.value
            )
    stats.lap("residual_rate")

    def image_text(path: str, text: str) -> float:
        image = score_clip.image_embeddings([read_pil(path, stats)])
        start = time.perf_counter()
        words = score_clip.text_embeddings([text])
        stats.text_seconds += time.perf_counter() - start
        stats.forward("clip(score)")
        stats.text_forwards += 1
        return float(F.clip_score(image, words)[0])

    # clip_score: each image against its prompt (image and text encoded per image).
    for method in paired.methods:
        samples = [
            _Sample(image_text(rec.path, scored_text(paired, task, rec)), rec)
            for rec in paired.records(method, primary)
        ]
        if samples:
            result = mean_result(_Metric("clip_score", "alignment", True), method, samples)
            values[("clip_score", method)] = result.aggregate.value
    stats.lap("clip_score")

    # csdr: the reference and the method image re-encoded for every pair.
    for method in paired.methods:
        samples = []
        for ref, rec in reference_pairs(paired, task, primary, method):
            text = scored_text(paired, task, rec)
            ref_score, own_score = image_text(ref.path, text), image_text(rec.path, text)
            samples.append(_Sample(float(F.csdr([ref_score], [own_score])[0]), rec))
        if samples:
            result = mean_result(_Metric("csdr", "alignment", False), method, samples)
            values[("csdr", method)] = result.aggregate.value
    stats.lap("csdr")

    # fid: features of both sets recomputed per method, one image at a time.
    for method in paired.methods:
        pairs = reference_pairs(paired, task, primary, method)
        if len(pairs) < 2:
            continue
        refs, own = [], []
        for ref, rec in pairs:
            refs.append(fid_net.image_embeddings([read_pil(ref.path, stats)])[0])
            own.append(fid_net.image_embeddings([read_pil(rec.path, stats)])[0])
            stats.forward("fid", 2)
        refs_arr, own_arr = np.stack(refs), np.stack(own)
        values[("fid", method)] = F.frechet_distance(refs_arr, own_arr)
        clusters = [prompt_of(rec) for _, rec in pairs]
        paired_frechet_interval(refs_arr, own_arr, clusters, min(resamples, 200), seed)
    stats.lap("fid")

    # lpips: the official loop, one pair per forward.
    for method in paired.methods:
        pairs = reference_pairs(paired, task, primary, method)
        if not pairs:
            continue
        samples = []
        for ref, rec in pairs:
            first, second = read_pil(ref.path, stats), read_pil(rec.path, stats)
            if second.shape != first.shape:
                second = _resize(second, first.shape)
            samples.append(_Sample(float(lpips_net.distances([first], [second])[0]), rec))
            stats.forward("lpips(pair)")
        groups = [s.record.key.class_name for s in samples]
        result = mean_result(
            _Metric("lpips", "preservation", False), method, samples, groups=groups
        )
        values[("lpips", method)] = result.aggregate.value
    stats.lap("lpips")
    return values


@dataclass(frozen=True)
class _Sample:
    value: float
    record: Any


@dataclass(frozen=True)
class _Metric:
    name: str
    aspect: str
    higher_is_better: bool


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def forget_loaded_models() -> None:
    """Each engine call loads its networks from disk, as a fresh `igmu evaluate` process would."""
    from igmu.backbones import clip

    clip._LOADED.clear()


@dataclass
class Timing:
    wall: float
    cpu: float  # process CPU time, all threads: less sensitive to other load on the machine


def timed(call):
    wall, cpu = time.perf_counter(), time.process_time()
    value = call()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), value


def run_engine(task: Any, images: Path, run_dir: Path, models: Any) -> tuple[Timing, Any]:
    from igmu.evaluation.engine import EvaluationOptions, evaluate

    forget_loaded_models()
    return timed(lambda: evaluate(task, images, run_dir, models, EvaluationOptions(progress=False)))


def profile_cold(task: Any, images: Path, run_dir: Path, models: Any, top: int) -> str:
    from igmu.evaluation.engine import EvaluationOptions, evaluate

    forget_loaded_models()
    profiler = cProfile.Profile()
    profiler.enable()
    evaluate(task, images, run_dir, models, EvaluationOptions(progress=False))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def engine_values(result: Any) -> dict[tuple[str, str], float]:
    return {(r.metric, r.method): float(r.value) for r in result.results}


def compare(engine: dict, naive: dict) -> tuple[int, float, list[str]]:
    problems = []
    worst = 0.0
    for key in sorted(set(engine) | set(naive)):
        if key not in engine or key not in naive:
            problems.append(f"{key} only in {'engine' if key in engine else 'naive'}")
            continue
        a, b = engine[key], naive[key]
        if np.isnan(a) and np.isnan(b):
            continue
        diff = abs(a - b) / max(1.0, abs(a))
        worst = max(worst, diff)
        if diff > 1e-3:
            problems.append(f"{key}: engine {a:.6g} vs naive {b:.6g}")
    return len(set(engine) & set(naive)), worst, problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Images/s of a full igmu evaluation (cold and warm cache) vs a naive per-metric "
            "pipeline, with real-size random networks (CLIP ViT-B/32, LPIPS alex, optional FID "
            "Inception-v3) on the church task. Offline and seeded."
        )
    )
    parser.add_argument(
        "--images-per-set",
        type=int,
        default=8,
        metavar="N",
        help="forget images and unrelated images per method (3 methods; default 8 -> 48 images)",
    )
    parser.add_argument(
        "--fid",
        choices=("clip", "inception"),
        default="clip",
        help="FID features: the shared CLIP (default) or a random torch-fidelity Inception-v3",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="interleaved repeats of cold/warm/naive; the best wall time is reported (1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and images")
    parser.add_argument(
        "--noise",
        type=float,
        default=6.0,
        help="pixel noise std added to the smooth images (PNG size/decode cost; default 6)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="N busy single-thread processes beside the timed runs: the contended case (0)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile one more cold evaluation (fresh store) and print the top functions",
    )
    parser.add_argument("--profile-top", type=int, default=15, help="rows of the profile (15)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep models/images here instead of a temp dir"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.images_per_set < 2:
        parser.error("--images-per-set must be >= 2 (FID needs two images per set)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)

    from igmu.backbones.config import load_models_config
    from igmu.tasks import load_task

    task = load_task(TASK)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="igmu-bench-") as tmp:
        work = args.workdir.resolve() if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        models_path, sizes = make_models(work / "models", args.fid, args.seed)
        images = work / "images" / TASK
        files = make_images(images, task, args.images_per_set, args.seed, args.noise)
        setup_s = time.perf_counter() - start
        models = load_models_config(models_path)
        n_images = len(files)
        mean_kb = np.mean([p.stat().st_size for p in files]) / 1024

        # Untimed warm-up: imports, page cache and first-call kernel set-up for every network,
        # on a separate tiny image set and store, so no timed pipeline pays them.
        warm_images = work / "warmup" / TASK
        make_images(warm_images, task, 2, args.seed + 1, args.noise)
        warmup, _ = run_engine(task, warm_images, work / "warmup-runs" / TASK, models)

        runs: dict[str, list[Timing]] = {"cold": [], "warm": [], "naive": []}
        naive_stats: list[NaiveStats] = []
        with busy_processes(args.busy):
            for repeat in range(args.repeats):  # interleaved, so background load hits all alike
                run_dir = work / "runs" / f"r{repeat}" / TASK  # a fresh store each repeat
                timing, cold = run_engine(task, images, run_dir, models)
                runs["cold"].append(timing)
                timing, warm = run_engine(task, images, run_dir, models)
                runs["warm"].append(timing)
                naive_stats.append(NaiveStats())
                timing, naive = timed(
                    lambda s=naive_stats[-1]: naive_pipeline(task, images, models, s)
                )
                runs["naive"].append(timing)
        profile = (
            profile_cold(task, images, work / "runs" / "profile" / TASK, models, args.profile_top)
            if args.profile
            else ""
        )

    load_after = os.getloadavg()[0]
    print("# igmu evaluation throughput (real-size random networks, offline)")
    print(
        f"machine: {platform.machine()} cpu_count={os.cpu_count()} "
        f"torch_threads={torch.get_num_threads()} torch={torch.__version__} "
        f"transformers={transformers.__version__} python={platform.python_version()}; "
        f"1-min load average {load_before:.1f} at start, {load_after:.1f} at end"
    )
    cpus = os.cpu_count() or 1
    if args.busy:
        print(f"CONTENDED: {args.busy} busy single-thread process(es) ran beside the timed runs")
    elif load_before > 0.5 * cpus or load_after > 1.5 * cpus:  # this process alone adds ~cpus
        print(
            "WARNING: other processes share the CPUs; wall times are inflated and noisy, and "
            "batch-1 inference on >1 torch thread suffers most (inflating the ratios). Use "
            "--repeats 3 on a quiet machine, or compare with --threads 1"
        )
    print(
        f"models: CLIP ViT-B/32 (CLIPConfig() defaults, 224px/32, proj 512, "
        f"{sizes['clip_params'] / 1e6:.1f}M params) for clip_head:{task.igmu_key}, clip_score/"
        f"csdr{' and FID' if args.fid == 'clip' else ''}; LPIPS alex (random AlexNet)"
        + (
            f"; FID Inception-v3 (random, {sizes['inception_params'] / 1e6:.1f}M params)"
            if args.fid == "inception"
            else ""
        )
    )
    print(
        f"images: task {TASK}, {len(METHODS)} methods ({', '.join(METHODS)}) x "
        f"({args.images_per_set} forget + {args.images_per_set} unrelated) = {n_images} PNG "
        f"{IMAGE_SIDE}x{IMAGE_SIDE}, mean {mean_kb:.0f} KiB"
    )
    print(
        f"untimed: setup {setup_s:.1f}s, warm-up evaluate on {len(METHODS) * 4} other images "
        f"{warmup.wall:.1f}s. "
        "Timed: every pipeline loads its networks inside the timing; engine batch_size 16, "
        "naive batch size 1"
    )
    print(
        f"best of {args.repeats} interleaved repeat(s) by wall time; cpu s = process CPU time "
        "(all threads)"
    )
    print()
    best = {name: min(timings, key=lambda t: t.wall) for name, timings in runs.items()}
    stats = naive_stats[runs["naive"].index(best["naive"])]
    rows = [
        ("igmu cold (empty store)", best["cold"], cold.decoded_images),
        ("igmu warm (cached store)", best["warm"], warm.decoded_images),
        ("naive per-metric", best["naive"], stats.decodes),
    ]
    print(
        f"{'pipeline':<26} {'seconds':>8} {'cpu s':>7} {'images':>7} {'images/s':>9} {'decodes':>8}"
    )
    for label, timing, decodes in rows:
        print(
            f"{label:<26} {timing.wall:>8.2f} {timing.cpu:>7.2f} {n_images:>7d} "
            f"{n_images / timing.wall:>9.2f} {decodes:>8d}"
        )
    if args.repeats > 1:
        for name, timings in runs.items():
            print(f"  all {name} wall s: " + ", ".join(f"{t.wall:.2f}" for t in timings))
    print()
    naive_s = best["naive"].wall
    for name in ("cold", "warm"):
        wall = naive_s / best[name].wall
        cpu = best["naive"].cpu / best[name].cpu
        print(f"ratio igmu {name} / naive (images/s): {wall:.2f}x  (by CPU time: {cpu:.2f}x)")
    forwards = ", ".join(f"{k}={v}" for k, v in sorted(stats.image_forwards.items()))
    print(f"naive network calls: {forwards}, clip(text)={stats.text_forwards}")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in stats.seconds.items())
    print(f"naive seconds by stage: {stages}")
    print(
        f"naive seconds in the CLIP text tower: {stats.text_seconds:.1f} (the char-level test "
        "tokenizer gives prompts ~3-4x the tokens of CLIP's BPE, so this part is inflated)"
    )
    checked, worst, problems = compare(engine_values(cold), naive)
    status = "same values" if not problems else "MISMATCH"
    print(
        f"check: {checked} (metric, method) values compared, engine vs naive: {status} "
        f"(max relative diff {worst:.1e})"
    )
    for problem in problems:
        print(f"  {problem}")
    if engine_values(cold) != engine_values(warm):
        print("  warm run values differ from cold run values")
    if profile:
        print()
        print(f"# cProfile of one more cold evaluate (top {args.profile_top}, cumulative)")
        print(profile)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
