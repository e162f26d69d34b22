"""Text-to-image with LoRAs applied at chosen weights, batched, deterministic per seed.

    sabun generate --model toy --prompt "1girl, blonde hair, twintails" --lora char.safetensors:1 --out a.png

LoRAs are applied with forward hooks (the model's weights are never touched), so a grid over
weights is one model and a multiplier change per column. Each image's noise comes from its own
seed, so an image does not depend on what else is in the batch.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sabun.errors import SabunError
from sabun.io import atomic_output, check_writable
from sabun.lora.file import load_lora
from sabun.lora.network import LoRANetwork
from sabun.lora.targets import pipeline_targets
from sabun.models.load import load_pipeline

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


@dataclass(frozen=True)
class Sampler:
    steps: int = 25
    guidance: float = 5.0
    negative: str = ""
    batch: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise SabunError(f"--steps {self.steps}: give 1 to 1000 sampling steps (20-30 is usual)")
        if not (math.isfinite(self.guidance) and 0 <= self.guidance <= 100):
            raise SabunError(f"--guidance {self.guidance}: give a finite guidance scale from 0 to 100 (5-8 is usual)")
        if self.batch < 1:
            raise SabunError(f"batch {self.batch}: must be at least 1")


@contextlib.contextmanager
def applied(
    pipe, loras: Sequence[tuple[str | os.PathLike, float]], allow_pickle: bool = False
) -> Iterator[list[LoRANetwork]]:
    """Attach each (LoRA file, multiplier) to `pipe` for the duration of the block."""
    targets = pipeline_targets(pipe, conv=True)
    networks = []
    try:
        for path, multiplier in loras:
            network = LoRANetwork.from_lora(load_lora(path, allow_pickle=allow_pickle), targets, source=str(path))
            network.multiplier = multiplier
            networks.append(network.attach())
        yield networks
    finally:
        for network in networks:
            network.detach()


def _latents(pipe, seeds: Sequence[int], size: int) -> torch.Tensor:
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = (pipe.unet.config.in_channels, size // factor, size // factor)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def generate_images(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampler: Sampler = Sampler(),
    size: int | None = None,
    progress=None,
) -> np.ndarray:
    """Images (N, size, size, 3) uint8 for prompts[i] with seeds[i]."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    size = size or pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    out = []
    for start in range(0, len(prompts), sampler.batch):
        batch_prompts = list(prompts[start : start + sampler.batch])
        batch_seeds = seeds[start : start + sampler.batch]
        result = pipe(
            prompt=batch_prompts,
            negative_prompt=[sampler.negative] * len(batch_prompts),
            height=size,
            width=size,
            num_inference_steps=sampler.steps,
            guidance_scale=sampler.guidance,
            latents=_latents(pipe, batch_seeds, size),
            output_type="np",
        ).images
        out.append((np.clip(result, 0, 1) * 255).round().astype(np.uint8))
        if progress is not None:
            progress(len(batch_prompts))
    return np.concatenate(out)


def grid_image(
    cells: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str], scale: int = 2
) -> Image.Image:
    """(rows, columns, H, W, 3) uint8 -> one image with labels above columns and left of rows."""
    rows, columns, h, w, _ = cells.shape
    font = ImageFont.load_default()
    label_w = 0 if not any(row_labels) else min(320, 6 * max(len(s) for s in row_labels) + 8)
    top = 14
    sheet = Image.new("RGB", (label_w + columns * w * scale, top + rows * h * scale), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels):
        draw.text((label_w + c * w * scale + 2, 1), label, fill="black", font=font)
    for r in range(rows):
        if row_labels[r]:
            draw.text((2, top + r * h * scale + 2), row_labels[r][:52], fill="black", font=font)
        for c in range(columns):
            tile = Image.fromarray(cells[r, c]).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            sheet.paste(tile, (label_w + c * w * scale, top + r * h * scale))
    return sheet


def generate_command(
    model: str,
    prompts: Sequence[str],
    out: str | os.PathLike,
    loras: Sequence[tuple[str, float]] = (),
    grid_weights: Sequence[float] | None = None,
    count: int = 1,
    seed: int = 0,
    sampler: Sampler = Sampler(),
    overwrite: bool = False,
    allow_pickle: bool = False,
    progress=None,
) -> Path:
    """`sabun generate`: one image, or a grid (rows: prompt x seed; columns: LoRA weights)."""
    out = Path(out)
    if out.suffix.lower() not in IMAGE_FORMATS:
        raise SabunError(f"{out}: name the output image .png (or .jpg / .webp)")
    if not prompts:
        raise SabunError("no prompt given; pass --prompt TEXT (repeatable)")
    if count < 1:
        raise SabunError("--count must be at least 1")
    if not 0 <= seed <= 2**63 - 1 - count:
        raise SabunError(f"--seed {seed}: give a seed from 0 to 2**63 - 1")
    if grid_weights is not None and not list(grid_weights):
        raise SabunError("--grid-weights is empty; give multipliers separated by commas, e.g. 0,0.5,1")
    check_writable(out, overwrite)
    if grid_weights and not loras:
        raise SabunError("--grid-weights scales the LoRAs, but no --lora is given")
    pipe = load_pipeline(model, allow_pickle=allow_pickle)
    rows = [(p, seed + i) for p in prompts for i in range(count)]
    weights = list(grid_weights) if grid_weights else [None]
    cells = []
    with applied(pipe, [(path, m) for path, m in loras], allow_pickle) as networks:
        for weight in weights:
            if weight is not None:
                for network, (_, m) in zip(networks, loras):
                    network.multiplier = weight * m
            cells.append(generate_images(pipe, [p for p, _ in rows], [s for _, s in rows], sampler, progress=progress))
    if len(rows) == 1 and len(weights) == 1:
        image = Image.fromarray(cells[0][0])
    else:
        array = np.stack(cells, axis=1)  # (rows, columns, H, W, 3)
        column_labels = [f"x{w:g}" if w is not None else "" for w in weights]
        image = grid_image(array, [f"{p} (seed {s})" for p, s in rows], column_labels)
    with atomic_output(out, overwrite=overwrite) as tmp:
        image.save(tmp, format=IMAGE_FORMATS[out.suffix.lower()])
    return out
