"""Loading and saving whole models from local paths, with no network.

A model spec is `tiny` (the random test model built from config), or a path to a diffusers
folder (one with `model_index.json`). Single-file checkpoints in the original layout are
recognised and refused with a clear message until their loader lands.
"""

from __future__ import annotations

import os
from pathlib import Path

from sabun.errors import SabunError
from sabun.io import atomic_output

BUILTIN = ("tiny",)


def load_pipeline(spec: str | os.PathLike, allow_pickle: bool = False):
    """Load a Stable Diffusion pipeline from `spec` (see module docstring) on the CPU, in fp32."""
    spec = str(spec)
    if spec == "tiny":
        from sabun.models.tiny import build_tiny_pipeline

        return build_tiny_pipeline()
    path = Path(spec)
    if not path.exists():
        raise SabunError(f"{path}: no such model; give a diffusers folder or one of: {', '.join(BUILTIN)}")
    if path.is_dir():
        return load_diffusers_folder(path)
    suffix = path.suffix.lower()
    if suffix in (".ckpt", ".pt", ".pth") and not allow_pickle:
        raise SabunError(f"{path}: is a pickle checkpoint, which can run code when loaded; convert it to .safetensors, or pass --allow-pickle if you trust its source")
    raise SabunError(f"{path}: single-file checkpoints are not supported yet; convert it to a diffusers folder")


def load_diffusers_folder(path: Path):
    from diffusers import DiffusionPipeline

    if not (path / "model_index.json").exists():
        raise SabunError(f"{path}: is a folder without model_index.json, so not a diffusers model; give a diffusers folder")
    try:
        pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError, EnvironmentError) as e:
        raise SabunError(f"{path}: could not be loaded as a diffusers model ({str(e).splitlines()[0]})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save a pipeline as a diffusers folder (safetensors weights), atomically."""
    out = Path(out)
    if out.suffix in (".safetensors", ".ckpt"):
        raise SabunError(f"{out}: writing single-file checkpoints is not supported yet; give a folder name")
    with atomic_output(out, overwrite=overwrite, directory=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return out
