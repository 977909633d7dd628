"""What igmu needs from a text-to-image model family, behind one interface.

A `FamilyAdapter` wraps a loaded diffusers pipeline and answers, the way that pipeline itself
does it (tested for exact parity with the pipeline's own ``encode_prompt`` and denoising loop):

- text: token ids per text encoder, the embedding-table vectors of ids, prompt conditioning from
  ids or from input embeddings (differentiably: attacks optimise those), and from prompts;
- the UNet: its keyword arguments for a conditioning (``encoder_hidden_states`` and, for SDXL,
  ``added_cond_kwargs``), the noise prediction, classifier-free guided or not;
- cross-attention: the modules and the key/value projections that read the text (UCE, ESD);
- latents: their shape, and images mapped into the UNet's input space.

A family is one file in this package that subclasses `FamilyAdapter` and registers itself with
`register_family`; `family_of(pipeline)` picks the first family whose `matches` accepts it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from igmu.core.errors import ConfigError


@dataclass
class Conditioning:
    """A batch of text conditioning as the UNet reads it.

    ``hidden``: [B, L, D] cross-attention context (``encoder_hidden_states``); ``pooled``:
    [B, P] pooled text embedding for families that add it to the time embedding (SDXL's
    ``text_embeds``), else None.
    """

    hidden: Any
    pooled: Any = None

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def cat(self, *others: Conditioning) -> Conditioning:
        import torch

        parts = [self, *others]
        pooled = None
        if self.pooled is not None:
            pooled = torch.cat([p.pooled for p in parts])
        return Conditioning(torch.cat([p.hidden for p in parts]), pooled)

    def expand(self, batch: int) -> Conditioning:
        """This conditioning for ``batch`` rows (a batch of one is repeated)."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot expand a conditioning of {len(self)} rows to {batch}")
        pooled = None if self.pooled is None else self.pooled.expand(batch, -1)
        return Conditioning(self.hidden.expand(batch, -1, -1), pooled)

    def rows(self, index: Any) -> Conditioning:
        pooled = None if self.pooled is None else self.pooled[index]
        return Conditioning(self.hidden[index], pooled)

    def to(self, device: Any = None, dtype: Any = None) -> Conditioning:
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype)
        return Conditioning(self.hidden.to(device=device, dtype=dtype), pooled)

    def detach(self) -> Conditioning:
        pooled = None if self.pooled is None else self.pooled.detach()
        return Conditioning(self.hidden.detach(), pooled)


@dataclass(frozen=True)
class Tokens:
    """Padded token ids of a batch of prompts: one [B, L] LongTensor per text encoder, and the
    first tokenizer's attention mask [B, L] (1 on the prompt's tokens, start and end included)."""

    ids: tuple[Any, ...]
    mask: Any


