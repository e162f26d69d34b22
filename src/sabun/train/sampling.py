"""Sample grids during training: the model being trained next to the plain model with the new LoRA.

With a stepping-stone, what the training model draws (stepping-stone merged + new LoRA) is not
what users will get: they apply the new LoRA alone to the plain model. sd-scripts only shows the
first, so a LoRA that works looks broken. Each grid row is one (prompt, seed); the columns are
- `train x1`: the training model (only when there is a stepping-stone: otherwise it is `plain x1`);
- `plain xM`: the plain model with the new LoRA at each multiplier M of `sampling.multipliers`.
"""

from __future__ import annotations

import contextlib
import math

import torch
from PIL import Image, ImageDraw, ImageFont

from sabun.lora.network import LoRANetwork
from sabun.train.model import PlainWeights, TextEncoders

LABEL_HEIGHT = 14
MIN_CELL_WIDTH = 80  # pixels: room for a column label under the default font


@contextlib.contextmanager
def lora_multiplier(network: LoRANetwork, value: float):
    before = network.multiplier
    network.multiplier = value
    try:
        yield
    finally:
        network.multiplier = before


@torch.no_grad()
def generate(
    pipe, prompt: str, negative: str, seed: int, config, width: int, height: int, text: TextEncoders
) -> Image.Image:
    """One image through the pipeline, with prompts encoded the way training encodes them (clip skip)."""
    embeds, pooled = text([prompt])
    negative_embeds, negative_pooled = text([negative])
    sdxl = {} if pooled is None else {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative_embeds,
        width=width,
        height=height,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance_scale,
        generator=generator,
        output_type="pil",
        **sdxl,
    ).images[0]


def sample_grid(
    pipe, network: LoRANetwork, plain: PlainWeights, config, width: int, height: int, text: TextEncoders
) -> Image.Image:
    """The grid for the current LoRA (`config` is a `SamplingConfig`; `text` encodes the prompts)."""
    columns: list[tuple[str, contextlib.AbstractContextManager, float]] = []
    if plain:
        columns.append(("train x1", contextlib.nullcontext(), 1.0))
    for m in config.multipliers:
        columns.append((f"plain x{m:g}", plain.swapped() if plain else contextlib.nullcontext(), m))
    rows = [(prompt, seed) for prompt in config.prompts for seed in config.seeds]
    cells: dict[tuple[int, int], Image.Image] = {}
    for c, (_, model, multiplier) in enumerate(columns):
        with model, lora_multiplier(network, multiplier):
            for r, (prompt, seed) in enumerate(rows):
                cells[(r, c)] = generate(pipe, prompt, config.negative_prompt, seed, config, width, height, text)
    return assemble_grid(cells, [label for label, _, _ in columns], len(rows), width, height)


def assemble_grid(
    cells: dict[tuple[int, int], Image.Image], labels: list[str], rows: int, width: int, height: int
) -> Image.Image:
    """Paste (row, column) cells under a row of column labels; small cells are enlarged to fit the labels."""
    scale = max(1, math.ceil(MIN_CELL_WIDTH / width))
    w, h = width * scale, height * scale
    grid = Image.new("RGB", (w * len(labels), LABEL_HEIGHT + h * rows), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for c, label in enumerate(labels):
        draw.text((c * w + 2, 1), label, fill="black", font=font)
    for (r, c), image in cells.items():
        grid.paste(image.resize((w, h), Image.Resampling.NEAREST), (c * w, LABEL_HEIGHT + r * h))
    return grid
