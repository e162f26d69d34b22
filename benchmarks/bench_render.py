"""Toy-world rendering speed: images per second for random characters, on one core.

    python benchmarks/bench_render.py [--count 1000] [--size 64]

Each image is a new random character (as in pretraining data) with a random view, zoom, pose and
background, half in each style. Two numbers: `render` alone (pixels in memory), and the whole
`sabun render toy --random` path (render + PNG + JSON + caption files). The load average is printed
too: on a shared machine it explains slow runs.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, whatever numpy was built with

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from sabun.toyworld.character import load_preset, random_character
from sabun.toyworld.commands import RenderToyConfig, render_toy
from sabun.toyworld.geometry import POSES
from sabun.toyworld.render import BACKGROUNDS, STYLES, VIEWS, ZOOMS, Shot, render


def render_only(count: int, size: int) -> tuple[float, float]:
    """(wall, CPU) seconds to render `count` random characters in memory."""
    rng = np.random.default_rng(0)
    target = load_preset("target")
    jobs = [
        (
            random_character(rng, exclude=(target,)),
            Shot(*(str(rng.choice(c)) for c in (VIEWS, ZOOMS, POSES, BACKGROUNDS))),
            STYLES[i % 2],
        )
        for i in range(count)
    ]
    wall, cpu = time.perf_counter(), time.process_time()
    for spec, shot, style in jobs:
        render(spec, shot, style, size=size, seed=1)
    return time.perf_counter() - wall, time.process_time() - cpu


def with_files(count: int, size: int) -> tuple[float, float]:
    """(wall, CPU) seconds for `render_toy --random` to write `count` images with metadata."""
    with tempfile.TemporaryDirectory() as folder:
        wall, cpu = time.perf_counter(), time.process_time()
        for style in STYLES:
            render_toy(
                RenderToyConfig(
                    out=Path(folder),
                    style=style,
                    random=True,
                    count=count // 2,
                    views=VIEWS,
                    zooms=ZOOMS,
                    poses=POSES,
                    backgrounds=BACKGROUNDS,
                    size=size,
                )
            )
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description="Toy-world rendering speed on one core.")
    parser.add_argument("--count", type=int, default=1000, help="number of images")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = parser.parse_args()
    render_only(20, args.size)  # warm up caches and imports
    print(
        f"{args.count} random characters at {args.size} px, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    for label, (wall, cpu) in (
        ("render only", render_only(args.count, args.size)),
        ("render + files", with_files(args.count, args.size)),
    ):
        print(f"{label:>15}: {args.count / wall:6.0f} images/s wall, {args.count / cpu:6.0f} images/s CPU time")


if __name__ == "__main__":
    main()
