"""Images -> VAE latents, computed on the fly or once up front (in memory or on disk).

Latents are the mean of the VAE's posterior, not a sample from it: the encoding is then a pure
function of the image, so a cached and an uncached run train on the same numbers and the cache
needs no random state. (SD's VAE posterior is narrow; sampling it adds almost nothing.)
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from sabun.data.dataset import TrainImage
from sabun.data.images import open_rgb, resize_to_bucket, to_tensor
from sabun.io import load_tensors, save_tensors


def load_pixels(image: TrainImage, flipped: bool) -> torch.Tensor:
    """(3, H, W) in [-1, 1]: the image composited onto white, fitted to its bucket, maybe mirrored."""
    picture = resize_to_bucket(open_rgb(image.path), image.bucket)
    if flipped:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(picture)


@torch.no_grad()
def encode_pixels(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels -> (B, C, H/f, W/f) latents scaled for the U-Net.

    Images are encoded one at a time: convolution results depend (in the last bits) on the batch
    they are computed in, and a latent should not depend on which images share its batch, so
    that cached, uncached and multi-process runs train on identical numbers.
    """
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = [vae.encode(image[None].to(vae.device, vae.dtype)).latent_dist.mean for image in pixels]
    return ((torch.cat(latents) - shift) * vae.config.scaling_factor).float()


def vae_fingerprint(vae) -> str:
    """A short hash identifying the VAE's weights (from a few of its tensors), for disk-cache keys."""
    h = hashlib.sha256(repr(sorted(vae.config.items())).encode())
    for name in ("encoder.conv_in.weight", "encoder.conv_out.weight", "quant_conv.weight"):
        tensor = dict(vae.named_parameters()).get(name)
        if tensor is not None:
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class LatentCache:
    """Latents of each (image, flipped) pair the trainer can ask for.

    Args:
        images: all images (training and validation).
        flips: per image, whether its mirrored latent is needed too.
        directory: for the disk cache; None keeps everything in memory.
    """

    def __init__(self, images: Sequence[TrainImage], flips: Sequence[bool], directory: Path | None = None):
        self.images, self.flips, self.directory = list(images), list(flips), directory
        self.latents: dict[tuple[int, bool], torch.Tensor] = {}

    def key(self, index: int, fingerprint: str) -> str:
        image = self.images[index]
        stat = os.stat(image.path)
        text = f"{Path(image.path).resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{image.bucket}|{fingerprint}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def fill(self, vae, write: bool = True, batch_size: int = 8, progress: Callable | None = None) -> None:
        """Encode every needed latent (reading disk-cache hits instead); `write` new disk entries.

        With several processes, the main process fills the disk cache (write=True) first and the
        others then read it (write=False finds every entry present).
        """
        fingerprint = vae_fingerprint(vae) if self.directory is not None else ""
        todo: dict[tuple[int, int], list[int]] = defaultdict(list)  # bucket -> image indices to encode
        for index in range(len(self.images)):
            if self.directory is not None:
                path = self.directory / f"{self.key(index, fingerprint)}.safetensors"
                if path.exists():
                    tensors, _ = load_tensors(path)
                    self.latents[(index, False)] = tensors["latent"]
                    if self.flips[index]:
                        self.latents[(index, True)] = tensors["latent_flipped"]
                    continue
            todo[self.images[index].bucket].append(index)
        done = 0
        for bucket in sorted(todo):
            indices = todo[bucket]
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                pairs = [(i, False) for i in chunk] + [(i, True) for i in chunk if self.flips[i]]
                latents = encode_pixels(vae, torch.stack([load_pixels(self.images[i], f) for i, f in pairs]))
                for pair, latent in zip(pairs, latents):
                    self.latents[pair] = latent.cpu()
                if self.directory is not None and write:
                    for i in chunk:
                        tensors = {"latent": self.latents[(i, False)]}
                        if self.flips[i]:
                            tensors["latent_flipped"] = self.latents[(i, True)]
                        save_tensors(
                            tensors, self.directory / f"{self.key(i, fingerprint)}.safetensors", overwrite=True
                        )
                done += len(chunk)
                if progress is not None:
                    progress(done)

    def get(self, indices: Sequence[int], flipped: Sequence[bool]) -> torch.Tensor:
        """(B, C, h, w) latents of a batch (all from one bucket)."""
        return torch.stack([self.latents[(i, bool(f))] for i, f in zip(indices, flipped)])
