r"""SPEED — scalable, precise and efficient concept erasure (Li et al., ICLR 2026,
arXiv:2503.07392; code github.com/Ouxiang-Li/SPEED, ``train_erase_null.py``).

A closed-form edit of the cross-attention value (and optionally key) projections, constrained to
the null space of the retained concepts' embeddings:

.. math::

    \Delta W = W (S_{at} - S_{tt})\, P\, \big(I - M K_2 (K_2^\top P M K_2 + \lambda I)^{-1}
               K_2^\top P\big)\, M, \qquad M = (S_{tt} P + \alpha I)^{-1}

- S_tt = mean over target concepts of Σ c cᵀ, S_at = mean of Σ a cᵀ: target embeddings c and
  their anchors a (the text encoder's last hidden state at the last subject token; every token
  after ``<sot>`` for NSFW tasks, as the authors' ``nudity`` case; for a task's in-context
  ``unlearning.erase`` pairs, every position from the first token where prompt and anchor differ,
  aligned as igmu's UCE ``context`` mode does).
- P: the projector onto the span of the eigenvectors of the retained embeddings' second-moment
  matrix R = (1/N) Σ r rᵀ with eigenvalue below ``threshold`` — the retained set's null space.
  r: the last subject token of each preserved prompt (every position of a task's
  ``unlearning.preserve`` prompts in ``context`` mode), refined per layer as the paper's
  *prior knowledge refinement*: **IPF** keeps the retained embeddings whose image under the
  unconstrained erase direction W (S_at − S_tt)(I + S_tt)⁻¹ has more than the mean norm
  (``filter``), and **DPA** adds ``aug_num`` perturbations of each, r + ε v vᵀ (ε Gaussian, v the
  right-singular vector of W's smallest singular value), keeping those above the mean norm.
- K₂: the invariant embeddings (**IEC**): the empty prompt's ``<sot>`` embedding and 3 k-means
  centres of its other positions, kept exactly (λ = ``lamb`` 0 makes the constraint hard).

Defaults are the authors' (argparse of ``train_erase_null.py``): ``params`` V, ``aug_num`` 10,
``threshold`` 0.1, ``retain_scale`` (α) 1.0, ``lamb`` 0.0, ``filter`` on. Deliberate
differences: k-means is scipy's ``kmeans2`` (k-means++ seeding with ``seed``, in place of
``kmeans_pytorch``'s random init), the edit is solved in float64 (the authors' float32 on GPU),
and on SDXL the 2048-d concatenated context that feeds every ``to_k``/``to_v`` is edited (as
igmu's UCE). ``stats`` record per layer the null-space dimension, the retained embeddings after
the refinement, and the relative change of the target and retained projections.
"""

from __future__ import annotations

import re
from typing import Any

from igmu.methods.base import (
    EditOutcome,
    UnlearningMethod,
    concepts_and_preserved,
    erase_anchors,
    register_method,
    require,
    uses_task_pairs,
)
from igmu.methods.pipeline import adapter_of, encode_prompts
from igmu.methods.uce import default_anchor, token_vectors
from igmu.tasks import Task

PARAMS = ("V", "KV", "K")
TOKEN_MODES = ("auto", "last", "all", "context")
CLUSTERS = 3
AUGMENT_SEED_OFFSET = 7_919


def last_tokens(pipeline: Any, prompts: list[str], device: Any, every: bool) -> list[Any]:
    """Per prompt, its embedding rows (float64): the last subject token, or (``every``) every
    position after ``<sot>``."""
    import torch

    hidden, masks = encode_prompts(pipeline, prompts, device)
    hidden = hidden.to("cpu", torch.float64)
    rows = []
    for i in range(len(prompts)):
        if every:
            rows.append(hidden[i, 1:])
        else:
            last = max(int(masks[i].sum()) - 2, 0)
            rows.append(hidden[i, last : last + 1])
    return rows


