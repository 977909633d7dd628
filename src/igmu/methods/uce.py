r"""UCE — Unified Concept Editing (Gandikota et al., WACV 2024, arXiv:2308.14761).

A closed-form edit of every cross-attention key and value projection (``attn2.to_k``,
``attn2.to_v``: ``W`` of shape [out, d_text], no bias in SD) so that the text tokens of the erased
concept are projected like the tokens of an anchor ("guide") prompt, while the tokens of preserved
concepts keep their projections:

.. math::

    W' = \Big(\lambda W + s_e \sum_{e} v^*_e c_e^\top + s_p \sum_{p} W c_p c_p^\top\Big)
         \Big(\lambda I + s_e \sum_{e} c_e c_e^\top + s_p \sum_{p} c_p c_p^\top\Big)^{-1},
    \qquad v^*_e = W c_{a(e)}

the minimiser of
:math:`s_e \sum_e \|W' c_e - v^*_e\|^2 + s_p \sum_p \|W' c_p - W c_p\|^2 + \lambda \|W' - W\|_F^2`.
This is equation 7 of the paper with the authors' ridge term ``lamb`` (pulling W' towards W, as in
their ``uce_sd_erase.py``), computed in float64 with a linear solve (the matrix is symmetric
positive definite for ``lamb > 0``; a pseudo-inverse is used for ``lamb = 0``).

- ``c_e``: text-encoder output embeddings (the hidden states the UNet's cross-attention reads) of
  the erase prompts, by default the task's concept name and concept words, each encoded alone.
- ``c_a(e)``: the embedding of the anchor prompt at the corresponding position. Anchor default:
  the empty prompt (its last "token" is the start token) for objects and NSFW concepts, ``"art"``
  for style tasks (the authors' guide for artists).
- ``c_p``: embeddings of preserved concepts, by default the class names of the task's
  ``unrelated`` and ``related`` prompt sets.

Token selection (``tokens``):

- ``last`` (default; the authors' current ``uce_sd_erase.py``): one vector per prompt, the last
  non-special token (the concept's final token, which in CLIP's causal encoder has read the whole
  phrase) mapped to the anchor's last token.
- ``tail`` (the authors' 2023 ``train_erase.py``): the last token and every following end/padding
  token, aligned position by position with the anchor's tail; preserved prompts use every position.
- ``phrase``: every non-special token of the concept phrase mapped to the anchor's last token;
  preserved prompts use their non-special tokens.
- ``context`` (igmu's; for erase prompts given *in context* with paired anchors, such as a task's
  ``unlearning.erase`` pairs "a red cross on grey" -> "a red circle on grey"): every position from
  the first token where prompt and anchor differ to the end of the padded sequence, aligned with
  the anchor from the end (the prompt's extra tokens map to the anchor's first differing
  position). In a causal text encoder every token after the concept carries it, and a small
  model's UNet reads those tokens as much as the concept's own; preserved prompts use every
  position.
- ``auto`` (default): ``context`` when the erase prompts come from the task's ``unlearning``
  pairs, else ``last``.

Defaults follow the authors' script: ``lamb = 0.5``, ``erase_scale = 1``, ``preserve_scale = 1``,
keys and values edited. ``expand`` adds the authors' prompt templates ("painting by {c}", ... for
styles; "photo of {c}", ... otherwise) to the erase prompts.
"""

from __future__ import annotations

from typing import Any

from igmu.methods.base import (
    EditOutcome,
    UnlearningMethod,
    concepts_and_preserved,
    erase_anchors,
    register_method,
    require,
    unique,
    uses_task_pairs,
)
from igmu.methods.pipeline import adapter_of, encode_prompts
from igmu.tasks import Task

TOKEN_MODES = ("auto", "last", "tail", "phrase", "context")
STYLE_TEMPLATES = (
    "painting by {c}", "art by {c}", "artwork by {c}", "picture by {c}", "style of {c}",
)
OBJECT_TEMPLATES = (
    "image of {c}", "photo of {c}", "portrait of {c}", "picture of {c}", "painting of {c}",
)


def default_anchor(task: Task) -> str:
    return "art" if task.node.startswith("style.") else ""


