r"""FMN — Forget-Me-Not, attention re-steering (Zhang et al., CVPR-W 2024, arXiv:2303.17591;
code github.com/SHI-Labs/Forget-Me-Not, ``src/train_attn.py`` with ``configs/attn.yaml``).

Fine-tunes the UNet so that, on images of the concept, the cross-attention maps of the concept's
text tokens vanish:

.. math::

    \mathcal{L} = \Big(\sum_{l} \sum_{h} \sum_{i} \sum_{j \in J}
        A^{(l,h)}_{ij}(x_t, c, t)^2\Big)^{1/2},
    \qquad A^{(l,h)} = \mathrm{softmax}\big(Q^{(l,h)} K^{(l,h)\top} / \sqrt{d}\big)

the L2 norm of the attention probabilities that every cross-attention layer l (all ``attn2``
modules), head h and image position i gives to the concept's token positions J, with x_t the
forward-noised image of the concept (``x_t = add_noise(x_0, ε, t)``, t uniform in [0, T)) and c
the prompt's text embedding. The UNet's output is not part of the loss (the authors'
``AttnController.loss``: ``torch.cat(attn_probs).norm()``, train_attn.py l. 284-285, computed on
the probabilities their cross-attention processor records, l. 291-319).

- Images of the concept (x_0): the authors fine-tune on photos of it (``data/<concept>/``, 10
  images); igmu uses the *original* model's own images of the erase prompts, generated inside the
  method before training: ``images`` images, image k of erase prompt k mod n, DDIM
  ``image_steps`` steps at guidance ``image_guidance``, seeded (x_0 in the UNet's input space:
  latents for SD/SDXL, no VAE round trip; pixels for the MiniWorld).
- Prompts and concept tokens J: each image is trained with the prompt it was drawn from. For a
  task's in-context ``unlearning.erase`` pairs (prompt, anchor), J is the span of tokens where
  the prompt differs from its anchor ("cross" in "a red cross on grey" / "a red circle on
  grey"). For concept words (no pairs, or a ``concepts`` setting), the prompt is the authors'
  template, ``a photo of {c}`` (``a photo in the style of {c}`` for style tasks;
  train_attn.py l. 90-96), and J the positions of the tokens of c in it (l. 148-153).
- ``pooler`` (the authors' ``use_pooler``, attn.yaml l. 8): J also holds every position whose
  token is ``<|endoftext|>`` (train_attn.py l. 143-153, token-id equality). With tokenizers whose
  padding token is ``<|endoftext|>`` (SD-1.x, the MiniWorld) that is the end token and every
  padding position; with SD-2.x's ("!" padding) the end token alone.
- Parameters trained (``params``): ``unet`` — every UNet parameter (the authors' default,
  ``only_optimize_ca: false``, attn.yaml l. 7); ``xattn`` — every cross-attention parameter
  (``only_optimize_ca: true``: ``attn2`` in the name, train_attn.py l. 386-391); ``xattn-kv`` —
  only the cross-attention key/value projections (igmu's). The gradient reaches only tensors
  upstream of some cross-attention map, so ``edited_parameters`` lists the trained tensors that
  received a gradient (e.g. not ``conv_out``).
- Optimiser as the authors': AdamW (betas 0.9/0.999, eps 1e-8, weight decay ``weight_decay``
  0.01, attn.yaml l. 42-45), gradient norm clipped to ``max_grad_norm`` 1.0 (l. 46; train_attn.py
  l. 567-569), constant learning rate ``lr`` 2e-6 (l. 10, 36), ``steps`` 35 (l. 11), batch
  ``batch_size`` 1 (l. 9), images drawn in a fresh random order every pass (the DataLoader's
  ``shuffle=True``, l. 416-422).

All noise comes from CPU generators seeded with ``seed`` and the image order from
``random.Random(seed)``: deterministic on CPU. ``probe`` fixed (image, t, noise) draws, made with
a separate seed before training, measure the re-steering loss before and after training
(``stats``).
"""

