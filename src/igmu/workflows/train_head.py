"""`igmu detectors train`: IGMU's CLIP + head detector trained on a DataIGM folder.

Frozen CLIP image embeddings (computed once, cached in the workspace store) feed IGMU's gated
MLP head (``igmu.detectors.clip_head.build_head``: the tensor names and shapes of IGMU's released
``classifier_head.pth``), trained with binary cross-entropy on label 1 = concept, so the head's
sigmoid is P(concept) and the concept index is 1 by construction (written in the card; folder
order plays no part). Adam, seeded shuffling, one torch thread: the same data, backbone and
seed give the same bytes. Early stopping keeps the epoch with the lowest validation loss.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import igmu
from igmu.core import audit_stats as S
from igmu.core.errors import ConfigError
from igmu.dataset import dataigm as D
from igmu.detectors.head_card import CARD, CARD_SCHEMA, HEAD_FILE


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 200
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    patience: int = 20
    # An epoch counts as better only if it lowers the val loss by more than this; on separable
    # data the loss keeps shrinking by tiny amounts as logits grow, which is no reason to go on.
    min_delta: float = 1e-3
    dropout: float = 0.3
    threshold: float = 0.5
    name: str | None = None
    progress: bool = True


def _split_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float, loss: float) -> dict:
    flagged = probs > threshold
    correct = int(np.sum(flagged == labels.astype(bool)))
    confusion = S.confusion(labels, flagged)
    return {
        "n": int(len(labels)),
        "loss": round(float(loss), 6),
        "accuracy": S.proportion(correct, len(labels)),
        "recall": S.proportion(confusion["tp"], confusion["tp"] + confusion["fn"]),
        "specificity": S.proportion(confusion["tn"], confusion["tn"] + confusion["fp"]),
        "roc_auc": S.roc_auc(labels, probs),
        "confusion": confusion,
    }


def train_head(
    data: D.DataIGM,
    out: Path,
    backbone: Any,
    store_path: Path,
    options: TrainOptions = TrainOptions(),
) -> dict[str, Any]:
    """Train, write ``head.safetensors`` + ``detector.json`` into ``out``; returns the card."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    from igmu.detectors.clip_head import build_head
    from igmu.workflows.features import clip_features

    splits = data.splits()
    for needed in ("train", "val"):
        if needed not in splits:
            raise ConfigError(
                f"{data.root}: no '{needed}' split (splits: {', '.join(splits)}); training needs "
                "train and val (early stopping); build with --split 0.7,0.15,0.15"
            )
    for split in ("train", "val"):
        labels = {r["label"] for r in data.split(split)}
        if labels != {0, 1}:
            raise ConfigError(f"{data.root}: split '{split}' needs images of both classes")
    features = {
        split: clip_features(backbone, data.split(split), store_path, progress=options.progress)
        for split in splits
    }
    labels = {s: np.array([r["label"] for r in data.split(s)], dtype=np.float32) for s in splits}

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible reductions
    try:
        torch.manual_seed(options.seed)
        head = build_head(backbone.embed_dim, options.dropout)
        optimiser = torch.optim.Adam(
            head.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        loss_fn = nn.BCEWithLogitsLoss()
        x_train = torch.from_numpy(features["train"])
        y_train = torch.from_numpy(labels["train"])
        x_val, y_val = torch.from_numpy(features["val"]), torch.from_numpy(labels["val"])
        shuffle = torch.Generator().manual_seed(options.seed)
        best = (float("inf"), -1, None)
        history = []
        bar = tqdm(
            range(options.epochs), desc="train head", unit="epoch", disable=not options.progress
        )
        for epoch in bar:
            head.train()
            order = torch.randperm(len(x_train), generator=shuffle)
            for start in range(0, len(order), options.batch_size):
                idx = order[start : start + options.batch_size]
                optimiser.zero_grad()
                loss = loss_fn(head(x_train[idx]).reshape(-1), y_train[idx])
                loss.backward()
                optimiser.step()
            head.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(head(x_val).reshape(-1), y_val))
            history.append(round(val_loss, 6))
            bar.set_postfix(val_loss=f"{val_loss:.4f}", refresh=False)
            if val_loss < best[0] - options.min_delta:
                state = {k: v.detach().clone().contiguous() for k, v in head.state_dict().items()}
                best = (val_loss, epoch, state)
            elif epoch - best[1] >= options.patience:
                break
        bar.close()
        head.load_state_dict(best[2])
        head.eval()
        metrics = {}
        with torch.no_grad():
            for split in splits:
                logits = head(torch.from_numpy(features[split])).reshape(-1)
                loss = float(loss_fn(logits, torch.from_numpy(labels[split])))
                probs = torch.sigmoid(logits).double().numpy()
                metrics[split] = _split_metrics(probs, labels[split], options.threshold, loss)
    finally:
        torch.set_num_threads(before)

    out.mkdir(parents=True, exist_ok=True)
    save_file(best[2], str(out / HEAD_FILE))
    head_sha = hashlib.sha256((out / HEAD_FILE).read_bytes()).hexdigest()
    card = {
        "schema": CARD_SCHEMA,
        "kind": "clip_head",
        "name": options.name or out.resolve().name,
        "created_by": f"igmu {igmu.__version__} detectors train",
        "architecture": "IGMU AdvancedClassifierHead_CLIP (gate, LayerNorm, MLP, 1 logit)",
        "classes": data.classes,
        "concept_index": 1,
        "concept_class": data.concept_class,
        "score": "sigmoid(logit) = P(concept); flagged when > threshold",
        "label_trap": "index 1 is the concept because the training target was the manifest's "
        "label (1 = concept), not a folder index; " + D.LABEL_TRAP,
        "threshold": options.threshold,
        "backbone": {
            "reference": backbone.resolved.reference,
            "location": backbone.resolved.location,
            "weights_sha256": backbone.resolved.weights_sha256,
            "fingerprint": backbone.fingerprint,
            "embed_dim": backbone.embed_dim,
            "preprocessing": backbone.preprocessing,
        },
        "data": {
            "path": str(data.root.resolve()),
            "manifest_sha256": data.fingerprint(),
            "task": data.card.get("task"),
            "counts": D.counts(data.rows),
        },
        "training": {
            **{k: v for k, v in asdict(options).items() if k not in ("progress", "name")},
            "loss": "BCEWithLogits on label (1 = concept)",
            "optimiser": "Adam",
            "early_stopping": "keep the epoch with the lowest val loss (improving by more than "
            "min_delta); stop after `patience` epochs without one",
            "epochs_run": len(history),
            "best_epoch": best[1] + 1,
            "val_loss_history": history,
        },
        "metrics": metrics,
        "head_sha256": head_sha,
    }
    (out / CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return card
