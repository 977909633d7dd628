"""The unlearning-method protocol, its registry, and what every method shares.

A method takes a diffusers text-to-image pipeline (a ``save_pretrained`` folder, a Hugging Face id,
or a pipeline object) that has ``unet`` (``UNet2DConditionModel``), ``text_encoder``
(``CLIPTextModel``) and ``tokenizer``, edits a copy of the UNet for a task's concept, and writes a
full diffusers pipeline folder (safetensors) that ``DiffusionPipeline.from_pretrained(DIR)``
loads, plus ``DIR/igmu_method.json`` (the method card): method, task, concept prompts, preserved
concepts, hyper-parameters, seed, base fingerprint, resulting UNet fingerprint and, for
inference-time methods, the ``negative_prompt`` generation must use.

Heavy libraries (torch, diffusers, transformers) are imported inside functions so that
``igmu --help`` stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from igmu.errors import ConfigError, ModelNotFoundError
from igmu.registry import Registry, did_you_mean
from igmu.tasks import Task

CARD_NAME = "igmu_method.json"
CARD_SCHEMA = "igmu.method/1"

# Settings every method understands; a method adds its own hyper-parameters in `defaults`, among
# them `concepts` (prompts to erase; None = the task's concept name + concept words) and
# `preserve` (concepts to keep; None = the task's unrelated + related class names).
COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "progress": True,
    "overwrite": False,
}


@dataclass(frozen=True)
class BaseInfo:
    """Where the base pipeline came from and what its weights were."""

    reference: str  # what the user gave: a folder, a hub id, or "<in-memory pipeline>"
    location: str | None  # local folder it was loaded from (None for a pipeline object)
    weights_sha256: str  # weights_fingerprint(folder), or a tensor hash of a pipeline object

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "location": self.location,
            "weights_sha256": self.weights_sha256,
        }


@dataclass
class EditOutcome:
    """What a method's edit did; becomes part of the method card."""

    concepts: list[str]
    preserved: list[str]
    hyperparameters: dict[str, Any]
    anchor: str | None = None
    negative_prompt: str | None = None
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
    defaults: ClassVar[dict[str, Any]] = {}  # method hyper-parameters and their defaults
    changes_weights: ClassVar[bool] = True
    card_only_allowed: ClassVar[bool] = False  # may skip writing weights (settings card_only)

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        raise NotImplementedError

    def settings(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with `given`; unknown keys and bad values raise ConfigError."""
        known = {**COMMON_DEFAULTS, **self.defaults}
        if self.card_only_allowed:
            known["card_only"] = False
        merged = dict(known)
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
        resolved = self.settings(settings)
        out = Path(out).expanduser()
        _check_out(out, resolved["overwrite"])
        card_only = bool(resolved.get("card_only", False))
        if card_only:
            pipeline, info = None, base_info_only(base)
            outcome = self.edit(None, task, resolved)
        else:
            pipeline, info = load_pipeline(base, progress=resolved["progress"])
            if info.location is not None and Path(info.location).resolve() == out.resolve():
                raise ConfigError(f"--out {out} is the base model folder; choose another folder")
            outcome = self.edit(pipeline, task, resolved)
        card = build_card(self, task, resolved, info, outcome)
        write_output(out, pipeline, card, resolved["overwrite"])
        return UnlearnResult(self.name, out, json.loads((out / CARD_NAME).read_text("utf-8")))


METHODS: Registry[UnlearningMethod] = Registry("unlearning method")


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    METHODS.register(cls.name)(cls())
    return cls


def get_method(name: str) -> UnlearningMethod:
    """A method by name, case-insensitively (UCE, ESD, NEGPROMPT, ORG); "did you mean" on a miss."""
    if name.upper() in METHODS:
        return METHODS.get(name.upper())
    return METHODS.get(name)


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
    """Coerce a setting (possibly text from the command line) to its default's type."""
    where = f"Method {method} setting {key!r}"
    if value is None:
        return None
    if key in ("concepts", "preserve"):
        if isinstance(value, str):
            return _split_list(value)
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value if v.strip()]
        raise ConfigError(f"{where} must be a list of text or comma-separated text")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if isinstance(default, int):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
        if not number.is_integer():
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(number)
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    return str(value)


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


# ---------------------------------------------------------------------------------------------
# the base pipeline

PIPELINE_DIRECTIONS = (
    "Give a diffusers pipeline folder (one written by save_pretrained, with model_index.json, "
    "unet/, text_encoder/, tokenizer/) or a Hugging Face id of one (downloaded online, or read "
    "from the local cache with HF_HUB_OFFLINE=1)."
)


