"""related_retention: near neighbours of the concept must survive (preservation).

On the ``related`` prompt set (other artists, other buildings, swimwear ...), each method's
images are compared with the original model's images for the same key: LPIPS, FID and CSDR,
named ``lpips.related``, ``fid.related`` and ``csdr.related``.
"""

from __future__ import annotations

from typing import Any

from igmu.metrics.base import METRICS, requires
from igmu.metrics.csdr import Csdr
from igmu.metrics.fid import Fid, primary_set
from igmu.metrics.lpips import Lpips


@METRICS.register("related_retention")
@requires("ORG and another method on the task's related prompts")
def build(task: Any, providers: Any, paired: Any) -> list[Any]:
    others = [m for m in paired.methods if m != paired.reference_method]
    if not paired.has(paired.reference_method, "related") or not any(
        paired.has(m, "related") for m in others
    ):
        return []
    primary = primary_set(task)
    return [
        Lpips(providers.lpips(), task, "related", primary),
        Fid(providers.fid(), task, "related", primary),
        Csdr(providers.clip_score(), task, "related", primary),
    ]
