"""Seconds to generate 16 images with the toy model (64 px, 25 DDIM steps, guidance 5, one batch).

    python benchmarks/bench_generate.py [--model toy] [--count 16] [--steps 25] [--repeats 3]

Loads the model once, runs one untimed warm-up batch, then times `--repeats` batches and prints
each and the best, with the torch thread count and the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    from sabun.generate import Sampler, generate_images
    from sabun.models.load import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    pipe = load_pipeline(args.model)
    load_seconds = time.perf_counter() - started
    sampler = Sampler(steps=args.steps, guidance=5.0, batch=args.count)
    prompts = ["1girl, solo, red hair, long hair, full body, white background"] * args.count
    generate_images(pipe, prompts[:2], [0, 1], sampler)  # warm-up
    times = []
    for r in range(args.repeats):
        started = time.perf_counter()
        generate_images(pipe, prompts, list(range(r * args.count, (r + 1) * args.count)), sampler)
        times.append(time.perf_counter() - started)
    print(
        f"model {args.model}: loaded in {load_seconds:.1f} s; torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{args.count} images, {args.steps} steps: "
        + ", ".join(f"{t:.2f} s" for t in times)
        + f"; best {min(times):.2f} s ({args.count / min(times):.1f} images/s)"
    )


if __name__ == "__main__":
    main()
