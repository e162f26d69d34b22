"""The real SD 1.5 architecture as configs, for benchmarks and memory tests with random weights.

Timing and memory do not depend on the weights' values, so these give real figures with no
checkpoint on disk.
"""

from __future__ import annotations

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
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**SD15_UNET)


def sd15_text_encoder(device: str = "cpu"):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig(**SD15_TEXT))


def sd15_vae(device: str = "cpu"):
    import torch
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(**SD15_VAE)
