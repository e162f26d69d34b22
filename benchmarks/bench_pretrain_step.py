"""Seconds per optimiser step of the toy model's pretraining, for each speed or model lever, interleaved.

    python benchmarks/bench_pretrain_step.py [--rounds 3] [--steps 4] [--threads 1] [--batch 32]

Each variant is `sabun toyworld pretrain`'s own diffusion step (`DiffusionTrainer.train_step`:
caption dropout and shuffling, text encoder, U-Net, loss, AdamW, EMA) on random latents:
- `fp32`: the first toy model's step (epsilon objective on SD's betas);
- `bf16`: the same step under `torch.autocast("cpu", torch.bfloat16)` (these CPUs have avx512_bf16);
- `channels_last`: the U-Net's weights and inputs in channels-last memory order;
- `v-zsnr`: v-prediction on zero-terminal-SNR betas (today's default objective; its cost should be the same);
- `attn16`: cross-attention also at the 16x16 level.
Every variant but `v-zsnr` uses the first model's objective. The variants run in turn (A B C ... A B C ...) for `--rounds`, `--steps` timed steps each after one
untimed step, so a machine whose speed drifts affects them alike. Prints each variant's median
s/step and its ratio to `fp32`'s, with the spread over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch


def make_trainer(variant: str, batch: int):
    from sabun.toyworld.model import LATENT_SIZE, build_toy_pipeline
    from sabun.toyworld.pretrain import DiffusionTrainer, PretrainConfig, render_dataset

    first = dict(prediction_type="epsilon", zero_terminal_snr=False)  # the first toy model's objective
    levers = {
        "v-zsnr": dict(prediction_type="v_prediction", zero_terminal_snr=True),
        "attn16": first | dict(cross_attention_16=True),
    }.get(variant, first)
    config = PretrainConfig(images=max(64, batch), batch=batch, steps=1000, **levers)
    pipe = build_toy_pipeline(config.seed, config.cross_attention_16, config.prediction_type, config.zero_terminal_snr)
    _, metas = render_dataset(config)
    latents = torch.randn(config.images, 4, LATENT_SIZE, LATENT_SIZE, generator=torch.Generator().manual_seed(0))
    if variant == "channels_last":
        pipe.unet.to(memory_format=torch.channels_last)
        latents = latents.contiguous(memory_format=torch.channels_last)
    pipe.unet.train()
    pipe.text_encoder.train()
    return DiffusionTrainer(pipe, latents, metas, config)


def timed_steps(trainer, variant: str, steps: int) -> list[float]:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16" else contextlib.nullcontext()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        with autocast:
            trainer.train_step()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--variants", default="fp32,bf16,channels_last,v-zsnr,attn16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    trainers = {v: make_trainer(v, args.batch) for v in variants}
    for v in variants:
        timed_steps(trainers[v], v, 1)  # warm-up, untimed
    medians = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            medians[v].append(statistics.median(timed_steps(trainers[v], v, args.steps)))
        print(f"round {r + 1}: " + ", ".join(f"{v} {medians[v][-1]:.2f} s" for v in variants), flush=True)
    base = medians.get("fp32")
    print(
        f"\ntorch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, load average {os.getloadavg()[0]:.1f}"
    )
    print("| variant | median s/step | x fp32 (per-round ratios) |\n|---|---|---|")
    for v in variants:
        ratios = [a / b for a, b in zip(medians[v], base)] if base else []
        spread = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-"
        print(f"| {v} | {statistics.median(medians[v]):.2f} | {spread} |")


if __name__ == "__main__":
    main()