def resolve_pipeline_location(reference: str) -> str:
    """A local pipeline folder as is; a hub id from the cache (offline) or downloaded."""
    from igmu.backbones.resolve import HUB_ID, hub_offline

    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"Base model {reference}: not a diffusers pipeline folder (no model_index.json). "
                + PIPELINE_DIRECTIONS
            )
        return str(path.resolve())
    if path.exists():
        raise ModelNotFoundError(f"Base model {reference}: is a file, not a folder. "
                                 + PIPELINE_DIRECTIONS)
    if not HUB_ID.match(reference):
        raise ModelNotFoundError(
            f"Base model {reference}: local folder does not exist. " + PIPELINE_DIRECTIONS
        )
    try:
        from diffusers import DiffusionPipeline

        return str(DiffusionPipeline.download(reference, local_files_only=hub_offline()))
    except Exception as exc:
        mode = "offline (HF_HUB_OFFLINE is set)" if hub_offline() else "online"
        raise ModelNotFoundError(
            f"Base model {reference!r}: cannot resolve it {mode}: {type(exc).__name__}. "
            "Give a local pipeline folder with --base DIR, or run once with network access "
            "to cache it."
        ) from None


def base_info_only(base: Any) -> BaseInfo:
    """Fingerprint the base without loading it (for methods that write only a card)."""
    from igmu.backbones.weights import weights_fingerprint

    if isinstance(base, str | os.PathLike):
        location = resolve_pipeline_location(str(base))
        return BaseInfo(str(base), location, weights_fingerprint(Path(location)))
    _check_components(base, "<in-memory pipeline>")
    return BaseInfo("<in-memory pipeline>", None, pipeline_state_sha256(base))


