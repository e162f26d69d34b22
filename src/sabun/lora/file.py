"""Reading and writing kohya-format LoRA files (`.safetensors`), with the metadata tools read.

Layout, per layer: `<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha` (0-d).
A missing alpha means alpha = rank (scale 1), as in sd-scripts. Metadata values are strings: the
`ss_*` keys that AUTOMATIC1111, ComfyUI and civitai read, and sabun's own `sabun_*` provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

import torch

import sabun
from sabun.errors import SabunError
from sabun.io import load_tensors, save_tensors
from sabun.lora.weights import LoRA, LoRAWeight

SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def split_key(key: str) -> tuple[str, str] | None:
    for suffix in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


def lora_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> LoRA:
    """Group a kohya state dict into per-layer weights; raise a SabunError naming `source` if it is not one."""
    parts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in tensors.items():
        split = split_key(key)
        if split is not None:
            parts[split[0]][split[1]] = tensor
    if not parts:
        sample = ", ".join(list(tensors)[:3])
        hint = ""
        if any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k for k in tensors):
            hint = " (it looks like a diffusers/peft-format LoRA)"
        elif any(k.startswith(("model.diffusion_model.", "first_stage_model.", "unet.", "conv_in")) for k in tensors):
            hint = " (it looks like a model checkpoint, not a LoRA)"
        raise SabunError(
            f"{source}: is not a kohya-format LoRA: no `.lora_down.weight` / `.lora_up.weight` keys{hint}; "
            f"keys start with: {sample or 'nothing (empty file)'}"
        )
    weights = {}
    for name, p in sorted(parts.items()):
        if ".lora_down.weight" not in p or ".lora_up.weight" not in p:
            missing = ".lora_down.weight" if ".lora_down.weight" not in p else ".lora_up.weight"
            raise SabunError(f"{source}: layer {name} has no {missing}; the file is incomplete, write it again")
        down, up = p[".lora_down.weight"], p[".lora_up.weight"]
        alpha = float(p[".alpha"]) if ".alpha" in p else float(down.shape[0])
        try:
            weights[name] = LoRAWeight(down, up, alpha)
        except ValueError as e:
            raise SabunError(f"{source}: layer {name}: {e}; the file is inconsistent") from None
    return LoRA(weights, dict(metadata))


def load_lora(path: str | os.PathLike, allow_pickle: bool = False) -> LoRA:
    """Read a kohya LoRA file (safetensors; pickles only with `allow_pickle`)."""
    tensors, metadata = load_tensors(path, allow_pickle=allow_pickle, what="LoRA file")
    return lora_from_tensors(tensors, metadata, str(path))


def lora_state_dict(lora: LoRA, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The kohya state dict of `lora` (weights cast to `dtype` if given; alphas stay fp32)."""
    out = {}
    for name, w in lora.weights.items():
        out[f"{name}.lora_down.weight"] = w.down.to(dtype) if dtype else w.down
        out[f"{name}.lora_up.weight"] = w.up.to(dtype) if dtype else w.up
        out[f"{name}.alpha"] = torch.tensor(float(w.alpha), dtype=torch.float32)
    return out


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and bytes, independent of metadata (for provenance)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def standard_metadata(lora: LoRA, family: str = "sd1", model_name: str = "") -> dict[str, str]:
    """The `ss_*` keys other tools read, derived from the weights themselves.

    `ss_network_dim` / `ss_network_alpha` are the common rank and alpha, or `Dynamic` when layers
    differ (as sd-scripts' resize writes); conv ranks go into `ss_network_args`.
    """
    linear = [w for w in lora.weights.values() if not w.conv3x3]
    conv = [w for w in lora.weights.values() if w.conv3x3]

    def common(values):
        values = set(values)
        return str(values.pop()) if len(values) == 1 else "Dynamic"

    def number(x: float):
        return int(x) if float(x).is_integer() else x

    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": common(w.rank for w in linear) if linear else "0",
        "ss_network_alpha": common(number(w.alpha) for w in linear) if linear else "0",
        "ss_base_model_version": BASE_MODEL_VERSIONS.get(family, family),
        "ss_v2": str(family == "sd2"),
        "ss_sd_model_name": model_name,
        "sabun_version": sabun.__version__,
    }
    if conv:
        meta["ss_network_args"] = json.dumps({"conv_dim": common(w.rank for w in conv), "conv_alpha": common(number(w.alpha) for w in conv)})
    if not any(n.startswith("lora_te") for n in lora.weights):
        meta["ss_network_train_unet_only"] = "True"
    return meta


def save_lora(
    lora: LoRA, path: str | os.PathLike, overwrite: bool = False, dtype: torch.dtype | None = None, family: str | None = None
) -> Path:
    """Write `lora` as a kohya `.safetensors` file, atomically.

    Metadata = the standard `ss_*` keys derived from the weights, then `lora.metadata` on top
    (so provenance and training keys set by the caller win), plus `sabun_tensors_sha256`.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise SabunError(f"{path}: LoRA files are written as .safetensors; use a name ending in .safetensors")
    family = family or {v: k for k, v in BASE_MODEL_VERSIONS.items()}.get(lora.metadata.get("ss_base_model_version", ""), "sd1")
    tensors = lora_state_dict(lora, dtype)
    metadata = standard_metadata(lora, family) | {k: str(v) for k, v in lora.metadata.items()}
    metadata["sabun_tensors_sha256"] = tensors_hash(tensors)
    return save_tensors(tensors, path, metadata=metadata, overwrite=overwrite)
