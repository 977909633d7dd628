"""The unlearning-method protocol, its registry, and what every method shares.

A method takes a diffusers text-to-image pipeline (a ``save_pretrained`` folder, a Hugging Face id,
or a pipeline object) that has ``unet`` (``UNet2DConditionModel``), ``text_encoder``
(``CLIPTextModel``) and ``tokenizer``, edits a copy of the UNet for a task's concept, and writes a
full diffusers pipeline folder (safetensors) that ``DiffusionPipeline.from_pretrained(DIR)``
loads, plus ``DIR/igmu_method.json`` (the method card): method, task, concept prompts, preserved
concepts, hyper-parameters, seed, base fingerprint, resulting UNet fingerprint and, for
inference-time methods, the ``negative_prompt`` or ``sampler_guidance`` generation must use.

Heavy libraries (torch, diffusers, transformers) are imported inside functions so that
``igmu --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from igmu.core.errors import ConfigError
from igmu.core.registry import Registry, did_you_mean
from igmu.core.settings import coerce
from igmu.methods.card import build_card
from igmu.methods.cost import CostMeter
from igmu.methods.pipeline import base_info_only, load_pipeline
from igmu.pipelines.card import CARD_NAME
from igmu.tasks import Task

# Settings every method understands; a method adds its own hyper-parameters in `defaults`, among
# them `concepts` (prompts to erase; None = the task's concept name + concept words) and
# `preserve` (concepts to keep; None = the task's unrelated + related class names).
COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    # compute dtype (float32, float16, bfloat16): weights load and are written in float32
    "dtype": "float32",
    "progress": True,
    "overwrite": False,
}


@dataclass
class EditOutcome:
    """What a method's edit did; becomes part of the method card."""

    concepts: list[str]
    preserved: list[str]
    hyperparameters: dict[str, Any]
    anchor: str | None = None
    negative_prompt: str | None = None
    sampler_guidance: dict[str, Any] | None = None  # inference-time guidance (SLD)
    edited_parameters: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UnlearnResult:
    method: str
    out: Path
    card: dict[str, Any]

    @property
    def card_path(self) -> Path:
        return self.out / CARD_NAME