def invariant_embeddings(pipeline: Any, device: Any, seed: int) -> Any:
    """K₂ [d, 1 + CLUSTERS]: the empty prompt's <sot> embedding and k-means centres of the rest."""
    import numpy as np
    import torch
    from scipy.cluster.vq import kmeans2

    hidden, _ = encode_prompts(pipeline, [""], device)
    null = hidden[0].to("cpu", torch.float64)
    rest = null[1:].numpy()
    centres, _ = kmeans2(rest, CLUSTERS, minit="++", seed=np.random.default_rng(seed))
    return torch.cat([null[:1], torch.from_numpy(np.asarray(centres, dtype=np.float64))]).T


def refined_retain(weight: Any, erase_weight: Any, retained: Any, aug_num: int, use_filter: bool,
                   generator: Any) -> Any:
    """IPF and DPA (module docstring): the retained embeddings [N, d] one layer keeps."""
    import torch

    rows = retained
    if aug_num > 0 and use_filter:
        norms = (rows @ erase_weight.T).norm(dim=1)
        rows = rows[norms > norms.mean()]
    if aug_num > 0 and len(rows):
        _, _, v = torch.linalg.svd(weight, full_matrices=False)
        smallest = v[-1:].T  # right-singular vector of the smallest singular value, [d, 1]
        project = smallest @ smallest.T
        noise = torch.randn((aug_num, *rows.shape), generator=generator, dtype=torch.float64)
        perturbed = (rows[None] + noise @ project).reshape(-1, rows.shape[1])
        norms = (perturbed @ erase_weight.T).norm(dim=1)
        rows = torch.cat([rows, perturbed[norms > norms.mean()]])
    return rows


def speed_delta(weight: Any, s_tt: Any, s_at: Any, retained: Any, invariant: Any,
                threshold: float, retain_scale: float, lamb: float) -> tuple[Any, int]:
    """(ΔW float64, null-space dimension) for one projection."""
    import torch

    d = weight.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    second = retained.T @ retained / max(len(retained), 1)
    u, s, _ = torch.linalg.svd(second)
    null = u[:, s < threshold]
    project = null @ null.T
    m = torch.linalg.inv(s_tt @ project + retain_scale * eye)
    k2 = invariant
    inner = k2.T @ project @ m @ k2 + lamb * torch.eye(k2.shape[1], dtype=torch.float64)
    constraint = eye - m @ k2 @ torch.linalg.pinv(inner) @ k2.T @ project
    return weight @ (s_at - s_tt) @ project @ constraint @ m, int(null.shape[1])


