"""Model families behind one adapter interface (see `igmu.families.base`).

``family_of(pipeline)`` returns the `FamilyAdapter` for a loaded diffusers pipeline: ``sd``
(Stable Diffusion 1.x/2.x, the MiniWorld) or ``sdxl``. Adding a family is one new module here.
"""

from igmu.families.base import Conditioning, FamilyAdapter, Tokens
from igmu.families.registry import FAMILIES, family_of, register_family

__all__ = [
    "FAMILIES",
    "Conditioning",
    "FamilyAdapter",
    "Tokens",
    "family_of",
    "register_family",
]