def _positions(mask: Any) -> tuple[int, int]:
    """(index of the last non-special token, number of non-special tokens) of one prompt."""
    count = int(mask.sum()) - 2  # minus start and end tokens
    return max(count, 0), count


def token_ids(pipeline: Any, prompts: list[str]) -> list[list[int]]:
    """Padded token ids of the first tokenizer, as encode_prompts feeds them to the text
    encoder (SDXL's second tokenizer splits words the same way, only its padding differs)."""
    ids = adapter_of(pipeline).tokenize(prompts).ids[0]
    return [[int(i) for i in row] for row in ids]


def _first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def token_vectors(
    pipeline: Any,
    prompts: list[str],
    anchors: list[str],
    mode: str,
    device: Any,
) -> tuple[Any, Any]:
    """(C_e [n, d], C_a [n, d]) float64: erase-token embeddings and their anchor embeddings."""
    import torch

    hidden, masks = encode_prompts(pipeline, prompts + anchors, device)
    hidden = hidden.to("cpu", torch.float64)
    erase_rows, anchor_rows = [], []
    n = len(prompts)
    length = hidden.shape[1]
    ids = token_ids(pipeline, prompts + anchors) if mode == "context" else None
    for i in range(n):
        e, a = hidden[i], hidden[n + i]
        last_e, count_e = _positions(masks[i])
        last_a, _ = _positions(masks[n + i])
        require(count_e > 0, f"UCE: concept prompt {prompts[i]!r} has no tokens to edit")
        if mode == "context":
            first = _first_difference(ids[i], ids[n + i])
            require(
                first is not None,
                f"UCE: erase prompt {prompts[i]!r} and its anchor tokenize the same",
            )
            extra = int(masks[i].sum() - masks[n + i].sum())
            for position in range(first, length):
                erase_rows.append(e[position : position + 1])
                aligned = min(length - 1, max(first, position - extra))
                anchor_rows.append(a[aligned : aligned + 1])
        elif mode == "last":
            erase_rows.append(e[last_e : last_e + 1])
            anchor_rows.append(a[last_a : last_a + 1])
        elif mode == "tail":
            farthest = max(last_e, last_a)
            erase_rows.append(e[last_e : length - (farthest - last_e)])
            anchor_rows.append(a[last_a : length - (farthest - last_a)])
        else:  # phrase
            erase_rows.append(e[1 : last_e + 1])
            anchor_rows.append(a[last_a : last_a + 1].expand(count_e, -1))
    return torch.cat(erase_rows), torch.cat(anchor_rows)


def preserve_vectors(pipeline: Any, prompts: list[str], mode: str, device: Any) -> Any:
    import torch

    width = adapter_of(pipeline).context_dim
    if not prompts:
        return torch.zeros(0, width, dtype=torch.float64)
    hidden, masks = encode_prompts(pipeline, prompts, device)
    hidden = hidden.to("cpu", torch.float64)
    rows = []
    for i in range(len(prompts)):
        last, count = _positions(masks[i])
        if count <= 0:
            continue
        if mode == "last":
            rows.append(hidden[i, last : last + 1])
        elif mode in ("tail", "context"):
            rows.append(hidden[i])
        else:
            rows.append(hidden[i, 1 : last + 1])
    return torch.cat(rows) if rows else torch.zeros(0, width, dtype=torch.float64)


def uce_solve(
    weight: Any,
    erase: Any,
    anchor: Any,
    preserve: Any,
    lamb: float,
    erase_scale: float,
    preserve_scale: float,
) -> Any:
    """The closed-form UCE weight (float64) for one projection; see the module docstring."""
    import torch

    w = weight.to(torch.float64)
    d = w.shape[1]
    targets = anchor @ w.T  # v*_e = W c_a, one row per erase vector
    kept = preserve @ w.T  # W c_p
    mat1 = lamb * w + erase_scale * targets.T @ erase + preserve_scale * kept.T @ preserve
    mat2 = (
        lamb * torch.eye(d, dtype=torch.float64)
        + erase_scale * erase.T @ erase
        + preserve_scale * preserve.T @ preserve
    )
    if lamb > 0:
        return torch.linalg.solve(mat2, mat1.T).T  # mat2 is symmetric
    return mat1 @ torch.linalg.pinv(mat2, hermitian=True)


