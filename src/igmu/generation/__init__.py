"""Generate a task's images with any diffusers pipeline: content-addressed cache + manifest.

``generate(task, out, models, GenerateOptions(methods=["ORG", "NEGPROMPT"]))`` writes
``out/images/<key[:2]>/<key>.png`` and ``out/manifest.jsonl`` (read by
``igmu evaluate --layout manifest``). Heavy libraries (torch, diffusers) load only when a
pipeline does.
"""

from igmu.generation.base import GenerationSettings, Generator, to_uint8_images
from igmu.generation.cache import ImageCache, cache_key, encode_png
from igmu.generation.engine import GenerateOptions, GenerationResult, generate
from igmu.generation.manifest import MANIFEST_NAME, merge_rows, read_rows, update_manifest
from igmu.generation.plan import (
    BUILTIN_METHODS,
    NEGPROMPT,
    ORG,
    ImageJob,
    MethodSpec,
    SettingOverrides,
    canonical_methods,
    method_prompt_sets,
    plan_jobs,
    resolve_method,
)

__all__ = [
    "BUILTIN_METHODS",
    "MANIFEST_NAME",
    "NEGPROMPT",
    "ORG",
    "GenerateOptions",
    "GenerationResult",
    "GenerationSettings",
    "Generator",
    "ImageCache",
    "ImageJob",
    "MethodSpec",
    "SettingOverrides",
    "cache_key",
    "canonical_methods",
    "encode_png",
    "generate",
    "merge_rows",
    "method_prompt_sets",
    "plan_jobs",
    "read_rows",
    "resolve_method",
    "to_uint8_images",
    "update_manifest",
]
