"""sabun's trainer and kohya-ss/sd-scripts' `train_network.py` side by side, interleaved in one run.

The config is bench_train.py's: the SD 1.5 architecture with random weights (the folder
bench_train.py builds), 256 px, batch 4, LoRA rank 16 / alpha 8 on the U-Net and the text
encoder, AdamW at 1e-4, latents cached in memory, 8 random-noise images with one caption; sd-scripts
runs with `--sdpa --cache_latents`. Both in fp32 (`--mixed-precision no`) or both in bf16 (frozen
weights in bf16, the LoRA in fp32, autocast: sd-scripts' `--mixed_precision bf16` without
`--full_bf16`). Each run is a fresh process; sabun's measures itself (bench_train.py's child), and
sd-scripts' time per step is the time between the ends of consecutive AdamW steps, taken by
wrapping `torch.optim.AdamW.step` in the process that runs its script (nothing of sd-scripts is
changed or copied). Peak RSS is each process's own, model loading included.

sd-scripts is a peer for measurement only: bring its source and an environment it runs in.

    python benchmarks/bench_vs_sd_scripts.py --sd-scripts /tmp/sdscripts --python /tmp/sdvenv/bin/python
    python benchmarks/bench_vs_sd_scripts.py --sd-scripts DIR --python PY --mixed-precision bf16 --pairs 3

sd-scripts loads its CLIP tokenizer by hub id; with no hub here, the model folder's own tokenizer
is saved where `--tokenizer_cache_dir` looks for it. Where torchvision does not import in that
environment (PyPI's does not beside the pinned CPU torch), `benchmarks/peers/torchvision` stands in
for the three transforms sd-scripts calls while caching latents (`ToTensor`, `Normalize`, `Compose`).

Setting up the peer, once (any checkout of its source will do; these are the commands used here):

    python3 -m venv /tmp/sdvenv && /tmp/sdvenv/bin/pip install torch==2.13.0 -r <its requirements.txt,
        without bitsandbytes and the optional optimizers> && /tmp/sdvenv/bin/pip install --no-deps -e <its folder>
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

HERE = Path(__file__).resolve().parent
MARK = "SD_SCRIPTS_RESULT "
TOKENIZER_ID = "openai/clip-vit-large-patch14"  # what sd-scripts asks for, as a cache folder name


def sd_scripts_child(sd_scripts: Path, argv: list[str], warmup: int) -> None:
    """Run train_network.py in this process with AdamW's steps timed; print the result as JSON."""
    import runpy

    import torch

    ends: list[float] = []
    step = torch.optim.AdamW.step

    def timed_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        ends.append(time.perf_counter())
        return out

    torch.optim.AdamW.step = timed_step
    sys.path.insert(0, str(sd_scripts))
    sys.argv = [str(sd_scripts / "train_network.py"), *argv]
    started = time.perf_counter()
    runpy.run_path(str(sd_scripts / "train_network.py"), run_name="__main__")
    expected = int(argv[argv.index("--max_train_steps") + 1])
    if len(ends) != expected:
        sys.exit(
            f"sd-scripts ran {len(ends)} optimizer steps, not the {expected} asked for: the timing would not compare"
        )
    seconds = [b - a for a, b in zip(ends, ends[1:])]  # step i's time: from step i-1's end to its own
    measured = seconds[max(0, warmup - 1) :]  # the first step has no start mark; later warm-up steps are dropped
    if not measured:
        sys.exit(f"sd-scripts ran {len(ends)} optimizer steps: too few to time")
    row = {
        "trainer": "sd-scripts",
        "median_seconds_per_step": statistics.median(measured),
        "seconds_per_step": statistics.fmean(measured),
        "min_seconds_per_step": min(measured),
        "steps_timed": len(measured),
        "step_seconds": seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "wall_seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
    }
    print(MARK + json.dumps(row), flush=True)


