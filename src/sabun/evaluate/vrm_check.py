"""How well the toy evaluator reads renders of toy characters exported to VRM.

    sabun toyworld check-vrm --out runs/check_vrm

Each character (the six presets and `count` random ones, under a seed) is exported with `sabun
toyworld export`, loaded back from the file and rendered by `sabun render model` in the toy
world's shot list (front, right side, behind; all four zooms; arms at sides; white background;
64 px). The same characters in the same shots are also drawn by the toy renderer in its `3d`
style: the evaluator was trained on those, so they give the figures to compare with. Read: the
hair colour (CIEDE2000 to the character's spec and the booru name), hairstyle, view, zoom and
P(3d), each rate with its 95 % Wilson interval and each mean with a bootstrap interval.

The evaluator judges the images the toy model *generates*; mesh renders are only its training data.
So this measures whether mesh renders teach the toy model the attributes the evaluator reads, and
whether the `3d` reading means "looks like the mesh renders" at all.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sabun.avatar.camera import camera_for
from sabun.avatar.gltf import load_avatar
from sabun.avatar.pose import pose_avatar
from sabun.avatar.raster import STYLES as RENDER_STYLES
from sabun.avatar.raster import Renderer, composite
from sabun.errors import SabunError
from sabun.evaluate.intervals import mean, rate
from sabun.evaluate.toy_evaluator import ToyEvaluator
from sabun.generate import grid_image
from sabun.io import atomic_output, check_writable
from sabun.toyworld.character import STEPPING_STONE_PRESETS, TARGET_PRESET, CharacterSpec, load_preset, random_character
from sabun.toyworld.export import export_character
from sabun.toyworld.render import ZOOMS, Shot, render

# avatar view -> the toy world's view of the same side (the toy's `side` shows the character's right)
VIEWS = {"front": "front", "right": "side", "behind": "behind"}


def characters(count: int, seed: int) -> list[CharacterSpec]:
    """The presets, then `count` random characters (never the target's look)."""
    rng = np.random.default_rng(seed)
    presets = [load_preset(name) for name in (*STEPPING_STONE_PRESETS, TARGET_PRESET)]
    return presets + [
        random_character(rng, name=f"random_{i:03d}", exclude=(load_preset(TARGET_PRESET),)) for i in range(count)
    ]


def mesh_renders(vrm: Path, style: str, size: int, supersample: int) -> list[tuple[np.ndarray, str, str]]:
    """(image, toy view, zoom) of one model file in every shot of the toy shot list."""
    avatar = load_avatar(vrm)
    posed = pose_avatar(avatar, "arms-at-sides", frozenset())
    shots = []
    with Renderer(avatar, posed, style, size, supersample) as renderer:
        for view, toy_view in VIEWS.items():
            for zoom in ZOOMS:
                shots.append(
                    (composite(renderer.draw(camera_for(posed, avatar, view, zoom)), (1.0, 1.0, 1.0)), toy_view, zoom)
                )
    return shots


def readings(
    evaluator: ToyEvaluator, images: np.ndarray, specs: list[CharacterSpec], views: list[str], zooms: list[str]
) -> dict:
    """The evaluator's figures on `images` against what is known of each."""
    pred = evaluator.predict(images)
    errors = np.array([pred.hair_colour_error(spec.hair_colour)[i] for i, spec in enumerate(specs)])
    return {
        "images": len(images),
        "hair_ciede2000": mean(errors) | {"median": float(np.median(errors))},
        "hair_colour_name": rate([name == spec.hair_colour_name for name, spec in zip(pred.hair_colour_name, specs)]),
        "hairstyle": rate([got == spec.hairstyle for got, spec in zip(pred.label("hairstyle"), specs)]),
        "view": rate([got == want for got, want in zip(pred.label("view"), views)]),
        "zoom": rate([got == want for got, want in zip(pred.label("zoom"), zooms)]),
        "read_as_3d": rate(pred.p_3d > 0.5),
        "p_3d": mean(pred.p_3d),
    }


def check_exported(out: Path, count: int = 24, seed: int = 0, styles: tuple[str, ...] = ("lit", "toon"), size: int = 64, supersample: int = 4,
                   evaluator: ToyEvaluator | None = None, overwrite: bool = False) -> dict:  # fmt: skip
    """Export, render and read every character; writes `check_vrm.json` and `renders.png` into `out`.

    The options and the outputs are checked before anything is exported or rendered; both outputs
    are written only once everything they hold is computed."""
    if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
        raise SabunError(
            f"--count {count}: give 0 (the six presets only) or more random characters (24 is the default)"
        )
    if not (isinstance(seed, int) and 0 <= seed <= 2**32 - 1):
        raise SabunError(f"--seed {seed}: give a whole number from 0 to 4294967295 (2**32 - 1)")
    bad = [s for s in styles if s not in RENDER_STYLES]
    if bad or not styles:
        raise SabunError(f"--styles {','.join(styles)!r}: choose from {', '.join(RENDER_STYLES)}")
    if size != 64:
        raise SabunError(f"size {size}: the toy evaluator reads 64 px images; give 64")
    if not 1 <= supersample <= 4:
        raise SabunError(f"supersample {supersample}: give 1 to 4")
    if out.exists() and not out.is_dir():
        raise SabunError(f"{out}: is a file, and the check writes a folder there; choose another --out")
    for name in ("check_vrm.json", "renders.png"):
        check_writable(out / name, overwrite, directory=False)
    evaluator = evaluator or ToyEvaluator.load()
    specs = characters(count, seed)
    groups: dict[str, dict[str, list]] = {
        name: {"images": [], "specs": [], "views": [], "zooms": []} for name in ("toy 3d", *styles)
    }

    def add(group: str, image: np.ndarray, spec: CharacterSpec, view: str, zoom: str) -> None:
        for key, value in zip(("images", "specs", "views", "zooms"), (image, spec, view, zoom)):
            groups[group][key].append(value)

    with (
        tempfile.TemporaryDirectory(prefix="sabun-check-vrm-") as tmp,
        tqdm(total=len(specs), desc="export, render", unit="character") as bar,
    ):
        for spec in specs:
            vrm, _ = export_character(spec, Path(tmp) / f"{spec.name}.vrm")
            for style in styles:
                for image, view, zoom in mesh_renders(vrm, style, size, supersample):
                    add(style, image, spec, view, zoom)
            for view in VIEWS.values():
                for zoom in ZOOMS:
                    add(
                        "toy 3d",
                        render(
                            spec, Shot(view=view, zoom=zoom, pose="arms-at-sides", background="white"), "3d", size=64
                        ),
                        spec,
                        view,
                        zoom,
                    )
            bar.update()
    results = {
        "characters": len(specs),
        "seed": seed,
        "size": size,
        "renders": {
            name: readings(evaluator, np.stack(g["images"]), g["specs"], g["views"], g["zooms"])
            for name, g in groups.items()
        },
    }
    rows = [np.stack(groups[name]["images"][: 12 * 6]).reshape(6, 12, 64, 64, 3) for name in groups]
    sheet = grid_image(
        np.concatenate(rows),
        [f"{name}: {spec.name}" for name in groups for spec in specs[:6]],
        [f"{v}/{z}" for v in VIEWS for z in ZOOMS],
    )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "check_vrm.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    with atomic_output(out / "renders.png", overwrite=overwrite) as tmp:
        sheet.save(tmp, format="PNG")
    results["sheet"] = str(out / "renders.png")
    return results


def table(results: dict) -> str:
    """The readings side by side: one row per figure, one column per kind of render."""
    names = list(results["renders"])
    lines = [f"{'':<20}" + "".join(f"{name:>22}" for name in names)]

    def cell(figure: dict) -> str:
        value = figure.get("rate", figure.get("mean"))
        return f"{value:.2f} [{figure['low']:.2f}, {figure['high']:.2f}]"

    for key, label in (("hair_ciede2000", "hair dE2000 (mean)"), ("hair_colour_name", "hair colour name"), ("hairstyle", "hairstyle"), ("view", "view"),
                       ("zoom", "zoom"), ("read_as_3d", "read as 3d"), ("p_3d", "P(3d) (mean)")):  # fmt: skip
        lines.append(f"{label:<20}" + "".join(f"{cell(results['renders'][n][key]):>22}" for n in names))
    lines.append(f"{'images':<20}" + "".join(f"{results['renders'][n]['images']:>22}" for n in names))
    return "\n".join(lines)
