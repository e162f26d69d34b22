"""The original (LDM / SGM) checkpoint layout of SD 1.x, 2.x and SDXL, mapped onto diffusers' modules.

A single-file checkpoint names each weight after the original code
(`model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight`); diffusers names
the same weight after its own modules (`down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k
.weight` in the U-Net). The map follows from the block structure (the configs) alone, so it is
derived here rather than tabulated, and one map serves both directions: loading a file and writing
one. Tensors are renamed, except:
- OpenCLIP text encoders (SD 2.x, SDXL's second) store q, k, v stacked as `attn.in_proj_weight`
  and the text projection transposed;
- the VAE's attention stores its Linear layers as 1x1 convs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sabun.models.families import SD1_TEXT, SD2_TEXT, SDXL_TEXT_1, SDXL_TEXT_2, UNET, VAE

PREFIXES = {
    "sd1": {"unet": UNET, "vae": VAE, "text_encoder": SD1_TEXT},
    "sd2": {"unet": UNET, "vae": VAE, "text_encoder": SD2_TEXT},
    "sdxl": {"unet": UNET, "vae": VAE, "text_encoder": SDXL_TEXT_1, "text_encoder_2": SDXL_TEXT_2},
}
OPENCLIP_COMPONENTS = {("sd2", "text_encoder"), ("sdxl", "text_encoder_2")}


@dataclass(frozen=True)
class Entry:
    """One tensor of the file and the pipeline parameters it holds."""

    original: str  # key in the single file
    parts: tuple[str, ...]  # "component/parameter" keys of the pipeline, e.g. "unet/conv_in.weight"
    op: str = (
        "same"  # same | qkv (q, k, v stacked on dim 0) | transpose | conv1x1 (a Linear weight stored as a 1x1 conv)
    )


# --- U-Net --------------------------------------------------------------------------------------

UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_block_map(config) -> dict[str, str]:
    """diffusers module path -> original module path for a U-Net's blocks and top-level layers.

    The original U-Net is flat: `input_blocks` holds conv_in, then per level `layers_per_block`
    (resnet, attention) pairs and a downsampler (`.op`); `output_blocks` holds per level
    `layers_per_block + 1` pairs, the last with the upsampler after them. Transformer blocks keep
    their inner names in both layouts.
    """
    blocks = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    layers = config.layers_per_block
    levels = len(config.down_block_types)
    index = 1
    for i, kind in enumerate(config.down_block_types):
        for j in range(layers):
            blocks[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{index}.0"
            if "CrossAttn" in kind:
                blocks[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{index}.1"
            index += 1
        if i < levels - 1:
            blocks[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    index = 0
    for i, kind in enumerate(config.up_block_types):
        attention = "CrossAttn" in kind
        for j in range(layers + 1):
            blocks[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{index}.0"
            if attention:
                blocks[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{index}.1"
            if j == layers and i < levels - 1:
                blocks[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{index}.{2 if attention else 1}.conv"
            index += 1
    return blocks


def original_path(
    path: str, blocks: dict[str, str], resnet_names: dict[str, str], attention_names: dict[str, str] | None = None
) -> str:
    """Map a diffusers module or parameter path through `blocks` (longest matching prefix wins).

    Inside a resnet the first name is renamed by `resnet_names`, inside an attention block by
    `attention_names`; anything deeper keeps its name.
    """
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head not in blocks:
            continue
        tail = ".".join(parts[n:])
        renames = (
            resnet_names
            if ".resnets." in f".{head}."
            else (attention_names or {})
            if ".attentions." in f".{head}."
            else {}
        )
        for old, new in renames.items():
            if tail == old or tail.startswith(old + "."):
                tail = new + tail[len(old) :]
                break
        return blocks[head] + ("." + tail if tail else "")
    raise KeyError(path)


def unet_original_path(path: str, config) -> str:
    """`down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k` -> `input_blocks.4.1.transformer_blocks.0.attn2.to_k`."""
    return original_path(path, unet_block_map(config), UNET_RESNET)


# --- VAE ----------------------------------------------------------------------------------------

VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_block_map(config) -> dict[str, str]:
    """diffusers -> original module paths for the VAE; the original numbers decoder levels bottom-up."""
    blocks = {}
    for side in ("encoder", "decoder"):
        blocks |= {f"{side}.{name}": f"{side}.{name}" for name in ("conv_in", "conv_out")}
        blocks[f"{side}.conv_norm_out"] = f"{side}.norm_out"
        blocks[f"{side}.mid_block.resnets.0"] = f"{side}.mid.block_1"
        blocks[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
        blocks[f"{side}.mid_block.resnets.1"] = f"{side}.mid.block_2"
    blocks |= {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    levels, layers = len(config.block_out_channels), config.layers_per_block
    for i in range(levels):
        for j in range(layers):
            blocks[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        for j in range(layers + 1):
            blocks[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{levels - 1 - i}.block.{j}"
        if i < levels - 1:
            blocks[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
            blocks[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{levels - 1 - i}.upsample"
    return blocks


# --- text encoders ------------------------------------------------------------------------------

OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def openclip_entries(keys: list[str], component: str, prefix: str) -> list[Entry]:
    """Entries for a CLIP text model (Hugging Face names) stored in OpenCLIP's layout."""
    entries = []
    for key in keys:
        name = key.removeprefix("text_model.")
        if name in OPENCLIP_TOP:
            entries.append(Entry(prefix + OPENCLIP_TOP[name], (f"{component}/{key}",)))
        elif name == "text_projection.weight":
            entries.append(Entry(prefix + "text_projection", (f"{component}/{key}",), "transpose"))
        elif name.startswith("encoder.layers."):
            layer, rest = name.removeprefix("encoder.layers.").split(".", 1)
            block = f"{prefix}transformer.resblocks.{layer}."
            if rest.startswith("self_attn.q_proj."):
                kind = rest.rsplit(".", 1)[1]  # weight | bias
                base = key[: -len(rest)] + "self_attn."
                parts = tuple(f"{component}/{base}{p}_proj.{kind}" for p in "qkv")
                entries.append(Entry(f"{block}attn.in_proj_{kind}", parts, "qkv"))
            elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                continue  # stored with q
            else:
                for old, new in OPENCLIP_LAYER.items():
                    if rest.startswith(old + "."):
                        entries.append(Entry(block + new + rest[len(old) :], (f"{component}/{key}",)))
                        break
                else:
                    raise KeyError(key)
        else:
            raise KeyError(key)
    return entries


