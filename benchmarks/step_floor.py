"""How fast an SD 1.5 training step could run on this machine, three ways, and how fast it runs.

Counts the floating-point operations of one step of bench_train.py's config (batch 4, 256 px,
LoRA rank 16 on the U-Net and the text encoder; attention counted as its two matrix products each
way, the least any kernel does) with torch's FlopCounterMode, then sets them against:

1. the CPU's theoretical peak: FMA units x vector width x 2 x clock x cores, with the clock and
   the FMAs retired per cycle measured by a small C program (cpu_peak.c, built here with gcc) on
   every core at once, not read from /proc/cpuinfo (which reports the base clock, not the boost);
2. the best rate torch's own kernels reach on the step's largest shapes (a matmul or a 3x3
   convolution): a bound for any implementation that uses these kernels;
3. each convolution, linear layer and attention of the step timed alone at its own shape (forward,
   and the backward to its input, which is all a frozen layer needs): what the step's arithmetic
   costs at today's kernel rates, shape by shape. The 1280-channel convolutions at 8x8 and 4x4
   run far below the best rate, and this is where that shows.

and the step's own compute (text encoder and U-Net, forward and backward), measured in the same
run, so each efficiency is a ratio of figures taken together. The machine's speed varies from one
day to the next; compare only figures from one run.

Uses the random-weight SD 1.5 folder that bench_train.py builds (run it first, or pass --model).

    python benchmarks/step_floor.py
    python benchmarks/step_floor.py --skip-layers     # the peak and the best kernel rates only
    python benchmarks/step_floor.py --precision bf16  # the trainer's bf16: frozen weights in bf16, autocast

In bf16 the peak is the best of the CPU's bf16 instructions, each measured the same way: AVX-512's
vdpbf16ps and, on CPUs with AMX, the tile product tdpbf16ps (a 16x32 by 32x16 matrix product per
instruction), which oneDNN uses for bf16 matmuls and convolutions.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from profile_unet_step import timed  # beside this file: the benchmarks' timer

HERE = Path(__file__).resolve().parent


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_peak_arguments(flags: set[str]) -> list[str]:
    """Which of cpu_peak.c's optional measurements (avx512, bf16, amx) this CPU's flags allow."""
    pairs = (("avx512f", "avx512"), ("avx512_bf16", "bf16"), ("amx_bf16", "amx"))
    return [name for flag, name in pairs if flag in flags]


def theoretical_peak(seconds: float = 1.0) -> dict | None:
    """The CPU's fp32 (and bf16) peak from measured clock and FMA throughput, all cores at once.

    None when there is no C compiler (the peak cannot be measured without one)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    flags = cpu_flags()
    binary = Path(tempfile.mkdtemp(prefix="cpu-peak-")) / "cpu_peak"
    built = subprocess.run(
        [compiler, "-O2", "-o", str(binary), str(HERE / "cpu_peak.c")], capture_output=True, text=True
    )
    if built.returncode:  # e.g. not an x86 CPU, or a compiler without AVX intrinsics
        print(f"cpu_peak.c did not build ({built.stderr.strip()[:300]}); the theoretical peak is not measured")
        return None
    extra = cpu_peak_arguments(flags)
    cores = len(os.sched_getaffinity(0))
    runs = [
        subprocess.Popen([str(binary), str(seconds), *extra], stdout=subprocess.PIPE, text=True) for _ in range(cores)
    ]
    results = []
    for run in runs:
        out, _ = run.communicate()
        results.append({k: float(v) for k, v in (line.split() for line in out.splitlines())})
    mean = {key: sum(r[key] for r in results) / cores for key in results[0]}
    clock = (mean["clock_ghz"] + mean["clock_ghz_after"]) / 2
    width, per_ns = (16, mean["fma512_per_ns"]) if "fma512_per_ns" in mean else (8, mean["fma256_per_ns"])
    units = round(per_ns / clock)  # FMAs retired per cycle per core
    peak = {
        "cores": cores,
        "clock_ghz": clock,
        "fma_units": units,
        "fma_per_cycle_measured": per_ns / clock,
        "vector_lanes_fp32": width,
        "fp32_gflops": units * width * 2 * clock * cores,
        "fp32_gflops_measured": per_ns * width * 2 * cores,  # the FMA loop's own rate, all cores
        "bf16_gflops": None,
        "bf16_instruction": None,
    }
    # bf16: the instruction loops' own rates, all cores at once. Not rounded to whole units per cycle
    # as the FMAs are: vdpbf16ps retires about one every two cycles on some cores, a tile product
    # one every 16 or more.
    bf16 = {
        # vdpbf16ps: 16 fp32 lanes, each adding two bf16 products: 64 flops per instruction
        "vdpbf16ps": mean.get("dpbf16_512_per_ns", 0) * 64 * cores,
        # tdpbf16ps: (16 x 32) @ (32 x 16), 16 * 16 * 32 multiply-adds
        "AMX tdpbf16ps": mean.get("tdpbf16ps_per_ns", 0) * 16 * 16 * 32 * 2 * cores,
    }
    best = max(bf16, key=bf16.get)
    if bf16[best] > 0:
        peak["bf16_gflops"], peak["bf16_instruction"] = bf16[best], best
        peak["bf16_gflops_by_instruction"] = {k: v for k, v in bf16.items() if v > 0}
    return peak


