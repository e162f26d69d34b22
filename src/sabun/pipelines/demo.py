"""`sabun demo`: the seed's experiment on the toy world, measured.

For one target character (default: the `target` preset) on the shipped toy model:
1. data: the target's `3d` renders with character captions; the five stepping-stone characters'
   `3d` renders with stepping-stone captions;
2. LoRAs: **no plan** (the character LoRA trained on the plain model), **3d tag** (the same, with a
   `3d` tag added to every caption to absorb the look), and the **stepping-stone** plan (a LoRA on
   the five characters, merged; the character LoRA trained on top);
3. evaluation of each character LoRA on the *plain* model (no plan also at 0.5), beside the plain
   model's own figures, by the toy evaluator (`sabun.evaluate.metrics`);
4. `metrics.json`, `report.html` (metrics and image grids) and a summary table.

Every stage is skipped on a re-run when its inputs have not changed (`sabun.pipelines.stages`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sabun.evaluate.metrics import Protocol, measure
from sabun.evaluate.report import write_report
from sabun.evaluate.toy_evaluator import ToyEvaluator
from sabun.generate import Sampler, applied
from sabun.io import atomic_output
from sabun.lora.file import file_sha256
from sabun.pipelines.stages import run_stage
from sabun.toyworld.character import STEPPING_STONE_PRESETS, load_character
from sabun.toyworld.commands import RenderToyConfig, caption_folder, render_toy
from sabun.toyworld.render import VIEWS, ZOOMS


@dataclass(frozen=True)
class DemoConfig:
    character: str = "target"  # preset name or character TOML
    model: str = "toy"  # the model every LoRA is trained on and used with
    steps: int = 300  # optimiser steps of each LoRA
    rank: int = 8
    alpha: float = 4.0
    learning_rate: float = 1e-3
    batch_size: int = 8
    seeds: int = 16  # images per evaluation prompt
    sample_steps: int = 20  # sampling steps of the evaluation images
    seed: int = 0


def render_set(out: Path, character: str, policy: str, extra_tag: str | None = None) -> None:
    """The character's `3d` renders (every view and zoom, white background, arms at sides), captioned."""
    render_toy(RenderToyConfig(out=out, style="3d", character=character, views=VIEWS, zooms=ZOOMS))
    caption_folder(out, policy)
    if extra_tag:
        for path in out.glob("*.txt"):
            text = path.read_text().strip()
            path.write_text(f"{text}, {extra_tag}\n" if text else f"{extra_tag}\n")


def train_config(datasets: list[Path], out: Path, name: str, config: DemoConfig, base_weights: list[Path] = ()):
    from sabun.train.config import TrainConfig, from_dict

    return from_dict(
        TrainConfig,
        {
            "model": {"path": config.model, "base_weights": [{"path": str(p), "multiplier": 1.0} for p in base_weights]},
            "datasets": [{"path": str(d)} for d in datasets],
            "data": {"resolution": 64, "buckets": False, "batch_size": config.batch_size, "cache_latents": "memory"},
            "network": {"rank": config.rank, "alpha": config.alpha},
            "optimizer": {"learning_rate": config.learning_rate, "text_encoder_lr": config.learning_rate / 5},
            "schedule": {"type": "cosine", "warmup_steps": max(1, config.steps // 15)},
            "training": {"max_steps": config.steps, "min_snr_gamma": 5.0, "seed": config.seed},
            "output": {"dir": str(out), "name": name, "tensorboard": False},
        },
    )


def run_demo(out: Path, config: DemoConfig = DemoConfig(), log=print, evaluator: ToyEvaluator | None = None) -> dict:
    from sabun.models.load import load_pipeline
    from sabun.train import train

    started = time.time()
    target = load_character(config.character)
    settings = {k: v for k, v in config.__dict__.items()}
    pipe = load_pipeline(config.model)
    evaluator = evaluator or ToyEvaluator.load()

    def data_stage(name: str, character: str, policy: str, extra_tag: str | None = None) -> Path:
        return run_stage(out / "data", name, {"character": target.to_dict() if character == config.character else character, "policy": policy, "tag": extra_tag},
                         lambda p: render_set(p, character, policy, extra_tag), log)[0]

    character_data = data_stage("character", config.character, "character")
    character_3d_tag = data_stage("character_3d_tag", config.character, "character", extra_tag="3d")
    stone_data = [data_stage(f"stepping_stone_{c}", c, "stepping-stone") for c in STEPPING_STONE_PRESETS]

    def lora_stage(name: str, datasets: list[Path], base_weights: list[Path] = ()) -> Path:
        inputs = {"settings": settings, "data": [str(d) for d in datasets], "base": [file_sha256(b) for b in base_weights]}
        inputs["data_keys"] = [json.loads((d.parent / f"{d.name}.stage.json").read_text())["key"] for d in datasets]

        def build(folder: Path) -> None:
            log(f"training {name}")
            train(train_config(datasets, folder, name, config, list(base_weights)), pipe=pipe)

        folder, _ = run_stage(out / "loras", name, inputs, build, log)
        return folder / f"{name}.safetensors"

    no_plan = lora_stage("no_plan", [character_data])
    three_d_tag = lora_stage("3d_tag", [character_3d_tag])
    stepping_stone = lora_stage("stepping_stone", stone_data)
    with_stone = lora_stage("character_on_stepping_stone", [character_data], [stepping_stone])

    protocol = Protocol(seeds=config.seeds, sampler=Sampler(steps=config.sample_steps, guidance=5.0, batch=32))
    conditions = [("plain model", None, 0.0), ("no plan x1", no_plan, 1.0), ("no plan x0.5", no_plan, 0.5), ("3d tag x1", three_d_tag, 1.0), ("stepping-stone x1", with_stone, 1.0)]
    results, grids = {}, {}
    for label, lora, weight in conditions:
        log(f"evaluating {label}")
        with applied(pipe, [(lora, weight)] if lora else []):
            metrics, images = measure(pipe, evaluator, target, protocol)
        results[label] = metrics
        grids[label] = images[:, :6]
    report = {
        "character": target.to_dict(),
        "settings": settings,
        "conditions": results,
        "loras": {"no_plan": str(no_plan), "3d_tag": str(three_d_tag), "stepping_stone": str(stepping_stone), "character_on_stepping_stone": str(with_stone)},
        "seconds": time.time() - started,
    }
    with atomic_output(out / "metrics.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    write_report(out / "report.html", report, grids, protocol)
    return report
