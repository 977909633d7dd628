"""The layers hold: what a package may import is checked on the real import graph."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers", "igmu.metrics", "igmu.evaluation",
         "igmu.detectors", "igmu.miniworld")


def loaded_after(statement: str) -> list[str]:
    """The modules of HEAVY a fresh interpreter holds after running ``statement``."""
    probe = (f"import sys\n{statement}\n"
             f"print('\\n'.join(m for m in sys.modules if m.startswith({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def test_the_report_renders_without_torch_or_metric_code() -> None:
    """Rendering reads the store: no network, no metric, no judge is imported for it."""
    assert loaded_after("import igmu.report, igmu.report.page, igmu.report.verdict, "
                        "igmu.report.leaderboard, igmu.cli.report_cmd") == []


def test_the_import_contract_holds() -> None:
    """pyproject's import-linter contracts (the layers, and no world in the engine) hold with
    no exception listed; a package missing from the layers breaks them too (exhaustive)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint) if lint.exists() else "lint-imports", "--no-cache"],
                            capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    assert "ignore_imports" not in (Path(__file__).parents[1] / "pyproject.toml").read_text()
