"""`sabun copy-machine CONFIG.toml`: the copy machine (docs/method.md) in one command.

Stages, each written under OUT and skipped on a re-run when its inputs have not changed
(`sabun.pipelines.stages`):

1. **images**: A, and B (the edited A), each a file of yours or a toy-world render (B = A re-rendered
   with, say, another hair colour, same shot and seed);
2. **copy LoRA**, in rounds: round r is trained on A with rounds 1..r-1 merged (each round is a
   stepping-stone for the next); after each round the merged model draws from prompts unlike A's
   caption and the mean absolute pixel difference to A is measured; rounds stop at the threshold or
   at `max_rounds`, and are joined exactly into one copy LoRA (`combine_concat`);
3. **edit LoRA** on B, trained with the copy LoRA merged (`base_weights`): only A -> B is left to learn;
4. the edit LoRA, optionally resized, as OUT/NAME.safetensors (kohya format), for the *plain* model;
5. **measurement** on the plain model with the toy evaluator: the hair colour read from generations
   of other prompts at weights -1, 0 and +1, placed on the line from A's colour to B's
   (`metrics.json`, `samples.png`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sabun.data.images import open_rgb, resize_to_bucket
from sabun.errors import SabunError
from sabun.evaluate.toy_evaluator import ToyEvaluator
from sabun.generate import Sampler, applied, generate_images, grid_image
from sabun.io import atomic_output
from sabun.lora.file import file_sha256, load_lora, save_lora
from sabun.lora.ops import Weighted, combine_concat, resize_lora
from sabun.models.load import load_pipeline
from sabun.pipelines.recipe import lora_config
from sabun.pipelines.stages import (
    check_finite,
    check_model_path,
    check_trained,
    file_hash,
    model_key,
    run_stage,
    save_resolved_config,
    stage_key,
)
from sabun.toyworld.character import HAIRSTYLES, load_character
from sabun.toyworld.colours import HAIR_COLOURS, ciede2000, parse_colour
from sabun.toyworld.geometry import POSES
from sabun.toyworld.render import BACKGROUNDS, STYLES, VIEWS, ZOOMS, Shot, render
from sabun.train import train
from sabun.train.config import ConfigError, TrainConfig, check, local_path, model_path, one_of, read_config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# Tags the random copy captions are drawn from: what a prompt may ask that A does not show.
CAPTION_TAGS = (
    "solo", "long hair", "short hair", "ponytail", "red hair", "black hair", "green eyes", "smile",
    "outdoors", "indoors", "blue sky", "grass", "pink background", "green background", "grey background",
    "portrait", "cowboy shot", "full body", "from side", "from behind", "arms up", "hands on hips", "3d",
)  # fmt: skip


# --- config -------------------------------------------------------------------------------------


@dataclass
class ModelSection:
    """[model]: the model the LoRAs are trained on and measured with."""

    path: str = "toy"  # `toy`, `tiny`, a diffusers folder or a single-file checkpoint
    resolution: int = 64  # side in pixels of the training images and of every generated image

    def __post_init__(self) -> None:
        check(bool(self.path), "path", "is empty; give `toy` or a model path")
        check(self.resolution >= 8, "resolution", f"must be >= 8, got {self.resolution}")


@dataclass
class ImageA:
    """Image A: a file of yours, or a toy-world render of a character."""

    image: str | None = None  # an image file (.png, .jpg, .webp); when unset, `character` is rendered
    character: str = "target"  # toy-world preset name or character .toml (used when `image` is unset)
    style: str = "anime"  # toy-world render style: anime or 3d
    view: str = "front"  # toy-world shot: front, side or behind
    zoom: str = "upper-body"  # portrait, upper-body, cowboy-shot or full-body
    pose: str = "arms-at-sides"  # arms-at-sides, arms-up, hands-on-hips or arms-behind-back
    background: str = "white"  # one of the toy world's backgrounds
    seed: int = 0  # render seed (details of scene backgrounds)
    caption: str = "1girl"  # the caption A and B are trained with

    def __post_init__(self) -> None:
        if self.image is not None:
            check(
                self.image.lower().endswith(IMAGE_SUFFIXES),
                "image",
                f"must be a {', '.join(IMAGE_SUFFIXES)} file, got {self.image!r}",
            )
        one_of(self.style, "style", STYLES)
        one_of(self.view, "view", VIEWS)
        one_of(self.zoom, "zoom", ZOOMS)
        one_of(self.background, "background", BACKGROUNDS)
        one_of(self.pose, "pose", POSES)


@dataclass
class ImageB:
    """Image B, the edited A: a file of yours, or A's render with other features."""

    image: str | None = None  # the edited image file; when unset, A's render with the changes below
    hair_colour: str | None = None  # toy world: B is A with this hair colour (a name such as `blue`, or #rrggbb)
    hairstyle: str | None = None  # toy world: B is A with this hairstyle

    def __post_init__(self) -> None:
        changes = self.hair_colour is not None or self.hairstyle is not None
        check(
            changes != (self.image is not None),
            "image",
            "or a change (hair_colour, hairstyle): give exactly one; B is a file or a re-render of A",
        )
        if self.image is not None:
            check(
                self.image.lower().endswith(IMAGE_SUFFIXES),
                "image",
                f"must be a {', '.join(IMAGE_SUFFIXES)} file, got {self.image!r}",
            )
        if self.hairstyle is not None:
            one_of(self.hairstyle, "hairstyle", HAIRSTYLES)


