"""Reading and writing kohya-format LoRA files (`.safetensors`), with the metadata tools read.

Layout, per layer: `<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha` (0-d).
A missing alpha means alpha = rank (scale 1), as in sd-scripts. Metadata values are strings: the
`ss_*` keys that AUTOMATIC1111, ComfyUI and civitai read, and sabun's own `sabun_*` provenance.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from pathlib import Path

import torch

import sabun
from sabun.errors import SabunError
from sabun.io import load_tensors, save_tensors
from sabun.lora.weights import LoRA, LoRAWeight
from sabun.models.families import base_model_version, family_of_version

SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
# a cross-attention key projection's input width gives a LoRA's family when nothing states it
CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def split_key(key: str) -> tuple[str, str] | None:
    for suffix in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_DELTA_NORM = 1e4  # a model's own layers have norms of ~1-100; a LoRA beyond this is corrupt
FAMILY_PREFIXES = {
    "lora_te_": "SD 1.x / 2.x text encoder",
    "lora_te1_": "SDXL text encoder",
    "lora_te2_": "SDXL text encoder",
}


def check_layer(name: str, down: torch.Tensor, up: torch.Tensor, alpha: torch.Tensor | None) -> LoRAWeight:
    """One layer's tensors as a LoRAWeight, or a ValueError saying what is wrong with them."""
    for part, t in (("lora_down", down), ("lora_up", up)):
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{part} is {str(t.dtype).removeprefix('torch.')}, not a floating-point tensor")
        if t.dim() not in (2, 4):
            raise ValueError(f"{part} has shape {tuple(t.shape)}; it must be 2-D (Linear) or 4-D (Conv2d)")
        if t.numel() == 0:
            raise ValueError(f"{part} has shape {tuple(t.shape)}, with no values")
    if down.dim() != up.dim():
        raise ValueError(f"lora_down is {down.dim()}-D but lora_up is {up.dim()}-D")
    if up.dim() == 4 and tuple(up.shape[2:]) != (1, 1):
        raise ValueError(f"lora_up has kernel {tuple(up.shape[2:])}; a conv LoRA's up is 1x1")
    rank = down.shape[0]
    if up.shape[1] != rank:
        raise ValueError(f"rank mismatch: lora_down {tuple(down.shape)} vs lora_up {tuple(up.shape)}")
    fan_in = down[0].numel()
    if rank > max(
        up.shape[0], fan_in
    ):  # above min() is wasteful but harmless; above both sides is no LoRA anyone trained
        raise ValueError(f"rank {rank} is larger than the layer itself ({up.shape[0]} x {fan_in})")
    if alpha is None:
        alpha_value = float(rank)
    else:
        if alpha.dim() != 0 and alpha.numel() != 1:
            raise ValueError(f"alpha has shape {tuple(alpha.shape)}; it must be a single number")
        if alpha.dtype == torch.bool or alpha.is_complex():
            raise ValueError(f"alpha is {str(alpha.dtype).removeprefix('torch.')}, not a number")
        alpha_value = float(alpha.reshape(()))
        if not math.isfinite(alpha_value) or alpha_value <= 0:
            raise ValueError(f"alpha is {alpha_value}; it must be a finite number above 0")
    for part, t in (("lora_down", down), ("lora_up", up)):
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{part} holds {bad} NaN or infinite value(s)")
    weight = LoRAWeight(down, up, alpha_value)
    bound = weight.scale * float(up.double().norm()) * float(down.double().norm())  # >= ||dW||_F
    if not math.isfinite(bound) or bound > MAX_DELTA_NORM:
        raise ValueError(
            f"its weight change has a norm up to {bound:.3g} (a model's own layers: ~1-100); the values are corrupt"
        )
    return weight


OTHER_KINDS = (  # keys of LoRA variants beside the kohya LoRA's own three, by the tool that writes them
    ((".dora_scale",), "DoRA magnitudes"),
    ((".lora_mid.",), "LyCORIS LoCon (Tucker) weights"),
    ((".hada_",), "LyCORIS LoHa weights"),
    ((".lokr_",), "LyCORIS LoKr weights"),
    ((".oft_", ".diag_oft"), "OFT / BOFT weights"),
    ((".diff", ".w_norm", ".b_norm"), "full weight differences (LyCORIS full / norm)"),
)


def check_family(names: list[str], source: str) -> None:
    """Refuse a file whose layers belong to two model families (SD 1.x/2.x and SDXL text encoders)."""
    found = {prefix for prefix in FAMILY_PREFIXES if any(n.startswith(prefix) for n in names)}
    if "lora_te_" in found and found & {"lora_te1_", "lora_te2_"}:
        te = next(n for n in names if n.startswith("lora_te_"))
        te1 = next(n for n in names if n.startswith(("lora_te1_", "lora_te2_")))
        raise SabunError(
            f"{source}: mixes layers of two model families ({te}: SD 1.x / 2.x, {te1}: SDXL); "
            "it was put together wrongly: use the LoRA of one model"
        )


