"""Stages of a multi-step job: each writes one output and is skipped when its inputs are unchanged.

A stage's key is the hash of its inputs (settings, and the hashes of the files it reads), stored
beside its output as NAME.stage.json. A re-run skips a stage whose output exists under the same key,
redoes one whose inputs changed (and so every stage downstream, whose inputs include its output's
hash), and a failed stage leaves no marker, so the next run redoes it alone.

Keys hold contents, never paths: an input made by an earlier stage enters as that stage's key (or
its file's sha256), a user's file or folder as its sha256 or digest, a builtin model as its name.
So a run folder copied, moved or spelled another way (`runs/demo`, `./runs/demo`, an absolute path)
skips every stage whose inputs did not change.

A stage's output is built in a temporary sibling and renamed into place only once its build
succeeds: a failed or interrupted stage never leaves a partial output under its name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sabun import __version__
from sabun.avatar.captions import tags_beside
from sabun.avatar.commands import METADATA_FORMAT
from sabun.config import ConfigError, to_dict, to_toml
from sabun.errors import SabunError
from sabun.io import atomic_output, remove_stale_temporaries
from sabun.lora.file import file_sha256
from sabun.lora.ops import MAX_MULTIPLIER
from sabun.models.load import BUILTIN
from sabun.pipelines.data import ModelSource, RenderConfig, copy_set, render_model_set, render_set
from sabun.toyworld.character import load_character
from sabun.train import train
from sabun.train.config import TrainConfig

TMP_INFIX = ".tmp-"  # a stage NAME is built in ROOT/.NAME.tmp-XXXX/NAME

_FILE_HASHES: dict[tuple, str] = {}  # (real path, device, inode, size, mtime) -> sha256, for this process


def key_of(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def stage_key(output: Path) -> str:
    """The input key a finished stage's output was made under (from its NAME.stage.json)."""
    return json.loads((output.parent / f"{output.name}.stage.json").read_text())["key"]


def file_hash(path: str | os.PathLike) -> str:
    """A file's sha256, remembered while the file is unchanged (size, mtime), so a multi-GB model
    read by several stages of a run is hashed once."""
    path = Path(path)
    stat = path.stat()
    memo = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_HASHES:
        _FILE_HASHES[memo] = file_sha256(path)
    return _FILE_HASHES[memo]


def tree_digest(folder: Path) -> str:
    """A hash of every file's path relative to `folder` and of its content (not of `folder`'s own path)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(file_hash(path).encode())
    return h.hexdigest()


def model_key(path: str) -> str | dict:
    """A model in a key: a builtin model (`toy`, `tiny`) by its name; a checkpoint file by its
    sha256; a diffusers folder by the digest of its files. Never by its path."""
    if path in BUILTIN:
        return path
    model = Path(path)
    if model.is_file():
        return {"sha256": file_hash(model)}
    if model.is_dir():
        return {"digest": tree_digest(model)}
    raise SabunError(
        f"{path}: no such model; give a diffusers folder, a checkpoint file or one of: {', '.join(BUILTIN)}"
    )


def check_model_path(path: str, where: str, allow_pickle: bool = False) -> None:
    """A model spec that can be loaded, checked without loading it (no hashing, no reading of
    weights): a builtin name, a diffusers folder with model_index.json, or a checkpoint file.
    Errors name the config field `where` and the path; `load_pipeline` checks the contents."""
    if path in BUILTIN:
        return
    model = Path(path)
    if not model.exists():
        raise ConfigError(
            where,
            f"{model}: no such model; give a diffusers folder, a .safetensors checkpoint or one of: {', '.join(BUILTIN)}",
        )
    if model.is_dir():
        if not (model / "model_index.json").is_file():
            raise ConfigError(
                where,
                f"{model}: is a folder without model_index.json, so not a diffusers model; give a diffusers folder",
            )
        return
    suffix = model.suffix.lower()
    if suffix in (".ckpt", ".pt", ".pth") and not allow_pickle:
        raise ConfigError(
            where,
            f"{model}: is a pickle checkpoint, which can run code when loaded; convert it to .safetensors, or set allow_pickle = true if you trust its source",
        )
    if suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise ConfigError(
            where,
            f"{model}: is neither a .safetensors checkpoint nor a diffusers folder; give one of those, or one of: {', '.join(BUILTIN)}",
        )


def check_finite(value, where: str) -> None:
    """Every float in `value` (a dataclass, dict or list, walked through) is a finite number;
    a ConfigError names the first that is not by its dotted field name (`where.optimizer.learning_rate`).
    The configs' own range checks (`x > 0`) let infinity through, and NaN only where they compare."""
    if isinstance(value, bool):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(where, f"must be a finite number, got {value}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            check_finite(getattr(value, f.name), f"{where}.{f.name}" if where else f.name)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{where}[{i}]")