def prepare(work: Path, model: Path, resolution: int) -> tuple[Path, Path]:
    """sd-scripts' dataset layout (`<repeats>_<name>/` with images and .txt captions) and tokenizer cache.

    The model folder's tokenizer is a fast one (tokenizer.json); sd-scripts' slow CLIPTokenizer also
    reads vocab.json and merges.txt, which are that file's BPE vocabulary and merges written out."""
    import shutil

    from bench_train import write_images

    data = work / "data"
    write_images(data / "1_bench", 8, resolution)
    cache = work / "tokenizers"
    tokenizer = cache / TOKENIZER_ID.replace("/", "_")
    shutil.copytree(model / "tokenizer", tokenizer)
    bpe = json.loads((tokenizer / "tokenizer.json").read_text())["model"]
    (tokenizer / "vocab.json").write_text(json.dumps(bpe["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (tokenizer / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return data, cache


def imports_torchvision(python: str) -> bool:
    return subprocess.run([python, "-c", "import torchvision.transforms"], capture_output=True).returncode == 0


def sd_scripts_run(args, data: Path, tokenizers: Path, out: Path) -> dict:
    argv = [
        "--pretrained_model_name_or_path", str(Path(args.model_dir) / "sd15"), "--tokenizer_cache_dir", str(tokenizers),
        "--train_data_dir", str(data), "--caption_extension", ".txt", "--resolution", str(args.resolution),
        "--train_batch_size", "4", "--network_module", "networks.lora", "--network_dim", "16", "--network_alpha", "8",
        "--optimizer_type", "AdamW", "--learning_rate", "1e-4", "--lr_scheduler", "constant",
        "--max_train_steps", str(args.warmup + args.steps), "--mixed_precision", args.mixed_precision,
        "--sdpa", "--cache_latents", "--max_data_loader_n_workers", "0", "--seed", "0",
        "--output_dir", str(out), "--output_name", "bench", "--save_model_as", "safetensors",
    ]  # fmt: skip
    command = [
        args.python,
        __file__,
        "--sd-scripts-child",
        "--sd-scripts",
        args.sd_scripts,
        "--warmup",
        str(args.warmup),
        "--",
        *argv,
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    if not imports_torchvision(args.python):
        env["PYTHONPATH"] = str(HERE / "peers")  # the stand-in for the transforms sd-scripts needs
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=args.sd_scripts)
    (out.parent / f"{out.name}.log").write_text(done.stdout + done.stderr)  # its own log, to check what it ran
    rows = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode or not rows:
        sys.exit(f"sd-scripts failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return json.loads(rows[-1][len(MARK) :])


def sabun_run(args) -> dict:
    from bench_train import child

    sabun_args = argparse.Namespace(
        steps=args.steps, warmup=args.warmup, model_dir=args.model_dir,
        mixed_precision=args.mixed_precision, gradient_checkpointing=False,
    )  # fmt: skip
    row = child(sabun_args, "sd15", "memory", args.resolution, args.set)
    return {**row, "trainer": "sabun"}


def describe(row: dict) -> str:
    return (
        f"{row['trainer']:10s} {row['median_seconds_per_step']:7.3f} s/step (median; mean {row['seconds_per_step']:.3f}, "
        f"min {row['min_seconds_per_step']:.3f}, {row['steps_timed']} steps)  peak RSS {row['peak_rss_gib']:.2f} GiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd-scripts", required=True, help="a folder with sd-scripts' train_network.py")
    parser.add_argument("--python", help="the Python of an environment sd-scripts runs in (its requirements)")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--pairs", type=int, default=2, help="sabun / sd-scripts pairs, interleaved A B B A ...")
    parser.add_argument("--steps", type=int, default=4, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="sabun config override")
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "sabun-bench-models"))
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--sd-scripts-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sd_scripts_child:
        sd_scripts_child(Path(args.sd_scripts), args.rest, args.warmup)
        return
    if not (Path(args.sd_scripts) / "train_network.py").is_file():
        sys.exit(f"--sd-scripts {args.sd_scripts}: has no train_network.py; pass a folder with sd-scripts' source")
    if not args.python:
        sys.exit("--python: name the Python of an environment with sd-scripts' requirements")
    if args.warmup < 1:
        sys.exit("--warmup: at least 1 (sd-scripts' first step has no start mark, so both skip it)")
    # the sd-scripts child runs in its own folder: every path absolute
    args.sd_scripts, args.model_dir = str(Path(args.sd_scripts).resolve()), str(Path(args.model_dir).resolve())

    sys.path.insert(0, str(HERE))
    from bench_train import build_sd15_folder

    model = Path(args.model_dir) / "sd15"
    if not (model / "model_index.json").exists():
        print(f"building the random-weight SD 1.5 folder in {model} (once)", flush=True)
        build_sd15_folder(model)
    work = Path(tempfile.mkdtemp(prefix="bench-vs-sd-scripts-"))
    data, tokenizers = prepare(work, model, args.resolution)
    pairs = []
    for i in range(args.pairs):
        order = ["sabun", "sd-scripts"] if i % 2 == 0 else ["sd-scripts", "sabun"]
        runs = {}
        for who in order:
            runs[who] = sabun_run(args) if who == "sabun" else sd_scripts_run(args, data, tokenizers, work / f"out{i}")
            print(describe(runs[who]), flush=True)
        time_ratio = runs["sabun"]["median_seconds_per_step"] / runs["sd-scripts"]["median_seconds_per_step"]
        rss_ratio = runs["sabun"]["peak_rss_gib"] / runs["sd-scripts"]["peak_rss_gib"]
        pairs.append({**runs, "time_ratio": time_ratio, "rss_ratio": rss_ratio})
        print(f"  pair {i + 1}: time sabun / sd-scripts {time_ratio:.3f}, peak RSS {rss_ratio:.3f}", flush=True)
    times, memories = [p["time_ratio"] for p in pairs], [p["rss_ratio"] for p in pairs]
    print(
        f"\nSD 1.5 {args.resolution} px batch 4, {args.mixed_precision}: step time sabun / sd-scripts median "
        f"{statistics.median(times):.3f} (range {min(times):.3f}-{max(times):.3f}, {len(times)} pairs); peak RSS "
        f"median {statistics.median(memories):.3f} (range {min(memories):.3f}-{max(memories):.3f})",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps({"mixed_precision": args.mixed_precision, "pairs": pairs}, indent=2))


if __name__ == "__main__":
    main()