class UnlearningMethod:
    """Protocol of a built-in method. Subclasses set the class attributes and `edit`.

    ``apply(base, task, settings, out)`` loads the base, calls ``edit`` on a private copy of the
    pipeline (the caller's pipeline object is never modified), and writes ``out``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}  # method hyper-parameters: the paper's, for SD
    # Settings measured for a world's models (the MiniWorld's 1.7M-parameter UNet is not SD),
    # by world name; applied over `defaults` for a task of that world, before what is given.
    world_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    changes_weights: ClassVar[bool] = True
    card_only_allowed: ClassVar[bool] = False  # may skip writing weights (settings card_only)

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        raise NotImplementedError

    def check(self, settings: dict[str, Any], task: Task) -> None:
        """Refuse bad setting values (``ConfigError`` naming the setting) before any weights
        load; ``apply`` calls it on the merged settings."""

    def write_form(
        self, pipeline: Any, folder: Path, outcome: EditOutcome
    ) -> dict[str, Any] | None:
        """Write the result in the form its authors publish (a LoRA file, a text encoder, an
        adapter folder ...) into ``folder`` and return the models-file entry fields that load
        it, paths relative to ``folder`` (e.g. ``{"lora": "spm.safetensors"}``); None (the
        default) writes the whole edited pipeline folder instead."""
        return None

    def settings(self, given: dict[str, Any] | None, task: Task | None = None) -> dict[str, Any]:
        """Defaults (with the task's world's defaults over them) overlaid with `given`; unknown
        keys and bad values raise ConfigError."""
        known = {**COMMON_DEFAULTS, **self.defaults}
        if self.card_only_allowed:
            known["card_only"] = False
        merged = dict(known)
        world = getattr(task, "world", None)
        merged.update(self.world_defaults.get(world, {}) if world else {})
        for key, value in (given or {}).items():
            if key not in known:
                raise ConfigError(
                    f"Method {self.name} has no setting {key!r}.{did_you_mean(key, list(known))}"
                )
            merged[key] = coerce_setting(self.name, key, value, known[key])
        return merged

    def apply(
        self,
        base: Any,
        task: Task,
        settings: dict[str, Any] | None = None,
        out: str | Path | None = None,
    ) -> UnlearnResult:
        if out is None:
            raise ConfigError(f"Method {self.name}: an output folder (out) is required")
        resolved = self.settings(settings, task)
        self.check(resolved, task)
        from igmu.pipelines.load import torch_dtype

        torch_dtype(resolved["dtype"])  # an unknown dtype fails before anything loads
        if getattr(base, "adapter", ()):
            raise ConfigError(
                f"Method {self.name}: the base has adapters ({', '.join(base.adapter)}), modules "
                "a pipeline folder cannot hold; unlearn on its weights-only form instead"
            )
        out = Path(out).expanduser()
        _check_out(out, resolved["overwrite"])
        card_only = bool(resolved.get("card_only", False))
        meter = CostMeter(str(resolved["device"]))
        if card_only:
            pipeline, info = None, base_info_only(base)
            outcome = meter.measure(lambda: self.edit(None, task, resolved))
        else:
            pipeline, info = load_pipeline(base, progress=resolved["progress"])
            if info.location is not None and Path(info.location).resolve() == out.resolve():
                raise ConfigError(f"--out {out} is the base model folder; choose another folder")
            meter.start(pipeline)
            outcome = meter.measure(lambda: self.edit(pipeline, task, resolved))
        changes = meter.changes(pipeline, outcome.edited_parameters)
        card = build_card(self, task, resolved, info, outcome)
        write_output(out, pipeline, card, resolved["overwrite"], self, outcome,
                     lambda folder: meter.card(changes, folder, _threads()))
        return UnlearnResult(self.name, out, json.loads((out / CARD_NAME).read_text("utf-8")))


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


METHODS: Registry[UnlearningMethod] = Registry(
    "unlearning method", home="igmu.methods", group="igmu.methods"
)


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    known = {**COMMON_DEFAULTS, **cls.defaults}
    for world, values in cls.world_defaults.items():
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"method {cls.name}: world_defaults[{world!r}] names unknown "
                             f"settings {unknown}")
    METHODS.register(cls.name)(cls())
    return cls


def get_method(name: str) -> UnlearningMethod:
    """A method by name, case-insensitively (UCE, SalUn, ...); "did you mean" on a miss."""
    by_lower = {known.lower(): known for known in METHODS.names()}
    return METHODS.get(by_lower.get(name.lower(), name))


def unlearn(
    method: str,
    base: Any,
    task: Task,
    out: str | Path,
    settings: dict[str, Any] | None = None,
) -> UnlearnResult:
    """Apply `method` to the `base` pipeline (folder, hub id or object) for `task`; write `out`."""
    return get_method(method).apply(base, task, settings, out)


# ---------------------------------------------------------------------------------------------
# settings


def _split_list(value: str) -> list[str]:
    if value.strip().lower() in ("", "none", "[]"):
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def coerce_setting(method: str, key: str, value: Any, default: Any) -> Any:
    """Coerce a setting (possibly text from the command line) to its default's type; the
    prompt lists ``concepts`` and ``preserve`` also from comma-separated text."""
    where = f"Method {method} setting {key!r}"
    if value is not None and key in ("concepts", "preserve"):
        if isinstance(value, str):
            return _split_list(value)
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value if v.strip()]
        raise ConfigError(f"{where} must be a list of text or comma-separated text")
    return coerce(value, default, where)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def default_concepts(task: Task) -> list[str]:
    """The prompts to erase: the task's in-context erase prompts (its ``unlearning`` section)
    when it has them, else its concept name and concept words (no duplicates)."""
    if task.unlearning is not None:
        return unique(prompt for prompt, _ in task.unlearning.erase)
    return unique([task.concept_name, *task.concept_words])


def default_preserved(task: Task, concepts: list[str]) -> list[str]:
    """The task's ``unlearning.preserve`` prompts when it has them, else the class names of its
    unrelated and related prompt sets (``_`` read as a space)."""
    if task.unlearning is not None and task.unlearning.preserve:
        return unique(task.unlearning.preserve)
    names = []
    for set_name in ("unrelated", "related"):
        if set_name in task.prompt_sets:
            names += [n.replace("_", " ") for n in task.prompt_sets[set_name].class_names()]
    erased = {c.lower() for c in concepts}
    return [n for n in unique(names) if n.lower() not in erased]


PAIRED_ANCHORS = "the task's unlearning.erase anchors"  # the card's anchor for a task's pairs


def uses_task_pairs(task: Task, settings: dict[str, Any]) -> bool:
    """Whether a method trains on the task's in-context ``unlearning.erase`` pairs: the task has
    them and neither ``concepts`` nor (for methods that take one) ``anchor`` is given."""
    return (task.unlearning is not None and settings.get("concepts") is None
            and settings.get("anchor") is None)


def erase_anchors(task: Task, settings: dict[str, Any], concepts: list[str], fallback: str
                  ) -> tuple[list[str], str]:
    """(one anchor prompt per erase prompt, the anchor as the card records it): each prompt's
    paired anchor for the task's pairs, else the ``anchor`` setting or ``fallback``."""
    if uses_task_pairs(task, settings):
        anchor_of = dict(task.unlearning.erase)
        return [anchor_of[c] for c in concepts], PAIRED_ANCHORS
    anchor = settings["anchor"] if settings.get("anchor") is not None else fallback
    return [anchor] * len(concepts), anchor


