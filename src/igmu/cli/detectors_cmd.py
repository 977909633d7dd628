"""`igmu detectors`: train IGMU-compatible CLIP-head judges and audit any judge."""

from __future__ import annotations

import argparse
from pathlib import Path

from igmu.core.files import check_writable

TRAIN_EXAMPLE = """example:
  igmu detectors train --data data/mini_object --out detectors/mini_cross
  igmu evaluate ... --detectors clip_head:detectors/mini_cross
"""
AUDIT_EXAMPLE = """example:
  igmu detectors audit --detector detectors/mini_cross --data data/mini_object --out audits/head
  igmu detectors audit --detector mini_judge:shape=cross --data data/mini_object
  igmu detectors audit --detector nudenet --data data/church-real --split all --out audits/nn
"""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "detectors",
        help="train CLIP-head judges on DataIGM data; audit any judge",
        description="Judges decide whether an image still shows the concept. `train` fits "
        "IGMU's CLIP + head architecture; `audit` measures how often a judge is right.",
    )
    sub = parser.add_subparsers(dest="detectors_command", metavar="SUBCOMMAND")
    sub.required = True
    from igmu.cli.data_cmd import ExampleFormatter

    formatter = ExampleFormatter

    train = sub.add_parser(
        "train",
        help="train IGMU's CLIP + head detector on a DataIGM folder",
        formatter_class=formatter,
        epilog=TRAIN_EXAMPLE,
        description="Frozen CLIP image embeddings (computed once, cached in the store) -> "
        "IGMU's head (same tensor names and shapes as IGMU's classifier_head.pth). Early "
        "stopping on the val split; deterministic. Writes head.safetensors and detector.json "
        "(class order, backbone and data fingerprints, threshold, val/test metrics). Use the "
        "folder as --detectors clip_head:<DIR> or in the models file's heads: {name: <DIR>}.",
    )
    train.add_argument("--data", required=True, type=Path, help="DataIGM folder")
    train.add_argument("--out", required=True, type=Path, help="detector folder to write")
    train.add_argument(
        "--backbone",
        help="CLIP model folder or hub id (default: the models "
        "file's clip_detector; the shipped MiniWorld CLIP for mini_* data)",
    )
    train.add_argument("--models", type=Path, help="models file (YAML)")
    train.add_argument("--epochs", type=int, default=200, help="at most (default 200)")
    train.add_argument("--patience", type=int, default=20, help="early-stopping patience")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--threshold", type=float, default=0.5, help="P(concept) > t flags")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--name", help="detector name (default: the --out folder's name)")
    train.add_argument(
        "--store",
        type=Path,
        help="SQLite store for the feature cache (default: igmu.sqlite beside --out)",
    )
    train.add_argument("--device", default="cpu")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(handler=run_train)

    audit = sub.add_parser(
        "audit",
        help="accuracy, calibration and error of a judge on labelled images",
        formatter_class=formatter,
        epilog=AUDIT_EXAMPLE,
        description="Run a judge on one split of a DataIGM folder: accuracy, precision, recall, "
        "specificity, F1, ROC-AUC, ECE with a reliability curve, error per class and prompt "
        "family (95% intervals) and a threshold sweep. Writes audit.json and audit.html into "
        "--out and stores the audit in the workspace store, where `evaluate` finds it to "
        "correct residual rates for the judge's errors (residual_rate_corrected).",
    )
    audit.add_argument(
        "--detector",
        required=True,
        help="a registered detector (nudenet, mini_judge:shape=cross, ...) or a "
        "folder written by `detectors train`",
    )
    audit.add_argument("--data", required=True, type=Path, help="DataIGM folder")
    audit.add_argument("--out", type=Path, help="folder for audit.json and audit.html")
    audit.add_argument(
        "--split",
        help="split to audit on (default: test if present, else all); 'all' for every image",
    )
    audit.add_argument("--models", type=Path, help="models file (YAML)")
    audit.add_argument("--threshold", type=float, help="override the detector's threshold")
    audit.add_argument(
        "--store",
        type=Path,
        help="SQLite store (default: igmu.sqlite beside --out, else in the current folder)",
    )
    audit.add_argument("--bins", type=int, default=10, help="calibration bins (default 10)")
    audit.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    audit.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    audit.add_argument("--quiet", action="store_true")
    audit.set_defaults(handler=run_audit)