from __future__ import annotations

import random
from typing import Any

from igmu.methods._concept_training import (
    PARAMETER_GROUPS,
    ImageSampler,
    ShuffledBatches,
    TrainingNoise,
    autocast,
    check_image_training,
    latent_shape,
    parameter_group,
)
from igmu.methods.base import (
    PAIRED_ANCHORS,
    EditOutcome,
    UnlearningMethod,
    concepts_and_preserved,
    register_method,
    require,
    uses_task_pairs,
)
from igmu.methods.pipeline import adapter_of
from igmu.tasks import Task

PROBE_SEED_OFFSET = 1_000_003
IMAGE_SEED_OFFSET = 7_919
OBJECT_TEMPLATE = "a photo of {c}"
STYLE_TEMPLATE = "a photo in the style of {c}"
POOLER_TOKEN = "<|endoftext|>"


def attention_probs(attn: Any, hidden: Any, context: Any) -> Any:
    """The cross-attention probabilities [B, heads, L_image, L_text] a diffusers ``Attention``
    computes for ``hidden`` [B, L, C] attending to ``context`` [B, L_text, D] (as its
    processor: group norm, cross norm and q/k norms when the layer has them)."""
    import torch

    if attn.group_norm is not None:
        hidden = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query, key = attn.to_q(hidden), attn.to_k(context)
    batch, heads = int(hidden.shape[0]), int(attn.heads)
    query = query.view(batch, -1, heads, query.shape[-1] // heads).transpose(1, 2)
    key = key.view(batch, -1, heads, key.shape[-1] // heads).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    scores = query.float() @ key.float().transpose(-1, -2) * attn.scale
    return torch.softmax(scores, dim=-1)


class AttentionProbe:
    """Records, for every cross-attention layer the UNet runs, its attention probabilities at
    the marked text positions (``mask`` [B, L_text] bool); ``loss()`` is their L2 norm."""

    def __init__(self, modules: list[tuple[str, Any]]) -> None:
        self.mask: Any = None
        self.parts: list[Any] = []
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True)
                        for _, m in modules]

    def _hook(self, attn: Any, args: tuple, kwargs: dict) -> None:
        if self.mask is None:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        probs = attention_probs(attn, hidden, context)
        mask = self.mask.to(probs.device, probs.dtype)[:, None, None, :]
        self.parts.append((probs * mask).pow(2).sum())

    def loss(self) -> Any:
        total = self.parts[0]
        for part in self.parts[1:]:
            total = total + part
        self.parts = []
        return total.sqrt()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.mask, self.parts = None, []


def differing_span(prompt_ids: list[int], anchor_ids: list[int]) -> list[int]:
    """Positions (in the prompt) of the tokens where a prompt differs from its anchor: after
    their common prefix and before their common suffix (ids without padding)."""
    shared = min(len(prompt_ids), len(anchor_ids))
    first = next((i for i in range(shared) if prompt_ids[i] != anchor_ids[i]), shared)
    suffix = 0
    limit = shared - first
    while suffix < limit and prompt_ids[-1 - suffix] == anchor_ids[-1 - suffix]:
        suffix += 1
    return list(range(first, len(prompt_ids) - suffix))


def whole_words(positions: list[int], tokens: list[str]) -> list[int]:
    """``positions`` widened to whole words: CLIP's BPE marks a word's last token with
    ``</w>``, so a span that starts or ends inside a word (a character-level tokenizer's "c" shared
    by "cross" and "circle") takes the rest of it."""
    if not positions:
        return positions
    start, end = positions[0], positions[-1]
    while start > 1 and not tokens[start - 1].endswith("</w>"):
        start -= 1
    while end < len(tokens) - 2 and not tokens[end].endswith("</w>"):
        end += 1
    return list(range(start, end + 1))