@register_method
class SPEED(UnlearningMethod):
    name = "SPEED"
    summary = (
        "Null-space constrained closed-form edit of the cross-attention values: erase the "
        "concept where the retained concepts' embeddings have no energy, keeping the empty prompt"
    )
    defaults = {
        "concepts": None,
        "preserve": None,
        # None: the task's paired anchors (unlearning.erase), else "" (objects) or "art" (styles)
        "anchor": None,
        "params": "V",
        "tokens": "auto",
        "aug_num": 10,
        "threshold": 0.1,
        "retain_scale": 1.0,
        "lamb": 0.0,
        "filter": True,
    }
    # Chosen on mini_object's training prompts only (benchmarks/method_defaults.py): the
    # MiniWorld's 128-d text embeddings are smaller than SD's, so is the null-space threshold.
    world_defaults = {"miniworld": {"threshold": 0.01}}

    def check(self, settings: dict[str, Any], task: Task) -> None:
        require(settings["params"] in PARAMS, f"SPEED setting 'params' must be one of {PARAMS}")
        require(settings["tokens"] in TOKEN_MODES,
                f"SPEED setting 'tokens' must be one of {TOKEN_MODES}")
        require(settings["aug_num"] >= 0, "SPEED setting 'aug_num' must be >= 0")
        require(settings["threshold"] > 0, "SPEED setting 'threshold' must be > 0")
        require(settings["retain_scale"] > 0, "SPEED setting 'retain_scale' must be > 0")
        require(settings["lamb"] >= 0, "SPEED setting 'lamb' must be >= 0")

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        import torch

        concepts, preserved = concepts_and_preserved(task, settings)
        paired = uses_task_pairs(task, settings)
        anchors, anchor = erase_anchors(task, settings, concepts, default_anchor(task))
        mode = settings["tokens"]
        if mode == "auto":
            mode = "context" if paired else ("all" if task.node.startswith("nsfw") else "last")
        words = [c.lower() for c in concepts]
        preserved = [p for p in preserved if not any(
            re.search(r"\b" + re.escape(w) + r"\b", p.lower()) for w in words)]
        require(bool(preserved), "SPEED needs preserved prompts (its null space is theirs)")
        device = torch.device(settings["device"])
        adapter = adapter_of(pipeline)

        s_tt, s_at = 0, 0
        for prompt, anchor_prompt in zip(concepts, anchors, strict=True):
            if mode == "context":
                target, anchor_rows = token_vectors(pipeline, [prompt], [anchor_prompt],
                                                    "context", device)
            else:
                target, anchor_rows = (last_tokens(pipeline, [p], device, mode == "all")[0]
                                       for p in (prompt, anchor_prompt))
            s_tt = s_tt + target.T @ target
            s_at = s_at + anchor_rows.T @ target
        s_tt, s_at = s_tt / len(concepts), s_at / len(concepts)
        retained = torch.cat(last_tokens(pipeline, preserved, device, mode == "context"))
        invariant = invariant_embeddings(pipeline, device, settings["seed"])
        eye = torch.eye(s_tt.shape[0], dtype=torch.float64)
        generator = torch.Generator("cpu").manual_seed(settings["seed"] + AUGMENT_SEED_OFFSET)

        keys = settings["params"] in ("KV", "K")
        edited, layers = [], []
        for name, linear in adapter.cross_attention_projections(keys=keys):
            if settings["params"] == "K" and not name.endswith("to_k"):
                continue
            w = linear.weight.detach().to("cpu", torch.float64)
            erase_weight = w @ (s_at - s_tt) @ torch.linalg.inv(eye + s_tt)
            rows = refined_retain(w, erase_weight, retained, settings["aug_num"],
                                  settings["filter"], generator)
            delta, null_dim = speed_delta(w, s_tt, s_at, rows, invariant, settings["threshold"],
                                          settings["retain_scale"], settings["lamb"])
            new = w + delta
            with torch.no_grad():
                linear.weight.copy_(new.to(linear.weight.dtype))
            edited.append(f"{name}.weight")
            kept = retained @ w.T
            layers.append({
                "null_dim": null_dim,
                "retained": int(len(rows)),
                "retain_drift": float((retained @ delta.T).norm() / kept.norm())
                if float(kept.norm()) > 0 else 0.0,
                "invariant_drift": float((invariant.T @ delta.T).norm()
                                         / (invariant.T @ w.T).norm()),
            })
        hyperparameters = {key: settings[key] for key in (
            "params", "aug_num", "threshold", "retain_scale", "lamb", "filter")}
        hyperparameters.update(tokens=mode, clusters=CLUSTERS, solve_dtype="float64",
                               kmeans="scipy kmeans2 (k-means++)")
        return EditOutcome(
            concepts=concepts,
            preserved=preserved,
            anchor=anchor,
            hyperparameters=hyperparameters,
            edited_parameters=edited,
            stats={
                "edited_projections": len(edited),
                "null_dim_min": min(layer["null_dim"] for layer in layers),
                "null_dim_max": max(layer["null_dim"] for layer in layers),
                "retain_drift_max": max(layer["retain_drift"] for layer in layers),
                "invariant_drift_max": max(layer["invariant_drift"] for layer in layers),
                "layers": layers,
            },
        )
