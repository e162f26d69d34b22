"""What a character LoRA learned, by noise level: the denoising loss on its own training images,
at fixed timesteps and fixed noise, on the plain model and with each LoRA at weight 1.

A LoRA that lowers the loss at small timesteps (detail) but hardly at large ones (layout, overall
colour) reproduces textures but not the composition of its images.

    python benchmarks/diagnose_lora_loss.py runs/demo/target/data/character \\
        runs/demo/target/loras/no_plan/no_plan.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TIMESTEPS = (50, 200, 400, 600, 800, 950)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the LoRA's training folder (images with .txt captions)")
    parser.add_argument("loras", nargs="+", help="LoRA files")
    parser.add_argument("--model", default="toy")
    args = parser.parse_args()

    from sabun.generate import applied
    from sabun.models.load import load_pipeline

    pipe = load_pipeline(args.model)
    paths = sorted(args.data.glob("*.png"))
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    pixels = torch.stack(
        [
            torch.from_numpy(
                np.asarray(Image.open(p).convert("RGB").resize((size, size)), dtype=np.float32) / 127.5 - 1
            ).permute(2, 0, 1)
            for p in paths
        ]
    )
    captions = [p.with_suffix(".txt").read_text().strip() for p in paths]
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer(
            captions,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        context = pipe.text_encoder(ids)[0]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))

    def losses() -> list[float]:
        out = []
        with torch.no_grad():
            for t in TIMESTEPS:
                steps = torch.full((len(latents),), t)
                prediction = pipe.unet(pipe.scheduler.add_noise(latents, noise, steps), steps, context).sample
                out.append(float(((prediction - noise) ** 2).mean()))
        return out

    print(f"{len(paths)} images; denoising loss (epsilon MSE) at timesteps {', '.join(map(str, TIMESTEPS))}")
    plain = losses()
    print(f"{'plain model':28s}" + "".join(f"{v:9.4f}" for v in plain))
    for lora in args.loras:
        with applied(pipe, [(lora, 1.0)]):
            values = losses()
        print(f"{Path(lora).stem[:28]:28s}" + "".join(f"{v:9.4f}" for v in values))
        print(f"{'  (fraction of plain)':28s}" + "".join(f"{v / p:9.2f}" for v, p in zip(values, plain)))


if __name__ == "__main__":
    main()