@dataclass
class LoRASettings:
    """How one LoRA of the pipeline is trained (U-Net only by default, the fast copy recipe)."""

    rank: int = 16  # rank of Linear and 1x1 conv layers
    alpha: float = 16.0  # scale = alpha / rank
    conv_rank: int | None = None  # rank of 3x3 convs (LoCon); default: none
    learning_rate: float = 1e-3  # AdamW, cosine schedule
    batch_size: int = 4  # images per step (copies of the one image, with different noise)
    train_text_encoder: bool = False  # also train a text-encoder LoRA (at learning_rate / 5)
    noise_offset: float = 0.0  # the trainer's noise offset: lets a LoRA reach flat whites and darks
    seed: int = 0  # seeds initial weights, noise and timesteps

    def __post_init__(self) -> None:
        check(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        check(self.conv_rank is None or self.conv_rank >= 1, "conv_rank", f"must be >= 1, got {self.conv_rank}")
        check(math.isfinite(self.alpha), "alpha", f"must be a finite number > 0, got {self.alpha}")
        check(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            f"must be a finite number > 0, got {self.learning_rate}",
        )
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(
            math.isfinite(self.noise_offset) and self.noise_offset >= 0,
            "noise_offset",
            f"must be a finite number >= 0, got {self.noise_offset}",
        )
        check(
            0 <= self.seed <= 2**32 - 1,
            "seed",
            f"must be a whole number from 0 to 4294967295 (2**32 - 1), got {self.seed}",
        )


@dataclass
class CopySection(LoRASettings):
    """The copy LoRA: over-trained on A until the merged model draws A whatever the prompt."""

    steps_per_round: int = 300  # optimiser steps of each round
    max_rounds: int = 3  # stop after this many rounds even if the threshold is not met
    threshold: float = 0.1  # done when the mean absolute pixel difference to A (0-1) is at most this
    random_captions: int = (
        6  # A is also trained with "" and this many random tag captions, so the copy ignores the prompt
    )
    check_prompts: list[str] = field(default_factory=lambda: ["1girl, outdoors, blue sky, grass", "1girl, from behind", "1girl, red hair, ponytail, indoors", "1girl, full body, arms up"])  # fmt: skip
    """Prompts unlike A's caption, drawn after each round to check the copy."""
    check_seeds: int = 2  # images per check prompt
    conv_rank: int | None = 16  # the copy must redraw every pixel: 3x3 convs too

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.steps_per_round >= 1, "steps_per_round", f"must be >= 1, got {self.steps_per_round}")
        check(self.max_rounds >= 1, "max_rounds", f"must be >= 1, got {self.max_rounds}")
        check(
            0 <= self.threshold <= 1,
            "threshold",
            f"must be in [0, 1] (a share of the pixel range), got {self.threshold}",
        )
        check(0 <= self.random_captions <= 100, "random_captions", f"must be in [0, 100], got {self.random_captions}")
        check(bool(self.check_prompts), "check_prompts", "is empty; list prompts unlike A's caption")
        check(self.check_seeds >= 1, "check_seeds", f"must be >= 1, got {self.check_seeds}")


@dataclass
class EditSection(LoRASettings):
    """The edit LoRA: trained on B with the copy merged, so it holds only A -> B."""

    steps: int = 300  # optimiser steps
    resize_rank: int | None = None  # resize the result to this rank by SVD (8, even 4, is enough); default: keep
    seed: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.resize_rank is None or self.resize_rank >= 1, "resize_rank", f"must be >= 1, got {self.resize_rank}")


