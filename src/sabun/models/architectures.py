"""The real SD 1.5 architecture as configs, for benchmarks and memory tests with random weights.

Timing and memory do not depend on the weights' values, so these give real figures with no
checkpoint on disk.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)

SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)

# CLIP ViT-L/14 text tower
SD15_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)


def sd15_unet(device: str = "cpu"):
    """An SD 1.5 U-Net with random weights (`device="meta"` allocates nothing)."""
    with torch.device(device):
        return UNet2DConditionModel(**SD15_UNET)


def sd15_text_encoder(device: str = "cpu"):
    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig(**SD15_TEXT))


def sd15_vae(device: str = "cpu"):
    with torch.device(device):
        return AutoencoderKL(**SD15_VAE)


# --- SD 2.x: the SD 1.5 U-Net layout with 64-channel heads, linear proj_in/out, OpenCLIP ViT-H/14 text ---

SD2_UNET = dict(
    SD15_UNET, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True
)  # sample_size 96 for 768-v models

SD2_VAE = SD15_VAE

# OpenCLIP ViT-H/14 text tower as diffusers loads it: 23 of its 24 layers, since SD 2.x conditions on
# the penultimate layer (then the final layer norm); the 24th is never run.
SD2_TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=0,
)

# --- SDXL base 1.0 ---

SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,  # CLIP-L's 768 + OpenCLIP bigG's 1280, concatenated
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # pooled bigG text (1280) + 6 size/crop numbers x 256
)

SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)

SDXL_TEXT = SD15_TEXT  # CLIP ViT-L/14; SDXL reads its penultimate hidden state

# OpenCLIP ViT-bigG/14 text tower with its projection (the pooled embedding conditions the U-Net)
SDXL_TEXT_2 = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=0,
)

# Noise schedules. SD 1.x/2.x and SDXL share the betas; 768-px SD 2.x models predict v.
SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)  # DDIMScheduler, as the SD 2.x repositories ship

SDXL_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="leading",
    steps_offset=1,
    interpolation_type="linear",
    use_karras_sigmas=False,
)  # EulerDiscreteScheduler, as SDXL base ships

ARCHITECTURES = {
    "sd1": dict(unet=SD15_UNET, vae=SD15_VAE, text_encoder=SD15_TEXT),
    "sd2": dict(unet=SD2_UNET, vae=SD2_VAE, text_encoder=SD2_TEXT),
    "sdxl": dict(unet=SDXL_UNET, vae=SDXL_VAE, text_encoder=SDXL_TEXT, text_encoder_2=SDXL_TEXT_2),
}

# --- reduced widths, for tests ------------------------------------------------------------------
# Every block, layer and key name of the real architectures (the full depths: 12 / 24 / 32 text
# layers, SDXL's 1-2-10 transformer depths), at widths a CPU runs in seconds. Heads follow each
# family's rule (8 heads in SD 1.x, 64-channel heads after), so a loader that infers the config
# from the weights' shapes rebuilds exactly these models. SDXL's two text encoders get different
# widths, as the real ones have, since tools tell them apart by width.

REDUCED = {
    "sd1": dict(
        unet=dict(SD15_UNET, block_out_channels=(32, 64, 64, 64), cross_attention_dim=64, sample_size=16),
        vae=dict(SD15_VAE, block_out_channels=(32, 32, 64, 64), sample_size=128),
        text_encoder=dict(SD15_TEXT, hidden_size=64, intermediate_size=128, num_attention_heads=1),
    ),
    "sd2": dict(
        unet=dict(SD2_UNET, block_out_channels=(64, 64, 128, 128), attention_head_dim=(1, 1, 2, 2), cross_attention_dim=64, sample_size=16, upcast_attention=True),
        vae=dict(SD2_VAE, block_out_channels=(32, 32, 64, 64), sample_size=128),
        text_encoder=dict(SD2_TEXT, hidden_size=64, intermediate_size=128, num_attention_heads=1, projection_dim=64),
    ),
    "sdxl": dict(
        unet=dict(
            SDXL_UNET, block_out_channels=(64, 128, 128), attention_head_dim=(1, 2, 2), cross_attention_dim=64 + 128, sample_size=16,
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=128 + 6 * 8,
        ),
        vae=dict(SDXL_VAE, block_out_channels=(32, 32, 64, 64), sample_size=128),
        text_encoder=dict(SDXL_TEXT, hidden_size=64, intermediate_size=128, num_attention_heads=1),
        text_encoder_2=dict(SDXL_TEXT_2, hidden_size=128, intermediate_size=256, num_attention_heads=2, projection_dim=128),
    ),
}  # fmt: skip
