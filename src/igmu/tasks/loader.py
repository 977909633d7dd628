"""Load and validate task YAML files (schema igmu.task/1)."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from igmu.core.errors import ConfigError
from igmu.core.files import read_text
from igmu.core.registry import did_you_mean
from igmu.core.yamlio import load_yaml
from igmu.tasks.model import PROMPT_SET_KINDS, PromptSet, Task, UnlearningPrompts
from igmu.tasks.stripping import concept_words_in, strip_concept
from igmu.taxonomy import load_taxonomy
from igmu.taxonomy.tree import merge_guidance, validate_guidance
from igmu.worlds import WORLDS

SCHEMA = "igmu.task/1"
TOP_LEVEL_FIELDS = {
    "schema",
    "name",
    "version",
    "title",
    "description",
    "node",
    "concept",
    "igmu",
    "guidance",
    "prompt_sets",
    "unlearning",
    "world",
}
MIN_FORGET_PROMPTS_PER_CLASS = 1


def _require(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in raw:
        raise ConfigError(f"{where}: missing required field {key!r}")
    if not isinstance(raw[key], kind) or (kind is int and isinstance(raw[key], bool)):
        raise ConfigError(
            f"{where}: field {key!r} must be {kind.__name__}, got {type(raw[key]).__name__}"
        )
    return raw[key]


def _parse_prompt_set(name: str, raw: Any, where: str) -> PromptSet:
    field = f"prompt_sets.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: field {field!r} must be a mapping with 'classes'")
    classes = raw.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise ConfigError(f"{where}: field '{field}.classes' must be a non-empty mapping")
    parsed = []
    for class_name, prompts in classes.items():
        cfield = f"{field}.classes.{class_name}"
        if not isinstance(prompts, list) or not prompts:
            raise ConfigError(f"{where}: field {cfield!r} must be a non-empty list of prompts")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ConfigError(f"{where}: field '{cfield}[{i}]' must be non-empty text")
        if len(set(prompts)) != len(prompts):
            dup = next(p for p in prompts if prompts.count(p) > 1)
            raise ConfigError(f"{where}: field {cfield!r} repeats the prompt {dup!r}")
        parsed.append((str(class_name), tuple(p.strip() for p in prompts)))
    return PromptSet(name=name, classes=tuple(parsed), description=str(raw.get("description", "")))


def _parse_unlearning(
    raw: Any, source: str, sets: dict[str, PromptSet]
) -> UnlearningPrompts | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: field 'unlearning' must be a mapping with 'erase'")
    unknown = set(raw) - {"description", "erase", "preserve"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(
            f"{source}: unknown field 'unlearning.{key}'."
            f"{did_you_mean(key, ['description', 'erase', 'preserve'])}"
        )
    erase = raw.get("erase")
    if not isinstance(erase, list) or not erase:
        raise ConfigError(
            f"{source}: field 'unlearning.erase' must be a non-empty list of "
            "{prompt: ..., anchor: ...} pairs"
        )
    pairs = []
    for i, item in enumerate(erase):
        where = f"{source}: field 'unlearning.erase[{i}]'"
        if not isinstance(item, dict) or set(item) != {"prompt", "anchor"}:
            raise ConfigError(f"{where} must be a mapping with exactly 'prompt' and 'anchor'")
        prompt, anchor = item["prompt"], item["anchor"]
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(anchor, str):
            raise ConfigError(f"{where}: 'prompt' must be non-empty text and 'anchor' text")
        if prompt.strip() == anchor.strip():
            raise ConfigError(f"{where}: 'anchor' must differ from 'prompt'")
        pairs.append((prompt.strip(), anchor.strip()))
    preserve = raw.get("preserve") or []
    if not isinstance(preserve, list) or not all(
        isinstance(p, str) and p.strip() for p in preserve
    ):
        raise ConfigError(f"{source}: field 'unlearning.preserve' must be a list of prompts")
    preserve = [p.strip() for p in preserve]
    # Training on the evaluated prompts would flatter every method that uses these lists.
    def evaluated(*names: str) -> set[str]:
        return {p.text for name in names if name in sets for p in sets[name].prompts()}

    for field, texts, kinds in (
        ("erase", [p for p, _ in pairs], ("forget", "multilingual", "paraphrase")),
        ("preserve", preserve, ("unrelated", "related")),
    ):
        leaked = sorted(set(texts) & evaluated(*kinds))
        if leaked:
            raise ConfigError(
                f"{source}: field 'unlearning.{field}' repeats the evaluated prompt "
                f"{leaked[0]!r}; unlearning prompts must not be evaluation prompts"
            )
    return UnlearningPrompts(
        erase=tuple(pairs), preserve=tuple(preserve), description=str(raw.get("description", ""))
    )


def derive_stripped(forget: PromptSet, words: tuple[str, ...]) -> PromptSet:
    classes = tuple(
        (name, tuple(strip_concept(p, words) for p in prompts)) for name, prompts in forget.classes
    )
    return PromptSet(
        name="stripped",
        classes=classes,
        description="forget prompts with every concept word removed (ORG reference input)",
        derived_from="forget",
    )


def parse_task(text: str, source: str) -> Task:
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a task file must be a YAML mapping")
    unknown = set(raw) - TOP_LEVEL_FIELDS
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(
            f"{source}: unknown field {key!r}.{did_you_mean(key, sorted(TOP_LEVEL_FIELDS))}"
        )
    if raw.get("schema") != SCHEMA:
        raise ConfigError(f"{source}: field 'schema' must be {SCHEMA!r}, got {raw.get('schema')!r}")
    name = _require(raw, "name", str, source)
    version = _require(raw, "version", int, source)
    title = _require(raw, "title", str, source)
    node_id = _require(raw, "node", str, source)
    taxonomy = load_taxonomy()
    try:
        node = taxonomy.node(node_id)
    except ConfigError as exc:
        raise ConfigError(f"{source}: field 'node': {exc}") from None
    if node.children:
        raise ConfigError(f"{source}: field 'node' must name a concept-kind leaf, not {node_id!r}")
    concept = _require(raw, "concept", dict, source)
    concept_name = _require(concept, "name", str, f"{source} (concept)")
    words = _require(concept, "words", list, f"{source} (concept)")
    if not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise ConfigError(f"{source}: field 'concept.words' must be a non-empty list of text")
    guidance = merge_guidance(
        taxonomy.guidance(node_id),
        validate_guidance(raw.get("guidance"), f"{source} field 'guidance'"),
    )

    raw_sets = _require(raw, "prompt_sets", dict, source)
    sets: dict[str, PromptSet] = {}
    for set_name, set_raw in raw_sets.items():
        if set_name not in PROMPT_SET_KINDS:
            raise ConfigError(
                f"{source}: unknown prompt set 'prompt_sets.{set_name}'."
                f"{did_you_mean(str(set_name), list(PROMPT_SET_KINDS))}"
            )
        if set_name == "stripped":
            raise ConfigError(
                f"{source}: field 'prompt_sets.stripped' is derived from 'forget' by removing "
                "the concept words; do not write it by hand"
            )
        sets[set_name] = _parse_prompt_set(set_name, set_raw, source)
    if "forget" not in sets:
        raise ConfigError(f"{source}: missing required field 'prompt_sets.forget'")
    sets["stripped"] = derive_stripped(sets["forget"], tuple(words))
    for class_name, prompts in sets["stripped"].classes:
        for i, prompt in enumerate(prompts):
            left = concept_words_in(prompt, words)
            if left:  # cannot happen unless stripping is broken; guard the reference input
                raise ConfigError(
                    f"{source}: stripped prompt {class_name}[{i}] still contains {left}"
                )
    kind = taxonomy.kind(node_id)
    if guidance.get("reference") == "unrelated" and "unrelated" not in sets:
        raise ConfigError(
            f"{source}: node {node_id!r} uses ORG on unrelated classes as reference, "
            "so field 'prompt_sets.unrelated' is required"
        )
    igmu = raw.get("igmu") or {}
    if not isinstance(igmu, dict):
        raise ConfigError(f"{source}: field 'igmu' must be a mapping")
    unlearning = _parse_unlearning(raw.get("unlearning"), source, sets)
    world = raw.get("world")
    if world is not None and world not in WORLDS:
        raise ConfigError(
            f"{source}: field 'world' is {world!r}, not a registered world."
            f"{did_you_mean(str(world), WORLDS.names())}"
        )
    return Task(
        name=name,
        version=version,
        title=title,
        node=node_id,
        kind=kind,
        concept_name=concept_name,
        concept_words=tuple(words),
        guidance=guidance,
        prompt_sets=sets,
        source=source,
        igmu_key=igmu.get("key"),
        description=str(raw.get("description", "")),
        unlearning=unlearning,
        world=world,
        content_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def builtin_task_files() -> dict[str, str]:
    folder = resources.files("igmu.tasks").joinpath("builtin")
    return {
        entry.name.removesuffix(".yaml"): entry.name
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def load_task(name_or_path: str) -> Task:
    """A built-in task by name, or a task YAML file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"Task file {name_or_path!r} does not exist")
        return parse_task(read_text(path, "task file"), str(path))
    files = builtin_task_files()
    if name_or_path not in files:
        raise ConfigError(
            f"Unknown task {name_or_path!r}.{did_you_mean(name_or_path, list(files))}"
        )
    entry = resources.files("igmu.tasks").joinpath("builtin", files[name_or_path])
    return parse_task(
        entry.read_text(encoding="utf-8"), f"igmu/tasks/builtin/{files[name_or_path]}"
    )


def builtin_tasks() -> list[Task]:
    return [load_task(name) for name in sorted(builtin_task_files())]