def _models_for(data_card: dict, models_path: Path | None):
    """The models file, else the models of the data's task (the MiniWorld's for its tasks)."""
    from igmu.backbones.config import load_models_config
    from igmu.core.errors import ConfigError
    from igmu.tasks import load_task

    name = (data_card.get("task") or {}).get("name")
    try:
        task = load_task(name) if name else None
    except ConfigError:  # a task file that is not at hand: its world is unknown
        task = None
    return load_models_config(models_path, task)


def run_train(args: argparse.Namespace) -> int:
    from igmu.backbones.clip import ClipBackbone
    from igmu.dataset.dataigm import read_dataigm
    from igmu.workflows.train_head import TrainOptions, train_head

    check_writable(args.out, "--out")
    check_writable(args.store or args.out.resolve().parent / "igmu.sqlite", "--store",
                   folder=False)
    data = read_dataigm(args.data, verify=True)
    reference = args.backbone or _models_for(data.card, args.models).get("clip_detector")
    backbone = ClipBackbone.from_reference(
        reference, "CLIP for the detector head", "--backbone", args.device
    )
    store = args.store or args.out.resolve().parent / "igmu.sqlite"
    card = train_head(
        data,
        args.out,
        backbone,
        store,
        TrainOptions(
            epochs=args.epochs,
            seed=args.seed,
            lr=args.lr,
            patience=args.patience,
            threshold=args.threshold,
            name=args.name,
            progress=not args.quiet,
        ),
    )
    for split, m in sorted(card["metrics"].items()):
        acc = m["accuracy"]
        print(
            f"{split}: accuracy {acc['value']:.4f} [{acc['ci'][0]:.4f}, {acc['ci'][1]:.4f}] "
            f"(n={m['n']}), loss {m['loss']:.4f}, AUC {m['roc_auc']}"
        )
    print(
        f"detector clip_head:{card['name']} (classes {card['classes']}, concept index 1) in "
        f"{args.out}; best epoch {card['training']['best_epoch']} of "
        f"{card['training']['epochs_run']}"
    )
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from igmu.dataset.dataigm import read_dataigm
    from igmu.detectors.base import build_detector
    from igmu.detectors.head_card import is_head_folder
    from igmu.store.audits import save_audit
    from igmu.workflows.audit import AuditOptions, audit_detector, write_audit

    data = read_dataigm(args.data, verify=True)
    spec = args.detector
    if is_head_folder(spec):
        spec = f"clip_head:{spec}"
    overrides = {"threshold": args.threshold} if args.threshold is not None else {}
    detector = build_detector(spec, _models_for(data.card, args.models), overrides)
    store = args.store or ((args.out.resolve().parent if args.out else Path.cwd()) / "igmu.sqlite")
    audit = audit_detector(
        detector,
        data,
        store,
        AuditOptions(
            split=args.split,
            bins=args.bins,
            resamples=args.resamples,
            seed=args.seed,
            progress=not args.quiet,
        ),
    )
    save_audit(store, audit)
    if args.out:
        write_audit(audit, args.out)
    m, d = audit["metrics"], audit["data"]

    def show(label: str, entry: dict) -> str:
        if entry["value"] is None:
            return f"{label} n/a"
        return f"{label} {entry['value']:.4f} [{entry['ci'][0]:.4f}, {entry['ci'][1]:.4f}]"

    print(
        f"audit {audit['audit_id']} of {detector.name} on {d['n']} images (split {d['split']}: "
        f"{d['n_concept']} concept, {d['n_other']} other)"
    )
    for key in (
        "accuracy",
        "precision",
        "recall",
        "specificity",
        "false_positive_rate",
        "f1",
        "roc_auc",
        "ece",
    ):
        print("  " + show(key, m[key]))
    print(
        f"stored in {store}"
        + (f"; {args.out / 'audit.json'}, {args.out / 'audit.html'}" if args.out else "")
    )
    return 0