def lora_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> LoRA:
    """Group a kohya state dict into checked per-layer weights; raise a SabunError naming `source` if it is not one.

    Every layer is checked: floating-point 2-D or 4-D down/up of one rank no larger than the layer,
    a single finite positive alpha, finite values of a plausible size. A file that fails is refused
    whole, so a corrupt LoRA never reaches a merge (where NaN would give a checkpoint that draws black).
    """
    parts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    unsplit = []
    for key, tensor in tensors.items():
        split = split_key(key)
        if split is not None:
            parts[split[0]][split[1]] = tensor
        else:
            unsplit.append(key)
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
    other = sorted(k for k in unsplit if k.startswith(("lora_unet_", "lora_te")))
    if other:
        kind = next(
            (name for marks, name in OTHER_KINDS if any(m in k for k in other for m in marks)),
            "weights of another kind",
        )
        raise SabunError(
            f"{source}: holds {kind} ({other[0]}{f' and {len(other) - 1} more' if len(other) > 1 else ''}), which sabun does not read; "
            "used without them the LoRA would change the model otherwise than ComfyUI or Forge do: convert it to a plain LoRA"
        )
    check_family(list(parts), source)
    weights = {}
    for name, p in sorted(parts.items()):
        if ".lora_down.weight" not in p or ".lora_up.weight" not in p:
            missing = ".lora_down.weight" if ".lora_down.weight" not in p else ".lora_up.weight"
            raise SabunError(f"{source}: layer {name} has no {missing}; the file is incomplete, write it again")
        try:
            weights[name] = check_layer(name, p[".lora_down.weight"], p[".lora_up.weight"], p.get(".alpha"))
        except ValueError as e:
            raise SabunError(
                f"{source}: layer {name}: {e}; the file is corrupt: train, download or write it again"
            ) from None
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SabunError(f"{source}: its metadata is not a table of strings; the file is corrupt")
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


def standard_metadata(lora: LoRA, family: str | None = None, model_name: str = "") -> dict[str, str]:
    """The `ss_*` keys other tools read, derived from the weights themselves.

    `ss_network_dim` / `ss_network_alpha` are the common rank and alpha, or `Dynamic` when layers
    differ (as sd-scripts' resize writes); conv ranks go into `ss_network_args`.
    """
    family = family or lora_family(lora)
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
        "ss_base_model_version": base_model_version(family),
        "ss_v2": str(family == "sd2"),
        "ss_sd_model_name": model_name,
        "sabun_version": sabun.__version__,
    }
    if conv:
        meta["ss_network_args"] = json.dumps(
            {"conv_dim": common(w.rank for w in conv), "conv_alpha": common(number(w.alpha) for w in conv)}
        )
    if not any(n.startswith("lora_te") for n in lora.weights):
        meta["ss_network_train_unet_only"] = "True"
    return meta


def lora_family(lora: LoRA) -> str:
    """The family a LoRA's layers belong to, from their names and widths: two text encoders
    (`lora_te1_`, `lora_te2_`) or 2048-wide cross-attention are SDXL, 1024-wide SD 2.x, 768-wide
    SD 1.x; a LoRA with no cross-attention key layer and one text encoder is taken as SD 1.x."""
    if any(name.startswith(("lora_te1_", "lora_te2_")) for name in lora.weights):
        return "sdxl"
    for name, weight in lora.weights.items():
        if name.startswith("lora_unet_") and name.endswith("attn2_to_k"):
            return CONTEXT_WIDTHS.get(weight.down.shape[1], "sd1")
    return "sd1"


def save_lora(
    lora: LoRA,
    path: str | os.PathLike,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
    family: str | None = None,
) -> Path:
    """Write `lora` as a kohya `.safetensors` file, atomically.

    Metadata = the standard `ss_*` keys derived from the weights, then `lora.metadata` on top
    (so provenance and training keys set by the caller win), plus `sabun_tensors_sha256`.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise SabunError(f"{path}: LoRA files are written as .safetensors; use a name ending in .safetensors")
    family = family or family_of_version(lora.metadata.get("ss_base_model_version", "")) or lora_family(lora)
    tensors = lora_state_dict(lora, dtype)
    metadata = standard_metadata(lora, family) | {k: str(v) for k, v in lora.metadata.items()}
    metadata["sabun_tensors_sha256"] = tensors_hash(tensors)
    return save_tensors(tensors, path, metadata=metadata, overwrite=overwrite)
