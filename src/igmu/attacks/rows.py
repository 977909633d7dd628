"""The rows ``igmu attack`` writes: one per (method, attack, prompt) in ``attacks.jsonl``, one
per attack image in ``manifest.jsonl``.

An attack row (fields in ``ATTACK_FIELDS``): the task, method, attack and prompt set
(``attack.<name>``); the attacked prompt (``prompt``, with its class and index); what the attack
found (``adversarial_prompt``: the text, or a readable rendering of ``adversarial_token_ids`` when
generation used the ids; ``embedding``: the safetensors file of learned vectors and the positions
they replace); how it was generated (``generated_from``: text, token_ids or embedding); the
attack's seed, budget and its unit, the steps used, the final loss, wall seconds (search + attack
images; ``search_seconds`` the search alone, ``cpu_seconds`` the process's CPU time, which a busy
machine inflates less); fingerprints of the attacked model (generator fingerprint + sampling
settings) and of the attack settings; the images (seed, path, cache key, PNG sha256) and the
attack's own details.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from igmu.attacks.base import Attack, AttackOutcome, AttackPrompt
from igmu.core.constants import attack_set

ATTACK_FIELDS = (
    "task", "task_version", "method", "attack", "attack_version", "prompt_set", "class_name",
    "class_index", "prompt_index", "prompt_key", "prompt", "adversarial_prompt",
    "adversarial_token_ids", "embedding", "generated_from", "seed", "prompt_seed", "budget",
    "budget_unit", "steps", "final_loss", "wall_seconds", "search_seconds", "cpu_seconds",
    "model", "model_fingerprint", "generation_settings", "attack_settings", "images",
    "target_seeds", "details",
    # added by the engine: the result's file key and the two fingerprints it is made of
    "result_key", "attacked_fingerprint", "attack_fingerprint",
)


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


def attack_row(*, task: Any, spec: Any, attack: Attack, settings: dict[str, Any],
               prompt: AttackPrompt, outcome: AttackOutcome,
               images: list[tuple[int, str, str, str]], embedding: dict[str, Any] | None,
               seed: int, prompt_seed: int, target_seeds: list[int], model_fingerprint: str,
               wall_seconds: float, search_seconds: float, cpu_seconds: float
               ) -> dict[str, Any]:
    return {
        "task": task.name,
        "task_version": task.version,
        "method": spec.name,
        "attack": attack.name,
        "attack_version": attack.version,
        "prompt_set": attack_set(attack.name),
        "class_name": prompt.class_name,
        "class_index": prompt.class_index,
        "prompt_index": prompt.prompt_index,
        "prompt_key": prompt.key,
        "prompt": prompt.text,
        "adversarial_prompt": outcome.text,
        "adversarial_token_ids": outcome.token_ids,
        "embedding": embedding,
        "generated_from": outcome.kind,
        "seed": seed,
        "prompt_seed": prompt_seed,
        "budget": settings["budget"],
        "budget_unit": attack.budget_unit,
        "steps": outcome.steps,
        "final_loss": _rounded(outcome.loss),
        "wall_seconds": round(wall_seconds, 3),
        "search_seconds": round(search_seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "model": spec.model,
        "model_fingerprint": model_fingerprint,
        "generation_settings": spec.settings.as_dict(),
        "attack_settings": settings,
        "images": [
            {"seed": s, "path": path, "key": key, "sha256": sha} for s, path, key, sha in images
        ],
        "target_seeds": target_seeds,
        "details": outcome.details,
    }


def manifest_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The attack images of one attack row as ``igmu generate``-style manifest rows, with the
    attack's fields beside them."""
    out = []
    for image in row["images"]:
        entry = {
            "method": row["method"],
            "prompt_set": row["prompt_set"],
            "class_name": row["class_name"],
            "class_index": row["class_index"],
            "prompt_index": row["prompt_index"],
            "seed": image["seed"],
            "prompt": row["adversarial_prompt"],
            "path": image["path"],
            "sha256": image["sha256"],
            "key": image["key"],
            "generator": row["model_fingerprint"],
            "model": row["model"],
            "settings": row["generation_settings"],
            "attack": row["attack"],
            "original_prompt": row["prompt"],
            "generated_from": row["generated_from"],
            "attack_result": row.get("result_key"),
        }
        if row["adversarial_token_ids"] is not None:
            entry["adversarial_token_ids"] = row["adversarial_token_ids"]
        if row["embedding"] is not None:
            entry["embedding"] = row["embedding"]
        out.append(entry)
    return out


def outcome_from_row(row: dict[str, Any], folder: Path) -> AttackOutcome:
    """Rebuild what an attack found from its row (to regenerate or inspect its images)."""
    vectors = None
    positions = None
    if row["embedding"] is not None:
        from igmu.attacks.imaging import load_vectors

        vectors = load_vectors((Path(folder) / row["embedding"]["path"]).read_bytes())
        positions = list(row["embedding"]["positions"])
    return AttackOutcome(
        kind=row["generated_from"],
        text=row["adversarial_prompt"],
        image_seeds=[int(i["seed"]) for i in row["images"]],
        token_ids=row["adversarial_token_ids"],
        positions=positions,
        vectors=vectors,
        steps=int(row["steps"]),
        loss=row["final_loss"],
        details=row["details"],
    )
