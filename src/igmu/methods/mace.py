r"""MACE — mass concept erasure (Lu et al., CVPR 2024, arXiv:2403.06135; code
github.com/Shilin-LU/MACE: ``training.py``, ``src/cfr_lora_training.py``, ``src/cfr_utils.py``,
``src/fuse_lora_close_form.py``, ``src/dataset.py``, ``src/mace_lora_atten_processor.py``,
``inference.py``, ``data_preparation.py``, ``configs/object/erase_ship.yaml``).

Three stages on the cross-attention key/value projections W (every ``attn2.to_k``/``to_v``):

1. Closed-form refinement (CFR): the *co-existing* tokens of each concept prompt (its start
   token, the words around the concept, the end token and the padding after it: everything but
   the concept's own tokens, ``find_matching_indices`` + the tail extension in ``prepare_k_v``)
   are projected like the same positions of the prompt with the mapping concept (``a``), keeping
   preserved prompts' projections (every position of each, ``c_p``):

   .. math:: W_1 = \big(\lambda W_0 + \textstyle\sum W_0 a c^\top + s_t \sum W_0 c_p c_p^\top\big)
             \big(\lambda I + \sum c c^\top + s_t \sum c_p c_p^\top\big)^{-1}

2. One rank-``rank`` LoRA ``ΔW_i = B_i A_i`` per concept i on W_1 (A ~ N(0, 1/rank²), B = 0,
   as diffusers' ``LoRALinearLayer``), trained with the attention loss
   :math:`\mathcal{L}_i = \sum_l \| A^{(l)}(x_t, c)[M, J] \|_F`: per cross-attention layer l,
   the attention probabilities (every head) that the image positions inside the concept's region
   M give to the concept's tokens J (the concept's words, plus with ``pooler`` every
   ``<|endoftext|>`` position), on x_t = the forward-noised image of the concept, t drawn from
   the authors' importance weights ``σ(0.05(t-200)) - σ(0.05(t-400))`` (``importance_sampling``;
   rescaled for T ≠ 1000). The UNet's output is not in the loss (``AttnController.loss``).
3. Fusion: every LoRA keeps its concept's projections and W_1 the rest,

   .. math:: W^* = \big(\lambda W_1 + \textstyle\sum_i \sum_{c \in P_i} (W_1 + ΔW_i) c c^\top
             + s_f \sum W_0 c_p c_p^\top\big)\big(\lambda I + \sum_i \sum_{c \in P_i} c c^\top
             + s_f \sum c_p c_p^\top\big)^{-1}

   with c every position of concept i's prompts P_i (``all_words``, ``prepare_k_v_for_lora``).
   For one concept and s_f = 0 this is :math:`W_1 + ΔW\,G(\lambda I + G)^{-1}`, G = Σ c cᵀ: the
   LoRA restricted (softly, by λ) to the span of the concept prompts' embeddings, not the plain
   merge W_1 + ΔW; λ → 0 with G of full rank gives the merge.

Concepts. For concept words (no task pairs, or a ``concepts`` setting) every word is a concept
with its own LoRA, trained on the authors' 30 templates ("A photo of {c}", ...; the style list
for style tasks; ``augment=false``: "A photo of {c}") against the same templates with the mapping
concept (``anchor``; default ``""`` for objects, ``"art"`` for styles and ``"a person wearing
clothes"`` for NSFW, as the authors' configs), on images of "a photo of the {c}" ("a photo in the
style of {c}"). For a task's in-context ``unlearning.erase`` pairs the concepts are the distinct
phrases where prompt and anchor differ (widened to whole words: ``cross`` on mini_object; three
phrases on mini_style), each phrase's pairs its prompts, mapping and images.

Defaults: the authors' object config (erase_ship.yaml): ``lr`` 1e-5, ``steps`` 50, ``rank`` 1,
``lamb`` 1e3, ``train_preserve_scale`` = ``fuse_preserve_scale`` = 0, pooler on, importance
sampling on, 30 templates, AdamW (0.9, 0.999, eps 1e-8, weight decay 0.01), gradient norm 1.0,
constant lr, batch 1, 8 images per concept at 30 steps and guidance 7.5. Their other configs
(celebrities lr 1e-4, λ 0, preserve 1e-4; explicit content 120 steps, λ 0, preserve 7e-7; art
lr 1e-4) are settings to pass; their preserve scales weigh a cache of every MS-COCO caption.
The MiniWorld defaults (``world_defaults``: 8 DDIM image steps at guidance 2, preserve scales
0.1) were chosen with benchmarks/method_defaults.py on mini_object's training prompts (ORG:
residual 1.00, preserve accuracy 0.625; with the authors' preserve 0: 0.00 / 0.375; any preserve
scale > 0 in either stage: 0.00 / 0.688; lr 1e-5..1e-3, λ 1..1e4, region none/attention, mask
resolution 8/16 and steps 0 all tie at 0.00 / 0.688, lr 1e-2 falls to 0.125 / 0.562). On the
MiniWorld the refinement alone erases: the LoRA stage changes nothing these prompts measure.

Deliberate differences: (1) the region M is not GroundingDINO + SAM's mask of the concept in the
image (igmu ships no segmenter) but the original model's cross-attention maps of the concept's
tokens on that image, noised at ``mask_draws`` importance-sampled t, averaged over heads, tokens,
draws and the layers at ``mask_resolution`` (0: the one nearest a quarter of the latent side, as
Receler), min-max normalised, thresholded at ``mask_threshold``, then nearest-resized to every
layer as the authors resize theirs; ``region=none`` (the authors' for styles, ``auto``) uses
every position. Measured on mini_object's images: the MiniWorld model's concept-token maps mark
the shape's contrast with its background (high on the cross over white, low over grey or black),
so the region overlaps the cross poorly there (IoU with the images' saturated pixels 0.02 at
the 8x8 layers, 0.21 at 16x16); on SD the concept tokens' maps are known to cover the object;
(2) the images are the original model's own, DDIM ``image_steps`` (the authors: DPM-Solver,
30 steps), kept in the UNet's input space (no VAE round trip, no random crop);
(3) the preserved prompts are the task's (UCE's), not the MS-COCO caption cache, and the CFR
scales them once (the authors' CFR multiplies the cache by ``train_preserve_scale`` twice);
(4) CLIP's 77-token truncation is respected when aligning tokens (the authors assume none);
(5) spans are widened to whole words (the MiniWorld's tokenizer splits words into characters);
(6) the solves are float64 with second-moment matrices (the authors: float32 ``torch.inverse``;
a pseudo-inverse when λ = 0 and nothing is preserved); (7) batch 1 only (the authors' loss reads
the first sample of a batch). SDXL: the authors have no SDXL code; the algorithm needs only the
cross-attention and runs through the family adapter on the 2048-d concatenated context (SDXL's
pooled embedding, read by the time embedding, is not edited, as with UCE).

Published form: the authors publish the fused pipeline folder (``LoRA_fusion_model``); so does
igmu (``write_form`` is the default, None). All noise comes from CPU generators seeded with
``seed``: deterministic on CPU.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from igmu.methods._concept_training import (
    ImageSampler,
    ShuffledBatches,
    TrainingNoise,
    autocast,
    latent_shape,
)
from igmu.methods.base import (
    EditOutcome,
    UnlearningMethod,
    concepts_and_preserved,
    erase_anchors,
    register_method,
    require,
    uses_task_pairs,
)
from igmu.methods.fmn import (
    POOLER_TOKEN,
    attention_probs,
    differing_span,
    phrase_positions,
    whole_words,
)
from igmu.methods.pipeline import adapter_of, encode_prompts
from igmu.methods.receler import AttentionMaps, nearest_resolution, region_masks
from igmu.methods.uce import preserve_vectors
from igmu.tasks import Task

REGIONS = ("auto", "attention", "none")
IMAGE_SEED_OFFSET = 7_919
MASK_SEED_OFFSET = 104_729
LORA_SEED_OFFSET = 15_485_863
PROBE_SEED_OFFSET = 1_000_003
OBJECT_TEMPLATES = (
    "{c} in a photo", "{c} in a snapshot", "A snapshot of {c}", "A photograph showcasing {c}",
    "An illustration of {c}", "A digital rendering of {c}", "A visual representation of {c}",
    "A graphic of {c}", "A shot of {c}", "A photo of {c}", "A black and white image of {c}",
    "A depiction in portrait form of {c}", "A scene depicting {c} during a public gathering",
    "{c} captured in an image", "A depiction created with oil paints capturing {c}",
    "An image of {c}", "A drawing capturing the essence of {c}",
    "An official photograph featuring {c}", "A detailed sketch of {c}",
    "{c} during sunset/sunrise", "{c} in a detailed portrait", "An official photo of {c}",
    "Historic photo of {c}", "Detailed portrait of {c}", "A painting of {c}",
    "HD picture of {c}", "Magazine cover capturing {c}", "Painting-like image of {c}",
    "Hand-drawn art of {c}", "An oil portrait of {c}",
)
STYLE_TEMPLATES = (
    "An artwork by {c}", "Art piece by {c}", "A recent creation by {c}", "{c}'s renowned art",
    "Latest masterpiece by {c}", "A stunning image by {c}", "An art in {c}'s style",
    "Exhibition artwork of {c}", "Art display by {c}", "a beautiful painting by {c}",
    "An image inspired by {c}'s style", "A sketch by {c}", "Art piece representing {c}",
    "A drawing by {c}", "Artistry showcasing {c}", "An illustration by {c}",
    "A digital art by {c}", "A visual art by {c}",
    "A reproduction inspired by {c}'s colorful, expressive style", "Famous painting of {c}",
    "A famous art by {c}", "Artistic style of {c}", "{c}'s famous piece",
    "Abstract work of {c}", "{c}'s famous drawing", "Art from {c}'s early period",
    "A portrait by {c}", "An imitation reflecting the style of {c}",
    "An painting from {c}'s collection", "Vibrant reproduction of artwork by {c}",
)


def default_mapping(task: Task) -> str:
    """The authors' mapping concepts: "art" for styles, "a person wearing clothes" for explicit
    content; objects map to a scene word they pick per object (igmu: the empty prompt)."""
    if task.node.startswith("style."):
        return "art"
    return "a person wearing clothes" if task.node.startswith("nsfw") else ""


@dataclass
class Concept:
    """One erased concept (one LoRA): its training prompts with their mapped twins, and the
    prompts (with twins) its images are drawn from; ``phrase``: the concept words whose tokens
    are J (None: the span where prompt and twin differ)."""

    name: str
    prompts: list[str]
    anchors: list[str]
    image_prompts: list[str]
    image_anchors: list[str]
    phrase: str | None = None
    masks: Any = None  # [N, L] bool: J (and the pooler positions) of each prompt
    x0: Any = None  # the original model's images, in the UNet's input space
    regions: Any = None  # {id(attn): [images, HW] bool}, or None: every position


def encoded_position(p: int, n: int, length: int) -> int | None:
    """Where position p of an n-token prompt (start and end included) sits in its padded and
    truncated encoding of ``length`` positions (truncation keeps the end token last)."""
    if n > length:
        return length - 1 if p == n - 1 else (p if p < length - 1 else None)
    return p if p < length else None


def token_layout(tokenizer: Any, prompt: str, anchor: str, phrase: str | None, length: int
                 ) -> tuple[str, list[int], list[tuple[int, int]]]:
    """(the concept's words, its encoded positions J, the co-existing (prompt, anchor) encoded
    position pairs): the shared prefix, the shared suffix and the padding aligned from the end
    token, as the authors' ``find_matching_indices`` and its tail extension."""
    p_ids = [int(i) for i in tokenizer(prompt, truncation=False, verbose=False).input_ids]
    a_ids = [int(i) for i in tokenizer(anchor, truncation=False, verbose=False).input_ids]
    span = whole_words(differing_span(p_ids, a_ids), tokenizer.convert_ids_to_tokens(p_ids))
    require(bool(span), f"MACE: prompt {prompt!r} and its mapping {anchor!r} tokenize the same")
    n_p, n_a = len(p_ids), len(a_ids)
    start, stop = span[0], span[-1] + 1
    suffix = n_p - stop
    pairs = [(i, i) for i in range(start)]
    pairs += [(stop + k, n_a - suffix + k) for k in range(suffix)]
    pairs += [(n_p + k, n_a + k) for k in range(length - max(n_p, n_a))]
    mapped = [(encoded_position(p, n_p, length), encoded_position(a, n_a, length))
              for p, a in pairs]
    if phrase is not None:
        span = phrase_positions(p_ids, [int(v) for v in tokenizer(
            phrase, add_special_tokens=False).input_ids])
    positions = [q for q in (encoded_position(p, n_p, length) for p in span) if q is not None]
    require(bool(positions), f"MACE: no concept tokens of {prompt!r} within the "
            f"{length}-token limit")
    return (tokenizer.decode(p_ids[start:stop]).strip(), positions,
            [(p, a) for p, a in mapped if p is not None and a is not None])


