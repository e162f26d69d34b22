"""Peak memory and time of `sabun train` on a full-size SD 1.5 single file, on the CPU.

The path a real checkpoint takes: the SD 1.5 architecture with random weights (timing and memory
do not depend on the weights' values) is written as an fp16 single file in the original layout, as
SD 1.5 ships; then this process loads it (fp32), trains one step at 256 px (LoRA rank 4 / alpha 2
on the U-Net and the text encoder, AdamW, fp32, latents cached) and saves the LoRA. The file is
written by a child process, so this process's peak RSS is loading and training alone.

    python benchmarks/bench_memory_sd15.py                     # full size: ~2 GB of disk, several GB of RAM
    python benchmarks/bench_memory_sd15.py --reduced           # the reduced-width test architecture (seconds)
    python benchmarks/bench_memory_sd15.py --checkpoint v1-5-pruned-emaonly.safetensors   # a real SD 1.5 file

Peak RSS is `getrusage`'s `ru_maxrss`: the resident high-water mark of the process (KiB on Linux).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """
[model]
path = "{model}"

[[datasets]]
path = "{data}"

[data]
resolution = {resolution}
bucket_step = 64

[network]
rank = 4
alpha = 2

[optimizer]
learning_rate = 1e-4

[training]
max_steps = {steps}
gradient_checkpointing = {checkpointing}

[output]
dir = "{out}"
name = "bench"
progress_bar = false
tensorboard = false
"""

SD15_LORA_LAYERS = 192 + 72  # U-Net attention layers + CLIP text-encoder layers, as in kohya's SD 1.5 LoRAs


def gib(kib: int) -> float:
    return kib / 2**20


def write_checkpoint(path: Path, reduced: bool) -> None:
    """The SD 1.5 architecture with random weights as an fp16 single file (run in a child process)."""
    import torch

    from sabun.models.load import save_pipeline
    from sabun.models.single_file import random_pipeline

    pipe = random_pipeline("sd1", reduced=reduced)
    pipe.to(torch.float16)
    save_pipeline(pipe, path)


def write_images(folder: Path, size: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    colours = (np.random.default_rng(0).random((4, 4, 3)) * 255).astype("uint8")
    Image.fromarray(colours).resize((size, size), Image.Resampling.BICUBIC).save(folder / "img0.png")
    (folder / "img0.txt").write_text("1girl, red hair, white background")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="an SD 1.5 single file to train on instead of a random one")
    parser.add_argument(
        "--reduced",
        action="store_true",
        help="the reduced-width architecture of the tests: checks this script in seconds",
    )
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--work-dir", help="folder for the checkpoint, images and LoRA (default: a new temporary folder)"
    )
    parser.add_argument("--write", help=argparse.SUPPRESS)  # the child process: write the checkpoint here
    args = parser.parse_args()
    if args.write:
        write_checkpoint(Path(args.write), args.reduced)
        return

    import torch

    from sabun.lora.file import load_lora
    from sabun.train import load_config, train

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-memory-sd15-"))
    work.mkdir(parents=True, exist_ok=True)
    measured: dict = {"threads": torch.get_num_threads(), "resolution": args.resolution, "reduced": args.reduced}
    model = Path(args.checkpoint) if args.checkpoint else work / "sd15.safetensors"
    if not args.checkpoint:
        print(f"writing the SD 1.5 architecture with random weights to {model} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        command = [sys.executable, __file__, "--write", str(model)] + (["--reduced"] if args.reduced else [])
        subprocess.run(command, check=True)
        measured["write_seconds"] = time.perf_counter() - started
        measured["write_peak_rss_gib"] = gib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)

    write_images(work / "data", args.resolution)
    (work / "train.toml").write_text(
        CONFIG.format(model=model.as_posix(), data=(work / "data").as_posix(), resolution=args.resolution, steps=args.steps,
                      checkpointing=str(args.gradient_checkpointing).lower(), out=(work / "out").as_posix())
    )  # fmt: skip
    started = time.perf_counter()
    result = train(load_config(work / "train.toml"), overwrite=True)
    measured["train_seconds"] = time.perf_counter() - started  # loading, latent cache, steps, saving
    measured["step_seconds"] = result.step_seconds
    measured["train_peak_rss_gib"] = gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    layers = len(load_lora(result.lora_path).weights)
    measured["lora_layers"] = layers
    print(
        f"load + {args.steps} step(s) at {args.resolution} px + save: {measured['train_seconds']:.1f} s "
        f"(steps: {', '.join(f'{s:.1f}' for s in result.step_seconds)} s), peak RSS {measured['train_peak_rss_gib']:.2f} GiB; "
        f"LoRA: {layers} layers -> {result.lora_path}"
    )
    if "write_seconds" in measured:
        print(
            f"writing the random checkpoint: {measured['write_seconds']:.1f} s, peak RSS {measured['write_peak_rss_gib']:.2f} GiB (child process)"
        )
    print(json.dumps(measured))
    if layers != SD15_LORA_LAYERS:
        sys.exit(f"{result.lora_path}: has {layers} LoRA layers; an SD 1.5 LoRA has {SD15_LORA_LAYERS}")


if __name__ == "__main__":
    main()
