"""How the pipelines train their LoRAs: the toy model's recipe (written once) and the one builder of
a LoRA's `sabun train` config, used by `sabun demo`, `sabun character` and `sabun copy-machine`.

A pipeline gives the trainer's own tables (`network`, `optimizer`, `training`...: the keys of
docs/training.md) and the builder adds what the pipeline owns (the model with its merged
stepping-stones, the data sets, the output), then checks the whole by the trainer's dataclasses, so
whatever the trainer would refuse is refused when the pipeline's config is loaded.
"""

from __future__ import annotations

import copy
from pathlib import Path

from sabun.config import ConfigError, from_dict
from sabun.train.config import TrainConfig

# The training settings used on the toy model unless a `train` table overrides them: its 64 px
# images, and a rank and step count that learn a character in about a minute on two CPU cores.
TOY_TRAIN = {
    "data": {"resolution": 64, "buckets": False, "batch_size": 8, "cache_latents": "memory"},
    "network": {"rank": 8, "alpha": 4.0},
    "optimizer": {"learning_rate": 1e-3, "text_encoder_lr": 2e-4},
    "schedule": {"type": "cosine", "warmup_steps": 20},
    "training": {"max_steps": 300, "min_snr_gamma": 5.0, "seed": 0},
}
# ... and for the character LoRA (not the stepping-stones): only the noisier half of the timesteps,
# where layout and colour (the character's identity) are decided. On the toy target this took
# hairstyle on bare `1girl` from 12 to 38 % and hair dE from 27 to 20, with less 3D leakage
# (docs/results.md).
TOY_CHARACTER_TRAIN = {"training": {"min_timestep": 500}}

PIPELINE_KEYS = ("model", "datasets", "output")  # set by the pipeline, never by a `train` table


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override`'s values put in, table by table (neither is changed)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def toy_recipe(character: bool) -> dict:
    """The toy model's training tables; `character`: with the character LoRA's timestep range."""
    return deep_merge(TOY_TRAIN, TOY_CHARACTER_TRAIN if character else {})


def lora_config(
    tables: dict,
    model: dict,
    datasets: list[Path | dict],
    out: Path,
    name: str,
    base_weights: list[tuple[Path, float]] = (),
    where: str = "",
) -> TrainConfig:
    """One LoRA's `sabun train` config: the trainer's `tables`, the pipeline's `model` table (path,
    allow_pickle...) with `base_weights` (LoRA file, multiplier) merged under it, the data sets
    (paths, or `[[datasets]]` tables), and OUT/NAME as output. A bad value is a ConfigError named
    from `where` (the pipeline's own table, e.g. `character.train`)."""
    given = [key for key in PIPELINE_KEYS if key in tables]
    if given:
        raise ConfigError(f"{where}.{given[0]}" if where else given[0], "is set by the pipeline; remove it")
    table = copy.deepcopy(tables)
    weights = [{"path": str(path), "multiplier": multiplier} for path, multiplier in base_weights]
    table["model"] = dict(model) | {"base_weights": weights}
    table["datasets"] = [d if isinstance(d, dict) else {"path": str(d)} for d in datasets]
    table["output"] = {"dir": str(out), "name": name, "tensorboard": False}
    try:
        return from_dict(TrainConfig, table)
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}.{e.path}", e.message) from None