def _relative(num: Any, den: Any) -> float:
    den_norm = float(den.norm())
    return float(num.norm()) / den_norm if den_norm > 0 else 0.0


@register_method
class UCE(UnlearningMethod):
    name = "UCE"
    summary = (
        "Unified Concept Editing: closed-form edit of the cross-attention key/value projections "
        "mapping the concept's tokens onto an anchor's, preserving other concepts"
    )
    defaults = {
        "concepts": None,
        "preserve": None,
        # None: the task's paired anchors (unlearning.erase) when the erase prompts are the
        # task's, else "" (objects, NSFW) or "art" (styles)
        "anchor": None,
        "lamb": 0.5,
        "erase_scale": 1.0,
        "preserve_scale": 1.0,
        "tokens": "auto",
        "edit_keys": True,
        "expand": False,
    }

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        import torch

        mode = settings["tokens"]
        require(mode in TOKEN_MODES, f"UCE setting 'tokens' must be one of {TOKEN_MODES}")
        lamb = settings["lamb"]
        require(lamb >= 0, "UCE setting 'lamb' must be >= 0")
        require(settings["erase_scale"] > 0, "UCE setting 'erase_scale' must be > 0")
        require(settings["preserve_scale"] >= 0, "UCE setting 'preserve_scale' must be >= 0")
        concepts, preserved = concepts_and_preserved(task, settings)
        paired = uses_task_pairs(task, settings)
        if mode == "auto":
            mode = "context" if paired else "last"
        if settings["expand"]:
            require(not paired, "UCE setting 'expand' needs concept words, not the task's "
                    "in-context erase pairs; pass 'concepts' too")
            templates = STYLE_TEMPLATES if task.node.startswith("style.") else OBJECT_TEMPLATES
            concepts = unique(concepts + [t.format(c=c) for c in concepts for t in templates])
        anchor_list, anchor = erase_anchors(task, settings, concepts, default_anchor(task))

        device = torch.device(settings["device"])
        adapter = adapter_of(pipeline)
        torch.manual_seed(settings["seed"])
        erase, anchors = token_vectors(pipeline, concepts, anchor_list, mode, device)
        keep = preserve_vectors(pipeline, preserved, mode, device)

        edited, per_kind = [], {}
        for name, linear in adapter.cross_attention_projections(keys=settings["edit_keys"]):
            old = linear.weight.detach().to("cpu", torch.float64)
            new = uce_solve(
                old, erase, anchors, keep, lamb, settings["erase_scale"],
                settings["preserve_scale"],
            )
            with torch.no_grad():
                linear.weight.copy_(new.to(linear.weight.dtype))
            edited.append(f"{name}.weight")
            target = anchors @ old.T
            kind = name.rsplit(".", 1)[-1]
            row = per_kind.setdefault(kind, {"erase_residual": [], "preserve_drift": []})
            row["erase_residual"].append(_relative(erase @ new.T - target, erase @ old.T - target))
            if len(keep):
                row["preserve_drift"].append(_relative(keep @ new.T - keep @ old.T, keep @ old.T))
        stats = {
            "erase_vectors": int(erase.shape[0]),
            "preserve_vectors": int(keep.shape[0]),
            "edited_projections": len(edited),
        }
        for kind, row in per_kind.items():
            for key, values in row.items():
                if values:
                    stats[f"{kind}.{key}_max"] = max(values)
                    stats[f"{kind}.{key}_mean"] = sum(values) / len(values)
        return EditOutcome(
            concepts=concepts,
            preserved=preserved,
            anchor=anchor,
            hyperparameters={
                "lamb": lamb,
                "erase_scale": settings["erase_scale"],
                "preserve_scale": settings["preserve_scale"],
                "tokens": mode,
                "edit_keys": settings["edit_keys"],
                "expand": settings["expand"],
                "solve_dtype": "float64",
            },
            edited_parameters=edited,
            stats=stats,
        )