def concept_list(task: Task, settings: dict[str, Any], tokenizer: Any, length: int
                 ) -> tuple[list[Concept], list[str], str]:
    """(the concepts, the erase prompts or words for the card, the anchor for the card)."""
    words, _ = concepts_and_preserved(task, {"concepts": settings["concepts"], "preserve": []})
    anchors, anchor = erase_anchors(task, settings, words, default_mapping(task))
    if uses_task_pairs(task, settings):  # one concept per differing phrase
        groups: dict[str, Concept] = {}
        for prompt, mapped in zip(words, anchors, strict=True):
            name = token_layout(tokenizer, prompt, mapped, None, length)[0]
            group = groups.setdefault(name.lower(), Concept(name, [], [], [], []))
            group.prompts.append(prompt)
            group.anchors.append(mapped)
        for group in groups.values():
            group.image_prompts, group.image_anchors = group.prompts, group.anchors
        return list(groups.values()), words, anchor
    style = task.node.startswith("style.")
    templates = (STYLE_TEMPLATES if style else OBJECT_TEMPLATES) if settings["augment"] else (
        "A photo of {c}",)
    if len(templates) > settings["augment_prompts"]:  # the authors' random.sample of templates
        templates = random.Random(settings["seed"]).sample(templates, settings["augment_prompts"])
    image = "a photo in the style of {c}" if style else "a photo of the {c}"
    concepts = [Concept(word, [t.format(c=word) for t in templates],
                        [t.format(c=mapped) for t in templates], [image.format(c=word)],
                        [image.format(c=mapped)], word)
                for word, mapped in zip(words, anchors, strict=True)]
    return concepts, words, anchor


