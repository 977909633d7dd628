"""The attacked model as attacks (and adversarially trained methods) see it: any pipeline of a
known model family (`igmu.families`: Stable Diffusion 1.x/2.x, the MiniWorld, SDXL), plus how
the method is sampled (negative prompt, guidance). Every model-specific step goes through the
family adapter.

- Text: token ids are padded to the encoders' length (77 for CLIP) as the pipeline pads them,
  with each tokenizer's own pad id: ``padded`` gives [1, L] for one text encoder, [1, E, L] for
  E encoders (SDXL; the tokenizers share one vocabulary, so the ids are shared). ``condition``
  runs the adapter's ``encode`` with the input embeddings at some positions replaced by given
  vectors, one per encoder (each encoder's own embedding space), differentiably.
- Images: ``to_model_space`` maps uint8 images to x0 in the UNet's input space (the adapter's
  ``to_latents``: the scaled VAE posterior mean, or the pixels in [-1, 1] without a VAE).
- Loss: the denoising loss at random timesteps of the noise schedule of the pipeline's scheduler
  configuration, through the adapter's ``predict_noise``. When the method is sampled with a
  negative prompt (NEGPROMPT), the prediction is the classifier-free-guided one (``guided_noise``)
  with the adapter's unconditional branch for it, because that is the denoiser the user samples
  with; for a method sampled with SLD, SLD's guided prediction (`igmu.pipelines.guidance`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from igmu.core.errors import ConfigError
from igmu.families import Conditioning
from igmu.pipelines.guidance import guided_prediction, safety_conditioning

GUIDED_LOSS = ("auto", "on", "off")
VOCABULARIES = ("all", "ascii", "words")


def vector_parts(vectors: Any) -> tuple[Any, ...]:
    """Replacement vectors as one tensor per text encoder (a lone tensor is the only one's)."""
    return tuple(vectors) if isinstance(vectors, (tuple, list)) else (vectors,)


class AttackedModel:
    def __init__(self, pipeline: Any, settings: Any, device: Any = "cpu") -> None:
        import torch
        from diffusers import DDPMScheduler

        from igmu.families import family_of

        try:
            self.family = family_of(pipeline, type(pipeline).__name__)
        except ConfigError as exc:
            raise ConfigError(f"attacks need a pipeline of a known model family: {exc}") from None
        family = self.family
        self.pipeline = pipeline
        self.settings = settings
        self.device = torch.device(device)
        self.unet, self.vae = family.unet, family.vae
        self.text_encoders, self.tokenizers = family.text_encoders, family.tokenizers
        self.text_encoder, self.tokenizer = self.text_encoders[0], self.tokenizers[0]
        for module in (self.unet, *self.text_encoders, self.vae):
            if module is not None:
                module.requires_grad_(False)
        self.length = family.token_length()
        self.embedding_tables = tuple(e.get_input_embeddings() for e in self.text_encoders)
        self.embedding_table = self.embedding_tables[0]
        tok = self.tokenizer
        self.bos_id, self.eos_id = int(tok.bos_token_id), int(tok.eos_token_id)
        self._check_shared_vocabulary()
        self.pad_ids = tuple(
            int(t.pad_token_id if t.pad_token_id is not None else t.eos_token_id)
            for t in self.tokenizers
        )
        self.pad_id = self.pad_ids[0]
        self.special_ids = {int(i) for i in tok.all_special_ids}
        self.schedule = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.num_train_timesteps = int(self.schedule.config.num_train_timesteps)
        self.prediction_type = str(self.schedule.config.prediction_type)
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ConfigError(f"unsupported scheduler prediction_type {self.prediction_type!r}")
        self.negative_prompt = settings.negative_prompt
        self.guidance = float(settings.guidance_scale)
        self.sampler_guidance = getattr(settings, "sampler_guidance", None)
        self._negative: Any = None
        self._safety: Any = None

    def _check_shared_vocabulary(self) -> None:
        """Token ids are shared by every encoder: their tokenizers must agree on them."""
        first = self.tokenizer
        for tok, table in zip(self.tokenizers[1:], self.embedding_tables[1:], strict=True):
            same = (int(tok.bos_token_id), int(tok.eos_token_id)) == (self.bos_id, self.eos_id)
            if not same or tok.get_vocab() != first.get_vocab() or (
                    table.num_embeddings != self.embedding_table.num_embeddings):
                raise ConfigError(
                    f"attacks need text encoders that share one vocabulary; "
                    f"{type(self.pipeline).__name__}'s tokenizers differ"
                )

    # -----------------------------------------------------------------------------------------
    # text

    def token_ids(self, text: str) -> list[int]:
        """The prompt's ids as the pipeline tokenises it: <sot> ... <eot>, truncated, unpadded."""
        ids = self.tokenizer(text, truncation=True, max_length=self.length).input_ids
        return [int(i) for i in ids]

    def content_ids(self, text: str) -> list[int]:
        """The prompt's ids without <sot>/<eot>."""
        return self.token_ids(text)[1:-1]

    def sequence(self, content: list[int]) -> list[int]:
        """<sot> + content (truncated to fit) + <eot>, unpadded."""
        return [self.bos_id, *content[: self.length - 2], self.eos_id]

    def padded(self, ids: list[int]) -> Any:
        """ids padded to the encoders' length with each tokenizer's pad id: a [1, L] LongTensor
        for one text encoder, [1, E, L] for E encoders."""
        import torch

        if len(ids) > self.length:
            raise ValueError(f"{len(ids)} token ids exceed the encoder's length {self.length}")
        rows = [list(ids) + [pad] * (self.length - len(ids)) for pad in self.pad_ids]
        full = torch.tensor([rows], dtype=torch.long, device=self.device)
        return full[:, 0] if len(rows) == 1 else full

    def padded_batch(self, sequences: list[list[int]]) -> Any:
        import torch

        return torch.cat([self.padded(ids) for ids in sequences])

    def vocabulary(self, kind: str = "all") -> Any:
        """Token ids an attack may insert: every non-special token (``all``), those whose text
        is printable ASCII (``ascii``), or those of them that end a word (``words``: CLIP BPE's
        ``</w>``), so that inserted tokens never fuse with the prompt's first word."""
        import torch

        size = int(self.embedding_table.num_embeddings)
        ids = [i for i in range(size) if i not in self.special_ids]
        if kind not in VOCABULARIES:
            raise ConfigError(f"vocabulary must be one of {VOCABULARIES}, got {kind!r}")
        if kind != "all":
            tokens = self.tokenizer.convert_ids_to_tokens(ids)
            keep = []
            for i, tok in zip(ids, tokens, strict=True):
                text = (tok or "").replace("</w>", "")
                if not (text and text.isascii() and text.isprintable()):
                    continue
                if kind == "words" and not (tok or "").endswith("</w>"):
                    continue
                keep.append(i)
            ids = keep
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def render(self, ids: list[int]) -> str:
        """A readable rendering of token ids: the tokenizer's decode without special tokens,
        unprintable characters escaped (generation uses the ids, not this text)."""
        text = str(self.tokenizer.decode(
            [i for i in ids if i not in self.special_ids], clean_up_tokenization_spaces=False
        )).strip()
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)

    def _split(self, ids: Any) -> tuple[Any, ...]:
        """Padded ids ([B, L] or [B, E, L], see `padded`) as one [B, L] tensor per encoder."""
        count = len(self.text_encoders)
        if ids.ndim == 2 and count == 1:
            return (ids,)
        if ids.ndim == 3 and ids.shape[1] == count:
            return tuple(ids[:, i] for i in range(count))
        raise ValueError(f"padded ids of shape {tuple(ids.shape)} do not fit {count} encoder(s)")

    def condition(self, ids: Any, positions: list[int] | None = None, vectors: Any = None
                  ) -> Conditioning:
        """The float32 conditioning of padded ids, with the input embeddings at ``positions``
        replaced by ``vectors``: per encoder (a tuple, or one tensor for one encoder) [k, D_i]
        or [B, k, D_i]; gradients flow to them."""
        import torch

        split = self._split(ids.to(self.device))
        embeds = None
        if positions:
            parts = vector_parts(vectors)
            if len(parts) != len(split):
                raise ValueError(f"{len(parts)} vector sets for {len(split)} text encoders")
            embeds = []
            for table_rows, part in zip(self.family.token_embeddings(split), parts, strict=True):
                out = table_rows.clone()
                out[:, positions, :] = part.to(out.dtype).expand(out.shape[0], -1, -1)
                embeds.append(out)
            embeds = tuple(embeds)
        return self.family.encode(split, embeds).to(dtype=torch.float32)

    def encode(self, ids: Any, positions: list[int] | None = None, vectors: Any = None) -> Any:
        """The cross-attention context [B, L, D] of `condition`."""
        return self.condition(ids, positions, vectors).hidden

    def condition_text(self, texts: list[str]) -> Conditioning:
        import torch

        with torch.no_grad():
            return self.condition(self.padded_batch([self.token_ids(t) for t in texts]))

    def encode_text(self, texts: list[str]) -> Any:
        return self.condition_text(texts).hidden

    def negative_states(self) -> Conditioning:
        """The unconditional branch the method is sampled with: the adapter's, for its negative
        prompt (SD: "" by default; SDXL: zeros by default)."""
        import torch

        if self._negative is None:
            with torch.no_grad():
                uncond = self.family.unconditional(self.negative_prompt, 1)
            self._negative = uncond.to(device=self.device, dtype=torch.float32)
        return self._negative

    # -----------------------------------------------------------------------------------------
    # images and the denoising loss

    def to_model_space(self, images: list[np.ndarray]) -> Any:
        """uint8 (H, W, 3) images -> x0 [N, C, h, w] in the UNet's input space."""
        import torch

        array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().to(self.device)
        return self.family.to_latents(pixels).float()

    def draw(self, x0: Any, batch: int, generator: Any, rows: Any = None
             ) -> tuple[Any, Any, Any]:
        """(x_t, t, regression target) for ``batch`` draws: the target images ``rows`` of x0
        (default: chosen at random per draw), t uniform over the training timesteps, fresh
        Gaussian noise."""
        import torch

        if rows is None:
            rows = torch.randint(0, x0.shape[0], (batch,), generator=generator)
        clean = x0[rows.to(x0.device)]
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator)
        noise = torch.randn(clean.shape, generator=generator).to(self.device)
        t = t.to(self.device)
        noisy = self.schedule.add_noise(clean, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.schedule.get_velocity(clean, noise, t)
        else:
            target = clean
        return noisy, t, target

    def guided(self, mode: str) -> bool:
        """Whether the loss uses the guided prediction: ``auto`` = when the method is sampled
        with a negative prompt or a sampler guidance (SLD); ``on``; ``off`` (the conditional
        prediction alone)."""
        if mode not in GUIDED_LOSS:
            raise ConfigError(f"guided_loss must be one of {GUIDED_LOSS}, got {mode!r}")
        if mode == "auto":
            return self.negative_prompt is not None or self.sampler_guidance is not None
        return mode == "on"

    def predict(self, noisy: Any, t: Any, states: Any, guided: bool) -> Any:
        """The denoiser's output for a conditioning (or a context tensor) of 1 or B rows; with
        ``guided``, classifier-free guided at the method's scale against its unconditional
        branch."""
        cond = states if isinstance(states, Conditioning) else Conditioning(states)
        if not guided:
            return self.family.predict_noise(noisy, t, cond)
        if self.sampler_guidance is not None:
            return guided_prediction(self.family, self.sampler_guidance, noisy, t, cond,
                                     self.negative_states(), self.guidance, self.safety_states(),
                                     self.schedule)
        return self.family.guided_noise(noisy, t, cond, self.negative_states(), self.guidance)

    def safety_states(self) -> Conditioning:
        """The safety concept's conditioning of the method's SLD guidance."""
        import torch

        if self._safety is None:
            with torch.no_grad():
                safety = safety_conditioning(self.family, self.sampler_guidance)
            self._safety = safety.to(device=self.device, dtype=torch.float32)
        return self._safety

    def loss(self, draws: tuple[Any, Any, Any], states: Any, guided: bool) -> Any:
        import torch

        noisy, t, target = draws
        return torch.nn.functional.mse_loss(self.predict(noisy, t, states, guided), target)