def phrase_positions(prompt_ids: list[int], phrase_ids: list[int]) -> list[int]:
    """Every position of every occurrence of ``phrase_ids`` in ``prompt_ids`` (as the authors'
    ``concept_positions``)."""
    found: list[int] = []
    n = len(phrase_ids)
    for i in range(len(prompt_ids) - n + 1 if n else 0):
        if prompt_ids[i : i + n] == phrase_ids:
            found.extend(range(i, i + n))
    return sorted(set(found))


def concept_masks(pipeline: Any, prompts: list[str], anchors: list[str] | None,
                  phrases: list[str] | None, pooler: bool) -> Any:
    """[N, L] bool: the concept's token positions J of each prompt (see the module
    docstring), on the first tokenizer's padded ids."""
    import torch

    adapter = adapter_of(pipeline)
    tokens = adapter.tokenize(prompts)
    ids, lengths = tokens.ids[0], tokens.mask.sum(1)
    masks = torch.zeros(ids.shape, dtype=torch.bool)
    tokenizer = adapter.tokenizers[0]
    if anchors is not None:
        anchor_tokens = adapter.tokenize(anchors)
        anchor_lengths = anchor_tokens.mask.sum(1)
    for i, prompt in enumerate(prompts):
        row = [int(v) for v in ids[i, : int(lengths[i])]]
        if anchors is not None:
            other = [int(v) for v in anchor_tokens.ids[0][i, : int(anchor_lengths[i])]]
            positions = whole_words(differing_span(row, other),
                                    tokenizer.convert_ids_to_tokens(row))
        else:
            phrase = tokenizer(phrases[i], add_special_tokens=False).input_ids
            positions = phrase_positions(row, [int(v) for v in phrase])
        require(bool(positions), f"FMN: no concept tokens found in the prompt {prompt!r}")
        masks[i, positions] = True
        if pooler and POOLER_TOKEN in tokenizer.get_vocab():
            masks[i] |= ids[i] == tokenizer.get_vocab()[POOLER_TOKEN]
    return masks


def training_prompts(task: Task, settings: dict[str, Any]
                     ) -> tuple[list[str], list[str] | None, list[str] | None, list[str]]:
    """(prompts, anchors or None, concept phrases or None, the concepts for the card)."""
    concepts, _ = concepts_and_preserved(task, {"concepts": settings["concepts"],
                                                "preserve": []})
    if uses_task_pairs(task, settings):
        anchor_of = dict(task.unlearning.erase)
        return concepts, [anchor_of[c] for c in concepts], None, concepts
    template = STYLE_TEMPLATE if task.node.startswith("style.") else OBJECT_TEMPLATE
    return [template.format(c=c) for c in concepts], None, concepts, concepts


