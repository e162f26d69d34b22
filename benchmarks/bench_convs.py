"""The SD 1.5 step's frozen 3x3 convolutions three ways: oneDNN's direct kernel, one GEMM, Winograd.

Collects every 3x3 convolution the U-Net runs in one step of bench_train.py's config (batch 4,
256 px) with its input shape and count, then times each shape's forward and backward to the input
(all a frozen layer needs) as torch's own `F.conv2d`, as `small_convs.conv3x3_as_gemm` (unfold and
one matrix product) and as `winograd.conv3x3` (F(2x2, 3x3) at 8x8 and below, F(4x4, 3x3) above),
and checks each against the direct result. Rates are in GFLOP/s of the direct convolution's
arithmetic (2 x 9 x C_in x C_out per output pixel, twice for the two passes), so a rate above the
CPU's peak means less arithmetic was done. With `--step`, also the U-Net's forward and backward
(the step's compute, LoRA attached) with and without the Winograd layers as the trainer routes them
(only calls on winograd.MIN_PIXELS or more go Winograd), interleaved.

`--precision bf16` times the trainer's bf16 (bf16 weights and activations): direct and GEMM only
(Winograd's transforms lose too much in bf16, so winograd.py takes fp32 only), and `--step` then
sets the U-Net with and without the small-conv GEMM as the trainer routes it (small_convs.picks_gemm).

Uses the random-weight SD 1.5 folder that bench_train.py builds (run it first, or pass --model).

    python benchmarks/bench_convs.py
    python benchmarks/bench_convs.py --step --rounds 3
    python benchmarks/bench_convs.py --precision bf16 --step --rounds 3
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from profile_unet_step import timed  # beside this file: the benchmarks' timer
from step_floor import load_step

from sabun.train import small_convs, winograd


def conv_shapes(pipe, inputs) -> collections.Counter:
    """(C_in, C_out, H, W) of every frozen 3x3 convolution Winograd would take, with its count."""
    shapes = collections.Counter()

    def record(layer, args, _output):
        shapes[(layer.in_channels, layer.out_channels, *args[0].shape[-2:])] += 1

    hooks = [layer.register_forward_hook(record) for layer in pipe.unet.modules() if winograd.eligible(layer)]
    with torch.no_grad():
        pipe.unet(inputs["latents"], inputs["timesteps"], torch.zeros(4, 77, 768))
    for hook in hooks:
        hook.remove()
    return shapes


def time_shape(shape: tuple, batch: int, repeats: int, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    in_channels, out_channels, height, width = shape
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, height, width, generator=generator).to(dtype).requires_grad_()
    weight = (torch.randn(out_channels, in_channels, 3, 3, generator=generator) / (9 * in_channels) ** 0.5).to(dtype)
    grad = torch.randn(batch, out_channels, height, width, generator=generator).to(dtype)
    ways = {
        "direct": lambda: F.conv2d(x, weight, None, padding=1),
        "gemm": lambda: small_convs.conv3x3_as_gemm(x, weight, None),
    }
    if dtype == torch.float32:
        ways["winograd"] = lambda: winograd.conv3x3(x, weight, None)
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2  # bf16 keeps 8 bits of mantissa
    reference = [t.detach() for t in (ways["direct"](), *torch.autograd.grad(ways["direct"](), x, grad))]
    seconds = {}
    for name, way in ways.items():
        out = way()
        for got, want in zip((out, *torch.autograd.grad(out, x, grad)), reference, strict=True):
            error = ((got - want).float().abs().max() / want.float().abs().max()).item()
            if error > tolerance:
                raise SystemExit(f"{name} convolution at {shape}: relative error {error:.1e}")
        seconds[name] = timed(lambda way=way: torch.autograd.grad(way(), x, grad), repeats)
    return seconds


def step_rounds(pipe, text, inputs, rounds: int, dtype: torch.dtype = torch.float32) -> list[tuple[float, float]]:
    """(seconds without, seconds with) the Winograd layers (bf16: the small-conv GEMM), for the
    U-Net's forward and backward."""
    context = text.encode(inputs["ids"])[0].detach().to(dtype)
    latents = inputs["latents"].to(dtype)
    lever = winograd if dtype == torch.float32 else small_convs

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = pipe.unet(latents, inputs["timesteps"], context).sample
        out.float().pow(2).mean().backward()

    pairs = []
    for _ in range(rounds):
        plain = timed(step, 1)
        changed = lever.install(pipe.unet)
        fast = timed(step, 1)
        lever.uninstall(changed)
        pairs.append((plain, fast))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path(tempfile.gettempdir()) / "sabun-bench-models" / "sd15"))
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each shape (the best is kept)")
    parser.add_argument("--step", action="store_true", help="also time the U-Net step with and without Winograd")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of --step")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}, batch 4, 256 px")
    pipe, text, _network, inputs = load_step(args.model)
    shapes = conv_shapes(pipe, inputs)
    totals = collections.Counter()
    ways = ["direct", "one GEMM"] + (["Winograd"] if dtype == torch.float32 else [])
    ratios = [f"{way} / direct" for way in ways[1:]]
    print(f"| convolution (forward + backward to the input) | calls | {' | '.join(ways + ratios)} |")
    print("|---|---|" + "---|" * (len(ways) + len(ratios)))
    for shape, calls in sorted(shapes.items(), key=lambda item: (-item[0][2], item[0][:2])):
        in_channels, out_channels, height, width = shape
        seconds = time_shape(shape, 4, args.repeats, dtype)
        gflop = 2 * 2 * 9 * in_channels * out_channels * height * width * 4 / 1e9
        cells = [f"{gflop / s:.0f} GFLOP/s ({1e3 * s:.1f} ms)" for s in seconds.values()]
        cells += [f"{s / seconds['direct']:.2f}" for name, s in seconds.items() if name != "direct"]
        totals.update({name: calls * s for name, s in seconds.items()})
        name = f"{in_channels}->{out_channels} at {height}x{width}"
        print(f"| {name} | {calls} | {' | '.join(cells)} |", flush=True)
    sums = [f"{s:.2f} s" for s in totals.values()] + [
        f"{s / totals['direct']:.2f}" for n, s in totals.items() if n != "direct"
    ]
    print(f"| all {sum(shapes.values())} calls | | {' | '.join(sums)} |")
    if args.step:
        if dtype != torch.float32:  # as the trainer does: frozen weights in bf16, the LoRA in fp32
            torch.nn.Module.to(pipe.unet, dtype=dtype)
        pairs = step_rounds(pipe, text, inputs, args.rounds, dtype)
        lever = "Winograd" if dtype == torch.float32 else "the small-conv GEMM"
        ratios = [fast / plain for plain, fast in pairs]
        for plain, fast in pairs:
            print(f"U-Net fwd+bwd: without {plain:.2f} s, with {lever} {fast:.2f} s ({fast / plain:.3f})")
        print(f"median ratio {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
