"""Built-in unlearning methods for diffusers UNet2DConditionModel + CLIP text encoder pipelines.

- ``UCE``: closed-form edit of the cross-attention key/value projections (igmu.methods.uce).
- ``ESD``: ESD-x, fine-tuning of the cross-attention layers with negative guidance
  (igmu.methods.esd).
- ``NEGPROMPT``: the original weights plus ``negative_prompt = <concept>`` at generation time.
- ``ORG``: the original model, untouched.

``unlearn(method, base, task, out, settings)`` writes a diffusers pipeline folder (safetensors)
and ``out/igmu_method.json``; ``read_method_card(out)`` reads the card back.
"""

from igmu.methods.base import (
    METHODS,
    EditOutcome,
    UnlearningMethod,
    UnlearnResult,
    get_method,
    unlearn,
)
from igmu.methods.pipeline import (
    BaseInfo,
    cross_attention_modules,
    cross_attention_projections,
    encode_prompts,
    resolve_pipeline_location,
)
from igmu.pipelines.card import CARD_NAME, CARD_SCHEMA, negative_prompt_of, read_method_card

__all__ = [
    "CARD_NAME",
    "CARD_SCHEMA",
    "METHODS",
    "BaseInfo",
    "EditOutcome",
    "UnlearnResult",
    "UnlearningMethod",
    "cross_attention_modules",
    "cross_attention_projections",
    "encode_prompts",
    "get_method",
    "negative_prompt_of",
    "read_method_card",
    "resolve_pipeline_location",
    "unlearn",
]
