"""The training configuration: typed sections read from TOML, `--set` overrides, validation.

A config file maps one to one onto `TrainConfig`: each `[section]` is a dataclass below, each key a
field with a one-line doc, read by the generic machinery of `sabun.config` (unknown keys, wrong types
and out-of-range values are errors that name the file and the field). Every number is checked
by `number` (finite, and in its range: `nan` and `inf` never pass), seeds by `check_seed`, LoRA
weights by `check_weight`, file names by `file_name`; bounds that depend on the model (clip_skip,
rank) are checked by the trainer when the model is loaded, before anything is written. The resolved config
(every default filled in) is saved next to the LoRA and inside every checkpoint.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# the generic loader, re-exported: every section below and its callers use these names
from sabun.config import (  # noqa: F401
    ConfigError,
    apply_override,
    check,
    from_dict,
    local_path,
    number,
    one_of,
    path_text,
    read_config,
    to_dict,
    to_toml,
)
from sabun.data.limits import MAX_BUCKET, MAX_REPEATS, MAX_RESOLUTION
from sabun.lora.ops import MAX_MULTIPLIER
from sabun.models.load import BUILTIN

MAX_SEED = 2**32 - 1  # seeds are mixed as 32-bit values (`step_seed`), as in A1111 and sd-scripts
MAX_NAME_BYTES = 200  # output.name: room for `.NAME.safetensors.tmp-PID-...` in a 255-byte file name
MAX_ALPHA_PER_RANK = 100  # network.alpha / rank, the LoRA's scale (usually 0.5-2)
MAX_WEIGHT_DECAY = 10.0  # optimizer.weight_decay (usually 0-0.1)
MAX_SAMPLE_STEPS = 1000  # sampling.steps: no scheduler takes more than its training timesteps
MAX_GUIDANCE = 50.0  # sampling.guidance_scale (usually 5-9; UIs stop at 30)
BAD_NAME_CHARS = set('/\\:*?"<>|')  # folder separators, and characters Windows / Samba shares refuse


def check_weight(value: float, name: str, force: bool | None = False) -> None:
    """A LoRA weight: finite, and beyond +-10 (`sabun.lora.ops.MAX_MULTIPLIER`) only when `force`
    (None: never, and the message does not offer `force`)."""
    number(value, name)
    check(
        force or abs(value) <= MAX_MULTIPLIER,
        name,
        f"{value:g} is beyond +-{MAX_MULTIPLIER:g} (LoRAs are used at about 0.3-1.5)"
        + ("; set force = true beside it if you mean it" if force is not None else ""),
    )


def check_side(value: int | None, name: str) -> None:
    """A size in pixels: at least 8 (one latent pixel), at most MAX_RESOLUTION (more does not fit in memory)."""
    number(value, name, 8)
    number(
        value,
        name,
        high=MAX_RESOLUTION,
        hint=f"a larger side does not fit in memory (SDXL trains at 1024); the largest is {MAX_RESOLUTION}",
    )


def check_seed(value: int, name: str) -> None:
    number(value, name, 0, MAX_SEED, hint="seeds are whole numbers from 0 (as in A1111 and sd-scripts)")


def file_name(value: str, name: str) -> None:
    """A file name (no folders) that every file system and tool takes: no control characters
    (NUL, newline, tab, ...), no `/ \\ : * ? " < > |`, not `.` / `..` or hidden, no leading or
    trailing space, at most MAX_NAME_BYTES bytes."""
    fix = "use letters, digits, `-`, `_` and `.`, e.g. my_lora"
    check(bool(value), name, f"is empty; {fix}")
    control = [c for c in value if ord(c) < 32 or ord(c) == 127]
    check(not control, name, f"holds a control character ({control[0]!r}) in {value!r}; {fix}" if control else "")
    bad = sorted(BAD_NAME_CHARS & set(value))
    check(not bad, name, f'must be a file name without folders or any of / \\ : * ? " < > |, got {value!r}; {fix}')
    check(
        not value.startswith(".") and ".." not in value,
        name,
        f"must not start with `.` or hold `..`, got {value!r}; {fix}",
    )
    check(value == value.strip(), name, f"starts or ends with a space: {value!r}; {fix}")
    check(
        len(value.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES,
        name,
        f"is {len(value.encode('utf-8', 'surrogatepass'))} bytes long; at most {MAX_NAME_BYTES}",
    )


# --- sections -----------------------------------------------------------------------------------


@dataclass
class BaseWeight:
    """A LoRA merged into the model (in fp32) before the new LoRA is created: the stepping-stone."""

    path: str  # the LoRA file (.safetensors, kohya format)
    multiplier: float = 1.0  # merged at this weight: W += multiplier * up @ down * alpha / rank
    force: bool | None = None  # true: allow a multiplier beyond +-10 (LoRAs are used at about 0.3-1.5)

    def __post_init__(self) -> None:
        check(bool(self.path), "path", "is empty; give a LoRA file")
        path_text(self.path, "path")
        check_weight(self.multiplier, "multiplier", bool(self.force))


@dataclass
class ModelConfig:
    """[model]: the model the LoRA is trained on, with LoRAs merged into it first."""

    path: str = "tiny"  # `tiny`, `toy`, a diffusers folder or a single-file checkpoint
    base_weights: list[BaseWeight] = field(default_factory=list)  # stepping-stone LoRAs merged first
    clip_skip: int = 1  # use the text encoder's n-th layer from the end (2 for most anime SD 1.x models; SDXL counts from its penultimate)
    allow_pickle: bool = False  # allow .ckpt/.pt files (loaded weights-only); only for files you trust
    prediction_type: str | None = (
        None  # `epsilon` or `v_prediction` for a model file or folder; default: stated or detected
    )

    def __post_init__(self) -> None:
        check(bool(self.path), "path", "is empty; give `tiny`, `toy` or a model path")
        path_text(self.path, "path")
        number(self.clip_skip, "clip_skip", 1)  # the upper bound is the model's: checked when it is loaded
        if self.prediction_type is not None:
            one_of(self.prediction_type, "prediction_type", ("epsilon", "v_prediction"))


@dataclass
class DatasetConfig:
    """One folder of images with `.txt` captions (or a kohya folder of `N_name` subfolders)."""

    path: str  # the folder
    repeats: int | None = None  # times each image is seen per epoch; default: N of an `N_name` folder, else 1
    resolution: int | None = None  # training resolution for this folder; default: data.resolution
    caption_extension: str = ".txt"  # caption file next to each image: NAME.png -> NAME.txt
    default_caption: str | None = (
        None  # caption for images without a caption file; default: `name` of `N_name`, else ""
    )
    shuffle_caption: bool = False  # shuffle the comma-separated tags at every step
    keep_tokens: int = 0  # with shuffle_caption: keep this many leading tags in place
    caption_separator: str = ","  # separates tags for shuffling and tag counts
    flip: bool = False  # randomly mirror images left-right (both orientations are cached)

    def __post_init__(self) -> None:
        check(bool(self.path), "path", "is empty; give a folder of images")
        path_text(self.path, "path")
        number(self.repeats, "repeats", 1, MAX_REPEATS)
        check_side(self.resolution, "resolution")
        number(self.keep_tokens, "keep_tokens", 0)
        check(bool(self.caption_separator), "caption_separator", "is empty")


@dataclass
class DataConfig:
    """How images become training batches (shared by all datasets)."""

    resolution: int = 512  # side of the square training area in pixels; buckets keep this area
    batch_size: int = 1  # images per step per process
    buckets: bool = True  # aspect-ratio buckets; off: every image is resized and centre-cropped to a square
    min_bucket: int | None = None  # smallest bucket side in pixels; default: resolution / 2
    max_bucket: int | None = None  # largest bucket side in pixels; default: resolution * 2
    bucket_step: int = 64  # bucket sides are multiples of this (a multiple of the model's pixel stride)
    min_image_size: int | None = None  # images with a shorter side below this are errors; default: resolution / 2
    skip_bad_images: bool = False  # skip unreadable, empty or too small images with a warning instead of stopping
    cache_latents: str = "memory"  # `memory`, `disk` or `none`: encode every image with the VAE once, up front
    cache_dir: str | None = None  # folder for `disk` latents; default: OUTPUT_DIR/latent_cache
    cache_text_embeddings: bool = True  # cache prompt embeddings when the text encoder is frozen and captions fixed

    def __post_init__(self) -> None:
        check_side(self.resolution, "resolution")
        number(self.batch_size, "batch_size", 1)
        number(self.bucket_step, "bucket_step", 1, MAX_RESOLUTION)
        number(self.min_bucket, "min_bucket", 1, MAX_BUCKET)
        number(
            self.max_bucket,
            "max_bucket",
            self.min_bucket or 1,
            MAX_BUCKET,
            hint="at least min_bucket; bucket areas stay at resolution^2",
        )
        number(self.min_image_size, "min_image_size", 1)
        one_of(self.cache_latents, "cache_latents", ("memory", "disk", "none"))
        path_text(self.cache_dir, "cache_dir")


@dataclass
class NetworkConfig:
    """The LoRA being trained."""

    rank: int = 16  # rank (dim) of Linear and 1x1 conv layers
    alpha: float = 8.0  # scale = alpha / rank
    conv_rank: int | None = None  # rank of 3x3 convs (LoCon); default: no conv LoRA
    conv_alpha: float | None = None  # alpha of 3x3 convs; default: conv_rank
    train_unet: bool = True  # train a U-Net LoRA
    train_text_encoder: bool = True  # train a text-encoder LoRA

    def __post_init__(self) -> None:
        number(self.rank, "rank", 1)  # the upper bound is the model's layers: checked when the network is created
        scale = f"alpha / rank is the LoRA's scale (usually 0.5-2); at most {MAX_ALPHA_PER_RANK}"
        number(self.alpha, "alpha", 0, MAX_ALPHA_PER_RANK * self.rank, above=True, hint=scale)
        number(self.conv_rank, "conv_rank", 1)
        conv_rank = self.conv_rank or self.rank
        number(
            self.conv_alpha,
            "conv_alpha",
            0,
            MAX_ALPHA_PER_RANK * conv_rank,
            above=True,
            hint=f"conv_alpha / conv_rank is the conv LoRA's scale; at most {MAX_ALPHA_PER_RANK}",
        )
        check(
            self.train_unet or self.train_text_encoder,
            "train_unet",
            "and train_text_encoder are both false; nothing to train",
        )


@dataclass
class OptimizerConfig:
    """[optimizer]: the optimiser and its learning rates."""

    type: str = "adamw"  # `adamw`, `adafactor` (torch.optim.Adafactor) or `sgd` (with momentum)
    learning_rate: float = 1e-4  # U-Net LoRA learning rate (and the text encoder's unless set)
    text_encoder_lr: float | None = None  # text-encoder LoRA learning rate; default: learning_rate
    weight_decay: float = 0.01  # decoupled weight decay (AdamW, Adafactor), L2 for SGD
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW's moment decay rates
    eps: float = 1e-8  # AdamW's epsilon
    momentum: float = 0.9  # SGD's momentum
    max_grad_norm: float = 1.0  # clip the gradient norm to this; 0 = no clipping

    def __post_init__(self) -> None:
        one_of(self.type, "type", ("adamw", "adafactor", "sgd"))
        number(self.learning_rate, "learning_rate", 0, above=True)
        number(self.text_encoder_lr, "text_encoder_lr", 0, hint="0 leaves the text encoder untrained")
        number(self.weight_decay, "weight_decay", 0, MAX_WEIGHT_DECAY, hint="usually 0-0.1")
        check(len(self.betas) == 2, "betas", f"must be two numbers in [0, 1), got {self.betas}")
        for i, beta in enumerate(self.betas):
            number(beta, f"betas[{i}]", 0, 1, below=True)
        number(self.eps, "eps", 0, 1, above=True, hint="usually 1e-8; 0 divides by zero")
        number(self.momentum, "momentum", 0, 1, below=True, hint="usually 0.9")
        number(self.max_grad_norm, "max_grad_norm", 0, hint="0 turns clipping off")


@dataclass
class ScheduleConfig:
    """The learning-rate schedule, stepped once per optimiser step."""

    type: str = "constant"  # `constant`, `linear` (to 0) or `cosine` (to 0)
    warmup_steps: int = 0  # linear warm-up from 0 over this many steps

    def __post_init__(self) -> None:
        one_of(self.type, "type", ("constant", "linear", "cosine"))
        number(self.warmup_steps, "warmup_steps", 0)


@dataclass
class TrainingConfig:
    """[training]: how long, on which timesteps, with which loss and precision."""

    max_steps: int | None = None  # optimiser steps; default: as many as `epochs` take
    epochs: int = 1  # passes over the data (with repeats), when max_steps is not set
    gradient_accumulation: int = 1  # batches per optimiser step
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower
    mixed_precision: str = "no"  # `no` (fp32), `fp16` (GPU) or `bf16`; LoRA weights stay fp32
    seed: int = 0  # seeds the LoRA's initial weights, data order, noise and timesteps
    min_snr_gamma: float | None = None  # min-SNR loss weighting (Hang et al. 2023); 5 is usual; default off
    noise_offset: float = 0.0  # add this much per-channel constant noise (brighter darks / darker lights)
    min_timestep: int = 0  # train on timesteps in [min_timestep, max_timestep) only (sd-scripts' options)
    max_timestep: int | None = None  # default: the model's num_train_timesteps (1000)
    device: str = "auto"  # `auto` (GPU when there is one) or `cpu`
    winograd_convs: bool = False  # CPU: frozen 3x3 convs on large images by Winograd's algorithm (benchmarks.md)
    small_conv_gemm: bool = True  # CPU: frozen 3x3 convs at 8x8 and below as one GEMM (faster; benchmarks.md)
    compile: bool = False  # torch.compile the U-Net (inductor); eager if it fails; no gain on CPUs measured

    def __post_init__(self) -> None:
        number(self.max_steps, "max_steps", 1)
        number(self.epochs, "epochs", 1)
        number(self.gradient_accumulation, "gradient_accumulation", 1)
        one_of(self.mixed_precision, "mixed_precision", ("no", "fp16", "bf16"))
        check_seed(self.seed, "seed")
        number(self.min_snr_gamma, "min_snr_gamma", 0, above=True, hint="5 is usual; leave it out for no weighting")
        number(
            self.noise_offset,
            "noise_offset",
            0,
            1,
            hint="0.05-0.1 is usual; noise is about 1, so more drowns the image",
        )
        number(self.min_timestep, "min_timestep", 0)
        check(
            self.max_timestep is None or self.max_timestep > self.min_timestep,
            "max_timestep", f"must be > min_timestep ({self.min_timestep}), got {self.max_timestep}",
        )  # fmt: skip
        one_of(self.device, "device", ("auto", "cpu"))


@dataclass
class SamplingConfig:
    """Sample grids during training: the training model and the plain model with the new LoRA."""

    every_n_steps: int = 0  # write a grid every N steps and at the end; 0 = never
    at_start: bool = False  # also write one before the first step (the models without any training)
    prompts: list[str] = field(default_factory=lambda: ["1girl"])  # one row per prompt and seed
    seeds: list[int] = field(default_factory=lambda: [0])  # noise seeds, the same at every sample step
    negative_prompt: str = ""  # for classifier-free guidance
    multipliers: list[float] = field(
        default_factory=lambda: [1.0]
    )  # new LoRA's weights on the plain model, one column each
    steps: int = 12  # inference steps (the model's scheduler)
    guidance_scale: float = 7.0  # classifier-free guidance scale
    width: int | None = None  # image width; default: data.resolution
    height: int | None = None  # image height; default: data.resolution

    def __post_init__(self) -> None:
        number(self.every_n_steps, "every_n_steps", 0)
        check(
            self.every_n_steps == 0 or (self.prompts and self.seeds),
            "prompts",
            "and seeds must not be empty when sampling",
        )
        for i, s in enumerate(self.seeds):
            check_seed(s, f"seeds[{i}]")
        check(bool(self.multipliers), "multipliers", "is empty; list at least one weight, e.g. [1.0]")
        for i, m in enumerate(self.multipliers):
            check_weight(m, f"multipliers[{i}]", force=None)
        number(self.steps, "steps", 1, MAX_SAMPLE_STEPS, hint="schedulers take at most their 1000 training timesteps")
        number(self.guidance_scale, "guidance_scale", 0, MAX_GUIDANCE, hint="usually 5-9")
        for side in ("width", "height"):
            value = getattr(self, side)
            unset = "leave it out for data.resolution"
            number(value, side, 8, hint=unset)
            check_side(value, side)
            check(
                value is None or value % 8 == 0,
                side,
                f"must be a multiple of 8 (the VAE's factor), got {value}; {unset}",
            )


@dataclass
class ValidationConfig:
    """Loss on held-out images with fixed noise and timesteps, so values are comparable over time."""

    split: float = 0.0  # share of images (not repeats) held out of training, chosen under the seed
    every_n_steps: int = 0  # compute it every N steps and at the end; 0 = only at the end (if split > 0)
    timesteps: int = 4  # evaluate each image at this many evenly spaced timesteps

    def __post_init__(self) -> None:
        number(self.split, "split", 0, 1, below=True)
        number(self.every_n_steps, "every_n_steps", 0)
        number(self.timesteps, "timesteps", 1)


@dataclass
class CheckpointConfig:
    """[checkpoint]: resumable checkpoints (`sabun train --resume`)."""

    every_n_steps: int = 0  # write a resumable checkpoint every N steps; 0 = only on Ctrl-C
    keep_last: int = 2  # keep this many newest checkpoints; 0 = keep all

    def __post_init__(self) -> None:
        number(self.every_n_steps, "every_n_steps", 0)
        number(self.keep_last, "keep_last", 0)


@dataclass
class OutputConfig:
    """[output]: where the LoRA and its files go, and how the file is written."""

    dir: str = "output"  # folder for the LoRA, its config, checkpoints, samples and logs
    name: str = "lora"  # the LoRA is written as DIR/NAME.safetensors, its config as DIR/NAME.toml
    dtype: str = "fp32"  # precision of the saved LoRA: `fp32`, `fp16` or `bf16` (checkpoints are always fp32)
    comment: str = ""  # stored as ss_training_comment
    tensorboard: bool = True  # write TensorBoard logs to DIR/logs/NAME
    progress_bar: bool = True  # show a progress bar

    def __post_init__(self) -> None:
        path_text(self.dir, "dir")
        file_name(self.name, "name")
        one_of(self.dtype, "dtype", ("fp32", "fp16", "bf16"))


@dataclass
class TrainConfig:
    """Everything `sabun train` needs. Sections map to TOML tables; `datasets` is `[[datasets]]`."""

    datasets: list[DatasetConfig]  # image folders; at least one
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        check(bool(self.datasets), "datasets", "is empty; add at least one [[datasets]] table with a path")

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir)

    @property
    def lora_path(self) -> Path:
        return self.output_dir / f"{self.output.name}.safetensors"

    @property
    def config_path(self) -> Path:
        return self.output_dir / f"{self.output.name}.toml"


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a training config from TOML, apply `--set` overrides, and validate it.

    Relative paths in the file (datasets, base weights, output dir, a model folder) are resolved
    against the file's folder, so a config works from any working directory.
    """
    return resolve_paths(read_config(path, TrainConfig, overrides), Path(path).parent)


def model_path(p: str, root: Path) -> str:
    """A config's model: a builtin name (`toy`, `tiny`) stays a name; anything else is a path."""
    return p if p in BUILTIN else local_path(p, root)


def resolve_paths(config: TrainConfig, root: Path) -> TrainConfig:
    """Make relative file paths absolute against `root` (builtin model names are left alone)."""

    def rel(p: str | None) -> str | None:
        return local_path(p, root)

    config.model.path = model_path(config.model.path, root)
    for weight in config.model.base_weights:
        weight.path = rel(weight.path)
    for dataset in config.datasets:
        dataset.path = rel(dataset.path)
    config.data.cache_dir = rel(config.data.cache_dir)
    config.output.dir = rel(config.output.dir)
    return config


# --- writing ------------------------------------------------------------------------------------


def config_from_toml(text: str) -> TrainConfig:
    """Read back a config written by `to_toml` (as stored in checkpoints)."""
    return from_dict(TrainConfig, tomllib.loads(text))
