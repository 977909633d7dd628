"""`igmu data build`: a paired concept / concept-free dataset from a task's prompts.

Concept images are the original model (ORG) on the forget prompts; concept-free images are ORG
on the concept-stripped prompts (attribute tasks: same scene, same seed, without the concept) or
on the unrelated and related prompts (entity tasks). Labels come from the prompt design and are
cross-checked against the task's detectors; every disagreement is listed in the data card and
the image stays in the data. Splits are by prompt: a prompt (and, for attribute tasks, its
stripped partner) lives in one split only.

Images go through the generation engine's content-addressed cache (``<out>/.generation``), so a
killed build resumes where it stopped and a rebuild with another split reuses every image.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import igmu
from igmu.backbones.config import ModelsConfig, load_models_config
from igmu.core.constants import ORG
from igmu.core.errors import ConfigError, IGMUError
from igmu.core.files import read_text
from igmu.core.images import file_sha256
from igmu.dataset import dataigm as D
from igmu.tasks.model import Task
from igmu.worlds import world_of

CACHE = ".generation"


@dataclass
class BuildOptions:
    images_per_prompt: int = 1
    fractions: dict[str, float] = field(default_factory=lambda: D.parse_fractions("0.7,0.15,0.15"))
    seed: int = 0
    max_prompts_per_class: int | None = None
    detectors: list[str] | None = None  # None: the task's; []: no cross-check
    batch_size: int = 16
    oracle: bool = False  # MiniWorld only: draw with the renderer (a perfect model)
    progress: bool = True


@dataclass
class BuildResult:
    root: Path
    rows: list[dict[str, Any]]
    card: dict[str, Any]
    generated: int
    cached: int


def prompt_design(task: Task) -> tuple[list[str], list[str], str]:
    """(concept sets, concept-free sets, label rule) for a task."""
    attribute = task.reference == "stripped" and "stripped" in task.prompt_sets
    if attribute:
        negative = ["stripped"]
        rule = (
            f"label 1 ({task.concept_name}): {ORG} on a forget prompt; label 0: {ORG} on the same "
            "prompt with the concept words removed (stripped), same seed"
        )
    else:
        negative = [s for s in ("unrelated", "related") if s in task.prompt_sets]
        rule = (
            f"label 1 ({task.concept_name}): {ORG} on a forget prompt; label 0: {ORG} on an "
            f"unrelated or related prompt ({', '.join(negative) or 'none'})"
        )
    if "forget" not in task.prompt_sets or not negative:
        raise ConfigError(
            f"task {task.name!r} ({task.source}): a dataset needs prompt set 'forget' and "
            "'stripped' (attribute tasks) or 'unrelated'/'related' (entity tasks)"
        )
    return ["forget"], negative, rule


class OracleGenerator:
    """A world's oracle as a text-to-image model: each caption drawn exactly."""

    batch_invariant = True

    def __init__(self, world: Any) -> None:
        self.world = world

    @property
    def model(self) -> str:
        return f"{self.world.name}-oracle"

    @property
    def fingerprint(self) -> str:
        return f"{self.model}:world-v{self.world.version}"

    def generate(self, prompts: list[str], seeds: list[int], settings: Any) -> list[np.ndarray]:
        return self.world.true_images(list(prompts), list(seeds), size=settings.height)


def _groups(task: Task, jobs: list[dict[str, Any]], paired: bool) -> dict[tuple, tuple]:
    """Prompt node (set, class index, prompt index) -> its split group: a forget prompt and its
    stripped partner share one, and so does every node with the same text (union-find)."""
    parent: dict[tuple, tuple] = {}

    def find(x: tuple) -> tuple:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: tuple, b: tuple) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_text: dict[str, tuple] = {}
    for job in jobs:
        node = (job["prompt_set"], job["class_index"], job["prompt_index"])
        find(node)
        if paired and job["prompt_set"] == "stripped":
            union(node, ("forget", job["class_index"], job["prompt_index"]))
        text = job["prompt"].strip().lower()
        if text in by_text:
            union(node, by_text[text])
        by_text.setdefault(text, node)
    return {node: find(node) for node in parent}