def concepts_and_preserved(task: Task, settings: dict[str, Any]) -> tuple[list[str], list[str]]:
    concepts = settings.get("concepts")
    concepts = default_concepts(task) if concepts is None else unique(concepts)
    require(bool(concepts), f"Task {task.name!r}: no concept prompts to erase")
    preserved = settings.get("preserve")
    preserved = default_preserved(task, concepts) if preserved is None else unique(preserved)
    return concepts, preserved


def unique(items: Any) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        text = str(item).strip()
        if text:
            seen.setdefault(text, None)
    return list(seen)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"--out {out} exists and is not empty; choose a new folder or pass --overwrite"
        )


def write_output(
    out: Path,
    pipeline: Any,
    card: dict[str, Any],
    overwrite: bool,
    method: UnlearningMethod | None = None,
    outcome: EditOutcome | None = None,
    cost: Any = None,
) -> None:
    """Write into a sibling temporary folder, then move it into place (no half-written DIR).
    The method's published form when it has one (``write_form``), else the pipeline folder;
    ``cost(folder)`` gives the card's ``cost`` once the weights are written."""
    from igmu.backbones.weights import weights_fingerprint
    from igmu.pipelines.load import module_sha256

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        card["models_entry"] = None
        if pipeline is not None:
            pipeline.to("cpu")
            entry = method.write_form(pipeline, staging, outcome) if method else None
            if entry is None:
                pipeline.save_pretrained(str(staging), safe_serialization=True)
                card["unet_weights_sha256"] = weights_fingerprint(staging / "unet")
            else:
                card["models_entry"] = _checked_entry(entry, staging, method.name)
                card["unet_weights_sha256"] = None
            card["unet_state_sha256"] = module_sha256(pipeline.unet)
            card["pipeline_folder"] = entry is None
        else:
            card["unet_weights_sha256"] = None
            card["unet_state_sha256"] = None
            card["pipeline_folder"] = False
        if cost is not None:
            card["cost"] = cost(staging)
        (staging / CARD_NAME).write_text(
            json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        _check_out(out, overwrite)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _checked_entry(entry: dict[str, Any], folder: Path, method: str) -> dict[str, Any]:
    """A published form's models-file fields: weight fields only, each a file or folder the
    form wrote (relative to the output folder)."""
    from igmu.backbones.config import LIST_FIELDS, WEIGHT_FIELDS

    checked: dict[str, Any] = {}
    for key, value in entry.items():
        if key not in (*WEIGHT_FIELDS, "lora_scale"):
            raise ValueError(f"method {method}: write_form returned unknown field {key!r}")
        if key == "lora_scale":
            checked[key] = float(value)
            continue
        paths = [value] if isinstance(value, str) else list(value)
        for path in paths:
            if Path(path).is_absolute() or not (folder / path).exists():
                raise ValueError(f"method {method}: write_form's {key} {path!r} is not a "
                                 "file it wrote in the output folder")
        checked[key] = paths if key in LIST_FIELDS else paths[0]
    return checked
