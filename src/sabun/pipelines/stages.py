"""Stages of a multi-step job: each writes one output and is skipped when its inputs are unchanged.

A stage's key is the hash of its inputs (settings, and the hashes of the files it reads), stored
beside its output as NAME.stage.json. A re-run skips a stage whose output exists under the same key,
redoes one whose inputs changed (and so every stage downstream, whose inputs include its output's
hash), and a failed stage leaves no marker, so the next run redoes it alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from sabun.io import atomic_output


def key_of(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def stage_key(output: Path) -> str:
    """The input key a finished stage's output was made under (from its NAME.stage.json)."""
    return json.loads((output.parent / f"{output.name}.stage.json").read_text())["key"]


def run_stage(root: Path, name: str, inputs: dict, build: Callable[[Path], None], log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """Build `root/name` with `build(path)` unless it is up to date; returns (path, whether it ran)."""
    target = root / name
    marker = root / f"{name}.stage.json"
    key = key_of(inputs)
    if target.exists() and marker.exists() and json.loads(marker.read_text()).get("key") == key:
        log(f"{name}: up to date, skipped")
        return target, False
    marker.unlink(missing_ok=True)
    if target.exists():  # this stage's own earlier output, made from other inputs
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    build(target)
    with atomic_output(marker, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"key": key, "inputs": inputs}, indent=2, default=str))
    return target, True