@dataclass
class MeasureSection:
    """The edit LoRA on the plain model, read by the toy evaluator (meaningful on the toy model)."""

    enabled: bool = True  # measure the hair colour at weights -1, 0, +1
    prompts: list[str] = field(default_factory=lambda: ["1girl, outdoors, blue sky, grass", "1girl, indoors, wooden floor", "1girl, cowboy shot, arms up", "1girl, full body, from behind", "1girl, portrait, pink background", "1girl, upper body, hands on hips, blue background"])  # fmt: skip
    """Prompts other than A's caption, drawn at each weight."""
    seeds: int = 8  # images per prompt and weight
    steps: int = 20  # DDIM steps
    guidance: float = 5.0  # classifier-free guidance scale

    def __post_init__(self) -> None:
        check(not self.enabled or bool(self.prompts), "prompts", "is empty; list prompts other than A's caption")
        check(self.seeds >= 1, "seeds", f"must be >= 1, got {self.seeds}")
        check(1 <= self.steps <= 1000, "steps", f"must be 1 to 1000 sampling steps, got {self.steps}")
        check(
            math.isfinite(self.guidance) and 0 <= self.guidance <= 100,
            "guidance",
            f"must be a finite guidance scale from 0 to 100 (5-8 is usual), got {self.guidance}",
        )


@dataclass
class OutputSection:
    """[output]: where the pipeline's stages and the edit LoRA go."""

    dir: str = "copy-machine"  # folder for every stage's output
    name: str = "edit"  # the edit LoRA is written as DIR/NAME.safetensors

    def __post_init__(self) -> None:
        check(
            bool(self.name) and "/" not in self.name, "name", f"must be a file name without folders, got {self.name!r}"
        )


@dataclass
class CopyMachineConfig:
    """Everything `sabun copy-machine` needs; sections map to TOML tables."""

    b: ImageB
    model: ModelSection = field(default_factory=ModelSection)
    a: ImageA = field(default_factory=ImageA)
    copy: CopySection = field(default_factory=CopySection)
    edit: EditSection = field(default_factory=EditSection)
    measure: MeasureSection = field(default_factory=MeasureSection)
    output: OutputSection = field(default_factory=OutputSection)

    def __post_init__(self) -> None:
        check(
            self.a.image is None or self.b.image is not None,
            "b.image",
            "is required when A is a file (a file cannot be re-rendered with changes)",
        )
        check_finite(self, "")
        # both LoRAs' `sabun train` configs built now, so whatever the trainer refuses is refused at
        # load, not after the copy LoRA has trained
        for where, settings, steps, images in (
            ("copy", self.copy, self.copy.steps_per_round, 2 + self.copy.random_captions),
            ("edit", self.edit, self.edit.steps, 1),
        ):
            try:
                check_finite(
                    train_config(self, settings, Path("check"), steps, Path("check"), "check", images=images), ""
                )
            except ConfigError as e:
                raise ConfigError(where, f"gives the trainer {e.path}: {e.message}") from None


def load_copy_machine_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CopyMachineConfig:
    """Read a `sabun copy-machine` TOML, apply `--set` overrides and check it; relative paths are
    taken from the file's folder."""
    config = read_config(path, CopyMachineConfig, overrides, example="examples/copy_machine.toml")
    return resolve_paths(config, Path(path).parent)


def resolve_paths(config: CopyMachineConfig, root: Path) -> CopyMachineConfig:
    def local(p: str | None) -> str | None:
        return local_path(p, root)

    model = dataclasses.replace(config.model, path=model_path(config.model.path, root))
    character = (
        local(config.a.character) if config.a.character.endswith(".toml") else config.a.character
    )  # a preset stays a name
    return dataclasses.replace(
        config,
        model=model,
        a=dataclasses.replace(config.a, image=local(config.a.image), character=character),
        b=dataclasses.replace(config.b, image=local(config.b.image)),
        output=dataclasses.replace(config.output, dir=local(config.output.dir)),
    )


# --- images -------------------------------------------------------------------------------------