def load_pipeline(base: Any, progress: bool = True) -> tuple[Any, BaseInfo]:
    """(a private pipeline whose UNet may be edited, where it came from)."""
    from igmu.backbones.weights import weights_fingerprint

    if isinstance(base, str | os.PathLike):
        reference = str(base)
        location = resolve_pipeline_location(reference)
        import torch
        from diffusers.utils import logging as diffusers_logging

        bar_was_on = diffusers_logging.is_progress_bar_enabled()
        if not progress:
            diffusers_logging.disable_progress_bar()
        try:
            from igmu.generation.diffusers_backend import pipeline_class

            cls = pipeline_class(location)
            pipeline = cls.from_pretrained(location, torch_dtype=torch.float32)
        except Exception as exc:
            raise ModelNotFoundError(
                f"Base model {reference}: diffusers cannot load the pipeline in {location}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        finally:
            if bar_was_on:
                diffusers_logging.enable_progress_bar()
        pipeline.set_progress_bar_config(disable=True)
        _check_components(pipeline, reference)
        return pipeline, BaseInfo(reference, location, weights_fingerprint(Path(location)))
    _check_components(base, "<in-memory pipeline>")
    info = BaseInfo("<in-memory pipeline>", None, pipeline_state_sha256(base))
    return copy_with_private_unet(base), info


def copy_with_private_unet(pipeline: Any) -> Any:
    """A shallow copy of the pipeline whose UNet is a deep copy (the rest is shared, read-only)."""
    import copy

    clone = copy.copy(pipeline)
    clone.register_modules(unet=copy.deepcopy(pipeline.unet))
    return clone


def _check_components(pipeline: Any, reference: str) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    problems = []
    unet = getattr(pipeline, "unet", None)
    text_encoder = getattr(pipeline, "text_encoder", None)
    if not isinstance(unet, UNet2DConditionModel):
        problems.append(f"unet is {type(unet).__name__}, not UNet2DConditionModel")
    if not isinstance(text_encoder, CLIPTextModel):
        problems.append(f"text_encoder is {type(text_encoder).__name__}, not CLIPTextModel")
    if getattr(pipeline, "tokenizer", None) is None:
        problems.append("it has no tokenizer")
    if not problems:
        width = text_encoder.config.hidden_size
        cross = unet.config.cross_attention_dim
        if not isinstance(cross, int) or cross != width:
            problems.append(
                f"the UNet's cross_attention_dim ({cross}) differs from the text encoder's "
                f"hidden size ({width})"
            )
        elif not cross_attention_modules(unet):
            problems.append("its UNet has no cross-attention (attn2) layers")
    if problems:
        raise ConfigError(
            f"Base model {reference}: the built-in methods need a diffusers pipeline with a "
            f"UNet2DConditionModel, a CLIPTextModel and a tokenizer (e.g. Stable Diffusion 1.x); "
            + "; ".join(problems)
        )


def cross_attention_modules(unet: Any) -> list[tuple[str, Any]]:
    """(name, Attention) for every cross-attention layer: ``attn2`` in transformer blocks."""
    found = []
    for name, module in unet.named_modules():
        if name.split(".")[-1] == "attn2" and getattr(module, "is_cross_attention", False):
            found.append((name, module))
    return found


def cross_attention_projections(unet: Any, keys: bool = True) -> list[tuple[str, Any]]:
    """(name, Linear) for every cross-attention value projection, and key projection if `keys`."""
    projections = []
    for name, module in cross_attention_modules(unet):
        kinds = ("to_k", "to_v") if keys else ("to_v",)
        for kind in kinds:
            projections.append((f"{name}.{kind}", getattr(module, kind)))
    return projections


# ---------------------------------------------------------------------------------------------
# text


def token_length(pipeline: Any) -> int:
    """The padded prompt length the pipeline's text encoder sees (77 for SD-1.x)."""
    limit = int(pipeline.text_encoder.config.max_position_embeddings)
    tokenizer_limit = getattr(pipeline.tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        return min(limit, tokenizer_limit)
    return limit


def encode_prompts(pipeline: Any, prompts: list[str], device: Any) -> tuple[Any, Any]:
    """(hidden states [N, L, D] as the pipeline feeds them to the UNet, attention masks [N, L]).

    Matches StableDiffusionPipeline.encode_prompt without clip_skip: padded to max length, the
    text encoder's last hidden state.
    """
    import torch

    length = token_length(pipeline)
    hidden, masks = [], []
    for start in range(0, len(prompts), 32):
        batch = pipeline.tokenizer(
            prompts[start : start + 32],
            padding="max_length",
            max_length=length,
            truncation=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            hidden.append(pipeline.text_encoder(batch.input_ids.to(device))[0].float())
        masks.append(batch.attention_mask)
    return torch.cat(hidden), torch.cat(masks)


# ---------------------------------------------------------------------------------------------
# fingerprints and output


def state_sha256(state: dict[str, Any], prefix: str = "", digest: Any = None) -> Any:
    """sha256 over a state dict's names, dtypes, shapes and bytes (independent of file format)."""
    import torch

    digest = digest or hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{prefix}{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest


def module_sha256(module: Any) -> str:
    return state_sha256(module.state_dict()).hexdigest()


def pipeline_state_sha256(pipeline: Any) -> str:
    import torch

    digest = hashlib.sha256()
    for name, component in sorted(pipeline.components.items()):
        if isinstance(component, torch.nn.Module):
            state_sha256(component.state_dict(), prefix=f"{name}/", digest=digest)
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    from igmu import __version__

    return {
        "igmu": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def build_card(
    method: UnlearningMethod,
    task: Task,
    settings: dict[str, Any],
    base: BaseInfo,
    outcome: EditOutcome,
) -> dict[str, Any]:
    negative = outcome.negative_prompt
    if negative is not None:
        usage = (
            f"Weights are the base model's. Generate with negative_prompt={negative!r} in place "
            "of the empty unconditional prompt (classifier-free guidance), same seeds and steps "
            "as ORG."
        )
    else:
        usage = "Generate as with ORG (empty negative prompt); the weights carry the edit."
    return {
        "schema": CARD_SCHEMA,
        "method": method.name,
        "summary": method.summary,
        "task": {
            "name": task.name,
            "version": task.version,
            "concept_name": task.concept_name,
            "source": task.source,
        },
        "concept_words": outcome.concepts,
        "preserved": outcome.preserved,
        "anchor": outcome.anchor,
        "negative_prompt": negative,
        "hyperparameters": outcome.hyperparameters,
        "seed": settings["seed"],
        "device": str(settings["device"]),
        "base": base.as_dict(),
        "weights_changed": method.changes_weights,
        "edited_parameters": outcome.edited_parameters,
        "stats": outcome.stats,
        "generation": {"negative_prompt": negative, "usage": usage},
        "software": software_versions(),
    }


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"--out {out} exists and is not empty; choose a new folder or pass --overwrite"
        )


def write_output(out: Path, pipeline: Any, card: dict[str, Any], overwrite: bool) -> None:
    """Write into a sibling temporary folder, then move it into place (no half-written DIR)."""
    from igmu.backbones.weights import weights_fingerprint

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        if pipeline is not None:
            pipeline.to("cpu")
            pipeline.save_pretrained(str(staging), safe_serialization=True)
            card["unet_weights_sha256"] = weights_fingerprint(staging / "unet")
            card["unet_state_sha256"] = module_sha256(pipeline.unet)
            card["pipeline_folder"] = True
        else:
            card["unet_weights_sha256"] = None
            card["unet_state_sha256"] = None
            card["pipeline_folder"] = False
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


def read_method_card(folder: str | Path) -> dict[str, Any] | None:
    """The method card of an output folder, or None when the folder has none."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(card, dict) or card.get("schema") != CARD_SCHEMA:
        raise ConfigError(f"{path}: field 'schema' must be {CARD_SCHEMA!r}")
    return card


def negative_prompt_of(folder: str | Path) -> str | None:
    """The negative prompt a model folder must be generated with (NEGPROMPT), else None."""
    card = read_method_card(folder)
    return None if card is None else card.get("negative_prompt")
