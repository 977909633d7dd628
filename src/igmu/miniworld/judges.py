"""Judges: the MiniWorld's classifiers, loaded for inference, and their command line.

A judge is one small multi-head CNN (``judge_net``) trained on a DataIGM layout
(``judge_train``); this module loads it (``Judge``), turns it into the world's FID / LPIPS
feature backbone (``JudgeFeatures``) and checks it on fresh renders (``evaluate_on_world``).

The MiniWorld judges are one such network with heads ``shape`` (4-way), ``colour`` (4-way),
``style`` (4-way) and ``attribute`` (spot / no_spot), trained on rendered images; they ship in
``igmu/miniworld/weights/judges``. ``Judge`` adds a fifth head, ``background`` (white, grey,
black or other), read by an exact rule on the border pixels (``judge_background``).

Command line::

    python -m igmu.miniworld.judges train --out DIR --seed 0 [--data LAYOUT] [--export DIR]
    python -m igmu.miniworld.judges evaluate [--judges DIR] [--n 2000] [--seed 777]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from igmu.core.errors import ModelNotFoundError
from igmu.miniworld import judge_background as background
from igmu.miniworld.judge_net import (
    DEFAULT_ARCH,
    METADATA,
    SCHEMA,
    WEIGHTS,
    WORLD_HEADS,
    build_net,
    images_to_array,
)
from igmu.miniworld.judge_train import TrainConfig, available_threads, train_judge

__all__ = [
    "DEFAULT_ARCH",
    "METADATA",
    "SCHEMA",
    "WEIGHTS",
    "WORLD_HEADS",
    "Judge",
    "JudgeFeatures",
    "TrainConfig",
    "available_threads",
    "build_net",
    "default_judge_dir",
    "evaluate_on_world",
    "images_to_array",
    "train_judge",
]


def default_judge_dir() -> Path:
    """The judges shipped with the package."""
    return Path(str(resources.files("igmu.miniworld").joinpath("weights", "judges")))


class Judge:
    """A trained judge: class probabilities per head, features, feature maps.

    A judge trained with the world's heads (shape, colour, style, attribute) also reads the
    ``background``, by the exact rule of ``judge_background`` (no weights): ``classes``,
    ``predict_proba`` and ``predict`` include it, and ``rule_heads`` names it.
    """

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
        # Rule heads: computed from pixels, not by the network (none on a generic judge).
        self.rule_heads: dict[str, str] = {}
        if set(WORLD_HEADS) <= set(self.classes) and background.HEAD not in self.classes:
            self.classes[background.HEAD] = list(background.CLASSES)
            self.rule_heads[background.HEAD] = background.RULE
            # The raw outputs now hold one more head: cached ones must not be reused.
            self.fingerprint += f"+bg{background.RULE_VERSION}"
        self._torch = torch

    def _batches(self, images: Sequence[np.ndarray], batch: int):
        for start in range(0, len(images), batch):
            chunk = images_to_array(images[start : start + batch], self.input_size)
            yield self._torch.from_numpy(chunk)

    def predict_proba(
        self, images: Sequence[np.ndarray], batch: int = 256
    ) -> dict[str, np.ndarray]:
        """Per head, an N x classes array of softmax probabilities (float64); for a rule head,
        the rule's class shares."""
        torch = self._torch
        parts: dict[str, list[np.ndarray]] = {h: [] for h in self.classes}
        with torch.inference_mode():
            for x in self._batches(images, batch):
                for head, logits in self.net(x).items():
                    parts[head].append(torch.softmax(logits.double(), dim=1).numpy())
        if background.HEAD in self.rule_heads:
            parts[background.HEAD] = [background.background_probs(list(images))]
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

    def head_info(self, head: str) -> dict[str, Any]:
        """Held-out figures of a trained head (from ``judge.json``), or a rule head's rule."""
        if head in self.rule_heads:
            return {"classes": self.classes[head], "rule": self.rule_heads[head]}
        return dict(self.metadata["heads"][head])

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
    from igmu.core.intervals import wilson_interval
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