def best_rate(op, flops: float, dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of `repeats` runs of `op` (after one warm-up run)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        return flops / timed(op, repeats) / 1e9


def peak_rate(dtype: torch.dtype) -> tuple[float, str]:
    """The best GFLOP/s over shapes the SD 1.5 step runs most (its FF matmuls, 320- and 640-channel 3x3 convs).

    The tensors are made in `dtype`, so no cast is timed."""
    generator = torch.Generator().manual_seed(0)
    rates = {}
    for m, k, n in [(4096, 320, 2560), (4096, 1280, 320), (1024, 640, 5120), (4096, 1280, 1280)]:
        a, b = torch.randn(m, k, generator=generator).to(dtype), torch.randn(k, n, generator=generator).to(dtype)
        rates[f"matmul {m}x{k}x{n}"] = best_rate(lambda a=a, b=b: a @ b, 2 * m * k * n, dtype)
    for channels, side in [(320, 32), (640, 16)]:
        x = torch.randn(4, channels, side, side, generator=generator).to(dtype)
        w = torch.randn(channels, channels, 3, 3, generator=generator).to(dtype)
        flops = 2 * 4 * side * side * channels * channels * 9
        rates[f"conv3x3 {channels}ch {side}x{side}"] = best_rate(
            lambda x=x, w=w: F.conv2d(x, w, padding=1), flops, dtype
        )
    name = max(rates, key=rates.get)
    return rates[name], name


def load_step(model: str):
    """The pipeline with the benchmark's LoRA attached, the frozen models and the step's inputs."""
    from sabun.lora.network import LoRANetwork
    from sabun.lora.targets import pipeline_targets
    from sabun.models.load import load_pipeline
    from sabun.train.model import TextEncoders, freeze

    pipe = load_pipeline(model)
    text = TextEncoders.of(pipe, 1)
    freeze(pipe.unet, pipe.vae, *text.encoders)
    network = LoRANetwork.create(pipeline_targets(pipe), 16, 8, components=["unet", "te"]).attach()
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "latents": torch.randn(4, 4, 32, 32, generator=generator),
        "timesteps": torch.randint(0, 1000, (4,), generator=generator),
        "ids": text.ids(["1girl, red hair, white background"] * 4),
        "pixels": torch.randn(4, 3, 256, 256, generator=generator),
    }
    return pipe, text, network, inputs


def count(run) -> float:
    """GFLOP that `run()` does, by torch's FlopCounterMode."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # the math path's matmuls are what the counter sees
        run()
    return counter.get_total_flops() / 1e9


def step_flops(pipe, text, inputs) -> dict[str, float]:
    """GFLOP of one training step's parts."""
    latents, timesteps, ids = inputs["latents"], inputs["timesteps"], inputs["ids"]
    parts = {}
    parts["text encoder fwd+bwd"] = count(lambda: text.encode(ids)[0].pow(2).mean().backward())
    context = text.encode(ids)[0].detach().requires_grad_()  # a leaf: the backward stops at the U-Net's input
    parts["U-Net fwd+bwd"] = count(lambda: pipe.unet(latents, timesteps, context).sample.pow(2).mean().backward())
    with torch.no_grad():
        parts["VAE encode (uncached only)"] = count(lambda: pipe.vae.encode(inputs["pixels"]))
    return parts


