"""The toy world at a glance: one PNG grid of both styles across characters, views, zooms, poses
and backgrounds, enlarged with nearest-neighbour so every pixel the model sees stays visible.

    python -m sabun.toyworld.contact_sheet docs/toyworld_contact_sheet.png
"""

from __future__ import annotations

import argparse
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sabun.io import atomic_output
from sabun.toyworld.character import STEPPING_STONE_PRESETS, CharacterSpec, load_preset, random_character
from sabun.toyworld.colours import THING_COLOURS
from sabun.toyworld.geometry import POSES
from sabun.toyworld.render import BACKGROUNDS, ZOOMS, Shot, render

Cell = tuple[CharacterSpec, Shot, str]  # what one tile shows
SCALE = 3
LABEL_WIDTH = 230
HEADER = 22


def _rows() -> list[tuple[str, list[tuple[str, Cell]]]]:
    """(row label, [(tile label, cell)]) for the whole sheet."""
    target = load_preset("target")
    characters = [load_preset(n) for n in STEPPING_STONE_PRESETS] + [target]
    rows = []
    for spec in characters:
        cells = [
            (f"{style} {view}", (spec, Shot(view=view), style))
            for style in ("anime", "3d")
            for view in ("front", "side", "behind")
        ]
        cells += [(f"{style} portrait", (spec, Shot(zoom="portrait"), style)) for style in ("anime", "3d")]
        rows.append((f"{spec.name}\n{spec.hair_colour_name} {spec.hairstyle}\n{spec.body}", cells))
    for view in ("front", "behind"):
        rows.append(
            (
                f"zooms, {view}",
                [
                    (f"{style} {zoom}", (target, Shot(view=view, zoom=zoom), style))
                    for style in ("anime", "3d")
                    for zoom in ZOOMS
                ],
            )
        )
    stone = load_preset("green_medium")
    for style in ("anime", "3d"):
        cells = [(pose, (stone, Shot(pose=pose), style)) for pose in POSES]
        cells += [(f"{pose}, side", (stone, Shot(view="side", zoom="cowboy-shot", pose=pose), style)) for pose in POSES]
        rows.append((f"poses, {style}", cells))
    dressed = [
        replace(stone, body="slim"),
        replace(stone, body="curvy"),
        replace(stone, outfit="dress", outfit_colour=THING_COLOURS["blue"]),
        replace(stone, outfit="swimsuit", outfit_colour=THING_COLOURS["orange"]),
        replace(stone, outfit="bodysuit", outfit_colour=THING_COLOURS["black"]),
    ]
    labels = ["slim", "curvy", "blue dress", "orange swimsuit", "black bodysuit"]
    for style in ("anime", "3d"):
        cells = [(label, (spec, Shot(zoom="cowboy-shot"), style)) for label, spec in zip(labels[:2], dressed[:2])]
        cells += [(label, (spec, Shot(pose="hands-on-hips"), style)) for label, spec in zip(labels[2:], dressed[2:])]
        cells += [
            ("slim, side", (dressed[0], Shot(view="side", zoom="upper-body"), style)),
            ("curvy, side", (dressed[1], Shot(view="side", zoom="upper-body"), style)),
        ]
        cells += [("dress, behind", (dressed[2], Shot(view="behind", pose="arms-up"), style))]
        rows.append((f"bodies and outfits,\n{style}", cells))
    rng = np.random.default_rng(0)
    for style in ("anime", "3d"):
        cells = [
            (
                background,
                (
                    random_character(rng, exclude=(target,)),
                    Shot(
                        zoom=str(rng.choice(ZOOMS)),
                        view=str(rng.choice(("front", "side", "behind"))),
                        pose=str(rng.choice(POSES)),
                        background=background,
                    ),
                    style,
                ),
            )
            for background in BACKGROUNDS
        ]
        rows.append((f"backgrounds,\nrandom characters,\n{style}", cells))
    return rows


def contact_sheet(size: int = 64, scale: int = SCALE) -> Image.Image:
    """Render the sheet: a labelled grid of 8 tiles per row."""
    rows = _rows()
    tile = size * scale
    columns = max(len(cells) for _, cells in rows)
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * tile, len(rows) * (tile + HEADER)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    for r, (row_label, cells) in enumerate(rows):
        top = r * (tile + HEADER)
        draw.multiline_text((8, top + HEADER + 8), row_label, fill=(0, 0, 0), font=font, spacing=4)
        for c, (label, (spec, shot, style)) in enumerate(cells):
            left = LABEL_WIDTH + c * tile
            pixels = render(spec, shot, style, size=size, seed=r * 100 + c)
            sheet.paste(Image.fromarray(pixels).resize((tile, tile), Image.Resampling.NEAREST), (left, top + HEADER))
            draw.text((left + 4, top + 3), label, fill=(60, 60, 60), font=font)
    return sheet


def write_contact_sheet(path: Path, size: int = 64) -> Path:
    """Write the sheet as a PNG (replacing an older one: it is a generated file)."""
    buffer = io.BytesIO()
    contact_sheet(size).save(buffer, format="PNG", optimize=True)
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG to write, e.g. docs/toyworld_contact_sheet.png")
    parser.add_argument("--size", type=int, default=64, help="image side of each render in pixels")
    args = parser.parse_args()
    print(f"wrote {write_contact_sheet(args.out, args.size)}")


if __name__ == "__main__":
    main()
