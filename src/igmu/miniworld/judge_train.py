"""Training a judge: one multi-head CNN on any DataIGM ``<split>/<class>/`` layout.

``train_judge`` trains one network with one classification head per label (labels from the
manifest, or the folder's class as head ``class``), evaluates every head on the held-out split
(accuracy with a Wilson 95% interval, confusion matrix, accuracy on blurred + noisy copies) and
saves ``judge.safetensors`` (float32 weights) and ``judge.json`` (architecture, heads and their
classes, held-out figures, training seed and settings, the data manifest's and the weights'
sha256). Seeded and deterministic: the same data, seed and thread count give the same bytes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from igmu.core.errors import ConfigError
from igmu.miniworld.judge_net import (
    DEFAULT_ARCH,
    METADATA,
    SCHEMA,
    WEIGHTS,
    WORLD_HEADS,
    build_net,
    images_to_array,
)


def available_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


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


def _load_split(rows, heads, classes, size):
    from PIL import Image

    from igmu.dataset.dataigm_layout import row_label

    pixels = [np.asarray(Image.open(row["abs"]).convert("RGB")) for row in rows]
    x = images_to_array(pixels, size)
    y = {
        head: np.asarray([classes[head].index(row_label(r, head)) for r in rows], dtype=np.int64)
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
    from igmu.core.intervals import wilson_interval
    from igmu.dataset.dataigm_layout import read_layout, row_label

    size = int(arch["input_size"])
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    data_root = Path(data_root)
    layout = read_layout(data_root)
    train_items = layout.split(train_split)
    eval_items = layout.split(eval_split)
    if not train_items or not eval_items:
        splits = layout.splits()
        raise ConfigError(
            f"{data_root}: need splits {train_split!r} and {eval_split!r}; found {splits}"
        )
    if heads is None:
        labels = train_items[0].get("labels") or {}
        heads = WORLD_HEADS if all(h in labels for h in WORLD_HEADS) else ("class",)
    heads = tuple(heads)
    classes = {h: sorted({row_label(r, h) for r in train_items}) for h in heads}
    for head in heads:
        unseen = sorted({row_label(r, head) for r in eval_items} - set(classes[head]))
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
            "manifest_sha256": layout.fingerprint(),
            "info": layout.card,
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
