"""`igmu`: evaluate image-generation unlearning. Run `igmu COMMAND --help` for details."""

from __future__ import annotations

import argparse
import sys
import warnings

from igmu import __version__
from igmu.cli import (
    attack_cmd,
    compare_cmd,
    data_cmd,
    demo_cmd,
    detect_cmd,
    detectors_cmd,
    evaluate_cmd,
    generate_cmd,
    miniworld_cmd,
    models_cmd,
    report_cmd,
    tasks_cmd,
    unlearn_cmd,
)
from igmu.core.errors import IGMUError
from igmu.core.threads import threads_restored

CONTENT_NOTE = (
    "Content warning: tasks such as 'nudity' involve sexual content; reports blur such images."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igmu",
        description="Tell whether a concept was really unlearned from a text-to-image model, "
        "and what the unlearning broke (CatIGMU tasks, EvalIGMU metrics, DataIGM data).",
        epilog=CONTENT_NOTE,
    )
    parser.add_argument("--version", action="version", version=f"igmu {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for module in (
        demo_cmd,
        tasks_cmd,
        generate_cmd,
        unlearn_cmd,
        attack_cmd,
        evaluate_cmd,
        compare_cmd,
        detect_cmd,
        data_cmd,
        detectors_cmd,
        report_cmd,
        models_cmd,
        miniworld_cmd,
    ):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    # diffusers' lazy imports warn about CUDA autocast on CPU-only machines; nothing to act on.
    warnings.filterwarnings("ignore", message="CUDA is not available or torch_xla is imported")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with threads_restored():
            return int(args.handler(args) or 0)
    except IGMUError as exc:
        close_progress_bars()
        print(f"igmu: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        close_progress_bars()
        print("igmu: interrupted; finished work is cached, rerun to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # the disk, not igmu: full, gone read-only, a file removed mid-run
        close_progress_bars()
        print(f"igmu: error: {os_error_message(exc)}", file=sys.stderr)
        return 1


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system failure: what failed, on which file, and that what
    was finished is kept (every write is atomic)."""
    import errno

    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the disk"
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{reason}; work finished before this is kept, rerun to resume"


def close_progress_bars() -> None:
    """End any progress bar's line, so a message starts on a line of its own."""
    from tqdm import tqdm

    bars = list(getattr(tqdm, "_instances", ()))
    for bar in bars:
        bar.close()
    if bars:
        sys.stderr.write("\n")
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
