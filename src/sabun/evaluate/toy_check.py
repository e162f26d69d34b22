"""How well a toy model draws what it is told, read by the toy evaluator.

    sabun toyworld check --model toy --count 240 --out runs/toy_check

Prompts are full booru captions of random characters in random shots (as the model was trained),
so every prompted attribute is known; the evaluator reads each generated image and the rates say
how often the image shows what the prompt asked. A second set adds the `3d` tag, to show that the
tag means something. The rates measure model and evaluator together; the evaluator's own accuracy
on renders and VAE round-trips (its validation file) bounds the evaluator's share of the errors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sabun.errors import SabunError
from sabun.evaluate.intervals import mean as interval_mean
from sabun.evaluate.intervals import rate as interval_rate
from sabun.evaluate.toy_evaluator import CLASSES, ToyEvaluator
from sabun.generate import Sampler, generate_images, grid_image
from sabun.io import atomic_output, check_writable
from sabun.models.load import load_pipeline
from sabun.toyworld import captions
from sabun.toyworld.character import load_preset, random_character
from sabun.toyworld.commands import metadata
from sabun.toyworld.geometry import POSES
from sabun.toyworld.model import IMAGE_SIZE
from sabun.toyworld.render import BACKGROUNDS, VIEWS, ZOOMS, Shot

# Rates a toy model should reach for the method's claims to be testable on it (at least), and the
# mean P(3d) it should give without the `3d` tag (at most) and with it (at least).
TARGETS = {"hair colour": 0.60, "hairstyle": 0.80, "background": 0.85, "white background": 0.80, "pose": 0.75,
           "view": 0.85}  # fmt: skip
P_3D_TARGETS = {"prompts": ("at most", 0.1), "prompts_with_3d": ("at least", 0.5)}


@dataclass(frozen=True)
class Case:
    prompt: str
    seed: int
    hair_colour: str
    hairstyle: str
    eyes: str
    background: str
    pose: str | None  # None when the shot does not show the pose (a portrait without raised arms)
    view: str
    zoom: str


def cases(count: int, seed: int = 0, three_d: bool = False) -> list[Case]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        spec = random_character(rng, name="check", exclude=(load_preset("target"),))
        shot = Shot(
            view=str(rng.choice(VIEWS)),
            zoom=str(rng.choice(ZOOMS)),
            pose=str(rng.choice(POSES)),
            background=str(rng.choice(BACKGROUNDS)),
        )
        meta = metadata("check", spec, shot, "3d" if three_d else "anime", 64, 0)
        tags = [t for _, t in captions.tags(meta)]
        pose_visible = any(category == "pose" for category, _ in captions.tags(meta))
        out.append(
            Case(
                ", ".join(tags),
                seed * 100000 + i,
                spec.hair_colour_name,
                spec.hairstyle,
                spec.eye_colour_name,
                shot.background,
                shot.pose if pose_visible else None,
                shot.view,
                shot.zoom,
            )
        )
    return out


def rates(case_list: list[Case], predictions) -> dict:
    """Each attribute's obeyed rate, "white background" (the rate where white was asked),
    mean P(3d), and under "intervals" the 95 % interval and count of each (Wilson's for a rate, a
    bootstrap for the mean)."""
    read = {name: predictions.label(name) for name in CLASSES}
    read["hair colour"] = predictions.hair_colour_name
    result, intervals = {}, {}

    def add(name: str, hits: list[bool]) -> None:
        if not hits:  # e.g. no prompt asked for a white background: no rate (JSON null)
            result[name], intervals[name] = None, [None, None, 0]
            return
        summary = interval_rate(hits)
        result[name] = summary["rate"]
        intervals[name] = [summary["low"], summary["high"], summary["n"]]

    for attribute, key in (
        ("hair colour", "hair_colour"),
        ("hairstyle", "hairstyle"),
        ("background", "background"),
        ("pose", "pose"),
        ("view", "view"),
        ("zoom", "zoom"),
    ):
        source = read["hair colour"] if attribute == "hair colour" else read[key]
        pairs = [(getattr(c, key), source[i]) for i, c in enumerate(case_list) if getattr(c, key) is not None]
        add(attribute, [a == b for a, b in pairs])
    add(
        "white background",
        [read["background"][i] == "white" for i, c in enumerate(case_list) if c.background == "white"],
    )
    p_3d = interval_mean(predictions.p_3d)
    result["p_3d_mean"] = p_3d["mean"]
    intervals["p_3d_mean"] = [p_3d["low"], p_3d["high"], p_3d["n"]]
    result["intervals"] = intervals
    return result


OUTPUTS = ("check.json", "generations.png", "generations.txt", "generations_3d.png", "generations_3d.txt")
SHEET_IMAGES = 32  # the labelled sheet shows the first 32 generations, 4 to a row


def check_options(out: Path, count: int, three_d_count: int, sampler: Sampler, overwrite: bool) -> None:
    """The options and the outputs, checked before the model is loaded or anything is generated."""
    if not (isinstance(count, int) and count >= 1):
        raise SabunError(f"--count {count}: give at least 1 generation (240 is the default)")
    if not (isinstance(three_d_count, int) and three_d_count >= 0):
        raise SabunError(
            f"--three-d-count {three_d_count}: give 0 (no `3d` set) or more generations (64 is the default)"
        )
    if not 1 <= sampler.steps <= 1000:
        raise SabunError(f"--steps {sampler.steps}: give 1 to 1000 sampling steps (25 is the default)")
    if not (math.isfinite(sampler.guidance) and 0 <= sampler.guidance <= 100):
        raise SabunError(
            f"--guidance {sampler.guidance}: give a finite guidance scale from 0 to 100 (5 is the default)"
        )
    if out.exists() and not out.is_dir():
        raise SabunError(f"{out}: is a file, and the check writes a folder there; choose another --out")
    for name in OUTPUTS:
        check_writable(out / name, overwrite, directory=False)


def image_size(pipe) -> int:
    """The side of the images `pipe` generates (as `generate_images` draws them)."""
    return pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def check_model(
    model: str,
    out: Path,
    count: int = 240,
    three_d_count: int = 64,
    sampler: Sampler = Sampler(),
    evaluator: ToyEvaluator | None = None,
    overwrite: bool = False,
) -> dict:
    """Generate, read, and write into `out` `check.json` and labelled sheets of the first 32 images
    (`generations`, and `generations_3d` for the `3d` set).

    The options, the outputs and the model's image size are checked before anything is generated;
    the three outputs are written only once everything they hold is computed."""
    check_options(out, count, three_d_count, sampler, overwrite)
    pipe = load_pipeline(model)
    size = image_size(pipe)
    if size != IMAGE_SIZE:
        raise SabunError(
            f"{model}: draws {size} px images, and the toy evaluator reads the toy model's {IMAGE_SIZE} px ones; give `toy` or a `sabun toyworld pretrain` run's model folder"
        )
    evaluator = evaluator or ToyEvaluator.load()
    plain, with_3d = cases(count, seed=1), cases(three_d_count, seed=2, three_d=True)
    results = {}
    images = {}
    with tqdm(total=count + three_d_count, desc="generate", unit="img") as bar:
        for name, case_list in (("prompts", plain), ("prompts_with_3d", with_3d)):
            if not case_list:  # --three-d-count 0
                continue
            images[name] = generate_images(
                pipe, [c.prompt for c in case_list], [c.seed for c in case_list], sampler, progress=bar.update
            )
            results[name] = {"count": len(case_list), **rates(case_list, evaluator.predict(images[name]))}
    results["targets"] = TARGETS
    results["p_3d_targets"] = {group: list(target) for group, target in P_3D_TARGETS.items()}
    results["sampler"] = {"steps": sampler.steps, "guidance": sampler.guidance}
    results["model"] = model
    sheets = {"generations": sheet(plain, images["prompts"], evaluator)}
    if "prompts_with_3d" in images:
        sheets["generations_3d"] = sheet(with_3d, images["prompts_with_3d"], evaluator)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "check.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    for name, (image, text) in sheets.items():
        with atomic_output(out / f"{name}.png", overwrite=overwrite) as tmp:
            image.save(tmp, format="PNG")
        with atomic_output(out / f"{name}.txt", overwrite=overwrite) as tmp:
            tmp.write_text(text)
    return results


def sheet(case_list: list[Case], images: np.ndarray, evaluator: ToyEvaluator):
    """The first 32 generations, 4 to a row, and a text saying what each was prompted and was read as."""
    first = images[:SHEET_IMAGES]
    pred = evaluator.predict(first)
    labels = [
        f"{c.hair_colour}/{c.hairstyle}/{c.view}/{c.background} -> {h}/{s}/{v}/{b}, P(3d) {p:.2f}"
        for c, h, s, v, b, p in zip(
            case_list,
            pred.hair_colour_name,
            pred.label("hairstyle"),
            pred.label("view"),
            pred.label("background"),
            pred.p_3d,
        )
    ]
    columns = min(4, len(first))
    rows = -(-len(first) // columns)
    cells = np.full((rows * columns, *first.shape[1:]), 255, dtype=np.uint8)  # a short last row is padded with white
    cells[: len(first)] = first
    image = grid_image(cells.reshape(rows, columns, *first.shape[1:]), [""] * rows, [""] * columns, scale=3)
    text = (
        "prompted -> read (hair colour/hairstyle/view/background), P(3d) read, row by row\n"
        + "\n".join(
            f"{i // columns},{i % columns}: {c.prompt}\n     {label}"
            for i, (c, label) in enumerate(zip(case_list, labels))
        )
        + "\n"
    )
    return image, text
