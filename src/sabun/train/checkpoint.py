"""Resumable checkpoints: one folder per step, written atomically.

A checkpoint folder `OUTPUT_DIR/checkpoints/NAME-step000100/` holds
- `lora.safetensors`: the LoRA so far in fp32 (a normal kohya file: it can be used as it is);
- `state.pt`: the step, optimiser and schedule states, and the torch / numpy / python RNG states
  (read back with `weights_only=True`, so a checkpoint cannot run code);
- `config.toml`: the resolved config it was trained with.
The data position is a function of the step (see `BatchPlan`), stored too so resume can check it.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from sabun.errors import SabunError
from sabun.io import atomic_output
from sabun.lora.file import load_lora, save_lora
from sabun.lora.weights import LoRA

LORA_FILE, STATE_FILE, CONFIG_FILE = "lora.safetensors", "state.pt", "config.toml"


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: Path, name: str, step: int) -> Path:
    return checkpoint_root(output_dir) / f"{name}-step{step:06d}"


def list_checkpoints(output_dir: Path, name: str) -> list[tuple[int, Path]]:
    """Complete checkpoints of run `name`, oldest first (half-written temporaries are dot-names, skipped)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(name)}-step(\d+)$")
    found = []
    for path in root.iterdir():
        match = pattern.match(path.name)
        if match and (path / STATE_FILE).is_file() and (path / LORA_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def rng_states() -> dict:
    """Every global random state, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, lora: LoRA, state: dict, config_toml: str, overwrite: bool = False) -> Path:
    """Write one checkpoint folder atomically: it exists complete or not at all."""
    with atomic_output(path, overwrite=overwrite, directory=True) as tmp:
        save_lora(lora, tmp / LORA_FILE, overwrite=True)
        torch.save(state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(config_toml, encoding="utf-8")
    return path


def load_checkpoint(path: Path) -> tuple[LoRA, dict, str]:
    """(LoRA, state, config TOML) of a checkpoint folder."""
    path = Path(path)
    if not (path / STATE_FILE).is_file() or not (path / LORA_FILE).is_file():
        raise SabunError(
            f"{path}: is not a sabun checkpoint (no {STATE_FILE} and {LORA_FILE}); give a folder under OUTPUT_DIR/checkpoints"
        )
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged pickle can raise nearly anything
        raise SabunError(
            f"{path / STATE_FILE}: could not be read ({type(e).__name__}: {e}); resume from an earlier checkpoint"
        ) from None
    config = (path / CONFIG_FILE).read_text(encoding="utf-8") if (path / CONFIG_FILE).is_file() else ""
    return load_lora(path / LORA_FILE), state, config


def prune_checkpoints(output_dir: Path, name: str, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints of run `name` (0 keeps all)."""
    if keep_last <= 0:
        return
    for _, path in list_checkpoints(output_dir, name)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