def step_seconds(pipe, text, inputs, repeats: int, dtype: torch.dtype = torch.float32) -> float:
    """The step's compute as the trainer's arithmetic goes (the plain models, without its CPU
    levers such as training.small_conv_gemm): text encoder and U-Net forward, one backward
    (in bf16: the frozen weights already in bf16, the LoRA's fp32, under autocast)."""
    latents = inputs["latents"].to(dtype)

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            context = text.encode(inputs["ids"])[0]
            out = pipe.unet(latents, inputs["timesteps"], context.to(dtype)).sample
        out.float().pow(2).mean().backward()

    return timed(step, repeats)


def step_ops(pipe, text, network, inputs, dtype: torch.dtype = torch.float32) -> collections.Counter:
    """Every convolution, linear layer and attention call of one step, by shape, with its count."""
    calls = collections.Counter()
    hooks = []
    models = [pipe.unet, *text.encoders, network]  # the LoRA's layers are the network's, not the models'
    for module in (m for model in models for m in model.modules()):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):

            def hook(layer, args, _output):
                x = args[0]
                trainable = layer.weight.requires_grad
                if isinstance(layer, torch.nn.Conv2d):
                    key = ("conv", tuple(x.shape), tuple(layer.weight.shape), layer.stride, layer.padding, trainable)
                else:
                    key = ("linear", tuple(x.shape), tuple(layer.weight.shape), layer.bias is not None, trainable)
                calls[key] += 1

            hooks.append(module.register_forward_hook(hook))
    original = F.scaled_dot_product_attention

    def attention(q, k, v, *args, **kwargs):
        calls[("attention", tuple(q.shape), tuple(k.shape), bool(kwargs.get("is_causal")), True)] += 1
        return original(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = attention
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            context = text.encode(inputs["ids"])[0]
            pipe.unet(inputs["latents"].to(dtype), inputs["timesteps"], context.to(dtype))
    finally:
        F.scaled_dot_product_attention = original
        for handle in hooks:
            handle.remove()
    return calls


def op_rate(key: tuple, repeats: int, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(GFLOP, seconds) of one op's forward and backward at its shape, timed alone, in `dtype`."""
    generator = torch.Generator().manual_seed(0)
    kind = key[0]

    def randn(shape, requires_grad):
        return torch.randn(shape, generator=generator).to(dtype).requires_grad_(requires_grad)

    if kind == "attention":
        q, k, v = randn(key[1], True), randn(key[2], True), randn(key[2], True)

        def run():
            F.scaled_dot_product_attention(q, k, v, is_causal=key[3]).sum().backward()

    else:
        x, w = randn(key[1], True), randn(key[2], key[-1])
        if kind == "conv":
            _, _, _, stride, padding, _ = key

            def run():
                F.conv2d(x, w, None, stride, padding).sum().backward()

        else:
            bias = randn(key[2][0], False) if key[3] else None

            def run():
                F.linear(x, w, bias).sum().backward()

    return count(run), timed(run, repeats)


def describe(key: tuple) -> str:
    if key[0] == "conv":
        _, x, w, stride, _, _ = key
        return f"conv {w[2]}x{w[3]} {w[1]}->{w[0]} at {x[2]}x{x[3]}" + (" stride 2" if stride[0] == 2 else "")
    if key[0] == "linear":
        return f"linear {key[2][1]}->{key[2][0]} x {key[1][0] * key[1][1] if len(key[1]) == 3 else key[1][0]} rows"
    return f"attention {key[1][-2]}x{key[2][-2]} tokens, {key[1][1]} heads x {key[1][-1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path(tempfile.gettempdir()) / "sabun-bench-models" / "sd15"))
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of the step and of each layer")
    parser.add_argument("--skip-layers", action="store_true", help="skip the shape-by-shape timing (the slow part)")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="the step's and the layers' precision"
    )
    args = parser.parse_args()
    threads = torch.get_num_threads()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]

    peak = theoretical_peak()
    if peak is None:
        print("no C compiler (gcc): the theoretical peak is not measured")
    else:
        print(
            f"CPU: {peak['cores']} cores at {peak['clock_ghz']:.2f} GHz (measured, all cores busy), "
            f"{peak['fma_per_cycle_measured']:.2f} FMAs per cycle per core (= {peak['fma_units']} units) "
            f"of {peak['vector_lanes_fp32']} fp32 lanes"
        )
        print(
            f"  theoretical fp32 peak: {peak['fma_units']} x {peak['vector_lanes_fp32']} x 2 x {peak['clock_ghz']:.2f} GHz x "
            f"{peak['cores']} = {peak['fp32_gflops']:.0f} GFLOP/s (the FMA loop itself: {peak['fp32_gflops_measured']:.0f})"
        )
        if peak["bf16_gflops"]:
            loops = ", ".join(f"{k} {v:.0f}" for k, v in peak["bf16_gflops_by_instruction"].items())
            print(f"  bf16 peak: {peak['bf16_gflops']:.0f} GFLOP/s (the instruction loops, all cores: {loops})")
        else:
            print("  bf16 peak: none: this CPU has no bf16 arithmetic (no avx512_bf16 / amx_bf16); bf16 runs emulated")
    if dtype == torch.bfloat16 and not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        raise SystemExit("--precision bf16: this CPU has no bf16 arithmetic; its bf16 kernels run emulated, far slower")

    pipe, text, network, inputs = load_step(args.model)
    parts = step_flops(pipe, text, inputs)
    print()
    for name, gflop in parts.items():
        print(f"{name:28s} {gflop:8.1f} GFLOP")
    cached = parts["text encoder fwd+bwd"] + parts["U-Net fwd+bwd"]
    uncached = cached + parts["VAE encode (uncached only)"]
    print(f"{'step, latents cached':28s} {cached:8.1f} GFLOP")
    print(f"{'step, latents encoded':28s} {uncached:8.1f} GFLOP")

    if dtype != torch.float32:  # as the trainer does: frozen weights in bf16, the LoRA in fp32
        for module in (pipe.unet, *text.encoders):
            torch.nn.Module.to(module, dtype=dtype)
    measured = step_seconds(pipe, text, inputs, args.repeats, dtype)
    print(
        f"\nthe step's compute, measured: {measured:.2f} s ({cached / measured:.0f} GFLOP/s, {args.precision}, {threads} threads)"
    )
    rows = [("step as run", measured)]
    if peak is not None and dtype == torch.float32:
        rows.append((f"theoretical fp32 peak, {peak['fp32_gflops']:.0f} GFLOP/s", cached / peak["fp32_gflops"]))
    if peak is not None and dtype == torch.bfloat16:
        rows.append(
            (f"bf16 peak ({peak['bf16_instruction']}), {peak['bf16_gflops']:.0f} GFLOP/s", cached / peak["bf16_gflops"])
        )
    rate, where = peak_rate(dtype)
    rows.append((f"best kernel rate, {rate:.0f} GFLOP/s ({where})", cached / rate))

    if not args.skip_layers:
        ops = step_ops(pipe, text, network, inputs, dtype)
        print(f"\n{len(ops)} distinct op shapes; each timed alone, forward + backward (GFLOP/s):")
        total_time, total_flops, lines = 0.0, 0.0, []
        for key, count in ops.items():
            gflop, seconds = op_rate(key, args.repeats, dtype)
            total_time += count * seconds
            total_flops += count * gflop
            lines.append(
                (
                    count * seconds,
                    f"  {describe(key):48s} x{count:3d}  {gflop / seconds:6.0f} GFLOP/s  {count * seconds:6.2f} s",
                )
            )
        for _, text_line in sorted(lines, reverse=True)[:20]:
            print(text_line)
        print(
            f"  ... all {len(ops)}: {total_flops:.0f} GFLOP in {total_time:.2f} s ({total_flops / total_time:.0f} GFLOP/s)"
        )
        rows.append((f"each op at its own measured rate ({total_flops:.0f} GFLOP)", total_time))

    print(f"\n{'the step, latents cached':58s} {'s/step':>7s}  step's efficiency")
    for label, seconds in rows:
        print(f"  {label:56s} {seconds:7.2f}  {seconds / measured:6.0%}")
    if dtype == torch.float32 and cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        bf16_rate, bf16_where = peak_rate(torch.bfloat16)
        print(
            f"\nbf16 (autocast): best kernel rate {bf16_rate:.0f} GFLOP/s ({bf16_where}): {cached / bf16_rate:.2f} s/step of arithmetic"
        )
        print("  (the whole bf16 step, layer by layer: --precision bf16)")
    elif dtype == torch.float32:
        print("\nbf16: this CPU has no bf16 arithmetic, so bf16 kernels run emulated, far slower than fp32; not timed")
    del network


if __name__ == "__main__":
    main()
