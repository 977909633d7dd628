"""The MiniWorld's tiny CLIP: a transformers ``CLIPModel`` trained contrastively on renders.

It is the world's CLIP-score backbone, and its text encoder (frozen) conditions the world's
text-to-image model, as CLIP ViT-L/14's does Stable Diffusion 1.x.

- Tokenizer: the byte-level CLIP BPE with no merges of ``igmu.backbones.tokenizer`` (every byte
  is a token, so every language's captions tokenize), ``model_max_length`` 77 as in SD-1.x.
- Text tower: 3 layers, width 128, 4 heads, causal (transformers' CLIPTextModel).
- Vision tower: ViT on 32 x 32 images, patch 8 (16 patches + CLS), 3 layers, width 128.
- Projection: 128-d. The saved ``CLIPProcessor`` resizes to 32 (a no-op on 32 x 32 renders), and
  normalises with CLIP's mean / std, which training reproduces exactly.

Training data: a pool of rendered scenes (``sample_scene`` / ``render``) with a fresh
``caption_mix`` caption (English, English paraphrases, de/fr/es/it/zh) drawn per use. The loss is
CLIP's symmetric cross-entropy, with every pair in the batch whose scenes have the same labels
counted as a positive (the world has only 384 label combinations, so a batch holds duplicates).
Light pixel noise / blur augmentation keeps the image tower usable on generated images.

Held-out evaluation (``clip_eval.zero_shot_accuracy``): renders from a seed the training never used;
per factor (shape, colour, style, attribute, background) the image picks among captions that
differ only in that factor (canonical English, and each other language / English paraphrases);
plus retrieval of the exact caption among all 384 label combinations. Results go to
``igmu_clip.json``.

Everything is seeded: the same seed, steps and thread count give the same weights on one machine.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from igmu.miniworld.captions import caption_mix
from igmu.miniworld.world import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    STYLES,
    Scene,
    redraw_without,
    render_batch,
    sample_scene,
)

SCHEMA = "igmu.miniworld.clip/1"
METADATA = "igmu_clip.json"
MAX_LENGTH = 77
IMAGE_SIZE = 32
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ARCH: dict[str, Any] = {
    "text": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_LENGTH,
    },
    "vision": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
    },
    "projection_dim": 128,
}


@dataclass(frozen=True)
class ClipTrainConfig:
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    pool_size: int = 16384
    seed: int = 0
    threads: int = 2
    eval_images: int = 512
    augment: bool = True
    # "cuda" trains on a GPU: the same seeded draws (made on the CPU), not the same bits.
    device: str = "cpu"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads, restoring the previous count afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_clip_dir() -> Path:
    """The tiny CLIP shipped with the package."""
    return Path(str(resources.files("igmu.miniworld").joinpath("weights", "clip")))


def label_key(scene: Scene) -> int:
    """A scene's labels (shape, colour, style, attribute, background) as one integer."""
    key = SHAPES.index(scene.shape)
    key = key * len(COLOURS) + COLOURS.index(scene.colour)
    key = key * len(STYLES) + STYLES.index(scene.style)
    key = key * 2 + int(scene.attribute)
    return key * len(BACKGROUNDS) + BACKGROUNDS.index(scene.background)


def images_to_pixels(images: np.ndarray | Sequence[np.ndarray]) -> Any:
    """N x H x W x 3 uint8 (32 x 32) -> N x 3 x H x W float32, CLIP-normalised (the processor's
    arithmetic: x / 255, then (x - mean) / std)."""
    import torch

    array = np.asarray(images)
    x = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def make_tokenizer(folder: Path) -> Any:
    """The char-level (byte-level, no merges) CLIP tokenizer, written into ``folder``."""
    from transformers import CLIPTokenizer

    from igmu.backbones.tokenizer import write_char_tokenizer_files

    folder.mkdir(parents=True, exist_ok=True)
    write_char_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_LENGTH)


