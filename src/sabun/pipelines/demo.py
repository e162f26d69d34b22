"""`sabun demo`: the original article's experiment on the toy world, measured.

For each target character (default: the `target` preset) on the shipped toy model:
1. data: the target's `3d` renders with character captions; the five stepping-stone characters'
   `3d` renders with stepping-stone captions (shared by every target);
2. LoRAs: **no plan** (the character LoRA trained on the plain model), **3d tag** (the same, with a
   `3d` tag added to every caption to absorb the look), and the **stepping-stone** plan (a LoRA on
   the five characters, merged; the character LoRA trained on top);
   `--full` adds the ablations: a stepping-stone of one character, one of five uncaptioned
   characters, and the original article's plan with the stepping-stone images as regularisation images;
3. evaluation of each character LoRA on the *plain* model (no plan also at 0.5), beside the plain
   model's own figures, by the toy evaluator (`sabun.evaluate.metrics`);
4. per target `TARGET/metrics.json` and `TARGET/report.html` (metrics and image grids); all targets'
   figures in `metrics.json`; a summary table.

`from_vrm` (`sabun demo --from-vrm`): every character is first exported to a VRM 1.0 file
(`sabun toyworld export`, OUT/vrm/) and its data are that file's `sabun render model` renders in the
`lit` style, in the toy renderer's shot list; training and evaluation are unchanged.

Every stage is skipped on a re-run when its inputs have not changed (`sabun.pipelines.stages`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sabun import __version__
from sabun.errors import SabunError
from sabun.evaluate.metrics import Protocol, weight_change_norms
from sabun.evaluate.report import evaluate_at_weights
from sabun.evaluate.toy_evaluator import ToyEvaluator
from sabun.generate import Sampler
from sabun.io import atomic_output
from sabun.models.load import load_pipeline
from sabun.pipelines.data import ModelSource, RenderConfig
from sabun.pipelines.recipe import TOY_CHARACTER_TRAIN, TOY_TRAIN, deep_merge, lora_config, toy_recipe
from sabun.pipelines.stages import Stages, check_finite, check_model_path, run_stage, save_resolved_config
from sabun.toyworld.character import STEPPING_STONE_PRESETS, load_character
from sabun.toyworld.export import export_character
from sabun.toyworld.render import ZOOMS
from sabun.train.config import ConfigError, TrainConfig, check


@dataclass(frozen=True)
class DemoConfig:
    """`sabun demo`'s settings: the targets, the model, the LoRAs' training and the evaluation."""

    characters: tuple[str, ...] = ("target",)
    """Target: a preset name or a character .toml; repeat for several targets (the stepping-stone is shared)."""
    model: str = "toy"  # the model every LoRA is trained on and used with
    # the LoRAs' settings; defaults: the toy recipe (`sabun.pipelines.recipe`)
    steps: int = TOY_TRAIN["training"]["max_steps"]  # optimiser steps of each LoRA
    # character LoRAs train on timesteps >= this (stepping-stones on all)
    character_min_timestep: int = TOY_CHARACTER_TRAIN["training"]["min_timestep"]
    """Character LoRAs train on timesteps >= this (0: all); the stepping-stones always on all."""
    rank: int = TOY_TRAIN["network"]["rank"]  # rank of every LoRA
    alpha: float = TOY_TRAIN["network"]["alpha"]  # alpha of every LoRA (scale = alpha / rank)
    learning_rate: float = TOY_TRAIN["optimizer"]["learning_rate"]  # of every LoRA (the text encoder: a fifth)
    batch_size: int = TOY_TRAIN["data"]["batch_size"]  # images per optimiser step
    seeds: int = 16  # images per evaluation prompt
    sample_steps: int = 20  # sampling steps of the evaluation images
    seed: int = TOY_TRAIN["training"]["seed"]  # seeds every LoRA's training
    full: bool = False  # add the ablations: 1-character stone, uncaptioned stone, regularisation images
    from_vrm: bool = False
    """Export the characters to VRM and train on their `sabun render model` renders (lit style) instead of the toy renderer's."""

    def __post_init__(self) -> None:
        """Every setting checked before anything is rendered or trained; an error names the
        `sabun demo` option (or, for a setting the CLI does not expose, the field)."""
        check(bool(self.characters), "--character", "no target given; give a preset name or a character .toml")
        check(
            all(isinstance(c, str) and c for c in self.characters),
            "--character",
            f"every target must be a preset name or a .toml path, got {list(self.characters)}",
        )
        check(isinstance(self.model, str) and bool(self.model), "model", "is empty; give `toy` or a model path")
        check(self.steps >= 1, "--steps", f"must be at least 1 optimiser step, got {self.steps}")
        check(
            self.character_min_timestep >= 0,
            "--character-min-timestep",
            f"must be 0 (train on all timesteps) or more, got {self.character_min_timestep}",
        )
        check(
            self.character_min_timestep < 1000,
            "--character-min-timestep",
            f"{self.character_min_timestep} is past the toy model's 1000 training timesteps; give 0 to 999 (500 is the default)",
        )
        check(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        check(math.isfinite(self.alpha) and self.alpha > 0, "alpha", f"must be a finite number > 0, got {self.alpha}")
        check(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            f"must be a finite number > 0, got {self.learning_rate}",
        )
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.seeds >= 1, "--seeds", f"must be at least 1 image per evaluation prompt, got {self.seeds}")
        check(
            1 <= self.sample_steps <= 1000, "sample_steps", f"must be 1 to 1000 sampling steps, got {self.sample_steps}"
        )
        check(
            0 <= self.seed <= 2**32 - 1,
            "seed",
            f"must be a whole number from 0 to 4294967295 (2**32 - 1), got {self.seed}",
        )
        try:  # whatever the trainer would refuse, refused now (not after the data are rendered)
            check_finite(train_config([Path("check")], "check", self), "")
        except ConfigError as e:
            raise ConfigError(f"demo settings give the trainer {e.path}", e.message) from None