def render_pair(config: CopyMachineConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """A's toy-world render, and B's (A's character with the changes; same shot, size and seed)."""
    a = config.a
    spec = load_character(a.character)
    shot = Shot(view=a.view, zoom=a.zoom, pose=a.pose, background=a.background)
    size = config.model.resolution
    pixels_a = render(spec, shot, a.style, size=size, seed=a.seed)
    if config.b.image is not None:
        return pixels_a, None
    changes = {}
    if config.b.hair_colour is not None:
        changes["hair_colour"] = parse_colour(config.b.hair_colour, HAIR_COLOURS, "b.hair_colour")
    if config.b.hairstyle is not None:
        changes["hairstyle"] = config.b.hairstyle
    return pixels_a, render(dataclasses.replace(spec, **changes), shot, a.style, size=size, seed=a.seed)


def load_image(path: str, size: int) -> np.ndarray:
    """A user's image as the trainer sees it: RGB on white, scaled and centre-cropped to a square."""
    if not Path(path).is_file():
        raise SabunError(f"{path}: no such image file")
    try:
        return np.asarray(resize_to_bucket(open_rgb(path), (size, size)))
    except OSError as e:
        raise SabunError(f"{path}: cannot be read as an image ({e})") from None


def copy_captions(config: CopyMachineConfig) -> list[str]:
    """A's caption, the empty caption (classifier-free guidance's) and random tag captions, none of
    them a check prompt, so the check measures prompts the copy was not trained on."""
    rng = random.Random(config.copy.seed)
    captions = [config.a.caption, ""]
    while len(captions) < 2 + config.copy.random_captions:
        caption = ", ".join(["1girl", *rng.sample(CAPTION_TAGS, rng.randint(2, 4))])
        if caption not in captions and caption not in config.copy.check_prompts:
            captions.append(caption)
    return captions


def write_dataset(folder: Path, pixels: np.ndarray, captions: list[str]) -> None:
    """One image saved once per caption (NAME_i.png + NAME_i.txt): a trainer data folder."""
    folder.mkdir(parents=True)
    for i, caption in enumerate(captions):
        Image.fromarray(pixels).save(folder / f"image_{i:02d}.png")
        (folder / f"image_{i:02d}.txt").write_text(caption + "\n")


# --- training -----------------------------------------------------------------------------------


def train_config(
    config: CopyMachineConfig,
    settings: LoRASettings,
    dataset: Path,
    steps: int,
    out: Path,
    name: str,
    base_weights: list[Path] = (),
    images: int | None = None,
) -> TrainConfig:
    """The `sabun train` config of one of the pipeline's LoRAs (`images`: the data set's image
    count, when it is not there to be counted yet)."""
    network = {"rank": settings.rank, "alpha": settings.alpha, "train_text_encoder": settings.train_text_encoder}
    if settings.conv_rank is not None:
        network |= {"conv_rank": settings.conv_rank, "conv_alpha": float(settings.conv_rank)}
    images = images if images is not None else len(list(dataset.glob("*.png")))
    tables = {
        "data": {
            "resolution": config.model.resolution,
            "buckets": False,
            "batch_size": settings.batch_size,
            "cache_latents": "memory",
        },  # fmt: skip
        "network": network,
        "optimizer": {"learning_rate": settings.learning_rate, "text_encoder_lr": settings.learning_rate / 5},
        "schedule": {"type": "cosine", "warmup_steps": max(1, steps // 30)},
        "training": {"max_steps": steps, "seed": settings.seed, "noise_offset": settings.noise_offset},
    }
    # one image (A or B) repeated to fill a batch, each copy with its own noise
    dataset_table = {"path": str(dataset), "repeats": max(1, settings.batch_size // images)}
    weights = [(p, 1.0) for p in base_weights]
    return lora_config(tables, {"path": config.model.path}, [dataset_table], out, name, weights)


def image_settings(section: ImageA | ImageB) -> dict:
    """A or B in a stage key: its settings, with an image file as its sha256 and a character .toml as
    the character it holds, never their paths (a preset name stays a name)."""
    settings = dataclasses.asdict(section)
    if section.image is not None:
        settings["image"] = {"sha256": file_hash(section.image)}
    character = settings.get("character")
    if isinstance(character, str) and character.endswith(".toml"):
        settings["character"] = load_character(character).to_dict()
    return settings


def hash_pixels(pixels: np.ndarray) -> str:
    return hashlib.sha256(pixels.tobytes()).hexdigest()


def pixel_difference(images: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute difference of uint8 images (N, H, W, 3) to `target` (H, W, 3), as a share of 255."""
    return float(np.abs(images.astype(np.float32) - target.astype(np.float32)).mean() / 255.0)


# --- the pipeline -------------------------------------------------------------------------------


@dataclass
class CopyRun:
    """What every stage of one copy-machine run shares: the config, the loaded model, A and B."""

    config: CopyMachineConfig
    pipe: Any
    out: Path
    log: Callable[[str], None]
    pixels_a: np.ndarray | None = None
    pixels_b: np.ndarray | None = None

    @property
    def size(self) -> int:
        return self.config.model.resolution

    @property
    def sampler(self) -> Sampler:
        return Sampler(steps=self.config.measure.steps, guidance=self.config.measure.guidance)

    @property
    def check_rows(self) -> list[tuple[str, int]]:
        """The copy check's (prompt, seed) pairs: prompts unlike A's caption."""
        copy = self.config.copy
        return [(p, 1000 + s) for p in copy.check_prompts for s in range(copy.check_seeds)]


@dataclass
class CopyRounds:
    """The copy LoRA's rounds: their files, their checks, and whether the threshold was met."""

    files: list[Path]
    checks: list[dict]
    met: bool


def run_copy_machine(config: CopyMachineConfig, log: Callable[[str], None] = print, evaluator=None) -> dict:
    """Run every stage (skipping finished ones) and return the report also written to metrics.json."""
    started = time.time()
    run = start(config, log)
    copy_data, edit_data = image_stage(run)
    rounds = copy_rounds(run, copy_data)
    copy_lora = joined_copy(run, rounds)
    edit_folder = edit_stage(run, edit_data, copy_lora)
    edit_lora = final_edit(run, edit_folder, copy_lora, rounds)
    report = measure_stage(run, rounds, copy_lora, edit_folder, edit_lora, evaluator, started)
    report["seconds"] = time.time() - started
    return report


def start(config: CopyMachineConfig, log: Callable[[str], None]) -> CopyRun:
    """The inputs checked (output folder, model, image files), the model loaded, the resolved config saved."""
    out = Path(config.output.dir)
    check(
        not out.exists() or out.is_dir(),
        "output.dir",
        f"{out}: is a file, and the pipeline writes a folder there; choose another output.dir",
    )
    check_model_path(config.model.path, "model.path")
    for where, section in (("a.image", config.a.image), ("b.image", config.b.image)):
        check(section is None or Path(section).is_file(), where, f"{section}: no such image file")
    log(f"loading model {config.model.path}")
    pipe = load_pipeline(config.model.path)
    pipe.set_progress_bar_config(disable=True)
    save_resolved_config(out, "copy_machine", config)
    return CopyRun(config, pipe, out, log)


def image_stage(run: CopyRun) -> tuple[Path, Path]:
    """1. A and B (rendered or read), written as the copy's and the edit's data sets."""
    config = run.config
    rendered_a, rendered_b = render_pair(config) if config.a.image is None else (None, None)
    run.pixels_a = rendered_a if rendered_a is not None else load_image(config.a.image, run.size)
    run.pixels_b = rendered_b if rendered_b is not None else load_image(config.b.image, run.size)
    inputs = {"a": image_settings(config.a), "b": image_settings(config.b), "resolution": run.size}
    captions = copy_captions(config)
    copy_data, _ = run_stage(
        run.out / "data",
        "a",
        inputs | {"captions": captions},
        lambda p: write_dataset(p, run.pixels_a, captions),
        run.log,
    )
    edit_data, _ = run_stage(
        run.out / "data", "b", inputs, lambda p: write_dataset(p, run.pixels_b, [config.a.caption]), run.log
    )
    return copy_data, edit_data


def copy_rounds(run: CopyRun, copy_data: Path) -> CopyRounds:
    """2. The copy LoRA in rounds, each trained on A with the earlier ones merged, until the merged
    model draws A from other prompts within the threshold (or `max_rounds`)."""
    copy = run.config.copy
    settings = {k: v for k, v in dataclasses.asdict(copy).items() if k not in ("max_rounds", "threshold")}
    rounds = CopyRounds([], [], False)
    for r in range(1, copy.max_rounds + 1):
        name = f"copy_round_{r}"
        inputs = {
            "settings": settings,
            "model": model_key(run.config.model.path),
            "data": stage_key(copy_data),
            "earlier": [file_hash(p) for p in rounds.files],
        }
        build = functools.partial(train_copy_round, run, copy_data, list(rounds.files), name)
        folder, _ = run_stage(run.out / "copy", name, inputs, build, run.log)
        rounds.files.append(folder / f"{name}.safetensors")
        rounds.checks.append(json.loads((folder / "check.json").read_text()) | {"round": r})
        difference = rounds.checks[-1]["difference"]
        rounds.met = difference <= copy.threshold
        run.log(
            f"copy round {r}/{copy.max_rounds}: mean |generated - A| = {difference:.4f} over "
            f"{len(run.check_rows)} images of other prompts (threshold {copy.threshold:g}: {'met' if rounds.met else 'not met'})"
        )
        if rounds.met:
            break
    if not rounds.met:
        run.log(
            f"copy threshold {copy.threshold:g} NOT met after {len(rounds.files)} round(s); going on with the best copy there is (raise copy.max_rounds to train on: finished rounds are kept)"
        )
    return rounds


def train_copy_round(run: CopyRun, copy_data: Path, earlier: list[Path], name: str, folder: Path) -> None:
    """One round: trained with the `earlier` rounds merged, then checked on the check prompts."""
    copy = run.config.copy
    run.log(f"training {name} on A with {len(earlier)} earlier round(s) merged")
    result = train(
        train_config(run.config, copy, copy_data, copy.steps_per_round, folder, name, earlier), pipe=run.pipe
    )
    check_trained(result, name)
    rows = run.check_rows
    with applied(run.pipe, [(p, 1.0) for p in [*earlier, result.lora_path]]):
        images = generate_images(run.pipe, [p for p, _ in rows], [s for _, s in rows], run.sampler, size=run.size)
    check_result = {
        "difference": pixel_difference(images, run.pixels_a),
        "final_loss": float(np.mean(result.losses[-20:])),
        "steps": result.step,
    }
    (folder / "check.json").write_text(json.dumps(check_result, indent=2))


def joined_copy(run: CopyRun, rounds: CopyRounds) -> Path:
    """The rounds joined exactly into one copy LoRA (ranks concatenated)."""

    def build(path: Path) -> None:
        save_lora(combine_concat([Weighted(load_lora(p), 1.0, p.name) for p in rounds.files]), path)

    inputs = {"rounds": [file_hash(p) for p in rounds.files]}
    return run_stage(run.out / "copy", "copy.safetensors", inputs, build, run.log)[0]


def edit_stage(run: CopyRun, edit_data: Path, copy_lora: Path) -> Path:
    """3. The edit LoRA, trained on B with the copy merged: only A -> B is left to learn."""
    config = run.config

    def build(folder: Path) -> None:
        run.log("training the edit LoRA on B with the copy merged")
        settings = train_config(config, config.edit, edit_data, config.edit.steps, folder, "edit", [copy_lora])
        result = train(settings, pipe=run.pipe)
        check_trained(result, "edit_training")
        summary = {"final_loss": float(np.mean(result.losses[-20:])), "steps": result.step}
        (folder / "train.json").write_text(json.dumps(summary, indent=2))

    inputs = {
        "settings": {k: v for k, v in dataclasses.asdict(config.edit).items() if k != "resize_rank"},
        "model": model_key(config.model.path),
        "data": stage_key(edit_data),
        "copy": file_hash(copy_lora),
    }
    return run_stage(run.out, "edit_training", inputs, build, run.log)[0]


def final_edit(run: CopyRun, edit_folder: Path, copy_lora: Path, rounds: CopyRounds) -> Path:
    """4. The edit LoRA for the plain model as OUT/NAME.safetensors, resized if asked."""
    config = run.config

    def build(path: Path) -> None:
        lora = load_lora(edit_folder / "edit.safetensors")
        if config.edit.resize_rank is not None:
            lora, report = resize_lora(lora, rank=config.edit.resize_rank)
            lora.metadata["sabun_resize_error"] = f"{report.overall:.6f}"
            run.log(f"resized the edit LoRA to rank {config.edit.resize_rank}: relative error {report.overall:.4f}")
        provenance = {
            "copy_lora_sha256": file_sha256(copy_lora),
            "copy_rounds": len(rounds.files),
            "caption": config.a.caption,
        }
        lora.metadata["sabun_copy_machine"] = json.dumps(provenance)
        save_lora(lora, path)

    inputs = {"edit": file_hash(edit_folder / "edit.safetensors"), "resize_rank": config.edit.resize_rank}
    return run_stage(run.out, f"{config.output.name}.safetensors", inputs, build, run.log)[0]


def measure_stage(run: CopyRun, rounds: CopyRounds, copy_lora: Path, edit_folder: Path, edit_lora: Path, evaluator, started: float) -> dict:  # fmt: skip
    """5. The report (OUT/metrics.json): the copy's checks, the edit's training and, on the toy
    model, the hair colour the edit gives on the plain model at -1, 0, +1 (OUT/samples.png)."""
    config = run.config
    resize_error = load_lora(edit_lora).metadata.get("sabun_resize_error")
    edit_training = json.loads((edit_folder / "train.json").read_text())

    def build(path: Path) -> None:
        plain = plain_copy_difference(run.pipe, run.check_rows, run.pixels_a, run.sampler, run.size)
        report = {
            "model": config.model.path,
            "copy": {
                "rounds": rounds.checks,
                "threshold": config.copy.threshold,
                "met": rounds.met,
                "plain_difference": plain,
                "lora": str(copy_lora),
            },  # fmt: skip
            "edit": edit_training
            | {
                "lora": str(edit_lora),
                "resize_rank": config.edit.resize_rank,
                "resize_error": float(resize_error) if resize_error else None,
            },
        }
        if config.measure.enabled:
            run.log("measuring the edit LoRA on the plain model at weights -1, 0, +1")
            transfer, cells = measure_transfer(
                run.pipe, edit_lora, copy_lora, run.pixels_a, run.pixels_b, config.measure, run.size, evaluator
            )
            report["transfer"] = transfer
            write_samples(run.out / "samples.png", cells, config.measure.prompts)
        report["run_seconds"] = time.time() - started  # of the run that wrote this file, all its stages
        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(report, indent=2))

    inputs = {
        "edit": file_hash(edit_lora),
        "copy": file_hash(copy_lora),
        "a": hash_pixels(run.pixels_a),
        "b": hash_pixels(run.pixels_b),
        "measure": dataclasses.asdict(config.measure),
        "checks": rounds.checks,
        "threshold": config.copy.threshold,
    }
    metrics_path, _ = run_stage(run.out, "metrics.json", inputs, build, run.log)
    report = json.loads(metrics_path.read_text())
    # this run's files (metrics.json may come from a copied run folder)
    report["copy"]["lora"], report["edit"]["lora"] = str(copy_lora), str(edit_lora)
    return report


def plain_copy_difference(pipe, rows, pixels_a: np.ndarray, sampler, size: int) -> float:
    """The copy check on the plain model: how far from A it draws without the copy (for scale)."""
    return pixel_difference(
        generate_images(pipe, [p for p, _ in rows], [s for _, s in rows], sampler, size=size), pixels_a
    )


WEIGHTS = (-1.0, 0.0, 1.0)


def measure_transfer(
    pipe,
    edit_lora: Path,
    copy_lora: Path,
    pixels_a: np.ndarray,
    pixels_b: np.ndarray,
    measure: MeasureSection,
    size: int,
    evaluator=None,
) -> tuple[dict, np.ndarray]:
    """The hair colour the toy evaluator reads on the plain model with the edit LoRA at -1, 0, +1.

    Each image's colour is placed on the line from A's colour to B's (both as read from A and B
    themselves): `position` 0 is A's colour, 1 is B's. `shift` is the change of the mean position
    from weight 0, so an edit that transfers gives shift > 0 at +1 and < 0 at -1.
    Returns the report and the sample cells (prompts, 6, H, W, 3): A, B, copy merged, -1, 0, +1.
    """
    evaluator = evaluator or ToyEvaluator.load()
    sampler = Sampler(steps=measure.steps, guidance=measure.guidance)
    rows = [(p, 2000 + s) for p in measure.prompts for s in range(measure.seeds)]
    read_ab = evaluator.predict(np.stack([pixels_a, pixels_b]))
    lab_a, lab_b = read_ab.hair_lab
    span = float(np.linalg.norm(lab_b - lab_a))
    if span < 1e-6:
        raise SabunError(
            "A and B have the same hair colour as the toy evaluator reads them; the measurement needs a hair-colour edit (set measure.enabled = false)"
        )
    name_a, name_b = read_ab.hair_colour_name
    by_weight, generated = {}, {}
    with applied(pipe, [(edit_lora, 0.0)]) as (network,):
        for weight in WEIGHTS:
            network.multiplier = weight
            images = generate_images(pipe, [p for p, _ in rows], [s for _, s in rows], sampler, size=size)
            by_weight[f"{weight:+g}"] = colour_reading(evaluator.predict(images), lab_a, lab_b, name_b)
            generated[weight] = images.reshape(len(measure.prompts), measure.seeds, *images.shape[1:])[:, 0]
    for values in by_weight.values():
        values["shift"] = values["position"] - by_weight["+0"]["position"]
        values["shift_lab"] = values["shift"] * span
    with applied(pipe, [(copy_lora, 1.0)]):
        copied = generate_images(pipe, list(measure.prompts), [2000] * len(measure.prompts), sampler, size=size)
    count = len(measure.prompts)
    columns = [np.repeat(pixels_a[None], count, 0), np.repeat(pixels_b[None], count, 0), copied]
    cells = np.stack([*columns, *(generated[w] for w in WEIGHTS)], axis=1)
    report = {
        "prompts": list(measure.prompts),
        "images_per_weight": len(rows),
        "a_lab": [round(float(v), 3) for v in lab_a],
        "b_lab": [round(float(v), 3) for v in lab_b],
        "a_colour_name": name_a,
        "b_colour_name": name_b,
        "a_to_b_lab_distance": span,
        "weights": by_weight,
    }
    return report, cells


def colour_reading(read, lab_a: np.ndarray, lab_b: np.ndarray, name_b: str) -> dict:
    """One weight's images as read: mean hair colour, mean position on the line A -> B (0 at A, 1
    at B), median CIEDE2000 to each, and the share named as B's colour."""
    span = float(np.linalg.norm(lab_b - lab_a))
    direction = (lab_b - lab_a) / span
    return {
        "mean_lab": [round(float(v), 3) for v in read.hair_lab.mean(axis=0)],
        "position": float(((read.hair_lab - lab_a) @ direction).mean() / span),
        "ciede2000_to_b": float(np.median(ciede2000(read.hair_lab, lab_b[None]))),
        "ciede2000_to_a": float(np.median(ciede2000(read.hair_lab, lab_a[None]))),
        f"named_{name_b}": float(np.mean([n == name_b for n in read.hair_colour_name])),
    }


def write_samples(path: Path, cells: np.ndarray, prompts: list[str]) -> None:
    image = grid_image(cells, prompts, ["A", "B", "copy merged", "edit x-1", "plain", "edit x+1"])
    with atomic_output(path, overwrite=True) as tmp:
        image.save(tmp, format="PNG")


def summary(report: dict) -> tuple[str, list[str], list[list[str]], list[str]]:
    """The report as a table (title, headers, rows: one per weight) and lines of notes, for the CLI."""
    copy, edit = report["copy"], report["edit"]
    last = copy["rounds"][-1]
    notes = [
        f"copy: mean |generated - A| = {last['difference']:.4f} after {len(copy['rounds'])} round(s) "
        f"(plain model {copy['plain_difference']:.4f}; threshold {copy['threshold']:g}: {'met' if copy['met'] else 'NOT met'})",
        f"edit LoRA: {edit['lora']} ({edit['steps']} steps, final loss {edit['final_loss']:.4f}"
        + (
            f", resized to rank {edit['resize_rank']}, relative error {edit['resize_error']:.4f})"
            if edit["resize_rank"]
            else ")"
        ),
    ]
    if "seconds" in report:
        notes.append(f"{report['seconds']:.0f} s")
    transfer = report.get("transfer")
    if transfer is None:
        return "", [], [], notes
    name_b = transfer["b_colour_name"]
    title = (
        f"hair colour on other prompts, plain model + edit LoRA ({transfer['images_per_weight']} images per weight; "
        f"position 0 = A's colour, 1 = B's, {transfer['a_to_b_lab_distance']:.1f} L*a*b* apart)"
    )
    headers = ["weight", "mean L*a*b*", "position A->B", "shift vs 0", f"share read `{name_b}`", "CIEDE2000 to B"]
    rows = [
        [
            weight,
            " ".join(f"{v:.1f}" for v in m["mean_lab"]),
            f"{m['position']:.3f}",
            f"{m['shift']:+.3f}",
            f"{m[f'named_{name_b}']:.2f}",
            f"{m['ciede2000_to_b']:.1f}",
        ]
        for weight, m in transfer["weights"].items()
    ]
    return title, headers, rows, notes
