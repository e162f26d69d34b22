"""Seconds per step and peak memory of `sabun train` for one fixed config, alone or against a baseline.

The config is the one compared against kohya-ss/sd-scripts (docs/benchmarks.md): batch 4, LoRA rank 16 /
alpha 8 on the U-Net and the text encoder, AdamW, fp32, 256 px, with and without latent caching.
Models: the tiny test model (at its own 64 px), and the real SD 1.5 architecture with random
weights (timing and memory do not depend on the weights' values). Each run is its own process, so
each peak RSS is its own.

    python benchmarks/bench_train.py                      # all four: tiny/sd15 x cached/uncached
    python benchmarks/bench_train.py --model sd15 --cache memory --steps 6

Against a baseline: `--against REV` exports that revision's `src/` (git archive) beside the working
tree and runs the two interleaved, A B B A A B ..., in one run, so the machine's drift (which can
be 2x from one day to the next) falls on both alike. It prints each pair's ratio, working tree over
baseline, and their median and range. Every speed claim in docs/ comes from such a run.

    python benchmarks/bench_train.py --against 67685b1 --model sd15 --cache memory --pairs 3
    python benchmarks/bench_train.py --against 67685b1 --model sd15 --cache memory --set training.compile=false

`--set KEY=VALUE` changes the working tree's config only (a baseline may not know the key);
`--baseline-set` the baseline's.

The SD 1.5 model is built once with random weights and saved as a diffusers folder under
--model-dir (4.3 GB), so the trainer loads it from disk as it would a real model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def bench_config(args, model: str, data: Path, out: Path) -> dict:
    """The benchmark's training config as a TOML table, before `--set` overrides."""
    return {
        "model": {"path": model},
        "datasets": [{"path": str(data)}],
        "data": {"resolution": args.resolution, "batch_size": 4, "buckets": False, "cache_latents": args.cache},
        "network": {"rank": 16, "alpha": 8, "train_unet": True, "train_text_encoder": True},
        "optimizer": {"type": "adamw", "learning_rate": 1e-4},
        "training": {
            "max_steps": args.warmup + args.steps,
            "mixed_precision": args.mixed_precision,
            "gradient_checkpointing": args.gradient_checkpointing,
        },
        "output": {"dir": str(out), "name": "bench", "progress_bar": False, "tensorboard": False},
    }


def apply_sets(config: dict, sets: list[str]) -> dict:
    """`section.key=value` overrides; the value is read as TOML (`true`, `3`, `"text"`), else as a string."""
    import tomllib

    for item in sets:
        key, _, raw = item.partition("=")
        section, _, name = key.strip().partition(".")
        if not name:
            sys.exit(f"--set {item!r}: give section.key=value, e.g. training.compile=false")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        config.setdefault(section, {})[name] = value
    return config


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
    import tomli_w

    import sabun
    from sabun.train import load_config, train

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    write_images(work / "data", 8, args.resolution)
    model = "tiny" if args.model == "tiny" else str(Path(args.model_dir) / "sd15")
    config = apply_sets(bench_config(args, model, work / "data", work / "out"), args.set)
    (work / "train.toml").write_text(tomli_w.dumps(config))
    started = time.perf_counter()
    result = train(load_config(work / "train.toml"))
    total = time.perf_counter() - started
    measured = result.step_seconds[args.warmup :]
    return {
        "model": args.model,
        "cache": args.cache,
        "gradient_checkpointing": args.gradient_checkpointing,
        "mixed_precision": args.mixed_precision,
        "set": args.set,
        "sabun": str(Path(sabun.__file__).parent),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
        "seconds_per_step": float(np.mean(measured)),
        "median_seconds_per_step": float(np.median(measured)),
        "min_seconds_per_step": float(np.min(measured)),
        "step_seconds": [float(s) for s in result.step_seconds],
        "steps_timed": len(measured),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # ru_maxrss is KiB on Linux
        "wall_seconds": total,
    }


