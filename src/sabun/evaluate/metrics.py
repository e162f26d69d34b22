"""The evaluation protocol: metrics computed from a reader's readings of generated images.

For a model with LoRAs applied (or none: the plain model's own figures), from fixed prompts and seeds:
- **3D leakage**: mean P(3d look) over every generated image;
- **identity** on the bare prompt `1girl` (and on free prompts of a user's prompt file): hair-colour
  error (median CIEDE2000 against the target's hair colour, when the reader measures colour), and
  how often each of the target's identity attributes is seen (the toy evaluator: hairstyle,
  hair-colour name, ribbon; a booru tagger: each identity tag);
- **flexibility**: how often a prompted background or pose is obeyed;
- **weight-change norms**: ||dW||_F of a LoRA per part (U-Net, text encoders), at weight 1.

Every figure comes with a 95 % interval: Wilson's for a rate, a bootstrap over images for a mean or
median. The reader (`sabun.evaluate.readings.Reader`) is the only part that differs between the toy
model and a real one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sabun.errors import SabunError
from sabun.evaluate.intervals import bootstrap, wilson
from sabun.evaluate.readings import BACKGROUNDS, POSES, Reader, Readings
from sabun.generate import Sampler, applied, generate_images
from sabun.io import read_text
from sabun.lora.file import load_lora
from sabun.lora.info import summarize
from sabun.toyworld.captions import BACKGROUND_TAGS, POSE_TAGS

GROUPS = ("bare", "free", "background", "pose")
IDENTITY_GROUPS = ("bare", "free")  # prompts on which the character is judged


@dataclass(frozen=True)
class Prompt:
    group: str  # bare | free (identity), background | pose (flexibility)
    expected: str  # the background or pose the prompt asks for ("" for bare / free)
    text: str


def default_prompts() -> tuple[Prompt, ...]:
    """`1girl`, four prompted backgrounds and two prompted poses (none of them the renders' own
    white background or arms at sides)."""
    out = [Prompt("bare", "", "1girl")]
    out += [Prompt("background", b, f"1girl, {', '.join(BACKGROUND_TAGS[b])}") for b in BACKGROUNDS]
    out += [Prompt("pose", p, f"1girl, cowboy shot, {POSE_TAGS[p]}") for p in POSES]
    return tuple(out)


LINE = re.compile(r"\[(?P<group>bare|free|background|pose)(?::(?P<expected>[\w-]+))?\]\s*(?P<text>.*)")


def read_prompts(path: str | Path) -> tuple[Prompt, ...]:
    """A prompt file: one prompt per line; `# ...` and blank lines skipped. A line may say what it
    tests: `[bare] 1girl`, `[background:outdoor] 1girl, outdoors`, `[pose:arms-up] 1girl, arms up`;
    a line without a label is a free prompt, on which identity is judged."""
    path = Path(path)
    if not path.is_file():
        raise SabunError(f"{path}: no such prompt file; give a text file with one prompt per line")
    lines = read_text(path, "prompt file").splitlines()
    prompts = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.fullmatch(line)
        if line.startswith("[") and not match:
            raise SabunError(f"{path}:{number}: {line!r}: a label is [bare], [free], [background:NAME] or [pose:NAME]")
        group, expected, text = (
            (match["group"], match["expected"] or "", match["text"].strip()) if match else ("free", "", line)
        )
        if group in ("background", "pose") and not expected:
            raise SabunError(
                f"{path}:{number}: [{group}] needs the {group} it asks for, e.g. [{group}:{(BACKGROUNDS if group == 'background' else POSES)[0]}]"
            )
        if not text:
            raise SabunError(f"{path}:{number}: the label has no prompt after it")
        prompts.append(Prompt(group, expected, text))
    if not prompts:
        raise SabunError(f"{path}: holds no prompts")
    return tuple(prompts)


@dataclass(frozen=True)
class Protocol:
    seeds: int = 16  # images per prompt
    sampler: Sampler = Sampler(steps=20, guidance=5.0, batch=32)
    seed_start: int = 1000  # the images of a prompt use seeds seed_start .. seed_start + seeds - 1
    custom: tuple[Prompt, ...] | None = None  # a user's prompts instead of the default ones

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise SabunError(f"--seeds {self.seeds}: give at least 1 image per prompt")

    def prompt_list(self) -> tuple[Prompt, ...]:
        return self.custom or default_prompts()

    def prompts(self) -> list[tuple[str, str, str]]:
        """(group, expected value, prompt) for every prompt of the protocol."""
        return [(p.group, p.expected, p.text) for p in self.prompt_list()]


def metric_rows(reader: Reader, target, protocol: Protocol) -> list[tuple[str, str, str]]:
    """(key, title, better) of every metric `measure` gives for this reader, target and protocol."""
    groups = {p.group for p in protocol.prompt_list()}
    rows = [("3d_leakage", "3D leakage, mean P(3d)", "lower")]
    identity = groups & set(IDENTITY_GROUPS)
    if identity and getattr(reader, "measures_colour", False) and getattr(target, "hair_colour", None) is not None:
        rows.append(("hair_ciede2000", "hair colour error, CIEDE2000 (1girl)", "lower"))
    if identity:
        rows += [(a.key, a.title, a.better) for a in reader.attributes(target)]
    if "background" in groups:
        rows.append(("background_obeyed", "prompted background obeyed", "higher"))
    if "pose" in groups:
        rows.append(("pose_obeyed", "prompted pose obeyed", "higher"))
    return rows


def score(readings: Readings, prompts: list[Prompt], reader: Reader, target) -> dict:
    """The metrics of one condition from its readings (`prompts[i]` made image i)."""
    groups = np.array([p.group for p in prompts])
    identity = np.isin(groups, IDENTITY_GROUPS)
    out: dict = {}
    intervals: dict[str, list[float]] = {}
    counts: dict[str, int] = {}

    def add(key: str, value: float, interval: tuple[float, float], n: int) -> None:
        out[key], intervals[key], counts[key] = float(value), [float(interval[0]), float(interval[1])], int(n)

    def add_rate(key: str, hits) -> None:
        hits = np.asarray(hits, dtype=bool)
        if hits.size:
            add(key, hits.mean(), wilson(int(hits.sum()), int(hits.size)), hits.size)

    add("3d_leakage", readings.p_3d.mean(), bootstrap(readings.p_3d, np.mean), len(readings))
    if identity.any():
        if readings.hair_lab is not None and getattr(target, "hair_colour", None) is not None:
            errors = reader.hair_colour_error(readings.hair_lab[identity], target.hair_colour)
            add("hair_ciede2000", np.median(errors), bootstrap(errors, np.median), errors.size)
        for attribute in reader.attributes(target):
            add_rate(attribute.key, readings.identity[attribute.key][identity])
    for group, seen in (("background", readings.backgrounds), ("pose", readings.poses)):
        add_rate(f"{group}_obeyed", [prompts[i].expected in seen[i] for i in np.flatnonzero(groups == group)])
    out["images"] = len(prompts)
    out["intervals"] = intervals
    out["n"] = counts
    return out


def measure(
    pipe, reader: Reader, target, protocol: Protocol = Protocol(), images: np.ndarray | None = None
) -> tuple[dict, np.ndarray]:
    """The metrics for `pipe` as it is now (LoRAs attached at their multipliers), and the images
    (prompts x seeds, in `protocol.prompts()` order). Given `images` (as returned before, for the
    same protocol), they are read and scored against `target` without generating again."""
    prompts = protocol.prompt_list()
    rows = [(p, protocol.seed_start + s) for p in prompts for s in range(protocol.seeds)]
    if images is None:
        images = generate_images(pipe, [p.text for p, _ in rows], [s for _, s in rows], protocol.sampler)
    else:
        images = images.reshape(len(rows), *images.shape[2:])
    metrics = score(reader.read(images, target), [p for p, _ in rows], reader, target)
    return metrics, images.reshape(len(prompts), protocol.seeds, *images.shape[1:])


def measure_conditions(
    pipe,
    reader: Reader,
    target,
    protocol: Protocol,
    conditions: dict[str, list[tuple[str | Path, float]]],
    log=print,
    plain: dict | None = None,
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """The metrics of each condition (its LoRA files applied at their multipliers; none: the plain
    model) and its image grid (prompts x the first six seeds). `plain`, if given, keeps the plain
    model's images across calls (they do not depend on the target) under the key "images"."""
    results, grids = {}, {}
    for label, loras in conditions.items():
        log(f"evaluating {getattr(target, 'name', 'target')}: {label}")
        reuse = plain.get("images") if plain is not None and not loras else None
        with applied(pipe, loras):
            results[label], images = measure(pipe, reader, target, protocol, reuse)
        if plain is not None and not loras:
            plain["images"] = images
        grids[label] = images[:, :6]
    return results, grids


def weight_change_norms(path: Path) -> dict[str, float]:
    """||dW||_F of the LoRA at weight 1, for the U-Net and each text encoder."""
    parts: dict[str, float] = {}
    for block in summarize(load_lora(path)):
        part = block.block.split(" ")[0]
        parts[part] = (parts.get(part, 0.0) ** 2 + block.delta_norm**2) ** 0.5
    return parts
