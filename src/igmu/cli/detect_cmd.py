"""`igmu detect`: run one detector on images, one JSON line per image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from igmu.cli.options import add_threads, apply_threads
from igmu.core.errors import ConfigError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "detect",
        help="run a detector on images; prints one JSON line per image",
        description="Run a detector on image files or folders. Each line: path, detector, "
        "flagged, score, and the detector's details.",
    )
    parser.add_argument(
        "--detector",
        required=True,
        help="nudenet, opennsfw, person, or clip_head:<head> (e.g. clip_head:nudity)",
    )
    parser.add_argument("--models", type=Path, help="models file (YAML)")
    parser.add_argument("--threshold", type=float, help="override the detector's threshold")
    parser.add_argument("--batch-size", type=int, default=16)
    add_threads(parser)
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    parser.set_defaults(handler=run)


def expand(paths: list[Path]) -> list[Path]:
    from igmu.core.images import is_image_file

    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    return files


def run(args: argparse.Namespace) -> int:
    from igmu.backbones.config import load_models_config
    from igmu.core.images import decode_image
    from igmu.detectors.base import DETECTORS, build_detector

    apply_threads(args)
    DETECTORS.get(args.detector.partition(":")[0])
    overrides = {"threshold": args.threshold} if args.threshold is not None else {}
    detector = build_detector(args.detector, load_models_config(args.models), overrides)
    files = expand(args.paths)
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        images = [decode_image(p) for p in chunk]
        outputs = detector.analyse([im.pixels for im in images])
        for image, raw in zip(images, outputs, strict=True):
            verdict = detector.verdict(raw)
            print(
                json.dumps(
                    {
                        "path": image.path,
                        "detector": detector.name,
                        "flagged": verdict.flagged,
                        "score": round(verdict.score, 6),
                        "sha256": image.sha256,
                        "details": verdict.details,
                        "raw": raw,
                    },
                    sort_keys=True,
                ),
                flush=True,
            )
    return 0
