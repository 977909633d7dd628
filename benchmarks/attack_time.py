"""Seconds per prompt of each attack on the MiniWorld, and the cost projected for SD-1.x at 512 px.

1. Measured: `igmu attack`'s engine with every attack at its default settings on the first K
   forget prompts of mini_object, against ORG (and NEGPROMPT, whose guided loss doubles the UNet
   batch), one torch thread. ORG's forget images (the white-box attacks' targets) are generated
   first, as a user has them from `igmu generate`. Wall and CPU seconds per prompt come from
   attacks.jsonl; textual inversion's shared training is shown apart and amortised over K.
2. FLOPs of one call (torch.utils.flop_counter) of the MiniWorld UNet / text encoder and of
   SD-1.x-sized ones (UNet 860M at 64x64 latents, CLIP ViT-L/14 text tower, VAE) built on the
   meta device: random, never downloaded, no memory.
3. FLOPs per prompt from the call counts each attack makes (igmu's defaults, and the published
   settings), and the seconds that is at this CPU's measured dense float32 rate (a lower bound:
   convolutions run slower than a matmul) and at 100 TFLOP/s sustained (a large GPU).

    python benchmarks/attack_time.py [--prompts 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ATTACKS = ("seed_search", "text_grad", "concept_vector", "textual_inversion")
SD_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SD_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
           "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
           "hidden_act": "quick_gelu"}
SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
          "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
          "down_block_types": ("DownEncoderBlock2D",) * 4,
          "up_block_types": ("UpDecoderBlock2D",) * 4}


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def call_flops(unet, text, vae, size: int, device: str) -> dict[str, float]:
    """FLOPs of one call of each part (batch 1); backward = gradients to the inputs only."""
    import torch

    unet.requires_grad_(False)
    text.requires_grad_(False)
    width = text.config.hidden_size
    channels = unet.config.in_channels
    latent = size // 8 if vae is not None else size
    x = torch.randn(1, channels, latent, latent, device=device)
    t = torch.tensor([500], device=device)
    ids = torch.zeros(1, 77, dtype=torch.long, device=device)

    def unet_backward() -> None:
        states = torch.randn(1, 77, width, device=device, requires_grad=True)
        unet(x, t, encoder_hidden_states=states).sample.sum().backward()

    def text_backward() -> None:
        table = text.get_input_embeddings()
        vectors = torch.randn(1, 77, width, device=device, requires_grad=True)
        handle = table.register_forward_hook(lambda m, a, out: out + vectors)
        try:
            text(ids)[0].sum().backward()
        finally:
            handle.remove()

    states = torch.randn(1, 77, width, device=device)
    counts = {
        "unet": flops(lambda: unet(x, t, encoder_hidden_states=states)),
        "unet_grad": flops(unet_backward),
        "text": flops(lambda: text(ids)),
        "text_grad": flops(text_backward),
        "vae_encode": 0.0,
        "vae_decode": 0.0,
    }
    if vae is not None:
        image = torch.randn(1, 3, size, size, device=device)
        counts["vae_encode"] = flops(lambda: vae.encode(image))
        counts["vae_decode"] = flops(lambda: vae.decode(x))
    return counts


def sd_parts():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        return (UNet2DConditionModel(**SD_UNET), CLIPTextModel(CLIPTextConfig(**SD_TEXT)),
                AutoencoderKL(**SD_VAE))


def per_prompt(c: dict[str, float], s: dict[str, dict], gen_steps: int, prompts: int
               ) -> dict[str, float]:
    """FLOPs per prompt of each attack against ORG (no guided loss), from its settings ``s``
    and the call costs ``c``."""
    image = gen_steps * 2 * c["unet"] + 2 * c["text"] + c["vae_decode"]  # CFG sampling
    target = image + c["vae_encode"]
    tg, cv, ti, ss = (s[a] for a in ("text_grad", "concept_vector", "textual_inversion",
                                     "seed_search"))
    step = tg["batch"] * c["unet_grad"] + c["text_grad"]
    # probe losses of up to `checks` candidates and of the plain prompt
    rounds = tg.get("probe_rounds", tg["checks"] + 1)
    probes = rounds * (tg["probe"] * c["unet"] + c["text"])
    text_grad = (tg["targets"] * target + tg["budget"] * step + probes
                 + tg.get("judge_images", 0) * image + tg["images"] * image)
    concept = (cv["budget"] + 1) * cv["population"] * c["text"] + cv["images"] * image
    shared = (ti["train_prompts"] * ti["targets"] * target
              + ti["budget"] * ti["batch"] * (c["unet_grad"] + c["text_grad"]))
    return {
        "text_grad": text_grad,
        "concept_vector": concept,
        "textual_inversion": shared / prompts + ti["images"] * image,
        "seed_search": ss["budget"] * image,
    }


def dense_rate() -> float:
    """This CPU's float32 matmul rate on one thread (FLOP/s)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    started = time.process_time()
    for _ in range(10):
        a @ b
    return 10 * 2 * 1024**3 / (time.process_time() - started)


