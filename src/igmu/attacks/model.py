"""The attacked model as attacks see it: any diffusers pipeline with a ``UNet2DConditionModel``, a
CLIP text encoder and tokenizer (Stable Diffusion 1.x, the MiniWorld), plus how the method is
sampled (negative prompt, guidance).

- Text: token ids are padded to the encoder's length (77 for SD-1.x) as the pipeline pads them;
  ``encode`` runs the text encoder on ids with the input embeddings at some positions replaced
  by given vectors (a forward hook on the embedding table, so the rest of the encoder is exactly
  the pipeline's), differentiably.
- Images: ``to_model_space`` maps uint8 images to x0 in the UNet's input space: the VAE
  posterior mean times its scaling factor when the pipeline has a VAE (SD), the pixels in
  [-1, 1] when it has none (the MiniWorld).
- Loss: the denoising loss at random timesteps of the noise schedule of the pipeline's scheduler
  configuration. When the method is sampled with a negative prompt (NEGPROMPT), the prediction
  is the classifier-free-guided one with that negative prompt as the unconditional branch,
  because that is the denoiser the user samples with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from igmu.errors import ConfigError

GUIDED_LOSS = ("auto", "on", "off")
VOCABULARIES = ("all", "ascii", "words")


class AttackedModel:
    def __init__(self, pipeline: Any, settings: Any, device: Any = "cpu") -> None:
        import torch
        from diffusers import DDPMScheduler

        from igmu.methods.pipeline import token_length

        for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
            if getattr(pipeline, part, None) is None:
                raise ConfigError(
                    f"attacks need a pipeline with a UNet, a CLIP text encoder, a tokenizer and a "
                    f"scheduler; {type(pipeline).__name__} has no {part}"
                )
        self.pipeline = pipeline
        self.settings = settings
        self.device = torch.device(device)
        self.unet, self.text_encoder = pipeline.unet, pipeline.text_encoder
        self.tokenizer = pipeline.tokenizer
        self.vae = getattr(pipeline, "vae", None)
        for module in (self.unet, self.text_encoder, self.vae):
            if module is not None:
                module.requires_grad_(False)
        self.length = token_length(pipeline)
        self.embedding_table = self.text_encoder.get_input_embeddings()
        tok = self.tokenizer
        self.bos_id, self.eos_id = int(tok.bos_token_id), int(tok.eos_token_id)
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        self.special_ids = {int(i) for i in tok.all_special_ids}
        self.schedule = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.num_train_timesteps = int(self.schedule.config.num_train_timesteps)
        self.prediction_type = str(self.schedule.config.prediction_type)
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ConfigError(f"unsupported scheduler prediction_type {self.prediction_type!r}")
        self.negative_prompt = settings.negative_prompt
        self.guidance = float(settings.guidance_scale)
        self._negative: Any = None

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
        """ids padded with the pad token to the encoder's length, as a [1, L] LongTensor."""
        import torch

        if len(ids) > self.length:
            raise ValueError(f"{len(ids)} token ids exceed the encoder's length {self.length}")
        full = list(ids) + [self.pad_id] * (self.length - len(ids))
        return torch.tensor([full], dtype=torch.long, device=self.device)

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

    @contextlib.contextmanager
    def _replaced(self, positions: list[int] | None, vectors: Any) -> Iterator[None]:
        if not positions:
            yield
            return

        def hook(module: Any, args: Any, output: Any) -> Any:
            out = output.clone()
            out[:, positions, :] = vectors.to(out.dtype).expand(out.shape[0], -1, -1)
            return out

        handle = self.embedding_table.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def encode(self, ids: Any, positions: list[int] | None = None, vectors: Any = None) -> Any:
        """Last hidden states [B, L, D] of padded ids [B, L], with the input embeddings at
        ``positions`` replaced by ``vectors`` [k, D] or [B, k, D] (gradients flow to them)."""
        with self._replaced(positions, vectors):
            return self.text_encoder(ids.to(self.device))[0].float()

    def encode_text(self, texts: list[str]) -> Any:
        import torch

        ids = torch.cat([self.padded(self.token_ids(t)) for t in texts])
        with torch.no_grad():
            return self.encode(ids)

    def negative_states(self) -> Any:
        """The unconditional branch the method is sampled with (its negative prompt, or "")."""
        if self._negative is None:
            self._negative = self.encode_text([self.negative_prompt or ""])
        return self._negative

    # -----------------------------------------------------------------------------------------
    # images and the denoising loss

    def to_model_space(self, images: list[np.ndarray]) -> Any:
        """uint8 (H, W, 3) images -> x0 [N, C, h, w] in the UNet's input space."""
        import torch

        array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().to(self.device)
        if self.vae is None:
            return pixels
        with torch.no_grad():
            latent = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latent - shift) * self.vae.config.scaling_factor).float()

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
        with a negative prompt; ``on``; ``off`` (the conditional prediction alone)."""
        if mode not in GUIDED_LOSS:
            raise ConfigError(f"guided_loss must be one of {GUIDED_LOSS}, got {mode!r}")
        return self.negative_prompt is not None if mode == "auto" else mode == "on"

    def predict(self, noisy: Any, t: Any, states: Any, guided: bool) -> Any:
        """The denoiser's output for conditioning ``states`` [1 or B, L, D]; with ``guided``,
        classifier-free guided at the method's scale against its negative prompt (or "")."""
        import torch

        batch = noisy.shape[0]
        cond = states.expand(batch, -1, -1) if states.shape[0] == 1 else states
        if not guided:
            return self.unet(noisy, t, encoder_hidden_states=cond).sample
        uncond = self.negative_states().expand(batch, -1, -1)
        out = self.unet(
            torch.cat([noisy, noisy]), torch.cat([t, t]),
            encoder_hidden_states=torch.cat([uncond, cond]),
        ).sample
        e_uncond, e_cond = out.chunk(2)
        return e_uncond + self.guidance * (e_cond - e_uncond)

    def loss(self, draws: tuple[Any, Any, Any], states: Any, guided: bool) -> Any:
        import torch

        noisy, t, target = draws
        return torch.nn.functional.mse_loss(self.predict(noisy, t, states, guided), target)