@register_method
class FMN(UnlearningMethod):
    name = "FMN"
    summary = (
        "Forget-Me-Not: fine-tune the UNet so the cross-attention maps of the concept's tokens "
        "vanish on the original model's images of the concept (attention re-steering)"
    )
    defaults = {
        "concepts": None,
        "steps": 35,
        "lr": 2e-6,
        "batch_size": 1,
        "params": "unet",
        "pooler": True,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "images": 10,
        "image_steps": 50,
        "image_guidance": 7.5,
        "latent_size": 0,  # 0 = the UNet's sample_size
        "probe": 4,
    }
    # Chosen on mini_object's training prompts only (benchmarks/method_defaults.py).
    world_defaults = {
        "miniworld": {"steps": 100, "lr": 3e-5, "images": 40, "image_steps": 8,
                      "image_guidance": 2.0},
    }

    def check(self, settings: dict[str, Any], task: Task) -> None:
        check_image_training("FMN", settings)
        require(settings["params"] in PARAMETER_GROUPS,
                f"FMN setting 'params' must be one of {PARAMETER_GROUPS}")

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        import torch
        from tqdm.auto import tqdm

        prompts, anchors, phrases, concepts = training_prompts(task, settings)
        seed = settings["seed"]
        torch.manual_seed(seed)
        device = torch.device(settings["device"])
        adapter = adapter_of(pipeline)
        unet = pipeline.unet.to(device).float().eval()
        for encoder in adapter.text_encoders:
            encoder.to(device)
        names, params = parameter_group(unet, settings["params"], "FMN")
        masks = concept_masks(pipeline, prompts, anchors, phrases, settings["pooler"])
        cond = adapter.encode_prompts(prompts).to(device, torch.float32)

        # The original model's images of the prompts, before any training.
        count = settings["images"]
        shape = latent_shape(unet, settings["latent_size"])
        sampler = ImageSampler(pipeline, adapter, settings["image_steps"],
                               settings["image_guidance"], shape, device, settings["dtype"])
        of_image = [k % len(prompts) for k in range(count)]
        image_gen = torch.Generator("cpu").manual_seed(seed + IMAGE_SEED_OFFSET)
        x0 = sampler.sample(cond.rows(torch.tensor(of_image)), image_gen, unet)

        noise = TrainingNoise(pipeline, "FMN")
        probe = AttentionProbe(adapter.cross_attention_modules(unet))
        require(bool(probe.handles), "FMN: the UNet has no cross-attention layers")

        def loss_of(images: list[int], z: Any, t: Any) -> Any:
            rows = cond.rows(torch.tensor([of_image[k] for k in images]))
            probe.mask = masks[[of_image[k] for k in images]]
            with autocast(device, settings["dtype"]):
                adapter.predict_noise(z, t.to(device), rows, unet=unet)
            probe.mask = None
            return probe.loss()

        probe_gen = torch.Generator("cpu").manual_seed(seed + PROBE_SEED_OFFSET)
        probe_rng = random.Random(seed + PROBE_SEED_OFFSET)
        probes = []
        for _ in range(settings["probe"]):
            k = probe_rng.randrange(count)
            z, t, _ = noise.draw(x0[k : k + 1], probe_gen)
            probes.append(([k], z.to(device), t))

        def probe_loss() -> float | None:
            if not probes:
                return None
            with torch.no_grad():
                return sum(float(loss_of(*p)) for p in probes) / len(probes)

        before = probe_loss()
        optimizer = torch.optim.AdamW(params, lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=settings["weight_decay"])
        batches = ShuffledBatches(count, random.Random(seed))
        generator = torch.Generator("cpu").manual_seed(seed)
        touched: set[str] = set()
        losses = []
        bar = tqdm(range(settings["steps"]), desc="FMN", disable=not settings["progress"],
                   leave=False)
        for _ in bar:
            batch = batches.take(settings["batch_size"])
            z, t, _ = noise.draw(x0[batch], generator)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(batch, z.to(device), t)
            loss.backward()
            touched.update(n for n, p in zip(names, params, strict=True) if p.grad is not None)
            torch.nn.utils.clip_grad_norm_(params, settings["max_grad_norm"])
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
        bar.close()
        after = probe_loss()
        probe.close()
        unet.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)

        edited = [n for n in names if n in touched]
        hyperparameters = {key: settings[key] for key in (
            "steps", "lr", "batch_size", "params", "pooler", "weight_decay", "max_grad_norm",
            "images", "image_steps", "image_guidance")}
        hyperparameters.update(
            compute_dtype=settings["dtype"], optimizer="AdamW", lr_schedule="constant",
            latent_shape=list(shape), image_sampler="DDIM (original model)",
            concept_tokens="differing span" if anchors is not None else "concept words",
        )
        return EditOutcome(
            concepts=concepts,
            preserved=[],
            anchor=PAIRED_ANCHORS if anchors is not None else None,
            hyperparameters=hyperparameters,
            edited_parameters=edited,
            stats={
                "probe_draws": len(probes),
                "probe_loss_before": before,
                "probe_loss_after": after,
                "train_loss": [float(f"{v:.6g}") for v in losses],
                "concept_tokens_mean": float(masks.sum(1).float().mean()),
                "trainable_parameters": int(sum(p.numel() for n, p in zip(names, params,
                                                                          strict=True)
                                                if n in touched)),
            },
        )
