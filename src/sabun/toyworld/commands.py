"""The toy world's two commands as library functions: render a data set, rewrite its captions.

`sabun render toy` and `sabun caption` only parse their options and call `render_toy` and
`caption_folder`.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sabun import __version__
from sabun.errors import SabunError, os_error_message
from sabun.io import check_writable, remove_stale_temporaries, umask
from sabun.toyworld.captions import full_caption
from sabun.toyworld.character import TARGET_PRESET, CharacterSpec, load_character, random_character
from sabun.toyworld.geometry import POSES
from sabun.toyworld.render import BACKGROUNDS, STYLES, VIEWS, ZOOMS, Shot, render

METADATA_FORMAT = "sabun.toyworld/1"


def expand_choices(values: list[str], valid: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Option values as given on the command line: repeated and/or comma separated, `all` for all.

    Raises a SabunError listing the valid values for an unknown one.
    """
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if "all" in items:
        return valid
    for item in items:
        if item not in valid:
            raise SabunError(f"--{what} {item!r} is not valid; choose from: {', '.join(valid)} (or all)")
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class RenderToyConfig:
    """What `sabun render toy` renders."""

    out: Path  # output folder: NAME.png, NAME.json (metadata), NAME.txt (full caption)
    style: str = "anime"  # anime or 3d
    character: str | None = None
    """A preset (target, red_long, green_medium, blue_short, white_ponytail, black_twintails) or a character .toml."""
    random: bool = False  # a new random character per image (never with the signature ribbon); needs --count
    exclude: tuple[str, ...] | None = None
    """With --random: never draw this character's look (hair colour, hairstyle, eyes). Default: target."""
    count: int | None = None  # number of images, shots drawn from the lists below; default: every combination once
    views: tuple[str, ...] = ("front", "behind")
    """Front, side, behind or all; repeat or comma-separate. Default: front,behind."""
    zooms: tuple[str, ...] = ZOOMS  # portrait, upper-body, cowboy-shot, full-body or all. Default: all
    poses: tuple[str, ...] = ("arms-at-sides",)
    """Arms-at-sides, arms-up, hands-on-hips, arms-behind-back or all. Default: arms-at-sides."""
    backgrounds: tuple[str, ...] = ("white",)
    """White, grey, blue, pink, yellow, green, outdoor, indoor or all. Default: white."""
    seed: int = 0  # seed: the same options always write the same files
    size: int = 64
    """Image side in pixels."""
    overwrite: bool = False  # replace existing files

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise SabunError(f"--style {self.style!r} is not valid; choose one of: {', '.join(STYLES)}")
        if self.random == (self.character is not None):
            raise SabunError("give either --character PRESET|SPEC.toml or --random, not both or neither")
        if self.random and self.count is None:
            raise SabunError("--random needs --count N: how many random characters to render")
        if self.exclude is not None and not self.random:
            raise SabunError("--exclude only applies to --random characters; drop it or add --random --count N")
        if self.count is not None and self.count < 1:
            raise SabunError(f"--count {self.count} must be at least 1")
        if not 16 <= self.size <= 1024:
            raise SabunError(f"--size {self.size} is out of range; use 16 to 1024 pixels")
        for what, values, valid in (
            ("views", self.views, VIEWS),
            ("zooms", self.zooms, ZOOMS),
            ("poses", self.poses, POSES),
            ("backgrounds", self.backgrounds, BACKGROUNDS),
        ):
            unknown = [v for v in values if v not in valid]
            if not values or unknown:
                raise SabunError(
                    f"--{what} {', '.join(unknown) or '(empty)'} is not valid; choose from: {', '.join(valid)}"
                )


def _jobs(config: RenderToyConfig) -> list[tuple[str, CharacterSpec, Shot, int]]:
    """(file name, character, shot, image seed) of every image, in order.

    Image i draws from its own generator seeded by (seed, i), so an image does not depend on how
    many others are rendered.
    """
    fixed = None if config.random else load_character(config.character)
    excluded = tuple(load_character(e) for e in (config.exclude or (TARGET_PRESET,))) if config.random else ()
    prefix = "random" if config.random else fixed.name
    lists = (config.views, config.zooms, config.poses, config.backgrounds)
    every = [Shot(*combo) for combo in itertools.product(*lists)] if config.count is None else None
    jobs = []
    for i in range(len(every) if every is not None else config.count):
        rng = np.random.default_rng([config.seed, i])
        shot = every[i] if every is not None else Shot(*(str(rng.choice(choices)) for choices in lists))
        spec = random_character(rng, name=f"random-{i:05d}", exclude=excluded) if config.random else fixed
        jobs.append((f"{prefix}_{config.style}_{i:05d}", spec, shot, int(rng.integers(2**31))))
    return jobs


def metadata(name: str, spec: CharacterSpec, shot: Shot, style: str, size: int, seed: int) -> dict:
    """The `.json` written next to an image: every attribute needed to caption or re-render it."""
    return {
        "format": METADATA_FORMAT,
        "name": name,
        "character": spec.to_dict(),
        "style": style,
        "view": shot.view,
        "zoom": shot.zoom,
        "pose": shot.pose,
        "background": shot.background,
        "size": size,
        "seed": seed,
        "sabun_version": __version__,
    }


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` (itself included) that does not exist yet, or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def render_toy(config: RenderToyConfig) -> list[Path]:
    """Render the images of `config` into `config.out`; returns the PNG paths.

    Every target file is checked before anything is drawn, so a refused overwrite leaves the
    folder untouched. The images are written into a temporary folder beside `out` and moved into
    place only when all are written, so a failed render (a full disk, Ctrl-C) leaves nothing new:
    no partial set, no new folder. The moves are renames on one file system.
    """
    out = config.out
    jobs = list(_jobs(config))
    check_writable(out, overwrite=True, directory=True)  # a file where the folder should be
    above = next((folder for folder in out.parents if folder.exists()), None)
    if above is not None and not above.is_dir():
        raise SabunError(f"{above}: is a file, and {out} is to be a folder in it; choose another output folder")
    for name, *_ in jobs:
        for suffix in (".png", ".json", ".txt"):
            check_writable(out / f"{name}{suffix}", config.overwrite, directory=False)
    created = _first_missing(out.parent)  # folders above `out` made for it, removed again on failure
    work = None
    written, current = [], out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        os.chmod(work, 0o777 & ~umask())  # the folder itself may become `out`
        for name, spec, shot, seed in jobs:
            pixels = render(spec, shot, config.style, size=config.size, seed=seed)
            meta = metadata(name, spec, shot, config.style, config.size, seed)
            for suffix, data in (
                (".png", _png_bytes(pixels)),
                (".json", (json.dumps(meta, indent=2) + "\n").encode()),
                (".txt", (full_caption(meta) + "\n").encode()),
            ):
                current = out / f"{name}{suffix}"
                (work / current.name).write_bytes(data)
            written.append(out / f"{name}.png")
        if not out.exists():
            current = out
            work.rename(out)  # the whole set appears at once
        else:
            for name, *_ in jobs:
                for suffix in (".png", ".json", ".txt"):
                    current = out / f"{name}{suffix}"
                    os.replace(work / current.name, current)
    except OSError as e:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise SabunError(os_error_message(OSError(e.errno, e.strerror or str(e)), current)) from None
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        if work is not None and work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return written
