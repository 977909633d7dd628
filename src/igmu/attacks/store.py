"""Where ``igmu attack`` keeps its results in DIR, each written atomically.

- ``DIR/attacks/results/<k[:2]>/<k>.json``: one finished (method, attack, prompt) result, named
  by sha256 over everything it depends on (attacked model and its sampling settings, attack name,
  version, settings and seed, the task and the prompt, ORG's targets, the task's prompts the
  attack reads).
  A rerun reads it back instead of attacking again, so SIGKILL and rerun finishes with the
  results an uninterrupted run gives.
- ``DIR/attacks/embeddings/<sha256>.safetensors``: learned soft embeddings, by content.
- ``DIR/attacks/shared/<k>.safetensors``: work shared by the prompts of one (model, attack)
  (textual inversion's token), with its description in the file's metadata.
- ``DIR/attacks.jsonl``: one row per (task, method, attack, prompt), merged with the rows already
  there (new wins), sorted, replaced atomically under DIR's manifest lock.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from igmu.core.errors import ConfigError
from igmu.core.files import read_jsonl, remove_stale_tmp, write_atomic
from igmu.generation.manifest import manifest_lock

ATTACKS_NAME = "attacks.jsonl"
ROOT = "attacks"


def digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResultStore:
    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.root = self.out / ROOT

    def clean(self) -> None:
        """Remove temporary files of writers that were killed."""
        remove_stale_tmp(self.root, recursive=True)

    # one result per (model, attack, prompt)

    def result_path(self, key: str) -> Path:
        return self.root / "results" / key[:2] / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        path = self.result_path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:  # only a hand-edited file can be partial
            raise ConfigError(
                f"{path}: not valid JSON ({exc}); delete it to attack again"
            ) from None

    def save(self, key: str, row: dict[str, Any]) -> None:
        data = json.dumps(row, sort_keys=True, ensure_ascii=False, indent=1) + "\n"
        write_atomic(self.result_path(key), data.encode("utf-8"))

    # tensors

    def embedding_relpath(self, sha256: str) -> str:
        return f"{ROOT}/embeddings/{sha256}.safetensors"

    def save_embedding(self, data: bytes) -> tuple[str, str]:
        """Store safetensors bytes by content; (relative path, sha256)."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.out / self.embedding_relpath(sha)
        if not path.is_file():
            write_atomic(path, data)
        return self.embedding_relpath(sha), sha

    def shared_path(self, key: str) -> Path:
        return self.root / "shared" / f"{key}.safetensors"

    def load_shared(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(tensors, description) of shared work, or None."""
        path = self.shared_path(key)
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            info = json.loads((handle.metadata() or {}).get("igmu", "{}"))
        return tensors, info

    def save_shared(self, key: str, tensors: dict[str, Any], info: dict[str, Any]) -> None:
        from safetensors.torch import save

        plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        metadata = {"igmu": json.dumps(info, sort_keys=True)}
        write_atomic(self.shared_path(key), save(plain, metadata=metadata))


def row_key(row: dict[str, Any]) -> tuple[str, str, str, str, int]:
    return (
        str(row["task"]), str(row["method"]), str(row["attack"]), str(row["class_name"]),
        int(row["prompt_index"]),
    )


def read_attack_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for where, row in read_jsonl(path, "attacks file"):
        try:
            row_key(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: not an attack row ({exc})") from None
        rows.append(row)
    return rows


def update_attacks(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge ``rows`` into ``out/attacks.jsonl`` (new wins per key); return all rows."""
    path = Path(out) / ATTACKS_NAME
    with manifest_lock(Path(out)):
        merged = {row_key(r): r for r in [*read_attack_rows(path), *rows]}
        ordered = [merged[k] for k in sorted(merged)]
        data = "".join(
            json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in ordered
        ).encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            write_atomic(path, data, sync_dir=True)
    return ordered