def _split_of(jobs: list[dict[str, Any]], groups: dict[tuple, tuple], options: BuildOptions):
    strata: dict[str, dict[str, str]] = {}
    for job in jobs:
        root = groups[(job["prompt_set"], job["class_index"], job["prompt_index"])]
        # Stratum: the group's label side (a pair's root is its forget prompt); family: the
        # root's prompt set and class.
        stratum = "concept" if root[0] == "forget" else "concept_free"
        strata.setdefault(stratum, {})[repr(root)] = f"{root[0]}/{root[1]}"
    assigned = D.assign_splits(strata, options.fractions, options.seed)
    return lambda job: assigned[
        repr(groups[(job["prompt_set"], job["class_index"], job["prompt_index"])])
    ]


def split_warnings(rows: list[dict[str, Any]], fractions: dict[str, float]) -> list[str]:
    """Splits asked for that lack a class (too few prompts to go round)."""
    found = {(r["split"], r["label"]) for r in rows}
    return [
        f"split {split!r} has no {'concept' if label else 'concept-free'} images (too few "
        "prompts for the fractions)"
        for split in fractions
        for label in (1, 0)
        if (split, label) not in found
    ]


def _detectors(task: Task, models: ModelsConfig, requested: list[str] | None):
    from igmu.detectors.base import build_detector

    names = list(task.guidance.get("detectors", [])) if requested is None else requested
    built, skipped = [], []
    for name in names:
        spec = f"clip_head:{task.igmu_key}" if name == "clip_head" and task.igmu_key else name
        try:
            built.append(build_detector(spec, models))
        except IGMUError as exc:
            if requested is not None:
                raise
            skipped.append({"detector": spec, "reason": str(exc)})
    return built, skipped


