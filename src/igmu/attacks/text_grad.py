"""``text_grad``: UnlearnDiffAtk (Zhang et al., ECCV 2024) — the diffusion model as its own
classifier.

``tokens`` discrete tokens are inserted right after <sot>, before the prompt's own tokens. Each
slot holds a distribution over the vocabulary (a row of a [tokens, |V|] matrix on the probability
simplex, uniform at the start); ``vocabulary`` is by default the tokens of printable ASCII text
(what a user can type; on the MiniWorld's byte-level tokenizer the other tokens are UTF-8 byte
pieces, rare or absent in its captions). A step samples one token per slot from its row (the
forward pass sees hard one-hot rows; a straight-through estimator passes the gradient, clipped to
[-1, 1], back to the rows), embeds the prompt, and takes the attacked model's denoising loss on
ORG's image(s) of the prompt at ``batch`` random timesteps with fresh noise; Adam updates the rows
and a Euclidean projection puts each back on the simplex.

Budget: optimisation steps. At ``checks`` evenly spaced steps the rows' arg-max tokens are a
candidate, and so is the plain prompt (``plain_candidate``: the empty prefix, as UnlearnDiffAtk
first tries the unattacked prompt); the candidate with the lowest loss on fixed probe draws
(timesteps and noise drawn once per prompt) is the attack's answer, so the choice is
deterministic and needs no judge. When the plain prompt wins, the attack's answer is that text
(its image is then the forget image of the same seed). The final loss is the winner's probe loss;
the plain prompt's is recorded beside it.
"""

from __future__ import annotations

from typing import Any

from igmu.attacks.base import (
    Attack,
    AttackOutcome,
    AttackProblem,
    register_attack,
    require,
)

PROBE_SEED_OFFSET = 7_919


def project_simplex(rows: Any) -> Any:
    """Euclidean projection of each row onto the probability simplex (sort-based, exact)."""
    import torch

    n = rows.shape[-1]
    ordered, _ = torch.sort(rows, dim=-1, descending=True)
    cumulative = ordered.cumsum(-1) - 1.0
    index = torch.arange(1, n + 1, device=rows.device, dtype=rows.dtype)
    support = (ordered - cumulative / index) > 0
    count = support.to(rows.dtype).cumsum(-1).amax(-1, keepdim=True).long()
    theta = cumulative.gather(-1, count - 1) / count.to(rows.dtype)
    return (rows - theta).clamp_min(0.0)


def _straight_through() -> Any:
    import torch

    class StraightThrough(torch.autograd.Function):
        """Forward: the hard one-hot rows; backward: the gradient, clipped to [-1, 1]."""

        @staticmethod
        def forward(ctx: Any, soft: Any, hard: Any) -> Any:
            return hard

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return grad.clamp(-1.0, 1.0), None

    return StraightThrough


def _step(candidate: tuple[float, int]) -> int:
    return candidate[1]


def probe_loss(model: Any, draws: Any, ids: list[int], guided: bool) -> float:
    import torch

    with torch.no_grad():
        return float(model.loss(draws, model.condition(model.padded(ids)), guided))


@register_attack
class TextGrad(Attack):
    name = "text_grad"
    summary = (
        "UnlearnDiffAtk: prefix tokens by projected gradient on the model's own denoising loss"
    )
    budget_unit = "optimisation steps"
    white_box = True
    needs_targets = True
    defaults = {
        "budget": 12,
        "tokens": 5,
        "lr": 0.01,
        "weight_decay": 0.1,
        "batch": 4,  # timesteps per step
        "targets": 1,  # ORG images per prompt (seeds 0..targets-1)
        "checks": 4,
        "probe": 8,
        "vocabulary": "ascii",
        "guided_loss": "auto",
        "plain_candidate": True,
        "images": 1,
    }

    def check(self, settings: dict[str, Any]) -> None:
        for key in ("tokens", "batch", "targets", "checks", "probe", "images"):
            require(settings[key] >= 1, f"attack text_grad setting {key!r} must be >= 1")
        require(settings["lr"] > 0, "attack text_grad setting 'lr' must be > 0")

    def run(self, problem: AttackProblem) -> AttackOutcome:
        import torch

        settings, model = problem.settings, problem.model
        guided = model.guided(settings["guided_loss"])
        generator = torch.Generator().manual_seed(problem.seed)
        x0 = model.to_model_space(problem.targets)
        vocab = model.vocabulary(settings["vocabulary"])
        # one table per text encoder (SDXL: two); the sampled one-hot rows pick from each
        tables = [t.weight.detach()[vocab].float() for t in model.embedding_tables]
        k = min(settings["tokens"], model.length - 3)
        content = model.content_ids(problem.prompt.text)
        template = model.sequence([int(vocab[0])] * k + content)
        padded = model.padded(template)
        positions = list(range(1, 1 + k))
        probes = model.draw(
            x0, settings["probe"], torch.Generator().manual_seed(problem.seed + PROBE_SEED_OFFSET)
        )

        rows = torch.full((k, len(vocab)), 1.0 / len(vocab), device=model.device)
        rows.requires_grad_(True)
        optimizer = torch.optim.Adam(
            [rows], lr=settings["lr"], weight_decay=settings["weight_decay"]
        )
        ste = _straight_through()
        budget = settings["budget"]
        every = max(1, budget // settings["checks"])
        checkpoints = sorted({s for s in range(every, budget + 1, every)} | {budget})
        candidates: dict[tuple[int, ...], tuple[float, int]] = {}
        losses = []
        for step in range(1, budget + 1):
            picked = torch.multinomial(rows.detach().cpu(), 1, generator=generator).squeeze(1)
            hard = torch.nn.functional.one_hot(picked, len(vocab)).to(rows.dtype)
            onehot = ste.apply(rows, hard.to(model.device))
            states = model.condition(padded, positions, tuple(onehot @ t for t in tables))
            loss = model.loss(model.draw(x0, settings["batch"], generator), states, guided)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                rows.copy_(project_simplex(rows))
            losses.append(loss.item())
            if step in checkpoints:
                prefix = tuple(int(vocab[i]) for i in rows.detach().argmax(-1).tolist())
                if prefix not in candidates:
                    ids = model.sequence([*prefix, *content])
                    candidates[prefix] = (probe_loss(model, probes, ids, guided), step)
        plain = model.sequence(content)
        plain_loss = probe_loss(model, probes, plain, guided)
        if settings["plain_candidate"]:  # the empty prefix; it loses ties to found prefixes
            candidates[()] = (plain_loss, 0)
        best = min(candidates, key=lambda p: (candidates[p][0], -candidates[p][1]))
        ids = model.sequence([*best, *content])
        text = model.render(ids) if best else problem.prompt.text
        return AttackOutcome(
            kind="token_ids" if best else "text",
            text=text,
            token_ids=ids if best else None,
            image_seeds=list(range(settings["images"])),
            steps=budget,
            loss=candidates[best][0],
            details={
                "prefix_ids": list(best),
                "prefix_tokens": model.tokenizer.convert_ids_to_tokens(list(best)),
                "chosen_at_step": candidates[best][1],
                "probe_loss_plain_prompt": plain_loss,
                "candidate_probe_losses": {
                    str(step): loss for loss, step in sorted(candidates.values(), key=_step)
                },
                "train_loss_first_last": [losses[0], losses[-1]],
                "guided_loss": guided,
                "vocabulary_size": len(vocab),
                "text_roundtrips": model.token_ids(text) == ids,
            },
        )
