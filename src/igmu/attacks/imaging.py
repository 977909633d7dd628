"""Attack images through igmu's content-addressed image cache.

A text outcome is generated exactly as ``igmu generate`` generates a prompt (same generator,
same cache key). A token-id or soft-embedding outcome is generated from ``prompt_embeds`` that
the attacked model's text encoder computes from the ids (with the learned vectors in place); the
pipeline call is otherwise ``DiffusersGenerator``'s (one image per call, a CPU generator per seed,
the method's negative prompt). Its cache key's prompt field is a conditioning string that names
the ids and the vectors' sha256, so the key covers everything the pixels depend on: generator
fingerprint, ids, embedding, seed and settings.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np

from igmu.attacks.base import AttackOutcome
from igmu.generation.base import GenerationSettings, to_uint8_images
from igmu.generation.cache import ImageCache, cache_key

# A NUL byte cannot come from a prompt file, so these never collide with a text prompt's key.
IDS_PREFIX = "\x00igmu.token_ids/1:"
EMBEDDING_PREFIX = "\x00igmu.prompt_embedding/1:"


def vectors_bytes(vectors: Any) -> bytes:
    """The vectors as a safetensors file (float32, CPU): what the embedding sha256 is over."""
    import torch
    from safetensors.torch import save

    tensor = vectors.detach().to("cpu", dtype=torch.float32).contiguous()
    return save({"vectors": tensor})


def embedding_sha256(vectors: Any) -> str:
    return hashlib.sha256(vectors_bytes(vectors)).hexdigest()


def load_vectors(data: bytes) -> Any:
    from safetensors.torch import load

    return load(data)["vectors"]


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


def _generate_from_states(generator: Any, states: Any, seed: int,
                          settings: GenerationSettings) -> np.ndarray:
    import torch

    kwargs: dict[str, Any] = {
        "prompt_embeds": states,
        "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
        "height": settings.height,
        "width": settings.width,
        "generator": [torch.Generator(device="cpu").manual_seed(int(seed))],
        "output_type": "np",
    }
    if settings.negative_prompt is not None:
        kwargs["negative_prompt"] = [settings.negative_prompt]
    with torch.no_grad():
        result = generator.pipeline(**kwargs)
    images = result.images if hasattr(result, "images") else result[0]
    return to_uint8_images(images)[0]


def generate_outcome(outcome: AttackOutcome, generator: Any, model: Any,
                     settings: GenerationSettings, cache: ImageCache) -> list[tuple[str, str]]:
    """Generate (or find) the outcome's images; returns (cache key, PNG sha256) per seed."""
    import torch

    keys = image_keys(outcome, generator.fingerprint, settings)
    found = []
    states = None
    for key, seed in zip(keys, outcome.image_seeds, strict=True):
        if cache.has(key):
            found.append((key, cache.sha256(key)))
            continue
        if outcome.kind == "text":
            image = generator.generate([outcome.text], [seed], settings)[0]
        else:
            if states is None:
                with torch.no_grad():
                    states = model.encode(
                        model.padded(outcome.token_ids), outcome.positions, outcome.vectors
                    )
            image = _generate_from_states(generator, states, seed, settings)
        found.append((key, cache.put(key, image)))
    return found


def png_to_array(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