def train_config(
    datasets: list[Path],
    name: str,
    config: DemoConfig,
    base_weights: list[Path] = (),
    repeats: dict[Path, int] | None = None,
    character: bool = True,
) -> TrainConfig:
    """One LoRA's config: the toy recipe with the demo's settings; `character` LoRAs (not the
    stepping-stones) train on timesteps >= `character_min_timestep`."""
    settings = {
        "data": {"batch_size": config.batch_size},
        "network": {"rank": config.rank, "alpha": config.alpha},
        "optimizer": {"learning_rate": config.learning_rate, "text_encoder_lr": config.learning_rate / 5},
        "schedule": {"warmup_steps": max(1, config.steps // 15)},
        "training": {
            "max_steps": config.steps,
            "seed": config.seed,
            "min_timestep": config.character_min_timestep if character else 0,
        },
    }
    repeats = repeats or {}
    sets = [{"path": str(d)} | ({"repeats": repeats[d]} if d in repeats else {}) for d in datasets]
    # the output folder "." is replaced by the stage's own
    return lora_config(
        deep_merge(toy_recipe(character), settings), {"path": config.model}, sets, Path("."), name,
        [(p, 1.0) for p in base_weights],
    )  # fmt: skip


# `--from-vrm`: the toy renderer's shot list (front, side, behind; every zoom; 64 px) drawn from the
# exported VRM files, in the `lit` style as the 3D look
VRM_RENDER = RenderConfig(views=["front", "right", "behind"], zooms=list(ZOOMS), style="lit", size=64, supersample=4)


def exported(stages: Stages, character: str) -> Path:
    """The toy character as a VRM 1.0 file (with its tag file), made once per spec: OUT/vrm/NAME/NAME.vrm."""
    spec = load_character(character)

    def build(folder: Path) -> None:
        folder.mkdir(parents=True)
        export_character(spec, folder / f"{spec.name}.vrm")

    # keyed by the spec and sabun's version (a new humanoid builder re-exports)
    folder, _ = run_stage(
        stages.out / "vrm", spec.name, {"character": spec.to_dict(), "sabun": __version__}, build, stages.log
    )
    return folder / f"{spec.name}.vrm"


RESERVED = ("data", "loras", "vrm", "metrics.json")  # OUT's own entries: no target may be named so

CONDITIONS = ("plain model", "no plan x1", "no plan x0.5", "3d tag x1", "stepping-stone x1")
ABLATIONS = ("1-character stone x1", "uncaptioned stone x1", "stone + reg. images x1")


@dataclass
class DemoRun:
    """What every stage of one demo run shares: its settings, the model, OUT's stage runner."""

    config: DemoConfig
    pipe: Any
    shared: Stages  # OUT's own stages (the stepping-stones, shared by every target)
    log: Callable[[str], None]

    def data(self, stages: Stages, name: str, character: str, policy: str, extra_tag: str | None = None) -> Path:
        """A character's `3d` data set: toy-world renders, or (`from_vrm`) its exported VRM's `lit` renders."""
        if not self.config.from_vrm:
            return stages.toy_data(name, character, policy, extra_tag)
        source = ModelSource(str(exported(self.shared, character)))
        return stages.model_data(name, source, policy, VRM_RENDER, 64, extra_tag)

    def lora(self, stages: Stages, name: str, datasets: list[Path], base: list[Path] = (), repeats=None, character: bool = True) -> Path:  # fmt: skip
        return stages.lora(name, train_config(datasets, name, self.config, base, repeats, character), self.pipe)


def run_demo(out: Path, config: DemoConfig = DemoConfig(), log=print, evaluator: ToyEvaluator | None = None) -> dict:
    """The experiment for each target; the stepping-stone LoRA (which does not depend on the target)
    is trained once and shared. Writes OUT/TARGET/{metrics.json,report.html} and OUT/metrics.json."""
    started = time.time()
    targets = check_targets(config, out)  # every input checked before the first stage
    check_model_path(config.model, "model")
    pipe = load_pipeline(config.model)
    timesteps = pipe.scheduler.config.get("num_train_timesteps", 1000)
    if config.character_min_timestep >= timesteps:
        raise SabunError(
            f"--character-min-timestep: {config.character_min_timestep} is past this model's {timesteps} training timesteps; give 0 to {timesteps - 1}"
        )
    evaluator = evaluator or ToyEvaluator.load()
    save_resolved_config(out, "demo", config)
    run = DemoRun(config, pipe, Stages(out, log), log)
    stones = stepping_stones(run)
    reports, plain_images = {}, {}  # the plain model's images do not depend on the target: made once
    for character, target in zip(config.characters, targets):
        log(f"target: {target.name}")
        loras = target_loras(run, Stages(out / target.name, log), character, stones)
        reports[target.name] = evaluate_target(pipe, evaluator, target, loras, config, out / target.name, log, plain_images)  # fmt: skip
    summary = {"settings": dict(config.__dict__), "targets": reports, "seconds": time.time() - started}
    with atomic_output(out / "metrics.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def check_targets(config: DemoConfig, out: Path) -> list:
    """The targets' character specs, read and checked (distinct names, none of OUT's own entries)."""
    targets = []
    for character in config.characters:
        try:
            targets.append(load_character(character))
        except SabunError as e:
            message = str(e).removeprefix(f"{character}: ")
            raise SabunError(f"--character {character}: {message}") from None
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise SabunError(f"two targets share a name ({', '.join(names)}); give each character spec its own `name`")
    for name in names:
        if name in RESERVED:
            raise SabunError(
                f"--character: a target named {name!r} would share OUT/{name} with the demo's own files; give the character spec another `name`"
            )
    if out.exists() and not out.is_dir():
        raise SabunError(f"{out}: is a file, and the demo writes a folder there; choose another --out")
    return targets


def stepping_stones(run: DemoRun) -> dict:
    """The stepping-stone LoRA on the five characters (and, with `full`, the ablations' two: one
    character only; five without captions), with the five's data sets, shared by every target."""
    shared = run.shared
    stone_data = [run.data(shared, f"stepping_stone_{c}", c, "stepping-stone") for c in STEPPING_STONE_PRESETS]
    stones = {"data": stone_data, "stepping_stone": run.lora(shared, "stepping_stone", stone_data, character=False)}
    if run.config.full:
        stones["1_character"] = run.lora(shared, "stepping_stone_1_character", stone_data[:1], character=False)
        bare = [run.data(shared, f"stepping_stone_{c}_uncaptioned", c, "none") for c in STEPPING_STONE_PRESETS]
        stones["uncaptioned"] = run.lora(shared, "stepping_stone_uncaptioned", bare, character=False)
    return stones


def target_loras(run: DemoRun, stages: Stages, character: str, stones: dict) -> dict[str, Path]:
    """One target's character LoRAs under each plan (and, with `full`, each ablation)."""
    character_data = run.data(stages, "character", character, "character")
    tagged_data = run.data(stages, "character_3d_tag", character, "character", extra_tag="3d")
    stepping_stone = stones["stepping_stone"]
    loras = {
        "no_plan": run.lora(stages, "no_plan", [character_data]),
        "3d_tag": run.lora(stages, "3d_tag", [tagged_data]),
        "stepping_stone": stepping_stone,
        "character_on_stepping_stone": run.lora(
            stages, "character_on_stepping_stone", [character_data], [stepping_stone]
        ),  # fmt: skip
    }
    if run.config.full:
        loras["character_on_1_character_stone"] = run.lora(stages, "character_on_1_character_stone", [character_data], [stones["1_character"]])  # fmt: skip
        loras["character_on_uncaptioned_stone"] = run.lora(stages, "character_on_uncaptioned_stone", [character_data], [stones["uncaptioned"]])  # fmt: skip
        # the original article's first plan: the stepping-stone images mixed into the character's
        # training set as regularisation, the character's images repeated so both sides weigh the
        # same (as sd-scripts balances them)
        balance = {character_data: len(stones["data"])}
        loras["character_with_regularisation"] = run.lora(stages, "character_with_regularisation", [character_data, *stones["data"]], [stepping_stone], balance)  # fmt: skip
    return loras


def evaluate_target(
    pipe, evaluator, target, loras: dict[str, Path], config: DemoConfig, out: Path, log, plain_images: dict
) -> dict:
    """Each character LoRA alone on the plain model (no plan also at 0.5), beside the plain model
    (whose images are kept in `plain_images` for the next target)."""
    started = time.time()
    protocol = Protocol(seeds=config.seeds, sampler=Sampler(steps=config.sample_steps, guidance=5.0, batch=32))
    weights = dict(
        zip(
            CONDITIONS,
            [
                (None, 0.0),
                (loras["no_plan"], 1.0),
                (loras["no_plan"], 0.5),
                (loras["3d_tag"], 1.0),
                (loras["character_on_stepping_stone"], 1.0),
            ],
        )
    )
    if config.full:
        weights |= dict(
            zip(
                ABLATIONS,
                [
                    (loras[k], 1.0)
                    for k in (
                        "character_on_1_character_stone",
                        "character_on_uncaptioned_stone",
                        "character_with_regularisation",
                    )
                ],
            )
        )
    conditions = {label: [(lora, weight)] if lora else [] for label, (lora, weight) in weights.items()}
    report = {
        "character": target.to_dict(),
        "settings": dict(config.__dict__),
        "loras": {k: str(v) for k, v in loras.items()},
        "weight_change_norms": {
            k: weight_change_norms(v) for k, v in loras.items() if not k.startswith("stepping_stone")
        },  # fmt: skip
    }
    report = evaluate_at_weights(out, pipe, evaluator, target, protocol, conditions, report, log, plain_images, with_claims=True, started=started)  # fmt: skip
    return report