class FamilyAdapter:
    """A pipeline of one model family; see the module docstring. Subclasses set ``name`` and
    implement `matches`, `_encoders`, `encode` and `unconditional` (and `unet_kwargs` when the
    UNet takes more than ``encoder_hidden_states``)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    # -----------------------------------------------------------------------------------------
    # detection

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        raise NotImplementedError

    # -----------------------------------------------------------------------------------------
    # parts

    @property
    def unet(self) -> Any:
        return self.pipeline.unet

    @property
    def vae(self) -> Any:
        return getattr(self.pipeline, "vae", None)

    @property
    def scheduler(self) -> Any:
        return self.pipeline.scheduler

    def _encoders(self) -> list[tuple[Any, Any]]:
        """(tokenizer, text encoder) pairs, in the order their outputs are concatenated."""
        raise NotImplementedError

    @property
    def text_encoders(self) -> list[Any]:
        return [encoder for _, encoder in self._encoders()]

    @property
    def tokenizers(self) -> list[Any]:
        return [tokenizer for tokenizer, _ in self._encoders()]

    @property
    def device(self) -> Any:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> Any:
        return next(self.unet.parameters()).dtype

    @property
    def context_dim(self) -> int:
        """Width of the cross-attention context (the concatenated text features)."""
        return int(self.unet.config.cross_attention_dim)

    @property
    def vae_scale_factor(self) -> int:
        vae = self.vae
        if vae is None:
            return 1
        return 2 ** (len(vae.config.block_out_channels) - 1)

    def token_length(self) -> int:
        """The padded prompt length the text encoders see (77 for CLIP)."""
        tokenizer, encoder = self._encoders()[0]
        limit = int(encoder.config.max_position_embeddings)
        tokenizer_limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
            return min(limit, tokenizer_limit)
        return limit

    # -----------------------------------------------------------------------------------------
    # text

    def tokenize(self, prompts: list[str]) -> Tokens:
        """Padded ids as the pipeline tokenises prompts (max length, truncated)."""
        length = self.token_length()
        ids, mask = [], None
        for tokenizer, _ in self._encoders():
            batch = tokenizer(
                list(prompts), padding="max_length", max_length=length, truncation=True,
                return_tensors="pt",
            )
            ids.append(batch.input_ids)
            if mask is None:
                mask = batch.attention_mask
        return Tokens(tuple(ids), mask)

    def token_embeddings(self, ids: tuple[Any, ...]) -> tuple[Any, ...]:
        """Each encoder's input-embedding vectors of its ids ([B, L, D_i]): what ``encode``'s
        ``inputs_embeds`` replaces (attacks edit some positions and pass them back)."""
        return tuple(
            encoder.get_input_embeddings()(i.to(encoder.device))
            for i, encoder in zip(ids, self.text_encoders, strict=True)
        )

    @contextlib.contextmanager
    def _input_embeddings(self, encoder: Any, embeds: Any) -> Iterator[None]:
        """Run ``encoder`` with its token-embedding output replaced by ``embeds`` (positions are
        still added by the encoder, exactly as for ids)."""
        if embeds is None:
            yield
            return
        table = encoder.get_input_embeddings()

        def hook(module: Any, args: Any, output: Any) -> Any:
            if tuple(output.shape) != tuple(embeds.shape):
                raise ValueError(
                    f"inputs_embeds have shape {tuple(embeds.shape)}, the ids give "
                    f"{tuple(output.shape)}"
                )
            return embeds.to(output.dtype)

        handle = table.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def encode(self, ids: tuple[Any, ...], inputs_embeds: tuple[Any, ...] | None = None
               ) -> Conditioning:
        """The conditioning of padded ids (one tensor per encoder), differentiable; with
        ``inputs_embeds`` (one [B, L, D_i] per encoder, or None for an encoder), those vectors
        replace the embedding-table lookup of the ids."""
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str], batch: int = 32) -> Conditioning:
        """The conditioning the pipeline computes for ``prompts`` (no gradients)."""
        import torch

        parts = []
        for start in range(0, len(prompts), batch):
            tokens = self.tokenize(prompts[start : start + batch])
            with torch.no_grad():
                parts.append(self.encode(tokens.ids))
        return parts[0].cat(*parts[1:]) if len(parts) > 1 else parts[0]

    def unconditional(self, negative_prompt: str | None, batch: int = 1) -> Conditioning:
        """The unconditional branch of classifier-free guidance as the pipeline builds it for
        ``negative_prompt`` (None: the pipeline's default, the empty prompt or zeros)."""
        raise NotImplementedError

    # -----------------------------------------------------------------------------------------
    # the UNet

    def unet_kwargs(self, cond: Conditioning, latents: Any) -> dict[str, Any]:
        """Keyword arguments of the UNet call for ``cond`` (rows matching ``latents``)."""
        return {"encoder_hidden_states": cond.hidden}

    def predict_noise(self, latents: Any, t: Any, cond: Conditioning, unet: Any = None) -> Any:
        """The UNet's output (epsilon for epsilon-prediction schedulers) for latents [B, C, h, w],
        timestep(s) ``t`` and a conditioning of B rows (or one row, repeated)."""
        unet = unet if unet is not None else self.unet
        cond = cond.expand(int(latents.shape[0]))
        return unet(latents, t, **self.unet_kwargs(cond, latents), return_dict=False)[0]

    def guided_noise(self, latents: Any, t: Any, cond: Conditioning, uncond: Conditioning,
                     guidance: float, unet: Any = None) -> Any:
        """Classifier-free guided prediction, batched as the pipelines batch it:
        ``[uncond; cond]`` in one UNet call, then ``u + g (c - u)`` (``t``: one, or per row)."""
        import torch

        batch = int(latents.shape[0])
        if torch.is_tensor(t) and t.ndim == 1 and int(t.shape[0]) == batch:
            t = torch.cat([t, t])
        both = uncond.expand(batch).cat(cond.expand(batch))
        out = self.predict_noise(torch.cat([latents, latents]), t, both, unet)
        e_uncond, e_cond = out.chunk(2)
        return e_uncond + guidance * (e_cond - e_uncond)

    # -----------------------------------------------------------------------------------------
    # cross-attention

    def cross_attention_modules(self, unet: Any = None) -> list[tuple[str, Any]]:
        """(name, Attention) for every layer whose keys and values read the text."""
        return cross_attention_modules(unet if unet is not None else self.unet)

    def cross_attention_projections(self, unet: Any = None, keys: bool = True
                                    ) -> list[tuple[str, Any]]:
        """(name, Linear) of every cross-attention value projection, and key projection if
        ``keys``: the weights that map the text context (``context_dim`` wide) into the UNet."""
        return cross_attention_projections(unet if unet is not None else self.unet, keys)

    def is_cross_attention_parameter(self, name: str) -> bool:
        """Whether a UNet parameter belongs to a cross-attention layer (ESD-x trains those)."""
        return "attn2" in name.split(".")

    # -----------------------------------------------------------------------------------------
    # latents and pipeline calls

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise ConfigError(
                f"{self.name}: height and width must be multiples of {factor}, got {height}x{width}"
            )
        return (batch, int(self.unet.config.in_channels), height // factor, width // factor)

    def to_latents(self, pixels: Any) -> Any:
        """Images in [-1, 1] ([N, 3, H, W]) -> x0 in the UNet's input space: the VAE posterior
        mean times its scaling factor (minus its shift), or the pixels without a VAE."""
        import torch

        vae = self.vae
        if vae is None:
            return pixels
        with torch.no_grad():
            latent = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latent - shift) * vae.config.scaling_factor

    def pipeline_kwargs(self, cond: Conditioning, uncond: Conditioning | None = None
                        ) -> dict[str, Any]:
        """Arguments that make the pipeline's own ``__call__`` sample from a conditioning
        instead of prompts (attack images)."""
        kwargs: dict[str, Any] = {"prompt_embeds": cond.hidden}
        if uncond is not None:
            kwargs["negative_prompt_embeds"] = uncond.hidden
        return kwargs


def cross_attention_modules(unet: Any) -> list[tuple[str, Any]]:
    """(name, Attention) for every cross-attention layer of a diffusers UNet: ``attn2`` of its
    transformer blocks."""
    return [
        (name, module) for name, module in unet.named_modules()
        if name.split(".")[-1] == "attn2" and getattr(module, "is_cross_attention", False)
    ]


def cross_attention_projections(unet: Any, keys: bool = True) -> list[tuple[str, Any]]:
    """(name, Linear) for every cross-attention value projection, and key projection if
    ``keys``."""
    projections = []
    for name, module in cross_attention_modules(unet):
        for kind in ("to_k", "to_v") if keys else ("to_v",):
            projections.append((f"{name}.{kind}", getattr(module, kind)))
    return projections


def require_parts(pipeline: Any, family: str, parts: dict[str, Any]) -> list[str]:
    """Problems with a pipeline's parts: ``parts`` maps attribute -> class (or tuple)."""
    problems = []
    for attribute, cls in parts.items():
        value = getattr(pipeline, attribute, None)
        if not isinstance(value, cls):
            names = cls.__name__ if isinstance(cls, type) else "/".join(c.__name__ for c in cls)
            problems.append(f"{attribute} is {type(value).__name__}, not {names} ({family})")
    return problems
