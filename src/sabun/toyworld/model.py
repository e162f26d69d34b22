"""The toy model: a real `StableDiffusionPipeline`, small enough to pretrain and use on a CPU.

Same classes as SD 1.x (AutoencoderKL, CLIPTextModel, UNet2DConditionModel with cross-attention
blocks, a CLIP tokenizer, SD's noise schedule), so every code path sabun runs on it is the one
it runs on a real checkpoint. Sizes:
- images 64x64; the VAE downsamples 4x to 4x16x16 latents (SD: 8x to 4x64x64 at 512 px);
- U-Net: 16x16 -> 8x8 -> 4x4, cross-attention at 8x8 and 4x4 (optionally also 16x16), context
  width 64;
- text encoder: CLIP, 4 layers of width 64, over the toy world's booru tags;
- scheduler: SD's (epsilon), or SD's betas rescaled to zero terminal SNR with v-prediction and
  trailing timesteps (Lin et al. 2023), as SD 2.x-v and NoobAI-v models are.
The shipped weights live in `sabun/assets/toy_model` as a diffusers folder and are made by
`sabun toyworld pretrain` (see `pretrain.py`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sabun.models.load import shipped_toy_model
from sabun.models.tiny import assemble_pipeline, sd15_scheduler_config
from sabun.models.tokenizer import build_clip_tokenizer
from sabun.toyworld import captions
from sabun.toyworld.colours import EYE_COLOURS, HAIR_COLOURS, THING_COLOURS

IMAGE_SIZE = 64
LATENT_SIZE = 16

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,  # 2-4 channels per group: 32 groups on 32 channels would normalise colour away
    sample_size=IMAGE_SIZE,
)

UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=32,
)

TEXT_CONFIG = dict(
    hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=77
)


def vocabulary() -> list[str]:
    """Every tag the toy world writes, plus a few a user may try (`realistic`, `completely nude`)."""
    words = ["1girl", "solo", "nude", "completely nude", "hair ribbon", "3d", "realistic"]
    words += [f"{c} hair" for c in HAIR_COLOURS] + [f"{c} eyes" for c in EYE_COLOURS]
    words += [f"{c} {kind}" for c in THING_COLOURS for kind in captions.OUTFIT_TAGS.values()]
    words += (
        list(captions.HAIRSTYLE_TAGS.values()) + list(captions.POSE_TAGS.values()) + list(captions.ZOOM_TAGS.values())
    )
    words += [t for group in captions.BODY_TAGS.values() for t in group]
    words += [t for _, t in captions.VIEW_TAGS.values()]
    words += [t for group in captions.BACKGROUND_TAGS.values() for t in group]
    return words


def unet_config(cross_attention_16: bool = False) -> dict:
    """The U-Net's config; `cross_attention_16` adds cross-attention at the 16x16 level too."""
    if not cross_attention_16:
        return dict(UNET_CONFIG)
    return UNET_CONFIG | dict(
        down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3
    )


def scheduler_config(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> dict:
    """SD's DDIM schedule; with `zero_terminal_snr` its betas are rescaled so that the last
    timestep is pure noise, and sampling starts there (trailing spacing)."""
    config = sd15_scheduler_config() | dict(prediction_type=prediction_type)
    if zero_terminal_snr:
        config |= dict(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return config


def build_toy_pipeline(
    seed: int = 0, cross_attention_16: bool = False, prediction_type: str = "epsilon", zero_terminal_snr: bool = False
) -> StableDiffusionPipeline:
    """The toy pipeline with random weights drawn under `seed` (the start of pretraining)."""
    tokenizer = build_clip_tokenizer(vocabulary())
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**unet_config(cross_attention_16))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TEXT_CONFIG,
        )
    )
    pipe = assemble_pipeline(vae, text_encoder, tokenizer, unet)
    pipe.scheduler = DDIMScheduler(**scheduler_config(prediction_type, zero_terminal_snr))
    return pipe


def shipped_model_dir() -> Path:
    """The folder of the shipped, pretrained toy model (a diffusers layout)."""
    return shipped_toy_model()
