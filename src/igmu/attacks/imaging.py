"""Attack images through igmu's content-addressed image cache.

A text outcome is generated exactly as ``igmu generate`` generates a prompt (same generator,
same cache key). A token-id or soft-embedding outcome is generated from the conditioning that the
attacked model's text encoders compute from the ids (with the learned vectors in place), passed
to the pipeline through the family adapter's ``pipeline_kwargs`` (SDXL: with the pooled
embedding); the call is otherwise ``DiffusersGenerator``'s (one image per call, a CPU generator
per seed, the method's negative prompt). Its cache key's prompt field is a conditioning string
that names the ids and the vectors' sha256, so the key covers everything the pixels depend on:
generator fingerprint, ids, embedding, seed and settings.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np

from igmu.attacks.base import AttackOutcome
from igmu.generation.base import GenerationSettings
from igmu.generation.cache import ImageCache, cache_key
from igmu.pipelines.attackable import vector_parts

# A NUL byte cannot come from a prompt file, so these never collide with a text prompt's key.
IDS_PREFIX = "\x00igmu.token_ids/1:"
EMBEDDING_PREFIX = "\x00igmu.prompt_embedding/1:"


def vector_names(prefix: str, count: int) -> list[str]:
    """Tensor names of per-encoder vectors: ``prefix``, ``prefix_2``, ... (as text_encoder_2)."""
    return [prefix if i == 0 else f"{prefix}_{i + 1}" for i in range(count)]


def pack_vectors(vectors: Any) -> Any:
    """Per-encoder vectors as an outcome holds them: the tensor for one encoder, else a tuple."""
    parts = vector_parts(vectors)
    return parts[0] if len(parts) == 1 else parts


def vectors_bytes(vectors: Any) -> bytes:
    """The vectors as a safetensors file (float32, CPU), one tensor per text encoder
    (``vectors``, ``vectors_2``, ...): what the embedding sha256 is over."""
    import torch
    from safetensors.torch import save

    parts = vector_parts(vectors)
    return save({
        name: part.detach().to("cpu", dtype=torch.float32).contiguous()
        for name, part in zip(vector_names("vectors", len(parts)), parts, strict=True)
    })


def embedding_sha256(vectors: Any) -> str:
    return hashlib.sha256(vectors_bytes(vectors)).hexdigest()


def load_vectors(data: bytes) -> Any:
    """The vectors of `vectors_bytes`: a tensor for one encoder, a tuple for several."""
    from safetensors.torch import load

    tensors = load(data)
    return pack_vectors(tuple(tensors[n] for n in vector_names("vectors", len(tensors))))


def conditioning(outcome: AttackOutcome) -> str:
    """The prompt field of an attack image's cache key."""
    if outcome.kind == "text":
        return outcome.text
    ids = json.dumps(outcome.token_ids, separators=(",", ":"))
    if outcome.kind == "token_ids":
        return IDS_PREFIX + ids
    positions = json.dumps(outcome.positions, separators=(",", ":"))
    return f"{EMBEDDING_PREFIX}{ids}|{positions}|{embedding_sha256(outcome.vectors)}"


def image_keys(outcome: AttackOutcome, fingerprint: str, settings: GenerationSettings
               ) -> list[str]:
    text = conditioning(outcome)
    return [cache_key(fingerprint, text, seed, settings) for seed in outcome.image_seeds]


def generate_outcome(outcome: AttackOutcome, generator: Any, model: Any,
                     settings: GenerationSettings, cache: ImageCache) -> list[tuple[str, str]]:
    """Generate (or find) the outcome's images; returns (cache key, PNG sha256) per seed."""
    import torch

    keys = image_keys(outcome, generator.fingerprint, settings)
    found = []
    cond = None
    for key, seed in zip(keys, outcome.image_seeds, strict=True):
        if cache.has(key):
            found.append((key, cache.sha256(key)))
            continue
        if outcome.kind == "text":
            image = generator.generate([outcome.text], [seed], settings)[0]
        else:
            if cond is None:
                with torch.no_grad():
                    cond = model.condition(
                        model.padded(outcome.token_ids), outcome.positions, outcome.vectors
                    )
            # the adapter's pipeline_kwargs; the negative prompt is the settings'
            image = generator.generate_from_conditioning(cond, [seed], settings)[0]
        found.append((key, cache.put(key, image)))
    return found


def png_to_array(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
