"""Where an SD 1.5 training step's time goes: the frozen U-Net's forward and backward, with and
without a LoRA, in fp32, channels_last and bf16 autocast, and the top operators.

Batch 4 at 32x32 latents (256 px), the config of bench_train.py. Uses the random-weight SD 1.5
folder that bench_train.py builds (run it first, or pass --model).

    python benchmarks/profile_unet_step.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def timed(step, repeats: int) -> float:
    """The best of `repeats` calls after one untimed warm-up call."""
    step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path(tempfile.gettempdir()) / "sabun-bench-models" / "sd15"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from sabun.lora.network import LoRANetwork
    from sabun.lora.targets import pipeline_targets
    from sabun.models.load import load_pipeline

    pipe = load_pipeline(args.model)
    unet = pipe.unet.requires_grad_(False)
    print(f"attention: {type(next(iter(unet.attn_processors.values()))).__name__}, threads: {torch.get_num_threads()}")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 32, 32, generator=generator)
    t = torch.randint(0, 1000, (4,), generator=generator)
    context = torch.randn(4, 77, 768, generator=generator)

    def forward():
        with torch.no_grad():
            unet(x, t, context)

    def forward_backward(latents=x):
        unet(latents, t, context).sample.float().pow(2).mean().backward()

    print(f"U-Net forward, no grad:               {timed(forward, args.repeats):6.2f} s")
    print(
        f"U-Net forward + backward, no LoRA:    {timed(lambda: forward_backward(x.clone().requires_grad_()), args.repeats):6.2f} s"
    )
    targets = {k: v for k, v in pipeline_targets(pipe).items() if v.component == "unet"}
    LoRANetwork.create(targets, 16, 8).attach()
    print(f"U-Net forward + backward, LoRA r16:   {timed(forward_backward, args.repeats):6.2f} s")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        print(f"  ... under bf16 autocast:            {timed(forward_backward, args.repeats):6.2f} s")
    with torch.autograd.profiler.profile() as profile:
        forward_backward()
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    unet.to(memory_format=torch.channels_last)
    x_last = x.to(memory_format=torch.channels_last)
    print(f"  ... channels_last:                  {timed(lambda: forward_backward(x_last), args.repeats):6.2f} s")


if __name__ == "__main__":
    main()