def cross_check(
    rows: list[dict[str, Any]], detectors: list[Any], batch_size: int, progress: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run each detector on every image; a verdict that differs from the label is listed."""
    from igmu.core.images import decode_image

    disagreements, summary = [], {}
    for detector in detectors:
        stats = {"n": 0, "disagree": 0, "concept_not_flagged": 0, "other_flagged": 0}
        bar = tqdm(
            total=len(rows), desc=f"cross-check {detector.name}", unit="img", disable=not progress
        )
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            raws = detector.analyse([decode_image(r["abs"]).pixels for r in chunk])
            for row, raw in zip(chunk, raws, strict=True):
                verdict = detector.verdict(raw)
                stats["n"] += 1
                if bool(verdict.flagged) != bool(row["label"]):
                    stats["disagree"] += 1
                    stats["concept_not_flagged" if row["label"] else "other_flagged"] += 1
                    disagreements.append(
                        {
                            "path": row["path"],
                            "detector": detector.name,
                            "label": row["label"],
                            "flagged": bool(verdict.flagged),
                            "score": round(float(verdict.score), 6),
                            "prompt": row["prompt"],
                            "seed": row["seed"],
                        }
                    )
                row.setdefault("check", {})[detector.name] = bool(verdict.flagged)
            bar.update(len(chunk))
        bar.close()
        summary[detector.name] = {**stats, "detector": detector.describe()}
    return disagreements, summary


def build_dataset(
    task: Task,
    out: Path,
    models: ModelsConfig | None = None,
    options: BuildOptions | None = None,
    factory: Any = None,
) -> BuildResult:
    """Generate, label, split, cross-check and write a DataIGM folder into ``out``."""
    from igmu.generation import GenerateOptions, generate

    options = options or BuildOptions()
    out = Path(out)
    positive, negative, rule = prompt_design(task)
    world = world_of(task)
    if options.oracle and (world is None or not world.has_oracle):
        raise ConfigError(
            f"--oracle draws with a world's oracle (the MiniWorld's renderer); task "
            f"{task.name!r} belongs to no world that has one"
        )
    if models is None:
        models = load_models_config(None, task)  # a world's task: the world's own models
    if options.oracle:
        oracle = OracleGenerator(world)
        models = ModelsConfig(
            {**models.values, "generator": {**models.get("generator"), "model": oracle.model}},
            models.source + " (oracle generator)",
        )
        factory = factory or (lambda model, field: oracle)
    classes = D.class_names(task.concept_name)
    previous = _previous_paths(out)
    result = generate(
        task,
        out / CACHE,
        models,
        GenerateOptions(
            methods=[ORG],
            images_per_prompt=options.images_per_prompt,
            prompt_sets=positive + negative,
            max_prompts_per_class=options.max_prompts_per_class,
            batch_size=options.batch_size,
            pipeline_batching=True,
            progress=options.progress,
        ),
        factory,
    )
    jobs = result.rows
    split_of = _split_of(jobs, _groups(task, jobs, negative == ["stripped"]), options)
    rows = []
    for job in jobs:
        label = int(job["prompt_set"] in positive)
        split, class_name = split_of(job), classes[label]
        family = f"{job['prompt_set']}-{D.slug(job['class_name'])}"
        name = f"{family}-{job['prompt_index']:03d}-s{job['seed']}.png"
        relative = f"{split}/{class_name}/{name}"
        source, target = out / CACHE / job["path"], out / relative
        if not target.is_file() or file_sha256(target) != job["sha256"]:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        rows.append(
            {
                "path": relative,
                "split": split,
                "class": class_name,
                "label": label,
                "prompt": job["prompt"],
                "seed": job["seed"],
                "sha256": job["sha256"],
                "family": f"{job['prompt_set']}/{job['class_name']}",
                "prompt_set": job["prompt_set"],
                "prompt_class": job["class_name"],
                "prompt_index": job["prompt_index"],
                "generator": job["generator"],
                "abs": str(target),
            }
        )
    for stale in previous - {r["path"] for r in rows}:
        (out / stale).unlink(missing_ok=True)
    detectors, skipped = _detectors(task, models, options.detectors)
    for entry in skipped:
        print(
            f"warning: label cross-check skipped for {entry['detector']}: {entry['reason']}",
            file=sys.stderr,
        )
    disagreements, summary = cross_check(rows, detectors, options.batch_size, options.progress)
    warnings = split_warnings(rows, options.fractions)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for row in rows:
        row.pop("abs")
    manifest_sha = D.write_manifest(out, rows)
    card = {
        "schema": D.SCHEMA,
        "created_by": f"igmu {igmu.__version__} data build",
        "source": "generated",
        "task": {
            "name": task.name,
            "version": task.version,
            "kind": task.kind,
            "node": task.node,
            "concept": task.concept_name,
        },
        "classes": classes,
        "concept_class": classes[1],
        "imagefolder_class_to_idx": D.imagefolder_indices(classes),
        "label_trap": D.LABEL_TRAP,
        "label_rule": rule,
        "prompt_sets": {"concept": positive, "concept_free": negative},
        "split_rule": "by prompt: each prompt (with its stripped partner on attribute tasks, and "
        "with any prompt of the same text) lies in one split; concept and concept-free prompts "
        "are cut separately by the fractions (largest remainder), each prompt family getting "
        "its own share as far as counts allow; prompts shuffled with the seed within a family",
        "split": {"fractions": options.fractions, "seed": options.seed, "warnings": warnings},
        "generator": {
            "fingerprints": sorted({j["generator"] for j in jobs}),
            "models": sorted({j["model"] for j in jobs}),
            "settings": jobs[0]["settings"] if jobs else {},
            "models_file": models.source,
        },
        "images_per_prompt": options.images_per_prompt,
        "max_prompts_per_class": options.max_prompts_per_class,
        "counts": D.counts(rows),
        "n_images": len(rows),
        "images": {r["path"]: r["sha256"] for r in sorted(rows, key=lambda r: r["path"])},
        "cross_check": {"detectors": summary, "skipped": skipped},
        "disagreements": disagreements,
        "manifest_sha256": manifest_sha,
    }
    D.write_datacard(out, card)
    return BuildResult(out, rows, card, result.generated, result.cached)


def _previous_paths(out: Path) -> set[str]:
    """Layout files of an earlier build (a rebuild with another split moves them)."""
    import json

    manifest = out / D.MANIFEST
    if not manifest.is_file():
        return set()
    paths = set()
    for line in read_text(manifest, "manifest").splitlines():
        try:
            path = json.loads(line).get("path")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(path, str) and ".." not in Path(path).parts and not Path(path).is_absolute():
            paths.add(path)
    return paths