def measure(out: Path, prompts: int) -> dict[str, dict[str, float]]:
    from igmu.attacks.engine import AttackOptions, run_attacks
    from igmu.backbones.config import load_models_config
    from igmu.generation import GenerateOptions, generate
    from igmu.tasks import load_task
    from igmu.workflows.demo import DemoOptions, write_models_file
    models = load_models_config(write_models_file(out / "models.yaml", {},
                                                  DemoOptions()))
    task = load_task("mini_object")
    generate(task, out, models, GenerateOptions(methods=["ORG"], prompt_sets=["forget"],
                                                max_prompts_per_class=prompts, progress=False))
    result = run_attacks(task, out, models, AttackOptions(
        methods=["ORG", "NEGPROMPT"], attacks=list(ATTACKS), prompts=prompts, progress=False))
    table: dict[str, dict[str, float]] = {}
    for row in result.rows:
        entry = table.setdefault(f"{row['attack']}/{row['method']}",
                                 {"wall": 0.0, "cpu": 0.0, "shared_wall": 0.0})
        entry["wall"] += row["wall_seconds"] / prompts
        entry["cpu"] += row["cpu_seconds"] / prompts
        entry["shared_wall"] = float(row["details"].get("shared_wall_seconds", 0.0))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="run into this folder and keep it")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    import torch

    from igmu.attacks import get_attack
    from igmu.miniworld.shipped import shipped_models
    from igmu.pipelines.load import load_pipeline
    from igmu.workflows.demo import DemoOptions

    torch.set_num_threads(1)
    out = args.keep or Path(tempfile.mkdtemp(prefix="igmu-attack-time-"))
    try:
        measured = measure(out, args.prompts)
    finally:
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"MiniWorld, mini_object, {args.prompts} prompts, 1 thread, default settings:")
    print(f"  {'attack/method':32s} {'wall s/prompt':>14s} {'cpu s/prompt':>13s}  shared")
    for name, entry in sorted(measured.items()):
        shared = f"{entry['shared_wall']:.1f} s once" if entry["shared_wall"] else ""
        print(f"  {name:32s} {entry['wall']:14.2f} {entry['cpu']:13.2f}  {shared}")

    t2i, _ = shipped_models()
    mini = load_pipeline(str(t2i), str(t2i), "generator.model")
    mini_calls = call_flops(mini.unet, mini.text_encoder, None, 32, "cpu")
    sd_calls = call_flops(*sd_parts(), 512, "meta")
    print("\nGFLOP of one call (batch 1):")
    for part in mini_calls:
        print(f"  {part:11s} MiniWorld {mini_calls[part] / 1e9:10.3f}   "
              f"SD-1.x 512px {sd_calls[part] / 1e9:10.1f}")

    defaults = {a: get_attack(a).settings(None) for a in ATTACKS}
    published = {
        # UnlearnDiffAtk, worst case: 50 timesteps x 40 steps, batch 1, a judged LMS-50
        # generation after every timestep, one LMS-25 target; no probe selection.
        "text_grad": {**defaults["text_grad"], "budget": 2000, "batch": 1, "probe_rounds": 0,
                      "judge_images": 50},
        "concept_vector": {**defaults["concept_vector"], "budget": 3000, "population": 200},
        # CCE: 5000 steps at batch 4 x accumulation 4 on 25 concept images.
        "textual_inversion": {**defaults["textual_inversion"], "budget": 5000, "batch": 16,
                              "train_prompts": 25},
        "seed_search": defaults["seed_search"],
    }
    steps = DemoOptions().steps
    rate = dense_rate()
    mini_cost = per_prompt(mini_calls, defaults, steps, args.prompts)
    rows = [("igmu defaults", per_prompt(sd_calls, defaults, 25, args.prompts)),
            ("published settings", per_prompt(sd_calls, published, 50, args.prompts))]
    print(f"\nThis CPU, one thread, float32 matmul: {rate / 1e9:.1f} GFLOP/s")
    print("TFLOP per prompt (ORG) and projected seconds per prompt for SD-1.x at 512 px:")
    for attack in ATTACKS:
        cpu = measured[f"{attack}/ORG"]["cpu"]
        shared = measured[f"{attack}/ORG"]["shared_wall"] / args.prompts
        print(f"  {attack}: MiniWorld {mini_cost[attack] / 1e9:.2f} GFLOP, measured "
              f"{cpu + shared:.2f} s ({mini_cost[attack] / max(cpu + shared, 1e-9) / 1e9:.2f} "
              "GFLOP/s achieved)")
        for label, cost in rows:
            print(f"    SD {label:18s} {cost[attack] / 1e12:10.1f} TFLOP   "
                  f">= {cost[attack] / rate:10.0f} s on this CPU   "
                  f"{cost[attack] / 1e14:8.1f} s at 100 TFLOP/s")
    summary = {"measured": measured, "calls_mini": mini_calls, "calls_sd": sd_calls,
               "cpu_rate": rate, "per_prompt_mini": mini_cost,
               "per_prompt_sd": dict(rows)}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