def position_masks(adapter: Any, prompts: list[str], layouts: list[Any], pooler: bool) -> Any:
    """[N, L] bool: the concept positions J of each prompt (with ``pooler`` every position
    whose token is ``<|endoftext|>``, as the authors' ``use_pooler``)."""
    ids = adapter.tokenize(prompts).ids[0]
    masks = ids < 0
    for i, (_, positions, _) in enumerate(layouts):
        masks[i, positions] = True
    vocab = adapter.tokenizers[0].get_vocab()
    if pooler and POOLER_TOKEN in vocab:
        masks |= ids == vocab[POOLER_TOKEN]
    return masks


def timestep_weights(steps: int, importance: bool) -> Any:
    """The authors' relation-focal importance weights over t (window 200-400 of 1000 steps)."""
    import torch

    u = torch.arange(steps, dtype=torch.float64) * (1000.0 / steps)
    if not importance:
        return torch.ones(steps, dtype=torch.float64)
    return torch.sigmoid(0.05 * (u - 200)) - torch.sigmoid(0.05 * (u - 400))


def solve_right(numerator: Any, gram: Any) -> Any:
    """numerator @ gram⁻¹ for a symmetric positive semi-definite gram (a pseudo-inverse when it
    is singular)."""
    import torch

    try:
        return torch.linalg.solve(gram, numerator.T).T
    except torch.linalg.LinAlgError:  # singular: λ = 0 and nothing preserved
        return numerator @ torch.linalg.pinv(gram, hermitian=True)


