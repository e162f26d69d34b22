"""The evaluation protocol's metrics on the toy world, read by the toy evaluator.

For a model with LoRAs applied (or none: the plain model's own figures), from fixed prompts and seeds:
- **3D leakage**: mean P(3d style) over every generated image;
- **identity** on the bare prompt `1girl`: hair-colour error (median CIEDE2000 against the target's
  hair colour), how often the target's hairstyle, hair-colour name and ribbon are read;
- **flexibility**: how often a prompted background or pose is obeyed;
- **weight-change norms**: ||dW||_F of a LoRA per part (U-Net, text encoders), at weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sabun.evaluate.toy_evaluator import ToyEvaluator
from sabun.generate import Sampler, generate_images
from sabun.toyworld.captions import BACKGROUND_TAGS, POSE_TAGS
from sabun.toyworld.character import CharacterSpec

# Prompted backgrounds and poses for flexibility (none of them the renders' white / arms at sides).
BACKGROUNDS = ("outdoor", "indoor", "blue", "pink")
POSES = ("arms-up", "hands-on-hips")


@dataclass(frozen=True)
class Protocol:
    seeds: int = 16  # images per prompt
    sampler: Sampler = Sampler(steps=20, guidance=5.0, batch=32)

    def prompts(self) -> list[tuple[str, str, str]]:
        """(group, expected value, prompt) for every prompt of the protocol."""
        out = [("bare", "", "1girl")]
        out += [("background", b, f"1girl, {', '.join(BACKGROUND_TAGS[b])}") for b in BACKGROUNDS]
        out += [("pose", p, f"1girl, cowboy shot, {POSE_TAGS[p]}") for p in POSES]
        return out


def measure(pipe, evaluator: ToyEvaluator, target: CharacterSpec, protocol: Protocol = Protocol(), images: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """The metrics for `pipe` as it is now (LoRAs attached at their multipliers), and the images
    (prompts x seeds, in `protocol.prompts()` order). Given `images` (as returned before, for the
    same protocol), they are scored against `target` without generating again."""
    prompts = protocol.prompts()
    rows = [(group, expected, prompt, 1000 + s) for group, expected, prompt in prompts for s in range(protocol.seeds)]
    if images is None:
        images = generate_images(pipe, [r[2] for r in rows], [r[3] for r in rows], protocol.sampler)
    else:
        images = images.reshape(len(rows), *images.shape[2:])
    read = evaluator.predict(images)
    groups = np.array([r[0] for r in rows])
    bare = groups == "bare"
    hairstyles, backgrounds, poses = read.label("hairstyle"), read.label("background"), read.label("pose")
    ribbons = read.label("ribbon")
    names = read.hair_colour_name
    out = {
        "3d_leakage": float(read.p_3d.mean()),
        "hair_ciede2000": float(np.median(read.hair_colour_error(target.hair_colour)[bare])),
        "hairstyle": float(np.mean([hairstyles[i] == target.hairstyle for i in np.flatnonzero(bare)])),
        "hair_colour_name": float(np.mean([names[i] == target.hair_colour_name for i in np.flatnonzero(bare)])),
        "ribbon": float(np.mean([ribbons[i] == "yes" for i in np.flatnonzero(bare)])),
    }
    for group, read_labels in (("background", backgrounds), ("pose", poses)):
        hits = [read_labels[i] == rows[i][1] for i in np.flatnonzero(groups == group)]
        out[f"{group}_obeyed"] = float(np.mean(hits))
    out["images"] = len(rows)
    return out, images.reshape(len(prompts), protocol.seeds, *images.shape[1:])


def weight_change_norms(path: Path) -> dict[str, float]:
    """||dW||_F of the LoRA at weight 1, for the U-Net and each text encoder."""
    from sabun.lora.file import load_lora
    from sabun.lora.info import summarize

    parts: dict[str, float] = {}
    for block in summarize(load_lora(path)):
        part = block.block.split(" ")[0]
        parts[part] = (parts.get(part, 0.0) ** 2 + block.delta_norm**2) ** 0.5
    return parts