def child(args, model: str, cache: str, resolution: int, sets: list[str], src: Path | None = None) -> dict:
    """One measured run in a fresh process; `src` puts another revision's package first on the path."""
    command = [sys.executable, __file__, "--child", "--model", model, "--cache", cache, "--resolution", str(resolution),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--model-dir", args.model_dir,
               "--mixed-precision", args.mixed_precision]  # fmt: skip
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    for item in sets:
        command += ["--set", item]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{model}/{cache} ({src or 'working tree'}) failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    expected = (src / "sabun") if src is not None else ROOT / "src" / "sabun"
    if Path(row["sabun"]).resolve() != expected.resolve():
        sys.exit(f"the run imported sabun from {row['sabun']}, not {expected}: is another copy installed first?")
    return row


def export_revision(revision: str, into: Path) -> tuple[str, Path]:
    """`revision`'s src/ exported (git archive) under `into`/<commit>; returns (commit, its src folder)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{revision}^{{commit}}"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except subprocess.CalledProcessError as error:
        sys.exit(f"--against {revision}: not a revision of {ROOT} ({error.stderr.strip()})")
    folder = into / commit
    if not (folder / "src" / "sabun").is_dir():
        tmp = folder.with_name(commit + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        tmp.rename(folder)
    return commit, folder / "src"


def line(label: str, r: dict, resolution: int) -> str:
    return (
        f"{label:9s} {r['model']:5s} {resolution:4d} px cache={r['cache']:6s} {r['median_seconds_per_step']:7.3f} s/step "
        f"(median; mean {r['seconds_per_step']:.3f}, min {r['min_seconds_per_step']:.3f}, {r['steps_timed']} steps)  "
        f"peak RSS {r['peak_rss_gib']:.2f} GiB"
    )


def against(args, model: str, cache: str, resolution: int) -> dict:
    """Working tree (A) and baseline (B) interleaved A B B A ...; the ratios A / B per pair."""
    commit, src = export_revision(args.against, Path(args.baseline_dir))
    print(f"baseline {args.against} = {commit[:12]} (src exported to {src})", flush=True)
    pairs = []
    for i in range(args.pairs):
        order = ["A", "B"] if i % 2 == 0 else ["B", "A"]
        runs = {}
        for who in order:
            if who == "A":
                runs[who] = child(args, model, cache, resolution, args.set)
            else:
                runs[who] = child(args, model, cache, resolution, args.baseline_set, src)
            print(line("tree" if who == "A" else "baseline", runs[who], resolution), flush=True)
        ratio = runs["A"]["median_seconds_per_step"] / runs["B"]["median_seconds_per_step"]
        memory = runs["A"]["peak_rss_gib"] / runs["B"]["peak_rss_gib"]
        pairs.append({"tree": runs["A"], "baseline": runs["B"], "time_ratio": ratio, "rss_ratio": memory})
        print(f"  pair {i + 1}: time tree / baseline {ratio:.3f}, peak RSS {memory:.3f}", flush=True)
    ratios = [p["time_ratio"] for p in pairs]
    memories = [p["rss_ratio"] for p in pairs]
    print(
        f"\n{model} {cache} {args.mixed_precision}: step time tree / baseline {commit[:12]}: median {statistics.median(ratios):.3f} "
        f"(range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} pairs); peak RSS median {statistics.median(memories):.3f} "
        f"(range {min(memories):.3f}-{max(memories):.3f})",
        flush=True,
    )
    return {"baseline": commit, "set": args.set, "baseline_set": args.baseline_set, "pairs": pairs,
            "median_time_ratio": statistics.median(ratios), "median_rss_ratio": statistics.median(memories)}  # fmt: skip


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
    parser.add_argument("--against", metavar="REV", help="also run this git revision, interleaved, and print the ratio")
    parser.add_argument("--pairs", type=int, default=3, help="with --against: how many tree/baseline pairs")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override, this tree only"
    )
    parser.add_argument(
        "--baseline-set", action="append", default=[], metavar="KEY=VALUE", help="config override, baseline only"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the measurements here")
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "sabun-bench-models"))
    parser.add_argument("--baseline-dir", default=str(Path(tempfile.gettempdir()) / "sabun-bench-baselines"))
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
            if args.against:
                rows.append(against(args, model, cache, resolution))
            else:
                rows.append(child(args, model, cache, resolution, args.set))
                print(line("tree", rows[-1], resolution), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows if args.json is None else f"written to {args.json}", indent=1)[:20000])


if __name__ == "__main__":
    main()
