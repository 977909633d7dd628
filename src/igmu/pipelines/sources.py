"""What a models-file entry names, and the one loader that turns it into a pipeline.

A method of the models file is a base pipeline (a ``save_pretrained`` folder or hub id; default
``generator.model``) plus what replaces or augments it::

    methods:
      UCE: models/uce-church                    # a pipeline folder (igmu unlearn writes these)
      ESD: {unet: esd-x.safetensors}            # UNet weights: diffusers or CompVis keys
      AdvUnlearn: {text_encoder: nudity_unlearned/}
      SPM: {lora: spm.safetensors, lora_scale: 1.0}
      DoCo: {weights: Nudity.bin}               # a partial state dict (e.g. cross-attention)
      Receler: {adapter: receler-nudity/}       # modules added to the network
      OLD: {base: ./sd-v1-4, checkpoint: esd-old.ckpt}   # a CompVis single-file checkpoint

`load_source` is used by ``igmu generate``, ``igmu unlearn --base``/``--models`` and the attacks,
so all of them get the same pipeline; the generator fingerprint hashes the loaded state, so it
changes with every weight applied. Formats are detected from the keys
(`igmu.pipelines.checkpoints`).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from igmu.backbones.config import LIST_FIELDS, WEIGHT_FIELDS


@dataclass(frozen=True)
class PipelineSource:
    """A base pipeline and the weights applied to it (paths already resolved)."""

    base: str
    # where it came from, for messages; two entries that load the same thing are one source
    field: str = dataclass_field(default="generator.model", compare=False)
    checkpoint: str | None = None
    unet: str | None = None
    text_encoder: str | None = None
    text_encoder_2: str | None = None
    weights: tuple[str, ...] = ()
    lora: tuple[str, ...] = ()
    lora_scale: float = 1.0
    adapter: tuple[str, ...] = ()

    @property
    def augmented(self) -> bool:
        return any(getattr(self, name) for name in WEIGHT_FIELDS)

    def applied(self) -> list[tuple[str, str]]:
        """(field, path) of every weight source, in the order they are applied."""
        out = []
        for name in WEIGHT_FIELDS:
            value = getattr(self, name)
            for path in (value if isinstance(value, tuple) else (value,) if value else ()):
                out.append((name, path))
        return out

    def describe(self) -> str:
        """The base reference alone for a plain pipeline; else base + what is applied."""
        if not self.augmented:
            return self.base
        parts = [f"{name}={path}" for name, path in self.applied()]
        if self.lora and self.lora_scale != 1.0:
            parts.append(f"lora_scale={self.lora_scale:g}")
        return " + ".join([self.base, *parts])

    @classmethod
    def from_entry(cls, entry: dict[str, Any], default_base: str, field_name: str
                   ) -> PipelineSource:
        """From a validated models-file method entry (see backbones/config.py)."""
        base = entry.get("base") or entry.get("model") or default_base
        values: dict[str, Any] = {}
        for name in WEIGHT_FIELDS:
            value = entry.get(name)
            if name in LIST_FIELDS:
                value = tuple([value] if isinstance(value, str) else value or ())
            values[name] = value
        return cls(base=str(base), field=field_name, lora_scale=float(entry.get("lora_scale", 1.0)),
                   **values)


def load_source(source: PipelineSource, dtype: str | None = None) -> Any:
    """The pipeline of a source: the base loaded in float32 on the CPU, every weight source
    applied in order (`WEIGHT_FIELDS`), then cast to ``dtype`` (float32, float16, bfloat16)."""
    from igmu.pipelines.checkpoints import apply_weights
    from igmu.pipelines.load import (
        load_pipeline,
        models_file_advice,
        resolve_pipeline_folder,
        torch_dtype,
    )

    where = f"models file field {source.field!r}"
    location = resolve_pipeline_folder(source.base, where, models_file_advice(source.field))
    pipeline = load_pipeline(location, source.base, source.field)
    for name, path in source.applied():
        apply_weights(pipeline, name, path, f"{source.field}.{name}", source.lora_scale)
    if dtype is not None and torch_dtype(dtype) != torch_dtype("float32"):
        pipeline.to(dtype=torch_dtype(dtype))
    return pipeline