def fuse(w_cfr: Any, w_orig: Any, deltas: list[Any], grams: list[Any], preserve_gram: Any,
         lamb: float, preserve_scale: float) -> Any:
    """Stage 3 for one projection (float64): the closed-form fusion of the concepts' LoRAs."""
    import torch

    total = sum(grams)
    numerator = lamb * w_cfr + w_cfr @ total + preserve_scale * w_orig @ preserve_gram
    for delta, gram in zip(deltas, grams, strict=True):
        numerator = numerator + delta @ gram
    eye = torch.eye(w_cfr.shape[1], dtype=torch.float64)
    return solve_right(numerator, lamb * eye + total + preserve_scale * preserve_gram)


class AttentionLoss:
    """Σ over the cross-attention layers the UNet runs of ‖probabilities[region, tokens]‖_F
    (every head; the authors' ``AttnController``)."""

    def __init__(self, modules: list[Any]) -> None:
        self.tokens: Any = None  # [1, L] bool
        self.region: dict[int, Any] | None = None  # {id(attn): [1, HW] bool}
        self.parts: list[Any] = []
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True)
                        for m in modules]

    def _hook(self, attn: Any, args: tuple, kwargs: dict) -> None:
        import torch

        if self.tokens is None:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        probs = attention_probs(attn, hidden, context)  # [1, heads, HW, L]
        picked = probs * self.tokens.to(probs.device, probs.dtype)[:, None, None, :]
        if self.region is not None:
            picked = picked * self.region[id(attn)].to(probs.device, probs.dtype)[:, None, :, None]
        self.parts.append(torch.linalg.vector_norm(picked))

    def loss(self) -> Any:
        total, self.parts = sum(self.parts[1:], self.parts[0]), []
        return total

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def attention_regions(adapter: Any, unet: Any, modules: list[Any], x0: Any, cond: Any,
                      tokens: Any, weights: Any, noise: Any, settings: dict[str, Any],
                      resolution: int, generator: Any) -> dict[int, Any]:
    """{id(attn): [N, HW] bool}: the concept's region on each image (deliberate difference 1),
    from the (original) UNet's attention maps of the concept tokens ``tokens`` [N, L]."""
    import torch

    capture, total = AttentionMaps(modules), {}
    try:
        with torch.no_grad():
            for _ in range(settings["mask_draws"]):
                t = torch.multinomial(weights, len(x0), replacement=True, generator=generator)
                z = noise.scheduler.add_noise(x0, torch.randn(x0.shape, generator=generator), t)
                capture.positions, capture.maps = tokens.float(), {}
                with autocast(unet.device, settings["dtype"]):
                    adapter.predict_noise(z.to(unet.device), t.to(unet.device), cond, unet=unet)
                for key, value in capture.maps.items():
                    total[key] = total.get(key, 0) + value.float().cpu()
    finally:
        capture.close()
    sides = sorted({int(round(m.shape[-1] ** 0.5)) for m in total.values()})
    require(resolution in sides, f"MACE setting 'mask_resolution' {resolution} is not a "
            f"cross-attention resolution of this UNet ({sides})")
    masks = region_masks(total, resolution, settings["mask_threshold"])
    return {key: m.reshape(len(x0), -1) > 0.5 for key, m in masks.items()}


