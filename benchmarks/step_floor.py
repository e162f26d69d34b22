"""The fastest an SD 1.5 training step can run on this machine: its arithmetic over the peak rate.

Counts the floating-point operations of one step of bench_train.py's config (batch 4, 256 px,
LoRA rank 16 on the U-Net and the text encoder): the text encoder forward and backward, the U-Net
forward and backward, and, for the uncached case, the VAE encoding of the four images. Attention
is counted as its two matrix products each way (the least any kernel does; flash kernels
recompute more). Then measures the best rate this machine reaches on the step's largest matrix
products and convolutions, and divides. No implementation of this step can beat the result
without doing less arithmetic, so it is the yardstick for bench_train.py's seconds per step.

Uses the random-weight SD 1.5 folder that bench_train.py builds (run it first, or pass --model).

    python benchmarks/step_floor.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from profile_unet_step import timed  # beside this file: the benchmarks' timer


def best_rate(op, flops: float, dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of `repeats` runs of `op` (after one warm-up run)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        return flops / timed(op, repeats) / 1e9


def peak_rate(dtype: torch.dtype) -> tuple[float, str]:
    """The best GFLOP/s over shapes the SD 1.5 step runs most (its FF matmuls, 320- and 640-channel 3x3 convs)."""
    generator = torch.Generator().manual_seed(0)
    rates = {}
    for m, k, n in [(4096, 320, 2560), (4096, 1280, 320), (1024, 640, 5120), (4096, 1280, 1280)]:
        a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
        rates[f"matmul {m}x{k}x{n}"] = best_rate(lambda a=a, b=b: a @ b, 2 * m * k * n, dtype)
    for channels, side in [(320, 32), (640, 16)]:
        x = torch.randn(4, channels, side, side, generator=generator)
        w = torch.randn(channels, channels, 3, 3, generator=generator)
        flops = 2 * 4 * side * side * channels * channels * 9
        rates[f"conv3x3 {channels}ch {side}x{side}"] = best_rate(
            lambda x=x, w=w: F.conv2d(x, w, padding=1), flops, dtype
        )
    name = max(rates, key=rates.get)
    return rates[name], name


def step_flops(model: str) -> dict[str, float]:
    """GFLOP of one training step's parts, counted by torch's FlopCounterMode."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from sabun.lora.network import LoRANetwork
    from sabun.lora.targets import pipeline_targets
    from sabun.models.load import load_pipeline
    from sabun.train.model import TextEncoders, freeze

    pipe = load_pipeline(model)
    text = TextEncoders.of(pipe, 1)
    freeze(pipe.unet, pipe.vae, *text.encoders)
    LoRANetwork.create(pipeline_targets(pipe), 16, 8, components=["unet", "te"]).attach()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 32, 32, generator=generator)
    timesteps = torch.randint(0, 1000, (4,), generator=generator)
    ids = text.ids(["1girl, red hair, white background"] * 4)

    def count(run) -> float:
        counter = FlopCounterMode(display=False)
        with counter, sdpa_kernel(SDPBackend.MATH):  # the math path's matmuls are what the counter sees
            run()
        return counter.get_total_flops() / 1e9

    parts = {}
    parts["text encoder fwd+bwd"] = count(lambda: text.encode(ids)[0].pow(2).mean().backward())
    context = text.encode(ids)[0].detach().requires_grad_()  # a leaf: the backward stops at the U-Net's input
    parts["U-Net fwd+bwd"] = count(lambda: pipe.unet(latents, timesteps, context).sample.pow(2).mean().backward())
    with torch.no_grad():
        parts["VAE encode (uncached only)"] = count(
            lambda: pipe.vae.encode(torch.randn(4, 3, 256, 256, generator=generator))
        )
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path(tempfile.gettempdir()) / "sabun-bench-models" / "sd15"))
    args = parser.parse_args()

    parts = step_flops(args.model)
    for name, gflop in parts.items():
        print(f"{name:28s} {gflop:8.1f} GFLOP")
    cached = parts["text encoder fwd+bwd"] + parts["U-Net fwd+bwd"]
    uncached = cached + parts["VAE encode (uncached only)"]
    print(f"{'step, latents cached':28s} {cached:8.1f} GFLOP")
    print(f"{'step, latents encoded':28s} {uncached:8.1f} GFLOP")
    for dtype in (torch.float32, torch.bfloat16):
        rate, where = peak_rate(dtype)
        label = "fp32" if dtype == torch.float32 else "bf16 (autocast)"
        print(f"\n{label}: peak {rate:.0f} GFLOP/s ({where}, {torch.get_num_threads()} threads)")
        print(f"  floor, latents cached:  {cached / rate:5.2f} s/step")
        print(f"  floor, latents encoded: {uncached / rate:5.2f} s/step")
        if dtype == torch.float32:
            for label, seconds, gflop in [
                ("5.5 s/step cached", 5.5, cached),
                ("6.7 s/step cached", 6.7, cached),
                ("9.5 s/step encoded", 9.5, uncached),
            ]:
                print(
                    f"  {label:20s} would need {gflop / seconds:5.0f} GFLOP/s sustained ({gflop / seconds / rate:.0%} of peak)"
                )


if __name__ == "__main__":
    main()