def check_multiplier(value: float, where: str) -> None:
    """A LoRA weight that is a finite number within +-10 (`sabun merge` asks for --force beyond)."""
    if not math.isfinite(value):
        raise ConfigError(where, f"{value} is not a finite number; give one like 0.8 or 1")
    if abs(value) > MAX_MULTIPLIER:
        raise ConfigError(
            where, f"{value:g} is beyond +-{MAX_MULTIPLIER:g} (LoRAs are used at about 0.3-1.5); give one like 0.8 or 1"
        )


def check_timesteps(config, pipe, where: str) -> None:
    """A train config's timestep range within the model's training timesteps (the trainer's own
    check, made before any stage runs); `where` names the train table (`character.train`)."""
    steps = pipe.scheduler.config.get("num_train_timesteps", 1000)
    training = config.training
    if training.min_timestep >= steps:
        raise ConfigError(
            f"{where}.training.min_timestep",
            f"{training.min_timestep} is past this model's {steps} training timesteps; give 0 to {steps - 1}",
        )
    if training.max_timestep is not None and training.max_timestep > steps:
        raise ConfigError(
            f"{where}.training.max_timestep",
            f"{training.max_timestep} is past this model's {steps} training timesteps; give at most {steps}",
        )


def check_trained(result, name: str) -> None:
    """A stage's training that stopped early (Ctrl-C, SIGTERM) fails the stage, so that it is never
    marked done without its LoRA; the next run of the same command trains it again."""
    if result.interrupted or result.lora_path is None:
        raise SabunError(f"stage {name}: training was interrupted; run the same command again to train it")


def save_resolved_config(out: Path, name: str, config) -> Path:
    """The run's config with every default filled in and every path resolved, as OUT/NAME.resolved.toml
    (what this run used; rewritten by each run into the same folder, as metrics.json is)."""
    path = out / f"{name}.resolved.toml"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(f"# the resolved config of the run in this folder (sabun {__version__})\n" + to_toml(config))
    return path


def output_key(path: Path) -> str:
    """An input folder or file in a key: the key of the stage that made it (NAME.stage.json beside
    it), else the digest of its content."""
    path = Path(path)
    if (path.parent / f"{path.name}.stage.json").is_file():
        return stage_key(path)
    if path.is_dir():
        return tree_digest(path)
    if path.is_file():
        return file_hash(path)
    raise SabunError(f"{path}: no such file or folder")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run_stage(
    root: Path, name: str, inputs: dict, build: Callable[[Path], None], log: Callable[[str], None] = print
) -> tuple[Path, bool]:
    """Build `root/name` with `build(path)` unless it is up to date; returns (path, whether it ran).

    `build` is given a path that does not exist yet, in a temporary folder beside `root/name`; what
    it writes there is moved onto `root/name` only when it returns, and removed when it raises."""
    target = root / name
    marker = root / f"{name}.stage.json"
    key = key_of(inputs)
    if target.exists() and marker.exists() and json.loads(marker.read_text()).get("key") == key:
        log(f"{name}: up to date, skipped")
        return target, False
    marker.unlink(missing_ok=True)
    if target.exists() or target.is_symlink():  # this stage's own earlier output, made from other inputs
        _remove(target)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)  # left by a run killed mid-build (never a live run's)
    work = Path(tempfile.mkdtemp(prefix=f".{name}{TMP_INFIX}{os.getpid()}-", dir=root))
    try:
        built = work / name
        build(built)
        if not (built.exists() or built.is_symlink()):
            raise SabunError(f"stage {name}: its build wrote no output")
        built.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with atomic_output(marker, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"key": key, "inputs": inputs}, indent=2, default=str))
    return target, True


