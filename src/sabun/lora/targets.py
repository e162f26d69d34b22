"""Which layers of a Stable Diffusion model take a LoRA, and their kohya names.

The choice follows kohya-ss/sd-scripts, the format every UI reads:
- U-Net: every Linear and 1x1 Conv2d inside a `Transformer2DModel` (attention q/k/v/out,
  feed-forward, proj_in/proj_out);
- with conv LoRA ("LoCon") enabled: also the layers of `ResnetBlock2D`, `Downsample2D` and
  `Upsample2D`: their 3x3 convs at the conv rank, their Linear / 1x1 layers at the main rank;
- text encoder: the Linear layers of CLIP's attention and MLP blocks.

A layer's kohya name is its component prefix (`lora_unet`, `lora_te`, or `lora_te1`/`lora_te2`
for SDXL) joined to its module path with every `.` replaced by `_`, e.g.
`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`. The module path is
diffusers' own, except in SDXL's U-Net, which kohya names by the original (SGM) layout:
`lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k` (see `sdxl_names`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sabun.lora.sdxl_names import kohya_unet_path

UNET_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")


@dataclass(frozen=True)
class LoRATarget:
    """One layer that takes a LoRA."""

    name: str  # kohya name, e.g. lora_te_text_model_encoder_layers_0_self_attn_q_proj
    module: nn.Linear | nn.Conv2d  # the model's own layer, left untouched
    conv3x3: bool  # a conv with a kernel larger than 1x1: takes the conv rank

    @property
    def component(self) -> str:
        """`unet` or the text-encoder prefix (`te`, `te1`, `te2`)."""
        return self.name.split("_")[1]


def model_components(pipe) -> dict[str, nn.Module]:
    """Map kohya prefixes to a pipeline's trainable components: SD1/2 `lora_te`, SDXL `lora_te1/2`."""
    components = {"lora_unet": pipe.unet}
    if getattr(pipe, "text_encoder_2", None) is not None:
        components["lora_te1"] = pipe.text_encoder
        components["lora_te2"] = pipe.text_encoder_2
    elif getattr(pipe, "text_encoder", None) is not None:
        components["lora_te"] = pipe.text_encoder
    return components


def find_targets(components: dict[str, nn.Module], conv: bool = False) -> dict[str, LoRATarget]:
    """All LoRA targets of the given components, keyed by kohya name.

    Args:
        components: kohya prefix -> module (see `model_components`).
        conv: include the ResNet/down/up-sampler layers (LoCon).
    """
    targets: dict[str, LoRATarget] = {}
    for prefix, root in components.items():
        if prefix == "lora_unet":
            blocks = UNET_BLOCKS + (UNET_CONV_BLOCKS if conv else ())
        else:
            blocks = TEXT_ENCODER_BLOCKS
        # kohya names CLIP layers from `text_model.`; transformers 5 dropped that level in
        # CLIPTextModel, so it is put back to keep the names every tool expects.
        root_path = "text_model." if prefix != "lora_unet" and not hasattr(root, "text_model") else ""
        kohya_path = kohya_unet_path(root) if prefix == "lora_unet" else (lambda p: p)
        for block_path, block in root.named_modules():
            if type(block).__name__ not in blocks:
                continue
            for child_path, child in block.named_modules():
                if not isinstance(child, (nn.Linear, nn.Conv2d)):
                    continue
                path = kohya_path(root_path + (f"{block_path}.{child_path}" if block_path else child_path))
                name = f"{prefix}_{path.replace('.', '_')}"
                conv3x3 = isinstance(child, nn.Conv2d) and tuple(child.kernel_size) != (1, 1)
                targets[name] = LoRATarget(name, child, conv3x3)
    return targets


def pipeline_targets(pipe, conv: bool = False) -> dict[str, LoRATarget]:
    """`find_targets` over a pipeline's U-Net and text encoder(s)."""
    return find_targets(model_components(pipe), conv=conv)
