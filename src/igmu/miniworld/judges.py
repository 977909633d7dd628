"""Judges: a small multi-head CNN classifier trained on a DataIGM layout, and its loader.

Generic: ``train_judge`` trains one network with one classification head per label on any
``<split>/<class>/`` layout (labels from the manifest, or the folder's class as head ``class``),
evaluates every head on the held-out split (accuracy with a Wilson 95% interval) and saves

- ``judge.safetensors``: the weights (float32),
- ``judge.json``: architecture, heads and their classes, held-out accuracy / CI / n per head,
  input size, training seed and settings, the data manifest's sha256, the weights' sha256.

The MiniWorld judges are one such network with heads ``shape`` (4-way), ``colour`` (4-way),
``style`` (4-way) and ``attribute`` (spot / no_spot), trained on rendered images; they ship in
``igmu/miniworld/weights/judges``. ``JudgeFeatures`` turns a judge into the world's FID / LPIPS
feature backbone.

Command line::

    python -m igmu.miniworld.judges train --out DIR --seed 0 [--data LAYOUT] [--export DIR]
    python -m igmu.miniworld.judges evaluate [--judges DIR] [--n 2000] [--seed 777]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from igmu.errors import ConfigError, ModelNotFoundError

SCHEMA = "igmu.miniworld.judge/1"
WEIGHTS = "judge.safetensors"
METADATA = "judge.json"
WORLD_HEADS = ("shape", "colour", "style", "attribute")
DEFAULT_ARCH = {"widths": [16, 32, 64], "feature_dim": 128, "input_size": 32}


def available_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_judge_dir() -> Path:
    """The judges shipped with the package."""
    return Path(str(resources.files("igmu.miniworld").joinpath("weights", "judges")))


def build_net(widths: Sequence[int], feature_dim: int, input_size: int, heads: dict[str, int]):
    """Conv blocks (conv-ReLU-conv-ReLU-maxpool) -> linear features -> one linear head per label."""
    import torch
    from torch import nn

    if input_size % (2 ** len(widths)):
        raise ConfigError(f"judge input size {input_size} must be divisible by 2^{len(widths)}")

    class JudgeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks = []
            channels = 3
            for width in widths:
                blocks.append(
                    nn.Sequential(
                        nn.Conv2d(channels, width, 3, padding=1),
                        nn.ReLU(),
                        nn.Conv2d(width, width, 3, padding=1),
                        nn.ReLU(),
                    )
                )
                channels = width
            self.blocks = nn.ModuleList(blocks)
            self.pool = nn.MaxPool2d(2)
            side = input_size // 2 ** len(widths)
            self.features = nn.Sequential(
                nn.Flatten(), nn.Linear(channels * side * side, feature_dim), nn.ReLU()
            )
            self.heads = nn.ModuleDict({n: nn.Linear(feature_dim, k) for n, k in heads.items()})

        def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
            maps = []
            for block in self.blocks:
                x = block(x)
                maps.append(x)
                x = self.pool(x)
            return maps

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = self.pool(block(x))
            return self.features(x)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            feats = self.embed(x)
            return {name: head(feats) for name, head in self.heads.items()}

    return JudgeNet()


def images_to_array(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """N x 3 x size x size float32 in [-1, 1]; any input size is resized (PIL bilinear)."""
    from PIL import Image

    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(f"image {i}: expected H x W x 3 RGB, got shape {array.shape}")
        array = np.ascontiguousarray(array[..., :3], dtype=np.uint8)
        if array.shape[:2] != (size, size):
            array = np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR))
        out[i] = array.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
    return out


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = True
    threads: int | None = None  # None: the CPUs this process may use


def _blur(torch, x, sigmas):
    """Separable Gaussian blur (5 taps, edges replicated), one sigma per image; 0 = unchanged."""
    n, c, h, w = x.shape
    taps = torch.arange(-2, 3, dtype=x.dtype)
    sig = sigmas.to(x.dtype).clamp(min=1e-3)[:, None]
    kernel = torch.exp(-(taps[None, :] ** 2) / (2 * sig**2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c) x 5
    flat = torch.nn.functional.pad(x.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="replicate")
    flat = torch.nn.functional.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = torch.nn.functional.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def _augment(torch, x, generator):
    """Label-preserving changes: brightness/contrast/channel gain, +-2 px shift, a mild blur
    (half the images, sigma 0.2-0.9 px), Gaussian noise; so the judges also hold on the
    softer, noisier images a generative model draws."""
    n = x.shape[0]

    def uniform(low, high, *shape):
        return torch.rand(*shape, generator=generator) * (high - low) + low

    blurred = torch.rand(n, generator=generator) < 0.5
    x = _blur(torch, x, torch.where(blurred, uniform(0.2, 0.9, n), torch.zeros(n)))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.85, 1.15, n, 1, 1, 1) + mean + uniform(-0.08, 0.08, n, 1, 1, 1)
    x = x * uniform(0.95, 1.05, n, 3, 1, 1)
    side = x.shape[-1]
    shifts = torch.randint(0, 5, (n, 2), generator=generator)  # offsets into the padded image
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    rows = (torch.arange(side)[None, :] + shifts[:, :1])[:, :, None]  # n x side x 1
    cols = (torch.arange(side)[None, :] + shifts[:, 1:])[:, None, :]  # n x 1 x side
    x = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    sigma = uniform(0.0, 0.06, n, 1, 1, 1)
    return (x + torch.randn(x.shape, generator=generator) * sigma).clamp(-1.0, 1.0)


def _load_split(items, heads, classes, size):
    from PIL import Image

    pixels = [np.asarray(Image.open(item.path).convert("RGB")) for item in items]
    x = images_to_array(pixels, size)
    y = {
        head: np.asarray([classes[head].index(item.label(head)) for item in items], dtype=np.int64)
        for head in heads
    }
    return x, y


def train_judge(
    data_root: str | Path,
    out_dir: str | Path,
    heads: Sequence[str] | None = None,
    config: TrainConfig | None = None,
    arch: dict[str, Any] | None = None,
    train_split: str = "train",
    eval_split: str = "test",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train on ``train_split``, evaluate on ``eval_split``, save weights + metadata; returns it."""
    import torch

    config = config or TrainConfig()
    arch = {**DEFAULT_ARCH, **(arch or {})}
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    threads = config.threads or available_threads()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(
            torch, data_root, out_dir, heads, config, arch, threads, train_split, eval_split, log
        )
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def _train(torch, data_root, out_dir, heads, config, arch, threads, train_split, eval_split, log):
    from safetensors.torch import save_file

    from igmu.backbones.weights import sha256_of
    from igmu.metrics.functional import wilson_interval
    from igmu.miniworld.dataset_export import INFO, MANIFEST, manifest_sha256, read_layout

    size = int(arch["input_size"])
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    data_root = Path(data_root)
    items = read_layout(data_root)
    train_items = [i for i in items if i.split == train_split]
    eval_items = [i for i in items if i.split == eval_split]
    if not train_items or not eval_items:
        splits = sorted({i.split for i in items})
        raise ConfigError(
            f"{data_root}: need splits {train_split!r} and {eval_split!r}; found {splits}"
        )
    if heads is None:
        heads = WORLD_HEADS if all(h in train_items[0].labels for h in WORLD_HEADS) else ("class",)
    heads = tuple(heads)
    classes = {h: sorted({item.label(h) for item in train_items}) for h in heads}
    for head in heads:
        unseen = sorted({i.label(head) for i in eval_items} - set(classes[head]))
        if unseen:
            raise ConfigError(f"head {head!r}: held-out classes {unseen} never seen in training")
        if len(classes[head]) < 2:
            raise ConfigError(f"head {head!r} has a single class {classes[head]}")
    x_train, y_train = _load_split(train_items, heads, classes, size)
    x_eval, y_eval = _load_split(eval_items, heads, classes, size)
    log(f"data: {len(train_items)} train / {len(eval_items)} held-out images, heads {heads}")

    net = build_net(arch["widths"], arch["feature_dim"], size, {h: len(classes[h]) for h in heads})
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(train_items) // config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=total, pct_start=0.15
    )
    xt = torch.from_numpy(x_train)
    yt = {h: torch.from_numpy(v) for h, v in y_train.items()}
    loss_fn = torch.nn.CrossEntropyLoss()
    history = []
    for epoch in range(config.epochs):
        net.train()
        order = torch.randperm(len(train_items), generator=generator)
        running = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            batch = xt[index]
            if config.augment:
                batch = _augment(torch, batch, generator)
            logits = net(batch)
            loss = sum(loss_fn(logits[h], yt[h][index]) for h in heads)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            running += float(loss.detach()) * len(index)
        accuracy = _accuracies(torch, net, x_eval, y_eval)
        history.append({"epoch": epoch + 1, "loss": running / len(order), "held_out": accuracy})
        shown = ", ".join(f"{h} {a:.4f}" for h, a in accuracy.items())
        log(f"epoch {epoch + 1}/{config.epochs}: loss {running / len(order):.4f}; held-out {shown}")

    net.eval()
    predictions = _predict_indices(torch, net, x_eval)
    head_meta = {}
    for head in heads:
        correct = int((predictions[head] == y_eval[head]).sum())
        n = len(eval_items)
        low, high = wilson_interval(correct, n)
        confusion = np.zeros((len(classes[head]),) * 2, dtype=np.int64)
        np.add.at(confusion, (y_eval[head], predictions[head]), 1)
        head_meta[head] = {
            "classes": classes[head],
            "accuracy": correct / n,
            "ci": [low, high],
            "correct": correct,
            "n": n,
            "confusion": confusion.tolist(),
        }
    # Robustness: the same held-out images blurred (sigma 0.6 px) with noise (sd 6/255).
    perturb = torch.Generator().manual_seed(config.seed + 1)
    xe = torch.from_numpy(x_eval)
    xe = _blur(torch, xe, torch.full((len(xe),), 0.6))
    xe = (xe + torch.randn(xe.shape, generator=perturb) * (12 / 255)).clamp(-1.0, 1.0)
    perturbed = _predict_indices(torch, net, xe.numpy())
    for head in heads:
        correct = int((perturbed[head] == y_eval[head]).sum())
        head_meta[head]["perturbed_accuracy"] = correct / len(eval_items)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS))
    wall = time.perf_counter() - started
    data_info = {}
    if (data_root / INFO).is_file():
        data_info = json.loads((data_root / INFO).read_text())
    metadata = {
        "schema": SCHEMA,
        "architecture": {"kind": "igmu.miniworld.judges.build_net", **arch},
        "preprocessing": "RGB uint8 -> bilinear resize to input_size (PIL) -> x / 127.5 - 1",
        "heads": head_meta,
        "feature": {"layer": "penultimate (post-ReLU)", "dim": int(arch["feature_dim"])},
        "training": {
            **asdict(config),
            "threads": threads,
            "n_train": len(train_items),
            "train_split": train_split,
            "wall_s": round(wall, 1),
            "history": history,
            "torch": torch.__version__,
        },
        "held_out": {
            "split": eval_split,
            "n": len(eval_items),
            "perturbed": "perturbed_accuracy: the held-out images blurred (Gaussian, sigma 0.6 px) "
            "plus Gaussian noise (sd 6/255)",
        },
        "data": {
            "manifest_sha256": manifest_sha256(data_root)
            if (data_root / MANIFEST).is_file()
            else None,
            "info": data_info,
        },
        "weights_sha256": sha256_of(out_dir / WEIGHTS),
    }
    (out_dir / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n")
    log(f"saved {out_dir / WEIGHTS} ({wall:.0f} s)")
    return metadata


def _predict_indices(torch, net, x: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
    outputs: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            for head, logits in net(torch.from_numpy(x[start : start + batch])).items():
                outputs.setdefault(head, []).append(logits.argmax(1).numpy())
    return {h: np.concatenate(v) for h, v in outputs.items()}


def _accuracies(torch, net, x, y) -> dict[str, float]:
    net.eval()
    predicted = _predict_indices(torch, net, x)
    return {h: float((predicted[h] == y[h]).mean()) for h in y}


class Judge:
    """A trained judge: class probabilities per head, features, feature maps."""

    def __init__(self, folder: str | Path) -> None:
        import torch

        from igmu.backbones.weights import load_state_dict, sha256_of

        folder = Path(folder)
        meta_path, weights_path = folder / METADATA, folder / WEIGHTS
        if not meta_path.is_file() or not weights_path.is_file():
            raise ModelNotFoundError(
                f"MiniWorld judges: {folder} must hold {WEIGHTS} and {METADATA} "
                "(train them with: python -m igmu.miniworld.judges train --out DIR)"
            )
        self.metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.metadata.get("schema") != SCHEMA:
            raise ModelNotFoundError(f"{meta_path}: not a judge metadata file ({SCHEMA})")
        self.weights_sha256 = sha256_of(weights_path)
        if self.weights_sha256 != self.metadata.get("weights_sha256"):
            raise ModelNotFoundError(
                f"{weights_path}: sha256 does not match {METADATA}; the files are from different "
                "trainings"
            )
        arch = self.metadata["architecture"]
        self.input_size = int(arch["input_size"])
        self.classes: dict[str, list[str]] = {
            h: list(v["classes"]) for h, v in self.metadata["heads"].items()
        }
        self.net = build_net(
            arch["widths"],
            arch["feature_dim"],
            self.input_size,
            {h: len(c) for h, c in self.classes.items()},
        )
        self.net.load_state_dict(load_state_dict(weights_path, f"MiniWorld judge ({folder})"))
        self.net.eval()
        self.folder = folder
        self.feature_dim = int(arch["feature_dim"])
        self.fingerprint = f"mini-judge:{self.weights_sha256[:16]}"
        self._torch = torch

    def _batches(self, images: Sequence[np.ndarray], batch: int):
        for start in range(0, len(images), batch):
            chunk = images_to_array(images[start : start + batch], self.input_size)
            yield self._torch.from_numpy(chunk)

    def predict_proba(
        self, images: Sequence[np.ndarray], batch: int = 256
    ) -> dict[str, np.ndarray]:
        """Per head, an N x classes array of softmax probabilities (float64)."""
        torch = self._torch
        parts: dict[str, list[np.ndarray]] = {h: [] for h in self.classes}
        with torch.inference_mode():
            for x in self._batches(images, batch):
                for head, logits in self.net(x).items():
                    parts[head].append(torch.softmax(logits.double(), dim=1).numpy())
        return {
            h: np.concatenate(v) if v else np.zeros((0, len(self.classes[h])))
            for h, v in parts.items()
        }

    def predict(self, images: Sequence[np.ndarray]) -> dict[str, list[str]]:
        probs = self.predict_proba(images)
        return {h: [self.classes[h][i] for i in p.argmax(1)] for h, p in probs.items()}

    def features(self, images: Sequence[np.ndarray], batch: int = 256) -> np.ndarray:
        """N x feature_dim penultimate-layer features (float64)."""
        torch = self._torch
        out = [np.zeros((0, self.feature_dim))]
        with torch.inference_mode():
            for x in self._batches(images, batch):
                out.append(self.net.embed(x).double().numpy())
        return np.concatenate(out)

    def feature_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The activations of each conv block (N x C x H x W each), for perceptual distances."""
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(images_to_array(images, self.input_size))
            return [m.double().numpy() for m in self.net.feature_maps(x)]

    def accuracy_report(self) -> dict[str, dict[str, Any]]:
        return {
            h: {k: v[k] for k in ("accuracy", "ci", "n")} for h, v in self.metadata["heads"].items()
        }


class JudgeFeatures:
    """The MiniWorld's FID / LPIPS feature backbone, built on a judge.

    - FID: ``image_embeddings(images) -> N x D float64`` (the judge's penultimate layer, D=128),
      the interface of ``InceptionBackbone`` / ``ClipBackbone``.
    - LPIPS: ``distances(first, second) -> N float64``, the interface of ``LpipsBackbone``: per
      conv block, features unit-normalised over channels, squared difference, mean over space;
      summed over blocks (LPIPS with uniform layer weights, i.e. its ``lin=False`` variant).
    Both carry ``fingerprint`` (the judge weights' sha256) and ``describe()``.
    """

    def __init__(self, judge: Judge | str | Path | None = None) -> None:
        if not isinstance(judge, Judge):
            judge = Judge(judge or default_judge_dir())
        self.judge = judge
        self.embed_dim = judge.feature_dim
        self.fingerprint = f"mini-judge-features:{judge.weights_sha256[:16]}"

    def image_embeddings(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.judge.features(list(images))

    def distances(self, first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> np.ndarray:
        if len(first) != len(second):
            raise ValueError("distances: the two lists must have the same length")
        if not len(first):
            return np.zeros(0)
        total = np.zeros(len(first))
        for a, b in zip(
            self.judge.feature_maps(list(first)), self.judge.feature_maps(list(second)), strict=True
        ):
            a = a / (np.sqrt((a * a).sum(axis=1, keepdims=True)) + 1e-10)
            b = b / (np.sqrt((b * b).sum(axis=1, keepdims=True)) + 1e-10)
            total += ((a - b) ** 2).sum(axis=1).mean(axis=(1, 2))
        return total

    def describe(self) -> dict[str, Any]:
        return {
            "role": "fid/lpips",
            "model": "MiniWorld judge CNN (igmu.miniworld.judges)",
            "weights_sha256": self.judge.weights_sha256,
            "embed_dim": self.embed_dim,
            "preprocessing": self.judge.metadata["preprocessing"],
            "distance": "sum over conv blocks of mean squared difference of unit-normalised "
            "features (LPIPS, uniform weights)",
        }


def evaluate_on_world(
    judge: Judge, n: int = 2000, seed: int = 777, size: int = 32
) -> dict[str, dict[str, Any]]:
    """Accuracy of each world head on ``n`` freshly rendered scenes (Wilson 95% CI)."""
    from igmu.metrics.functional import wilson_interval
    from igmu.miniworld.world import render, sample_scenes

    scenes = sample_scenes(seed, n)
    predicted = judge.predict([render(s, size) for s in scenes])
    report = {}
    for head, values in predicted.items():
        truth = [s.labels()[head] for s in scenes]
        correct = sum(p == t for p, t in zip(values, truth, strict=True))
        report[head] = {"accuracy": correct / n, "ci": list(wilson_interval(correct, n)), "n": n}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m igmu.miniworld.judges",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train judges on a DataIGM layout")
    train.add_argument("--out", type=Path, required=True, help="folder for the judge files")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--data", type=Path, help="an existing layout (default: render one)")
    train.add_argument("--export", type=Path, help="render the MiniWorld layout here and keep it")
    train.add_argument("--n-train", type=int, default=6000)
    train.add_argument("--n-test", type=int, default=2000)
    train.add_argument("--heads", help="comma-separated label names (default: the world's four)")
    train.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    train.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    train.add_argument("--lr", type=float, default=TrainConfig.lr)
    train.add_argument("--threads", type=int)
    evaluate = commands.add_parser("evaluate", help="accuracy on freshly rendered scenes")
    evaluate.add_argument("--judges", type=Path, default=None, help="default: the shipped judges")
    evaluate.add_argument("--n", type=int, default=2000)
    evaluate.add_argument("--seed", type=int, default=777)
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        judge = Judge(args.judges or default_judge_dir())
        print(json.dumps(evaluate_on_world(judge, args.n, args.seed), indent=2))
        return 0
    heads = args.heads.split(",") if args.heads else None
    config = TrainConfig(
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
    )
    if args.data is not None:
        metadata = train_judge(args.data, args.out, heads, config)
    else:
        from igmu.miniworld.dataset_export import export_world

        splits = {"train": args.n_train, "test": args.n_test}
        with tempfile.TemporaryDirectory(prefix="igmu-judge-data-") as scratch:
            root = args.export or Path(scratch) / "world"
            started = time.perf_counter()
            export_world(root, splits, seed=args.seed)
            print(
                f"rendered {sum(splits.values())} images in {time.perf_counter() - started:.0f} s"
            )
            metadata = train_judge(root, args.out, heads, config)
    for head, info in metadata["heads"].items():
        low, high = info["ci"]
        print(
            f"{head}: held-out accuracy {info['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}, "
            f"n={info['n']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
