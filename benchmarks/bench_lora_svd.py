"""Extraction and SVD-combine on SD 1.5 layer shapes: time, peak memory and error.

    python benchmarks/bench_lora_svd.py [--layers N] [--rank 32]

Each method runs in its own process so that its peak RSS is its own. Compared:
- extract, `full`: torch.linalg.svd of every dense layer difference (the plain approach);
- extract, `randomized`: torch.svd_lowrank with 8 extra columns and 2 power iterations;
- combine, `dense`: form sum_i m_i dW_i densely, then torch.linalg.svd (the plain approach);
- combine, `factored`: sabun's exact QR + small-core SVD on the stacked LoRA factors.
Differences are random low-rank changes plus small full-rank noise, the shape of a fine-tune.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def sd15_target_shapes(include_conv: bool = False) -> list[tuple[int, ...]]:
    """Weight shapes of SD 1.5's LoRA targets (U-Net and CLIP-L), from the real architecture."""
    from sabun.lora.targets import find_targets
    from sabun.models.architectures import sd15_text_encoder, sd15_unet

    targets = find_targets({"lora_unet": sd15_unet("meta"), "lora_te": sd15_text_encoder("meta")}, conv=include_conv)
    return [tuple(t.module.weight.shape) for t in targets.values()]


def make_difference(shape, generator, rank: int = 64) -> torch.Tensor:
    out, fan_in = shape[0], int(torch.tensor(shape[1:]).prod())
    low = torch.randn(out, rank, generator=generator) @ torch.randn(rank, fan_in, generator=generator) / rank
    return low + 1e-3 * torch.randn(out, fan_in, generator=generator)


def run(method: str, layers: int, rank: int) -> dict:
    from sabun.lora.svd import dense_svd, factored_svd

    # warm up the LAPACK paths once so a one-off initialisation is not timed
    factored_svd(torch.randn(64, 8), torch.randn(8, 64), rank=4)
    dense_svd(torch.randn(64, 64), rank=4, method="full")
    dense_svd(torch.randn(64, 64), rank=4, method="randomized")
    shapes = sd15_target_shapes()[:layers]
    generator = torch.Generator().manual_seed(0)
    errors, seconds = [], 0.0
    for shape in shapes:
        out, fan_in = shape[0], int(torch.tensor(shape[1:]).prod())
        if method.startswith("extract"):
            dW = make_difference(shape, generator)
            start = time.perf_counter()
            svd = dense_svd(dW, rank=rank, method=method.split("-")[1])
            seconds += time.perf_counter() - start
            errors.append(svd.relative_error)
        else:
            # two LoRAs of rank 32 and 16, combined as A - 0.5 B and cut to `rank`
            ups = [torch.randn(out, r, generator=generator) * 0.01 for r in (32, 16)]
            downs = [torch.randn(r, fan_in, generator=generator) for r in (32, 16)]
            start = time.perf_counter()
            if method == "combine-dense":
                dW = ups[0] @ downs[0] - 0.5 * (ups[1] @ downs[1])
                svd = dense_svd(dW, rank=rank, method="full")
            else:
                svd = factored_svd(torch.cat([ups[0], -0.5 * ups[1]], 1), torch.cat(downs, 0), rank=rank)
            seconds += time.perf_counter() - start
            errors.append(svd.relative_error)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {
        "method": method,
        "layers": len(shapes),
        "seconds": seconds,
        "peak_rss_mib": peak,
        "mean_rel_error": sum(errors) / len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=0, help="only the first N target layers (0: all)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    layers = args.layers or 10**6
    if args.method:
        print(json.dumps(run(args.method, layers, args.rank)))
        return
    print(
        f"SD 1.5 LoRA target layers: {len(sd15_target_shapes()[:layers])}, rank {args.rank}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'method':<22}{'seconds':>10}{'peak RSS MiB':>14}{'mean rel. error':>18}")
    for method in ("extract-full", "extract-randomized", "combine-dense", "combine-factored"):
        cmd = [sys.executable, __file__, "--method", method, "--layers", str(layers), "--rank", str(args.rank)]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(f"{method:<22}{r['seconds']:>10.2f}{r['peak_rss_mib']:>14.0f}{r['mean_rel_error']:>18.3e}")


if __name__ == "__main__":
    main()