# --- the whole pipeline -------------------------------------------------------------------------


def checkpoint_layout(components: dict[str, nn.Module], family: str) -> list[Entry]:
    """Every tensor of a `family` single file, and the pipeline parameters it holds.

    Args:
        components: `unet`, `vae`, `text_encoder` (and `text_encoder_2` for SDXL), possibly on the
            meta device: only their configs and parameter names are read.
    """
    entries: list[Entry] = []
    for component, prefix in PREFIXES[family].items():
        module = components[component]
        keys = list(module.state_dict().keys())
        if component == "unet":
            blocks = unet_block_map(module.config)
            entries += [Entry(prefix + original_path(k, blocks, UNET_RESNET), (f"unet/{k}",)) for k in keys]
        elif component == "vae":
            blocks = vae_block_map(module.config)
            for k in keys:
                name = original_path(k, blocks, VAE_RESNET, VAE_ATTENTION)
                conv1x1 = ".attn_1." in name and name.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight"))
                entries.append(Entry(prefix + name, (f"vae/{k}",), "conv1x1" if conv1x1 else "same"))
        elif (family, component) in OPENCLIP_COMPONENTS:
            entries += openclip_entries(keys, component, prefix)
        else:  # OpenAI CLIP keeps Hugging Face's names under `text_model.`
            entries += [
                Entry(prefix + "text_model." + k.removeprefix("text_model."), (f"{component}/{k}",)) for k in keys
            ]
    return entries


def to_original(entry: Entry, tensors: list[torch.Tensor]) -> torch.Tensor:
    """The file's tensor for `entry`, from the pipeline's tensors for its parts."""
    if entry.op == "qkv":
        return torch.cat(tensors, dim=0)
    (tensor,) = tensors
    if entry.op == "transpose":
        return tensor.T
    if entry.op == "conv1x1":
        return tensor.reshape(*tensor.shape, 1, 1)
    return tensor


def original_shape(entry: Entry, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape `to_original` gives for parts of `shapes`, without computing it."""
    if entry.op == "qkv":
        return (sum(s[0] for s in shapes), *shapes[0][1:])
    if entry.op == "transpose":
        return tuple(reversed(shapes[0]))
    if entry.op == "conv1x1":
        return (*shapes[0], 1, 1)
    return tuple(shapes[0])


def from_original(entry: Entry, tensor: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """The pipeline's tensors for `entry`'s parts (of `shapes`), from the file's tensor.

    Raises ValueError if the file's tensor has the wrong shape. A Linear weight stored as a 1x1
    conv, or the other way round, is accepted: converters disagree there.
    """
    expected = original_shape(entry, shapes)
    if tuple(tensor.shape) != expected and squeeze_1x1(tensor.shape) != squeeze_1x1(expected):
        raise ValueError(f"has shape {tuple(tensor.shape)}, the model needs {expected}")
    if entry.op == "qkv":
        return [t.reshape(s) for t, s in zip(tensor.chunk(3, dim=0), shapes)]
    if entry.op == "transpose":
        tensor = tensor.T
    return [tensor.reshape(shapes[0])]


def squeeze_1x1(shape) -> tuple[int, ...]:
    return tuple(shape[:2]) if len(shape) == 4 and tuple(shape[2:]) == (1, 1) else tuple(shape)
