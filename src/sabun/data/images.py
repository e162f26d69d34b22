"""Reading training images: every problem found up front, transparency filled with white.

The method trains on renders whose transparent backgrounds stand for "white background", so RGBA
(and palette images with a transparent colour) are composited onto white rather than having their
alpha dropped, which would leave whatever colour the transparent pixels happen to hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class ImageProblem:
    """Why an image cannot be trained on."""

    path: Path
    reason: str  # "unreadable (...)", "empty (0 bytes)", "too small (WxH, shorter side < N)"

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image fully decoded, as RGB, with any transparency composited onto white."""
    with Image.open(path) as image:
        image.load()
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA"):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")


def inspect_image(path: Path, min_size: int) -> tuple[tuple[int, int] | None, ImageProblem | None]:
    """(width, height) of a usable image, or the problem that makes it unusable.

    The image is decoded completely, so a truncated file is caught here rather than mid-training.
    """
    try:
        if path.stat().st_size == 0:
            return None, ImageProblem(path, "empty (0 bytes)")
        with Image.open(path) as image:
            image.load()
            size = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        return None, ImageProblem(path, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})")
    if min(size) < min_size:
        return None, ImageProblem(path, f"too small ({size[0]}x{size[1]}, shorter side < {min_size} px)")
    return size, None


def resize_to_bucket(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale `image` to cover `size` (width, height), keeping its aspect ratio, and centre-crop."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if scaled != image.size:
        image = image.resize(scaled, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (3, H, W) float tensor in [-1, 1], the VAE's input range."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