def build_clip(vocab_size: int, seed: int) -> Any:
    import torch
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={
            **ARCH["text"],
            "vocab_size": vocab_size,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
        vision_config=dict(ARCH["vision"]),
        projection_dim=ARCH["projection_dim"],
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


def make_processor(tokenizer: Any) -> Any:
    from transformers import CLIPImageProcessor, CLIPProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=3,
        do_center_crop=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tokenize(tokenizer: Any, texts: Sequence[str]) -> Any:
    return tokenizer(
        list(texts),
        padding="max_length",
        max_length=MAX_LENGTH,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class ScenePool:
    """Rendered scenes drawn once from a seed; captions are drawn fresh per use.

    ``without`` (a target: ``shape=cross``, ``style=stripes``, ``attribute``) removes a concept:
    each scene that has it gets the concept's factor redrawn among the other values (from a
    generator of its own, so the main stream is untouched); every other scene is the same as in
    the whole world's pool of that seed. ``workers`` > 1 renders in that many processes (spawned:
    call it from a module run with ``python -m`` or under ``if __name__ == "__main__"``).
    """

    def __init__(self, size: int, seed: int, without: str | None = None, workers: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.scenes = [sample_scene(rng) for _ in range(size)]
        if without is not None:
            spare = np.random.default_rng([seed, 0x5EED])
            self.scenes = [redraw_without(s, without, spare) for s in self.scenes]
        self.images = render_batch(self.scenes, IMAGE_SIZE, workers)
        self.keys = np.asarray([label_key(s) for s in self.scenes], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.scenes)

    def batch(
        self, rng: np.random.Generator, size: int, uncond_prob: float = 0.0
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        index = rng.integers(0, len(self.scenes), size=size)
        captions = [caption_mix(self.scenes[i], rng) for i in index]
        if uncond_prob > 0:
            drop = rng.random(size) < uncond_prob
            captions = ["" if d else c for c, d in zip(captions, drop, strict=True)]
        return self.images[index], captions, self.keys[index]


def _augment(torch: Any, x: Any, generator: Any) -> Any:
    """Pixel noise (sigma up to 0.08 of the [0, 1] range) and a mild blur, each on half a batch,
    applied in normalised space (the noise is scaled by CLIP's std)."""
    n = x.shape[0]
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    sigma = torch.rand(n, 1, 1, 1, generator=generator) * 0.08
    noisy = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    x = x + torch.randn(x.shape, generator=generator) * sigma * noisy / std
    blur = torch.rand(n, 1, 1, 1, generator=generator) < 0.3
    kernel = torch.tensor([0.25, 0.5, 0.25])
    kernel = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3
    )
    return torch.where(blur, blurred, x)


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def clip_loss(torch: Any, model: Any, pixels: Any, ids: Any, keys: Any) -> Any:
    image = model.get_image_features(pixel_values=pixels)
    text = model.get_text_features(input_ids=ids)
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    scale = model.logit_scale.exp().clamp(max=100.0)
    logits = scale * image @ text.t()
    same = (keys[:, None] == keys[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    log_i = torch.log_softmax(logits, dim=1)
    log_t = torch.log_softmax(logits.t(), dim=1)
    return -0.5 * ((targets * log_i).sum(1).mean() + (targets * log_t).sum(1).mean())


def train_clip(
    out_dir: str | Path,
    config: ClipTrainConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the tiny CLIP and write ``out_dir`` (CLIPModel + CLIPProcessor + igmu_clip.json)."""
    config = config or ClipTrainConfig()
    with torch_threads(config.threads):
        return _train_clip(Path(out_dir), config, log)


def _train_clip(out: Path, config: ClipTrainConfig, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    tokenizer = make_tokenizer(out)
    device = torch.device(config.device)
    model = build_clip(len(tokenizer), config.seed).to(device)
    params = sum(p.numel() for p in model.parameters())
    log(f"[clip] {params / 1e6:.2f}M parameters; rendering a pool of {config.pool_size} scenes")
    pool = ScenePool(config.pool_size, config.seed)
    rng = np.random.default_rng(config.seed + 1)
    generator = torch.Generator().manual_seed(config.seed + 2)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(
            p
        )
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    model.train()
    losses: list[float] = []
    train_start = time.time()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup)
        images, captions, keys = pool.batch(rng, config.batch_size)
        pixels = images_to_pixels(images)
        if config.augment:
            pixels = _augment(torch, pixels, generator)
        ids = tokenize(tokenizer, captions)
        loss = clip_loss(
            torch, model, pixels.to(device), ids.to(device), torch.from_numpy(keys).to(device)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.item()))
        if step % 50 == 0 or step == config.steps - 1:
            recent = float(np.mean(losses[-50:]))
            log(
                f"[clip] step {step + 1}/{config.steps} loss {recent:.4f} "
                f"({time.time() - train_start:.0f}s)"
            )
    train_seconds = time.time() - train_start
    model.eval().to("cpu")
    from igmu.miniworld.clip_eval import zero_shot_accuracy

    evaluation = zero_shot_accuracy(model, tokenizer, n=config.eval_images)
    log(f"[clip] zero-shot: {json.dumps(evaluation['english'])}")
    model.save_pretrained(str(out), safe_serialization=True)
    make_processor(tokenizer).save_pretrained(str(out))
    metadata = {
        "schema": SCHEMA,
        "architecture": ARCH,
        "parameters": params,
        "tokenizer": "byte-level CLIP BPE without merges (igmu.backbones.tokenizer), max length 77",
        "preprocessing": "RGB uint8 32x32 -> x/255 -> (x - CLIP mean) / CLIP std",
        "train": asdict(config),
        "loss_first50": float(np.mean(losses[:50])),
        "loss_last50": float(np.mean(losses[-50:])),
        "losses_every_50": [float(f"{v:.5g}") for v in losses[::50]],
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - start, 1),
        "zero_shot": evaluation,
    }
    (out / METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return metadata


def load_clip(folder: str | Path | None = None) -> tuple[Any, Any]:
    """(CLIPModel in eval mode, CLIPTokenizer) from a folder written by ``train_clip``."""
    from transformers import CLIPModel, CLIPTokenizer

    folder = Path(folder) if folder is not None else default_clip_dir()
    model = CLIPModel.from_pretrained(str(folder)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m igmu.miniworld.clip_train", description="Train the MiniWorld tiny CLIP."
    )
    parser.add_argument("--out", required=True, help="output folder (CLIPModel + processor)")
    parser.add_argument("--steps", type=int, default=ClipTrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=ClipTrainConfig.batch_size)
    parser.add_argument("--seed", type=int, default=ClipTrainConfig.seed)
    parser.add_argument("--threads", type=int, default=ClipTrainConfig.threads)
    args = parser.parse_args(argv)
    config = ClipTrainConfig(
        steps=args.steps, batch_size=args.batch_size, seed=args.seed, threads=args.threads
    )
    train_clip(args.out, config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
