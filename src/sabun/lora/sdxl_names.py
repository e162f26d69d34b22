"""kohya's names for SDXL U-Net layers: original-layout (SGM) module paths, not diffusers ones.

sd-scripts trains SDXL on its own copy of the original U-Net, so its LoRA keys name a layer
`lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k` where diffusers' module is
`down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k`; for SD 1.x / 2.x it trains on
diffusers' U-Net and keeps diffusers' paths. The path map is the one single-file checkpoints are
read and written with (`sabun.models.layout`), derived from the U-Net's config.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sabun.models.layout import UNET_RESNET, original_path, unet_block_map


def is_sdxl_unet(unet: nn.Module) -> bool:
    """SDXL's U-Net takes the pooled text and image sizes as an added embedding (`text_time`)."""
    config = getattr(unet, "config", None)
    return getattr(config, "addition_embed_type", None) == "text_time"


def kohya_unet_path(unet: nn.Module) -> Callable[[str], str]:
    """diffusers module path -> the path kohya names the layer by: SGM for SDXL, unchanged otherwise.

    `down_blocks.1.resnets.0.conv1` -> `input_blocks.4.0.in_layers.2`,
    `mid_block.attentions.0.proj_in` -> `middle_block.1.proj_in`,
    `up_blocks.0.upsamplers.0.conv` -> `output_blocks.2.2.conv`.
    """
    if not is_sdxl_unet(unet):
        return lambda path: path
    blocks = unet_block_map(unet.config)
    return lambda path: original_path(path, blocks, UNET_RESNET)
