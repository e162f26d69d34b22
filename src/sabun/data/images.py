"""Reading training images: every problem found up front, every image decoded to 8-bit RGB.

The method trains on renders whose transparent backgrounds stand for "white background", so RGBA
(and palette, greyscale or RGB images with a transparent colour) are composited onto white rather
than having their alpha dropped, which would leave whatever colour the transparent pixels happen
to hold. 16-bit and 32-bit greyscale (PIL modes `I;16`, `I`) are scaled from 0..65535 to 0..255,
and floating-point greyscale (`F`, from TIFF) from 0..1 (or 0..255 when its values go above 1),
instead of being clipped to white. A file holding several frames (an animated GIF, PNG or WebP, a
multi-page TIFF) is an error: which frame, or all of them, is the user's choice to make.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, features

from sabun.errors import SabunError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff") + (
    (".avif",) if features.check("avif") else ()
)
# Image types users keep in data folders that are not read: each is named in a warning, never skipped silently.
UNREAD_IMAGE_SUFFIXES = tuple(
    s
    for s in (
        ".avif",
        ".heic",
        ".heif",
        ".jxl",
        ".psd",
        ".xcf",
        ".kra",
        ".svg",
        ".ico",
        ".tga",
        ".exr",
        ".hdr",
        ".dds",
        ".jp2",
        ".dng",
        ".raw",
        ".cr2",
        ".nef",
        ".arw",
    )
    if s not in IMAGE_SUFFIXES
)


@dataclass(frozen=True)
class ImageProblem:
    """Why an image (or its caption file) cannot be trained on."""

    path: Path
    reason: str  # "unreadable (...)", "empty (0 bytes)", "too small (WxH, shorter side < N)", "animated (...)", ...
    caption: bool = False  # the problem is the image's caption file (`path`), not the image

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class _Unusable(Exception):
    """A decoded image that cannot be turned into a training image; the message is the reason."""


def _on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _grey_to_rgb(grey: np.ndarray, transparent: np.ndarray | None) -> Image.Image:
    """8-bit greyscale values (H, W), with an optional mask of transparent pixels, as RGB on white."""
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    if transparent is None or not transparent.any():
        return Image.fromarray(grey, "L").convert("RGB")
    alpha = np.where(transparent, 0, 255).astype(np.uint8)
    return _on_white(Image.fromarray(np.stack([grey, grey, grey, alpha], axis=-1), "RGBA"))


def to_rgb(image: Image.Image) -> Image.Image:
    """A loaded PIL image (first frame) as 8-bit RGB, transparency composited onto white.

    Raises `_Unusable` (its message the reason) for pixels that have no meaningful 8-bit reading.
    """
    mode, key = image.mode, image.info.get("transparency")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise _Unusable(
                f"32-bit integer pixels outside 0..65535 (range {values.min()}..{values.max()}); save it as an 8- or 16-bit PNG"
            )
        grey = (values * 255 + 32767) // 65535  # 16-bit -> 8-bit, rounded (v / 257)
        transparent = values == key if isinstance(key, int) else None
        return _grey_to_rgb(grey, transparent)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise _Unusable("floating-point pixels that are NaN or infinite; save it as an 8- or 16-bit PNG")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low < 0 or high > 255:
            raise _Unusable(
                f"floating-point pixels outside 0..1 and 0..255 (range {low:g}..{high:g}); save it as an 8- or 16-bit PNG"
            )
        scale = 255.0 if high <= 1.0 else 1.0  # float images hold 0..1 by convention; PIL's own F images 0..255
        return _grey_to_rgb(np.clip(np.rint(values * scale), 0, 255), None)
    if mode in ("La", "RGBa"):  # premultiplied alpha
        image, mode = image.convert(mode.upper()), mode.upper()
    if mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB") and key is not None):
        return _on_white(image.convert("RGBA"))
    try:
        return image.convert("RGB")  # RGB, L, 1, P, CMYK, YCbCr, LAB, HSV
    except ValueError as e:
        raise _Unusable(f"colour mode {mode} cannot be converted to RGB ({e}); save it as an RGB PNG") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _decode(path: Path) -> tuple[Image.Image | None, str | None]:
    """(the image as RGB, None), or (None, the reason it cannot be used)."""
    try:
        if path.stat().st_size == 0:
            return None, "empty (0 bytes); remove it or export it again"
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                return None, (
                    f"animated or multi-page ({frames} frames), so which frame to train on is unclear; "
                    f"extract the frames as PNG files (e.g. ffmpeg -i {path.name} {path.stem}_%03d.png) and remove it"
                )
            image.load()
            if image.width < 1 or image.height < 1:
                return None, f"empty ({image.width}x{image.height} pixels); remove it or export it again"
            try:
                return to_rgb(image), None
            except _Unusable as e:
                return None, str(e)
    except Image.DecompressionBombError as e:
        return None, f"too large to decode safely ({_first_line(e)}); scale it down"
    except OSError as e:
        if e.errno is None:  # PIL's own OSErrors ("image file is truncated") carry no errno
            return (
                None,
                f"unreadable ({_first_line(e)}); it is corrupt, truncated or not an image: export it again or remove it",
            )
        return None, f"unreadable ({e.strerror or _first_line(e)}); check that the file can be read (its permissions)"
    except MemoryError:
        return None, "unreadable (too large for memory); scale it down or export it again"
    except Exception as e:  # noqa: BLE001 - PIL reports corrupt files as OSError, SyntaxError, struct.error, EOFError, ValueError, ...
        return (
            None,
            f"unreadable ({_first_line(e)}); it is corrupt, truncated or not an image: export it again or remove it",
        )


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image fully decoded, as 8-bit RGB, with any transparency composited onto white.

    Raises a SabunError naming the file when it cannot be used (see `inspect_image`).
    """
    image, reason = _decode(Path(path))
    if image is None:
        raise SabunError(f"{path}: {reason}")
    return image


def inspect_image(path: Path, min_size: int) -> tuple[tuple[int, int] | None, ImageProblem | None]:
    """(width, height) of a usable image, or the problem that makes it unusable.

    The image is decoded and converted completely, exactly as for training, so a truncated file (or
    one with pixels that cannot be read as 8-bit RGB) is caught here rather than mid-training.
    """
    image, reason = _decode(path)
    if image is None:
        return None, ImageProblem(path, reason)
    size = image.size
    if min(size) < min_size:
        return None, ImageProblem(
            path,
            f"too small ({size[0]}x{size[1]}, shorter side < {min_size} px); use a larger image or lower data.min_image_size",
        )
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