# --- the stages of the pipelines: data sets and LoRAs ---------------------------------------------


def folder_digest(folder: Path) -> str:
    """A hash of every file's relative path and content (not of the folder's own path): a user's
    data set changes -> its stages rerun; the same files elsewhere -> they do not."""
    if not folder.is_dir():
        raise SabunError(f"{folder}: no such folder; give a folder of images with .txt captions")
    return tree_digest(folder)


@dataclass
class Stages:
    """The stage runner of one pipeline: data sets and LoRAs under OUT, logged."""

    out: Path
    log: Callable[[str], None] = print

    def toy_data(self, name: str, character: str, policy: str, extra_tag: str | None = None) -> Path:
        inputs = {"character": load_character(character).to_dict(), "policy": policy, "tag": extra_tag, "style": "3d"}
        return run_stage(
            self.out / "data", name, inputs, lambda p: render_set(p, character, policy, extra_tag), self.log
        )[0]

    def model_data(
        self, name: str, source: ModelSource, policy: str, render: RenderConfig, size: int, extra_tag: str | None = None
    ) -> Path:
        """A 3D model's renders, keyed by the model file's and its tag file's content and the render settings."""
        model, tag_file = Path(source.path), tags_beside(Path(source.path))
        inputs = {
            "model": file_hash(model),
            "tag_file": file_hash(tag_file) if tag_file.is_file() else None,
            "tags": source.tags,
            "policy": policy,
            "tag": extra_tag,
            "render": to_dict(render) | {"size": size},
            "format": METADATA_FORMAT,
        }
        return run_stage(
            self.out / "data",
            name,
            inputs,
            lambda p: render_model_set(p, source, policy, render, size, self.log, extra_tag),
            self.log,
        )[0]

    def user_data(self, name: str, folder: str, policy: str) -> Path:
        inputs = {"digest": folder_digest(Path(folder)), "policy": policy}  # its files, wherever the folder is
        return run_stage(self.out / "data", name, inputs, lambda p: copy_set(Path(folder), p, policy), self.log)[0]

    def lora(self, name: str, config: TrainConfig, pipe=None) -> Path:
        """Train one LoRA (config's output folder is replaced by the stage's)."""
        inputs = lora_inputs(config)

        def build(folder: Path) -> None:
            self.log(f"training {name}")
            result = train(
                dataclasses.replace(config, output=dataclasses.replace(config.output, dir=str(folder), name=name)),
                pipe=pipe,
            )
            check_trained(result, name)

        folder, _ = run_stage(self.out / "loras", name, inputs, build, self.log)
        return folder / f"{name}.safetensors"


def lora_inputs(config: TrainConfig) -> dict:
    """A LoRA stage's key: its training settings with every path replaced by what it stands for (the
    model by `model_key`, each data set by the key of the stage that made it, each base weight by
    its sha256); the output folder and a latent cache folder, which change nothing learnt, left out."""
    table = to_dict(config)
    output = table.pop("output")
    table["output"] = {k: output[k] for k in ("dtype", "comment") if k in output}  # what the saved file holds
    table["model"]["path"] = model_key(config.model.path)
    table["model"]["base_weights"] = [{"multiplier": b.multiplier} for b in config.model.base_weights]
    for dataset in table["datasets"]:
        del dataset["path"]
    table["data"].pop("cache_dir", None)
    return {
        "train": table,
        "data_keys": [output_key(Path(d.path)) for d in config.datasets],
        "base": [file_hash(b.path) for b in config.model.base_weights],
    }
