"""Model families (SD 1.x, SD 2.x, SDXL): telling them apart, and what each one predicts.

A family is one of `sd1`, `sd2`, `sdxl`. A single-file checkpoint's family follows from its keys
(`detect_family`), a loaded pipeline's from its components (`pipeline_family`).

The prediction type (noise `epsilon` or `v_prediction`) is not in a checkpoint's weights' names,
so it is resolved in this order (`resolve_prediction_type`):
1. the user's choice (`--prediction-type`), always obeyed;
2. what the file says: a `v_pred` key (the marker ComfyUI and recent SDXL v-prediction models use),
   or sd-scripts' `modelspec.prediction_type` metadata;
3. SD 2.x only, which ships both kinds (512-px base: epsilon; 768-px: v): AUTOMATIC1111's test,
   one U-Net call at t=999 on a constant input (`looks_like_v_prediction`);
4. otherwise epsilon (SD 1.x and SDXL base are epsilon models).
The loader logs which rule decided.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sabun.errors import SabunError

FAMILIES = ("sd1", "sd2", "sdxl")
TITLES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL base"}
PREDICTION_TYPES = ("epsilon", "v_prediction")

UNET = "model.diffusion_model."
SD1_TEXT = "cond_stage_model.transformer."
SD2_TEXT = "cond_stage_model.model."
SDXL_TEXT_1 = "conditioner.embedders.0.transformer."
SDXL_TEXT_2 = "conditioner.embedders.1.model."
VAE = "first_stage_model."

SUPPORTED = "SD 1.x, SD 2.x and SDXL base single files (.safetensors, original layout), or diffusers folders"


def detect_family(shapes: Mapping[str, tuple[int, ...]], source: str) -> str:
    """The family of an original-layout checkpoint from its keys; a SabunError naming `source` if none fits."""

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in shapes)

    if not has(UNET):
        sample = ", ".join(sorted(shapes)[:3]) or "nothing (empty file)"
        if any(k.startswith("lora_") or ".lora_down." in k or ".lora_A." in k for k in shapes):
            what = "a LoRA, not a model; pass it with --lora"
        elif any(k.startswith(("down_blocks.", "conv_in.", "encoder.down_blocks.")) for k in shapes):
            what = "a single diffusers component (a U-Net or VAE file), not a whole model; give the diffusers folder it came from"
        elif any("double_blocks." in k or "joint_blocks." in k or "single_blocks." in k for k in shapes):
            what = "a Flux / SD3-style transformer model, which sabun does not support"
        else:
            what = "not a Stable Diffusion checkpoint in the original layout (no model.diffusion_model.* keys)"
        raise SabunError(f"{source}: is {what}; keys start with: {sample}; supported: {SUPPORTED}")
    if has("conditioner.embedders.0.model.") and not has(SDXL_TEXT_2):
        raise SabunError(
            f"{source}: is an SDXL refiner (one OpenCLIP text encoder), which sabun does not support; use an SDXL base model"
        )
    if has(SDXL_TEXT_2) and has(SDXL_TEXT_1):
        family = "sdxl"
    elif has(SD2_TEXT):
        family = "sd2"
    elif has(SD1_TEXT):
        family = "sd1"
    else:
        raise SabunError(
            f"{source}: has a U-Net but no text encoder (no cond_stage_model.* or conditioner.* keys); supported: {SUPPORTED}"
        )
    if not has(VAE):
        raise SabunError(
            f"{source}: is a {TITLES[family]} checkpoint without its VAE (no first_stage_model.* keys); use a full checkpoint"
        )
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is not None and conv_in[1] != 4:
        raise SabunError(
            f"{source}: is a {TITLES[family]} U-Net with {conv_in[1]} input channels (an inpainting, depth or "
            "instruct-pix2pix model); only text-to-image models (4 channels) are supported"
        )
    return family


def pipeline_family(pipe) -> str:
    """`sdxl` for a pipeline with two text encoders, `sd2` for an OpenCLIP (gelu) one, else `sd1`.

    A pipeline loaded from a single file keeps the family detected there.
    """
    source = getattr(pipe, "sabun_checkpoint", None)
    if source is not None:
        return source.family
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    text_encoder = getattr(pipe, "text_encoder", None)
    if text_encoder is not None and getattr(text_encoder.config, "hidden_act", "") == "gelu":
        return "sd2"
    return "sd1"


def base_model_version(family: str, prediction_type: str = "epsilon") -> str:
    """`ss_base_model_version` as sd-scripts writes it: sd_v1, sd_v2, sd_v2_v (v-prediction), sdxl_base_v1-0."""
    if family == "sdxl":
        return "sdxl_base_v1-0"
    version = "sd_v2" if family == "sd2" else "sd_v1"
    return version + ("_v" if prediction_type == "v_prediction" else "")


def family_of_version(version: str) -> str | None:
    """The family an `ss_base_model_version` names (sd_v1 -> sd1, sd_v2_v -> sd2, sdxl_* -> sdxl), else None."""
    version = version.strip().lower()
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2"):
        return "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    return None


def stated_prediction_type(keys, metadata: Mapping[str, str]) -> str | None:
    """The prediction type a file states (a `v_pred` key, or `modelspec.prediction_type`), else None."""
    if "v_pred" in keys:
        return "v_prediction"
    stated = metadata.get("modelspec.prediction_type", "").strip().lower()
    return {"v": "v_prediction", "v_prediction": "v_prediction", "epsilon": "epsilon"}.get(stated)


@torch.no_grad()
def looks_like_v_prediction(unet) -> bool:
    """AUTOMATIC1111's SD 2.x test: at t=999 on a constant input, a v model's output sits far below it.

    At the last timestep the latent is nearly pure noise: an epsilon model returns about its input,
    a v model about -x0, so the mean of (output - input) drops below -1.
    """
    dtype = next(unet.parameters()).dtype
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=dtype)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=dtype)
    out = unet(x, torch.tensor([999]), context).sample
    return float((out - x).float().mean()) < -1


def resolve_prediction_type(family: str, requested: str | None, stated: str | None, unet=None) -> tuple[str, str]:
    """(prediction type, the reason) by the rules in the module docstring."""
    if requested is not None:
        if requested not in PREDICTION_TYPES:
            raise SabunError(f"unknown prediction type {requested!r}; use one of: {', '.join(PREDICTION_TYPES)}")
        return requested, "as requested"
    if stated is not None:
        return stated, "stated by the file"
    if family == "sd2" and unet is not None:
        kind = "v_prediction" if looks_like_v_prediction(unet) else "epsilon"
        return kind, "from a test U-Net call (SD 2.x files do not say; override with --prediction-type)"
    return "epsilon", f"{TITLES.get(family, family)} default"
