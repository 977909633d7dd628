"""Diffusers pipelines as igmu loads them: find the folder, pick the class, load, fingerprint.

The one place that turns a pipeline reference (a folder written by ``save_pretrained`` or a Hugging
Face id) into a loaded pipeline; `igmu.pipelines.sources.load_source` builds on it to apply a
models-file entry's weights, for generation, the unlearning methods and the attacks. A pipeline
class diffusers does not know (e.g. a world's own, such as the MiniWorld's) registers in
``PIPELINE_CLASSES`` under the ``_class_name`` its folders' model_index.json give: a module of
entry-point group ``igmu.pipelines`` decorated with ``@PIPELINE_CLASSES.register(name)``.
"""

from __future__ import annotations

import hashlib
import json
import logging as std_logging
from pathlib import Path
from typing import Any

from igmu.backbones.weights import unsafe_pickle_refusal
from igmu.core.errors import MissingExtraError, ModelNotFoundError
from igmu.core.files import read_text
from igmu.core.registry import Registry

FINGERPRINT_FORMAT = "igmu.generator/1"
# Pipeline classes by the `_class_name` of model_index.json, for classes outside diffusers.
PIPELINE_CLASSES: Registry[type] = Registry("pipeline class", group="igmu.pipelines")
# Config keys that say where or with which library version a file was written, not what it is.
_VOLATILE_KEYS = {"transformers_version", "torch_dtype", "dtype", "name_or_path"}

PIPELINE_DIRECTIONS = (
    "Give a diffusers pipeline folder (written by save_pretrained, with model_index.json) or a "
    "Hugging Face id of one (downloaded online, or read from the local cache with "
    "HF_HUB_OFFLINE=1)"
)


def pipeline_class(location: str | Path) -> Any:
    """The class that loads the pipeline folder: a registered one, else diffusers' own."""
    diffusers = _import_diffusers()
    index = json.loads(read_text(Path(location) / "model_index.json", "pipeline index"))
    name = str(index.get("_class_name"))
    return PIPELINE_CLASSES.get(name) if name in PIPELINE_CLASSES else diffusers.DiffusionPipeline


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise MissingExtraError("igmu generate", "generate", "diffusers") from None
    return diffusers


def resolve_pipeline_folder(reference: str, where: str, advice: str) -> str:
    """The local folder of a pipeline: a folder as is; a hub id from the cache or downloaded.

    ``where`` says where the reference came from (e.g. "models file field 'generator.model'"),
    ``advice`` what to do when it cannot be resolved offline."""
    from igmu.backbones.resolve import HUB_ID, hub_offline

    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{reference} ({where}) is not a diffusers pipeline folder (no "
                f"model_index.json). {PIPELINE_DIRECTIONS}."
            )
        return str(path.resolve())
    if path.exists():
        raise ModelNotFoundError(f"{reference} ({where}) is a file. {PIPELINE_DIRECTIONS}.")
    if not HUB_ID.match(reference):
        raise ModelNotFoundError(
            f"{reference} ({where}): local folder does not exist. {PIPELINE_DIRECTIONS}."
        )
    diffusers = _import_diffusers()
    try:
        location = diffusers.DiffusionPipeline.download(
            reference, local_files_only=hub_offline()
        )
    except Exception as exc:
        mode = "offline (HF_HUB_OFFLINE is set)" if hub_offline() else "online"
        raise ModelNotFoundError(
            f"cannot resolve pipeline {reference!r} ({where}) {mode}: {type(exc).__name__}. "
            f"{advice}, or run once with network access to cache it."
        ) from None
    return str(location)


def models_file_advice(field: str) -> str:
    return f"Set {field!r} in the models file (--models FILE) to a local pipeline folder"


_DTYPE_WARNING_MODULES = ("modeling_utils", "configuration_utils")


class _DropMessage(std_logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: std_logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


DTYPES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str | None) -> Any:
    """The torch dtype of a ``--dtype`` name (None = float32)."""
    import torch

    from igmu.core.errors import ConfigError

    name = name or "float32"
    if name not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def load_pipeline(location: str, reference: str, field: str, dtype: str | None = None) -> Any:
    """A pipeline on the CPU (float32 unless ``dtype``) with its safety checker off and progress
    bars disabled."""
    diffusers = _import_diffusers()
    index = json.loads(read_text(Path(location) / "model_index.json", "pipeline index"))
    cls = pipeline_class(location)
    kwargs: dict[str, Any] = {"torch_dtype": torch_dtype(dtype)}
    if "safety_checker" in index:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    logging = diffusers.utils.logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    quiet = _DropMessage("`torch_dtype` is deprecated")  # transformers' word for diffusers' kwarg
    loggers = [std_logging.getLogger(f"transformers.{m}") for m in _DTYPE_WARNING_MODULES]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        pipeline = cls.from_pretrained(location, **kwargs)
    except Exception as exc:
        refusal = unsafe_pickle_refusal(
            exc, f"the pipeline {reference} (models file field {field!r}) in {location}")
        if refusal is not None:
            raise refusal from None
        raise ModelNotFoundError(
            f"diffusers cannot load the pipeline {reference} (models file field {field!r}) "
            f"from {location}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
        if bars:
            logging.enable_progress_bar()
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _plain_config(config: Any) -> dict[str, Any]:
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {
        k: v for k, v in sorted(raw.items()) if not k.startswith("_") and k not in _VOLATILE_KEYS
    }


def _tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizers: the full tokenizer.json (vocab, merges, rules)
        digest.update(backend.to_str().encode("utf-8"))
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        digest.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8"))
        ranks = getattr(tokenizer, "bpe_ranks", None)
        if isinstance(ranks, dict):
            merges = sorted(ranks.items(), key=lambda item: item[1])
            digest.update(json.dumps([list(pair) for pair, _ in merges]).encode("utf-8"))
    return {
        "vocab_sha256": digest.hexdigest(),
        "model_max_length": getattr(tokenizer, "model_max_length", None),
        "special_tokens": getattr(tokenizer, "special_tokens_map", None),
    }


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
    """sha256 over every torch component's state (weights only; see pipeline_fingerprint)."""
    import torch

    digest = hashlib.sha256()
    for name, component in sorted(pipeline.components.items()):
        if isinstance(component, torch.nn.Module):
            state_sha256(component.state_dict(), prefix=f"{name}/", digest=digest)
    return digest.hexdigest()


def pipeline_fingerprint(pipeline: Any) -> str:
    """sha256 over the pipeline class, every component's class and configuration (scheduler
    included), tokenizer vocabularies and the weights as loaded (not the files: a copy, another
    serialisation or a hub snapshot with extra variants fingerprints the same)."""
    import torch

    cls = type(pipeline)
    parts: dict[str, Any] = {"pipeline": f"{cls.__module__}.{cls.__qualname__}"}
    components = getattr(pipeline, "components", None) or {}
    for name, component in sorted(components.items()):
        if component is None:
            parts[name] = None
            continue
        part: dict[str, Any] = {"class": type(component).__name__}
        if getattr(component, "config", None) is not None:
            part["config"] = _plain_config(component.config)
        if isinstance(component, torch.nn.Module):
            part["state_sha256"] = module_sha256(component)
        elif hasattr(component, "get_vocab") or hasattr(component, "backend_tokenizer"):
            part["tokenizer"] = _tokenizer_identity(component)
        parts[name] = part
    if not components and isinstance(pipeline, torch.nn.Module):
        parts["state_sha256"] = module_sha256(pipeline)
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
