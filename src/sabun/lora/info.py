"""What a LoRA holds: layers, ranks and alphas per block, weight-change norms."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sabun.lora.weights import LoRA

BLOCK = re.compile(
    r"^lora_(unet)_(down_blocks_\d+|mid_block|up_blocks_\d+|input_blocks_\d+|middle_block|output_blocks_\d+)"
    r"|^lora_(te\d?)_text_model_encoder_layers_(\d+)"
)


def block_of(name: str) -> str:
    """A readable block label for a kohya key: `unet down_blocks_0`, `te layer 3`, ..."""
    m = BLOCK.match(name)
    if m is None:
        return name.split("_")[1] + " other"
    if m.group(1):
        return f"unet {m.group(2)}"
    return f"{m.group(3)} layer {m.group(4)}"


@dataclass
class BlockSummary:
    """The layers of one block."""

    block: str
    layers: int = 0
    ranks: set[int] = field(default_factory=set)
    alphas: set[float] = field(default_factory=set)
    delta_norm: float = 0.0  # ||dW||_F over the block's layers at multiplier 1


def summarize(lora: LoRA) -> list[BlockSummary]:
    """Per-block counts, ranks, alphas and weight-change norms, in file order."""
    blocks: dict[str, BlockSummary] = {}
    for name, weight in lora.weights.items():
        block = blocks.setdefault(block_of(name), BlockSummary(block_of(name)))
        block.layers += 1
        block.ranks.add(weight.rank)
        block.alphas.add(weight.alpha)
        norm = float(weight.delta().double().norm())
        block.delta_norm = (block.delta_norm**2 + norm**2) ** 0.5
    return list(blocks.values())
