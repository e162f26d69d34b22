"""Loading and saving whole models from local paths, with no network.

A model spec is `toy` (the shipped toy model, pretrained on the toy world), `tiny` (the random
test model built from config), a path to a diffusers folder
(one with `model_index.json`), or a single-file SD 1.x / 2.x / SDXL base checkpoint in the original
layout (`.safetensors`; `.ckpt` pickles only when allowed), read by `sabun.models.single_file`.
A model's family (`sd1`, `sd2`, `sdxl`) is detected, never asked for: see `sabun.models.families`.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from sabun.errors import SabunError
from sabun.io import atomic_output
from sabun.models.families import TITLES, pipeline_family, resolve_prediction_type
from sabun.models.single_file import load_single_file, save_single_file
from sabun.models.tiny import build_tiny_pipeline

BUILTIN = ("toy", "tiny")


def shipped_toy_model() -> Path:
    """The folder of the shipped, pretrained toy model (a diffusers layout; made by `sabun toyworld
    pretrain`, see `sabun.toyworld.model`)."""
    return Path(str(resources.files("sabun") / "assets" / "toy_model"))


def load_pipeline(spec: str | os.PathLike, allow_pickle: bool = False, prediction_type: str | None = None):
    """Load a Stable Diffusion pipeline from `spec` (see module docstring) on the CPU, in fp32.

    Args:
        allow_pickle: allow `.ckpt`/`.pt` checkpoints (read weights-only); only for trusted files.
        prediction_type: `epsilon` or `v_prediction` to override what the model says or what is
            detected (see `sabun.models.families`); None keeps it.
    """
    spec = str(spec)
    if prediction_type is not None and prediction_type not in ("epsilon", "v_prediction"):
        raise SabunError(
            f"--prediction-type {prediction_type!r}: unknown prediction type; choose epsilon or v_prediction"
        )
    if spec == "tiny":
        pipe = build_tiny_pipeline()
        return pipe if prediction_type is None else with_prediction_type(pipe, prediction_type)
    if spec == "toy":
        folder = shipped_toy_model()
        if not (folder / "model_index.json").exists():
            raise SabunError(
                f"{folder}: the toy model's weights are missing from this install; reinstall sabun, or make them with `sabun toyworld pretrain --out DIR` and pass --model DIR/model"
            )
        pipe = load_diffusers_folder(folder)
        return pipe if prediction_type is None else with_prediction_type(pipe, prediction_type)
    path = Path(spec)
    if not path.exists():
        raise SabunError(f"{path}: no such model; give a diffusers folder or one of: {', '.join(BUILTIN)}")
    if path.is_dir():
        return with_prediction_type(load_diffusers_folder(path), prediction_type)
    suffix = path.suffix.lower()
    if suffix in (".ckpt", ".pt", ".pth") and not allow_pickle:
        raise SabunError(
            f"{path}: is a pickle checkpoint, which can run code when loaded; convert it to .safetensors, or pass --allow-pickle if you trust its source"
        )
    if suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise SabunError(
            f"{path}: is neither a .safetensors checkpoint nor a diffusers folder; give one of those, or one of: {', '.join(BUILTIN)}"
        )
    return load_single_file(path, allow_pickle=allow_pickle, prediction_type=prediction_type)


def with_prediction_type(pipe, prediction_type: str | None):
    """`pipe` with its scheduler switched to `prediction_type` (None: unchanged), logged."""
    family = pipeline_family(pipe)
    stated = pipe.scheduler.config.get("prediction_type")
    prediction, reason = resolve_prediction_type(family, prediction_type, stated if prediction_type is None else None)
    if prediction != stated:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction)
    logging.getLogger("sabun.models").info(
        "%s model, prediction type %s (%s)",
        TITLES[family],
        prediction,
        "as requested" if prediction_type else "from its scheduler config",
    )
    return pipe


def load_diffusers_folder(path: Path):
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    if not (path / "model_index.json").exists():
        raise SabunError(
            f"{path}: is a folder without model_index.json, so not a diffusers model; give a diffusers folder"
        )
    try:
        pipe = DiffusionPipeline.from_pretrained(
            path, local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError, EnvironmentError) as e:
        raise SabunError(f"{path}: could not be loaded as a diffusers model ({str(e).splitlines()[0]})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save a pipeline, atomically: a `.safetensors` name writes one file in the original layout of
    the model's family (`sabun.models.single_file`), any other name a diffusers folder."""
    out = Path(out)
    if out.suffix.lower() == ".safetensors":
        return save_single_file(pipe, out, overwrite=overwrite)
    if out.suffix.lower() in (".ckpt", ".pt", ".pth"):
        raise SabunError(
            f"{out}: sabun writes checkpoints as .safetensors, never as pickles; use a name ending in .safetensors, or a folder name"
        )
    with atomic_output(out, overwrite=overwrite, directory=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return out
