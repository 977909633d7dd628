"""Options several commands share."""

from __future__ import annotations

import argparse


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def natural_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def add_sampling_overrides(parser: argparse.ArgumentParser) -> None:
    """--steps/--guidance/--height/--width: one run's change to the models file's generator."""
    parser.add_argument("--steps", type=positive_int, help="override generator.steps")
    parser.add_argument("--guidance", type=float, help="override generator.guidance")
    parser.add_argument("--height", type=positive_int, help="override generator.height")
    parser.add_argument("--width", type=positive_int, help="override generator.width")


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads for every library (default: the usable cores; on a shared machine 1 is "
        "faster; the count is part of every generated image's key)",
    )


def apply_threads(args: argparse.Namespace) -> int:
    from igmu.core.threads import set_threads

    return set_threads(getattr(args, "threads", None))
