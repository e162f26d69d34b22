"""A tiny Stable Diffusion 1.x pipeline built from config, for tests and tools.

Same classes and module names as SD 1.5 (AutoencoderKL, CLIPTextModel, UNet2DConditionModel with
CrossAttnDownBlock2D / DownBlock2D / UpBlock2D / CrossAttnUpBlock2D, a CLIP tokenizer, a DDIM
scheduler with SD's beta schedule), only narrow and shallow, with random weights drawn under a
fixed seed. Every code path that runs on a real checkpoint runs on this one.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sabun.models.tokenizer import build_clip_tokenizer

TINY_WORDS = [
    "1girl", "solo", "red hair", "blonde hair", "blue hair", "long hair", "short hair", "twintails",
    "ponytail", "from behind", "white background", "full body", "upper body", "portrait", "3d",
    "a photo of a cat", "nude", "arms at sides",
]  # fmt: skip


def sd15_scheduler_config() -> dict:
    """SD 1.x's noise schedule (scaled-linear betas 0.00085..0.012 over 1000 steps, epsilon)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_pipeline(seed: int = 0, sample_size: int = 32) -> StableDiffusionPipeline:
    """Build the tiny SD1-style pipeline with random weights drawn under `seed`.

    Args:
        seed: torch seed for every component's initial weights.
        sample_size: the U-Net's latent size; images are 2x larger (the VAE downsamples once).
    """
    tokenizer = build_clip_tokenizer(TINY_WORDS)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size * 2,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return assemble_pipeline(vae, text_encoder, tokenizer, unet)


def assemble_pipeline(vae, text_encoder, tokenizer, unet) -> StableDiffusionPipeline:
    """An SD 1.x pipeline of these components with SD's noise schedule, DDIM sampling, no safety checker."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**sd15_scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
