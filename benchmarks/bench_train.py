"""Seconds per step and peak memory of `sabun train` for one fixed config.

The config is the one compared against kohya-ss/sd-scripts (docs/benchmarks.md): batch 4, LoRA rank 16 /
alpha 8 on the U-Net and the text encoder, AdamW, fp32, 256 px, with and without latent caching.
Models: the tiny test model (at its own 64 px), and the real SD 1.5 architecture with random weights (timing and
memory do not depend on the weights' values). Each configuration runs in its own process, so each
peak RSS is its own.

    python benchmarks/bench_train.py                      # all four: tiny/sd15 x cached/uncached
    python benchmarks/bench_train.py --model sd15 --cache memory --steps 6

The SD 1.5 model is built once with random weights and saved as a diffusers folder under
--model-dir (4.3 GB), so the trainer loads it from disk as it would a real model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIG = """
[model]
path = "{model}"

[[datasets]]
path = "{data}"

[data]
resolution = {resolution}
batch_size = 4
buckets = false
cache_latents = "{cache}"

[network]
rank = 16
alpha = 8
train_unet = true
train_text_encoder = true

[optimizer]
type = "adamw"
learning_rate = 1e-4

[training]
max_steps = {steps}
mixed_precision = "{precision}"
gradient_checkpointing = {checkpointing}

[output]
dir = "{out}"
name = "bench"
progress_bar = false
tensorboard = false
"""


def build_sd15_folder(path: Path) -> None:
    """Save an SD 1.5-architecture pipeline with random weights as a diffusers folder."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from sabun.models.architectures import sd15_text_encoder, sd15_unet, sd15_vae
    from sabun.models.tiny import TINY_WORDS, sd15_scheduler_config
    from sabun.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=sd15_vae(), text_encoder=sd15_text_encoder(), tokenizer=build_clip_tokenizer(TINY_WORDS), unet=sd15_unet(),
        scheduler=DDIMScheduler(**sd15_scheduler_config()), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(path)


def write_images(folder: Path, count: int, size: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("1girl, red hair, white background")


def run_one(args) -> dict:
    """Train in this process and return the measurements (called in a child process)."""
    from sabun.train import load_config, train

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    write_images(work / "data", 8, args.resolution)
    model = "tiny" if args.model == "tiny" else str(Path(args.model_dir) / "sd15")
    (work / "train.toml").write_text(
        CONFIG.format(model=model, data=work / "data", resolution=args.resolution, cache=args.cache, steps=args.warmup + args.steps,
                      checkpointing=str(args.gradient_checkpointing).lower(), precision=args.mixed_precision, out=work / "out")
    )  # fmt: skip
    started = time.perf_counter()
    result = train(load_config(work / "train.toml"))
    total = time.perf_counter() - started
    measured = result.step_seconds[args.warmup :]
    return {
        "model": args.model,
        "cache": args.cache,
        "gradient_checkpointing": args.gradient_checkpointing,
        "mixed_precision": args.mixed_precision,
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
        "seconds_per_step": float(np.mean(measured)),
        "min_seconds_per_step": float(np.min(measured)),
        "steps_timed": len(measured),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # ru_maxrss is KiB on Linux
        "wall_seconds": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "sd15"], help="one model (default: both)")
    parser.add_argument("--cache", choices=["memory", "none"], help="latent caching (default: both)")
    parser.add_argument("--resolution", type=int, default=256, help="SD 1.5's training resolution")
    parser.add_argument(
        "--tiny-resolution",
        type=int,
        default=64,
        help="the tiny model's (its VAE downsamples 2x: 256 px would be 128x128 latents)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--mixed-precision",
        choices=["no", "bf16"],
        default="no",
        help="no: fp32 (the comparison's setting); bf16: frozen weights and activations in bf16",
    )
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "sabun-bench-models"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(args)))
        return
    if args.model in (None, "sd15") and not (Path(args.model_dir) / "sd15").exists():
        print(f"building the SD 1.5 architecture with random weights in {args.model_dir}/sd15 ...", file=sys.stderr)
        Path(args.model_dir).mkdir(parents=True, exist_ok=True)
        build_sd15_folder(Path(args.model_dir) / "sd15")
    rows = []
    for model in [args.model] if args.model else ["tiny", "sd15"]:
        for cache in [args.cache] if args.cache else ["memory", "none"]:
            resolution = args.tiny_resolution if model == "tiny" else args.resolution
            command = [sys.executable, __file__, "--child", "--model", model, "--cache", cache, "--resolution", str(resolution),
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--model-dir", args.model_dir]  # fmt: skip
            if args.gradient_checkpointing:
                command.append("--gradient-checkpointing")
            command += ["--mixed-precision", args.mixed_precision]
            done = subprocess.run(
                command, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore")
            )
            if done.returncode:
                sys.exit(f"{model}/{cache} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"{model:5s} {resolution:4d} px cache={cache:6s} {r['seconds_per_step']:7.3f} s/step (min {r['min_seconds_per_step']:.3f}, {r['steps_timed']} steps)  peak RSS {r['peak_rss_gib']:.2f} GiB",
                flush=True,
            )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