@register_method
class MACE(UnlearningMethod):
    name = "MACE"
    summary = (
        "Mass concept erasure: closed-form refinement of the cross-attention key/value "
        "projections, one attention-suppressing LoRA per concept, fused in closed form"
    )
    defaults = {
        "concepts": None,
        "preserve": None,
        # None: the task's paired anchors, else "" (objects), "art" (styles), NSFW: the authors'
        "anchor": None,
        "lr": 1e-5,
        "steps": 50,
        "rank": 1,
        "lamb": 1e3,
        "train_preserve_scale": 0.0,
        "fuse_preserve_scale": 0.0,
        "pooler": True,
        "importance_sampling": True,
        "augment": True,
        "augment_prompts": 30,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "images": 8,
        "image_steps": 30,
        "image_guidance": 7.5,
        "latent_size": 0,  # 0 = the UNet's sample_size
        "region": "auto",  # attention maps; none (every position) for styles
        "mask_threshold": 0.5,
        "mask_resolution": 0,  # 0 = the cross-attention side nearest a quarter of the latents'
        "mask_draws": 4,
        "probe": 4,  # fixed draws measuring each concept's attention loss before/after its LoRA
    }
    # Chosen on mini_object's training prompts only (benchmarks/method_defaults.py): the world's
    # sampling (8 DDIM steps, guidance 2) and its preserve prompts in both closed forms; lr,
    # λ, region and steps tie with the authors' values, which are kept.
    world_defaults = {
        "miniworld": {"image_steps": 8, "image_guidance": 2.0, "train_preserve_scale": 0.1,
                      "fuse_preserve_scale": 0.1},
    }

    def check(self, settings: dict[str, Any], task: Task) -> None:
        for key in ("steps", "latent_size", "mask_resolution", "probe", "lamb", "weight_decay",
                    "train_preserve_scale", "fuse_preserve_scale", "image_guidance"):
            require(settings[key] >= 0, f"MACE setting {key!r} must be >= 0")
        for key in ("rank", "images", "image_steps", "mask_draws"):
            require(settings[key] >= 1, f"MACE setting {key!r} must be >= 1")
        for key in ("lr", "max_grad_norm"):
            require(settings[key] > 0, f"MACE setting {key!r} must be > 0")
        require(1 <= settings["augment_prompts"] <= len(OBJECT_TEMPLATES),
                f"MACE setting 'augment_prompts' must be in [1, {len(OBJECT_TEMPLATES)}]")
        require(0 <= settings["mask_threshold"] <= 1,
                "MACE setting 'mask_threshold' must be in [0, 1]")
        require(settings["region"] in REGIONS, f"MACE setting 'region' must be one of {REGIONS}")

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        import torch

        seed, device = settings["seed"], torch.device(settings["device"])
        torch.manual_seed(seed)
        adapter = adapter_of(pipeline)
        tokenizer, length = adapter.tokenizers[0], adapter.token_length()
        width = adapter.context_dim
        concepts, words, anchor = concept_list(task, settings, tokenizer, length)
        _, preserved = concepts_and_preserved(task, settings)
        if settings["train_preserve_scale"] == 0 and settings["fuse_preserve_scale"] == 0:
            preserved = []
        region = settings["region"]
        if region == "auto":
            region = "none" if task.node.startswith("style.") else "attention"
        unet = pipeline.unet.to(device).float().eval().requires_grad_(False)

        def hidden(prompts: list[str]) -> Any:
            return encode_prompts(pipeline, prompts, device)[0].to("cpu", torch.float64)

        # The CFR's second moments (co-existing tokens -> their mapped twins) and, per concept,
        # the gram of every position of its prompts (the fusion's).
        s_cc = torch.zeros(width, width, dtype=torch.float64)
        s_ac, grams, cfr_rows = s_cc.clone(), [], 0
        for concept in concepts:
            layouts = [token_layout(tokenizer, p, a, concept.phrase, length)
                       for p, a in zip(concept.prompts, concept.anchors, strict=True)]
            c_all, a_all = hidden(concept.prompts), hidden(concept.anchors)
            for i, (_, _, pairs) in enumerate(layouts):
                c, a = c_all[i, [p for p, _ in pairs]], a_all[i, [q for _, q in pairs]]
                s_cc, s_ac, cfr_rows = s_cc + c.T @ c, s_ac + a.T @ c, cfr_rows + len(pairs)
            flat = c_all.reshape(-1, width)
            grams.append(flat.T @ flat)
            concept.masks = position_masks(adapter, concept.prompts, layouts, settings["pooler"])
        keep = preserve_vectors(pipeline, preserved, "tail", device)
        s_pp = keep.T @ keep

        # The original model's images of each concept, and the concept's region on them.
        shape = latent_shape(unet, settings["latent_size"])
        sampler = ImageSampler(pipeline, adapter, settings["image_steps"],
                               settings["image_guidance"], shape, device, settings["dtype"])
        noise = TrainingNoise(pipeline, "MACE")
        weights = timestep_weights(noise.steps, settings["importance_sampling"])
        image_gen = torch.Generator("cpu").manual_seed(seed + IMAGE_SEED_OFFSET)
        mask_gen = torch.Generator("cpu").manual_seed(seed + MASK_SEED_OFFSET)
        modules = [m for _, m in adapter.cross_attention_modules(unet)]
        resolution = (settings["mask_resolution"] or nearest_resolution(unet, adapter, shape)
                      if region == "attention" else None)
        for concept in concepts:
            drawn = [k % len(concept.image_prompts) for k in range(settings["images"])]
            cond = adapter.encode_prompts(concept.image_prompts).to(device, torch.float32)
            cond = cond.rows(torch.tensor(drawn))
            concept.x0 = sampler.sample(cond, image_gen, unet)
            concept.regions = None
            if region == "attention":
                layouts = [token_layout(tokenizer, p, a, concept.phrase, length) for p, a in
                           zip(concept.image_prompts, concept.image_anchors, strict=True)]
                tokens = position_masks(adapter, concept.image_prompts, layouts, False)[drawn]
                concept.regions = attention_regions(adapter, unet, modules, concept.x0, cond,
                                                    tokens, weights, noise, settings,
                                                    resolution, mask_gen)

        # Stage 1: closed-form refinement, W1 = W0 (λI + S_ac + s_t S_pp)(λI + S_cc + s_t S_pp)⁻¹.
        projections = adapter.cross_attention_projections(unet)
        originals = [linear.weight.detach().to("cpu", torch.float64) for _, linear in projections]
        eye, lamb = torch.eye(width, dtype=torch.float64), settings["lamb"]
        s_t = settings["train_preserve_scale"]
        refine = solve_right(lamb * eye + s_ac + s_t * s_pp, lamb * eye + s_cc + s_t * s_pp)
        refined = [w @ refine for w in originals]
        with torch.no_grad():
            for (_, linear), w in zip(projections, refined, strict=True):
                linear.weight.copy_(w.to(linear.weight.dtype))

        # Stage 2: one LoRA per concept on the refined projections.
        deltas, summaries = [], []
        for index, concept in enumerate(concepts):
            delta, losses = self._train_lora(unet, adapter, projections, modules, concept,
                                             weights, noise, settings, seed + index, device)
            deltas.append(delta)
            summary = {"concept": concept.name, "prompts": len(concept.prompts), **losses}
            if concept.regions is not None:  # the share of the image inside the region
                share = torch.stack([m.float().mean() for m in concept.regions.values()]).mean()
                summary["region_share"] = float(f"{float(share):.6g}")
            summaries.append(summary)

        # Stage 3: closed-form fusion.
        edited, kept = [], [[] for _ in concepts]
        for k, ((name, linear), w0, w1) in enumerate(zip(projections, originals, refined,
                                                         strict=True)):
            own = [d[k] for d in deltas]
            fused = fuse(w1, w0, own, grams, s_pp, lamb, settings["fuse_preserve_scale"])
            with torch.no_grad():
                linear.weight.copy_(fused.to(linear.weight.dtype))
            edited.append(f"{name}.weight")
            moved = fused - w1
            for i, (d, g) in enumerate(zip(own, grams, strict=True)):
                if float(d.abs().max()) > 0:  # how much of the LoRA's effect on its prompts stays
                    kept[i].append(math.sqrt(float(torch.trace(moved @ g @ moved.T))
                                             / float(torch.trace(d @ g @ d.T))))
        for summary, share in zip(summaries, kept, strict=True):
            summary["fusion_kept_mean"] = float(f"{sum(share) / len(share):.6g}") if share else None

        hyperparameters = {key: settings[key] for key in (
            "lr", "steps", "rank", "lamb", "train_preserve_scale", "fuse_preserve_scale",
            "pooler", "importance_sampling", "augment", "augment_prompts", "weight_decay",
            "max_grad_norm", "images", "image_steps", "image_guidance", "mask_threshold",
            "mask_draws")}
        hyperparameters.update(
            region=region, mask_resolution=resolution, compute_dtype=settings["dtype"],
            optimizer="AdamW", lr_schedule="constant", batch_size=1, latent_shape=list(shape),
            image_sampler="DDIM (original model)", solve_dtype="float64",
            concept_tokens="concept words" if concepts[0].phrase else "differing span")
        shift = max(float((w1 - w0).norm() / w0.norm()) for w0, w1 in zip(originals, refined,
                                                                          strict=True))
        return EditOutcome(
            concepts=words, preserved=preserved, anchor=anchor,
            hyperparameters=hyperparameters, edited_parameters=edited,
            stats={"concepts": summaries, "cfr_vectors": cfr_rows,
                   "preserve_vectors": int(keep.shape[0]),
                   "cfr_relative_shift_max": float(f"{shift:.6g}"),
                   "edited_projections": len(edited),
                   "lora_parameters": settings["rank"] * len(concepts) * sum(
                       int(w.shape[0] + w.shape[1]) for w in originals)},
        )

    def _train_lora(self, unet: Any, adapter: Any, projections: list[tuple[str, Any]],
                    modules: list[Any], concept: Concept, weights: Any, noise: TrainingNoise,
                    settings: dict[str, Any], seed: int, device: Any
                    ) -> tuple[list[Any], dict[str, Any]]:
        """Stage 2 for one concept: (ΔW = B A per projection, float64 CPU; its losses)."""
        import torch
        from tqdm.auto import tqdm

        rank, x0, regions = settings["rank"], concept.x0, concept.regions
        init = torch.Generator("cpu").manual_seed(seed + LORA_SEED_OFFSET)
        pairs = [((torch.randn((rank, int(linear.weight.shape[1])), generator=init) / rank).to(
            device).requires_grad_(True),
                  torch.zeros((int(linear.weight.shape[0]), rank), device=device,
                              requires_grad=True)) for _, linear in projections]
        params = [p for pair in pairs for p in pair]

        def lora(down: Any, up: Any) -> Any:
            return lambda module, args, out: out + (args[0] @ down.T.to(out.dtype)) @ up.T.to(
                out.dtype)

        hooks = [linear.register_forward_hook(lora(d, u))
                 for (_, linear), (d, u) in zip(projections, pairs, strict=True)]
        probe = AttentionLoss(modules)
        cond = adapter.encode_prompts(concept.prompts).to(device, torch.float32)

        def draw(images: Any, prompts: Any, gen: Any) -> tuple[int, int, Any, Any]:
            # an image in shuffled order, a random prompt of the concept (the authors' dataset)
            k, j = images.take(1)[0], prompts.randrange(len(concept.prompts))
            t = torch.multinomial(weights, 1, replacement=True, generator=gen)
            eps = torch.randn(x0[k : k + 1].shape, generator=gen)
            return k, j, t, noise.scheduler.add_noise(x0[k : k + 1], eps, t).to(device)

        def loss_of(k: int, j: int, t: Any, z: Any) -> Any:
            probe.tokens = concept.masks[j : j + 1]
            probe.region = None if regions is None else {
                key: value[k : k + 1] for key, value in regions.items()}
            with autocast(device, settings["dtype"]):
                adapter.predict_noise(z, t.to(device), cond.rows(slice(j, j + 1)), unet=unet)
            probe.tokens = None
            return probe.loss()

        probe_rng = random.Random(seed + PROBE_SEED_OFFSET)
        probe_gen = torch.Generator("cpu").manual_seed(seed + PROBE_SEED_OFFSET)
        probes = [draw(ShuffledBatches(len(x0), probe_rng), probe_rng, probe_gen)
                  for _ in range(settings["probe"])]

        def probe_loss() -> float | None:
            with torch.no_grad():
                values = [float(loss_of(*p)) for p in probes]
            return float(f"{sum(values) / len(values):.6g}") if values else None

        optimizer = torch.optim.AdamW(params, lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=settings["weight_decay"])
        rng = random.Random(seed)
        batches = ShuffledBatches(len(x0), rng)
        generator = torch.Generator("cpu").manual_seed(seed)
        losses = []
        bar = tqdm(range(settings["steps"]), desc=f"MACE {concept.name}",
                   disable=not settings["progress"], leave=False)
        try:
            before = probe_loss()
            for _ in bar:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_of(*draw(batches, rng, generator))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings["max_grad_norm"])
                optimizer.step()
                losses.append(float(f"{loss.item():.6g}"))
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
            after = probe_loss()
        finally:
            bar.close()
            probe.close()
            for hook in hooks:
                hook.remove()
        deltas = [(u.detach() @ d.detach()).to("cpu", torch.float64) for d, u in pairs]
        return deltas, {"probe_loss_before": before, "probe_loss_after": after,
                        "train_loss": losses}
