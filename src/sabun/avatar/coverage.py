"""Does the stepping-stone set cover the target? Hair colour in CIE L*a*b* and hairstyle tags.

The method's author suspected that a stepping-stone set of red, green, blue, white and black hair
lacked a yellow-haired character for a blonde target: the stepping-stone LoRA learns how the 3D
look draws each colour, and a colour far from all of them is left for the character LoRA to learn
together with the look. So sabun reads each model's hair colour from its renders (the pixels its
hair materials fully cover, `hair` in every NAME.json, written by `sabun render model`) and
reports the CIEDE2000 from the target's to each stepping-stone character's.

A model's hair colour is the median, per L*a*b* channel, of its shots' medians: each shot counts
once whatever its zoom (a portrait holds a hundred times the hair pixels of a full-body shot, and
would otherwise decide alone), and the median keeps a specular highlight or a shadowed back view
from pulling the colour.

The default distance, 15 CIEDE2000: about 1 is just noticeable and 2-3 close, while the twelve
named booru hair colours of the toy world lie 15.4 (purple to blue) to 84.2 (blonde to black) apart,
median 42.2 over the 66 pairs. 15 is just under the closest pair of names: hair within it is,
roughly, the same named colour; a warning means no stepping-stone character shares it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sabun.errors import SabunError
from sabun.toyworld.colours import HAIR_COLOURS, ciede2000, srgb_to_lab

DEFAULT_DISTANCE = 15.0
_HAIR_ANCHORS = srgb_to_lab(np.array(list(HAIR_COLOURS.values())))

# booru tags of hairstyle and hair length (not colour); lower case, spaces
HAIRSTYLE_TAGS = (
    "very short hair", "short hair", "medium hair", "long hair", "very long hair", "absurdly long hair",
    "ponytail", "high ponytail", "low ponytail", "side ponytail", "twintails", "low twintails", "short twintails",
    "braid", "single braid", "twin braids", "side braid", "french braid", "crown braid", "hair bun", "single hair bun",
    "double bun", "bob cut", "hime cut", "pixie cut", "drill hair", "twin drills", "ahoge", "bangs", "blunt bangs",
    "swept bangs", "hair over one eye", "sidelocks", "messy hair", "wavy hair", "curly hair", "straight hair",
    "spiked hair", "hair intakes", "two side up", "one side up", "hair flaps", "low-tied long hair", "half updo",
    "bowl cut", "buzz cut", "undercut", "mohawk", "afro", "dreadlocks", "ringlets",
)  # fmt: skip


@dataclass(frozen=True)
class HairColour:
    """A model's hair colour read from its renders."""

    lab: tuple[float, float, float]
    """CIE L*a*b* (D65)."""
    shots: int
    """Shots with a reading."""
    pixels: int
    """Hair pixels over those shots."""

    @property
    def hex(self) -> str:
        return lab_to_hex(self.lab)

    @property
    def name(self) -> str:
        """The nearest named booru hair colour (by CIEDE2000)."""
        return list(HAIR_COLOURS)[int(np.argmin(ciede2000(_HAIR_ANCHORS, np.asarray(self.lab)[None])))]


def lab_to_hex(lab) -> str:
    """`#rrggbb` of a L*a*b* colour (clipped to sRGB)."""
    L, a, b = lab
    fy = (L + 16) / 116
    f = np.array([fy + a / 500, fy, fy - b / 200])
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.95047, 1.0, 1.08883])
    linear = np.linalg.solve(
        np.array(
            [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
        ),
        xyz,
    )
    linear = np.clip(linear, 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return "#{:02x}{:02x}{:02x}".format(*(round(float(v) * 255) for v in srgb))


def hair_colour(folder: Path, model_file: str | None = None) -> HairColour:
    """The hair colour of the model rendered into `folder` (its NAME.json files)."""
    readings = []
    pixels = 0
    name = model_file
    for path in sorted(Path(folder).glob("*.json")):
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("hair"), dict):
            continue
        name = name or meta.get("model", {}).get("file")
        if meta["hair"].get("lab") is not None:
            readings.append(meta["hair"]["lab"])
            pixels += int(meta["hair"].get("pixels", 0))
    if not readings:
        model = name or str(folder)
        raise SabunError(
            f"{model}: no hair pixels in its renders in {folder}; name its hair materials in "
            f'{Path(model).with_suffix(".toml").name} beside it with hair_materials = ["..."] (see `sabun render model --list`)'
        )
    lab = np.median(np.array(readings, dtype=np.float64), axis=0)
    return HairColour((float(lab[0]), float(lab[1]), float(lab[2])), len(readings), pixels)


def hairstyles(tags: str) -> list[str]:
    """The hairstyle tags among comma-separated booru tags (underscores read as spaces)."""
    found = [t.strip().lower().replace("_", " ") for t in tags.split(",")]
    return [t for t in dict.fromkeys(found) if t in HAIRSTYLE_TAGS]


@dataclass(frozen=True)
class Entry:
    """One character of the check: its name, hair colour and booru tags."""

    name: str
    hair: HairColour
    tags: str = ""


@dataclass
class Coverage:
    """The check's table, its nearest stepping-stone character and its warnings."""

    target: Entry
    stones: list[Entry]
    distances: list[float]
    max_distance: float
    warnings: list[str] = field(default_factory=list)

    @property
    def nearest(self) -> tuple[str, float]:
        i = int(np.argmin(self.distances))
        return self.stones[i].name, self.distances[i]

    def entries(self) -> list[tuple[Entry, str, float | None]]:
        """(entry, role, CIEDE2000 to the target) of the target, then of each stepping-stone character."""
        return [(self.target, "target", None), *((s, "stepping-stone", d) for s, d in zip(self.stones, self.distances))]

    def rows(self) -> list[list[str]]:
        header = ["character", "role", "L*", "a*", "b*", "hex", "nearest name", "CIEDE2000 to target", "hairstyle tags"]
        out = [header]
        for entry, role, distance in self.entries():
            L, a, b = entry.hair.lab
            out.append([entry.name, role, f"{L:.1f}", f"{a:.1f}", f"{b:.1f}", entry.hair.hex, entry.hair.name,
                        "-" if distance is None else f"{distance:.1f}", ", ".join(hairstyles(entry.tags)) or "(none)"])  # fmt: skip
        return out

    def table(self) -> str:
        """Fixed-width columns, every column kept whatever the width of the terminal."""
        rows = self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)

    def to_dict(self) -> dict:
        name, distance = self.nearest
        characters = [
            {"name": e.name, "role": role, "lab": list(e.hair.lab), "hex": e.hair.hex, "colour_name": e.hair.name, "shots": e.hair.shots,
             "ciede2000_to_target": d, "hairstyles": hairstyles(e.tags)}
            for e, role, d in self.entries()
        ]  # fmt: skip
        return {
            "max_distance": self.max_distance,
            "nearest": {"name": name, "ciede2000": distance},
            "characters": characters,
            "warnings": self.warnings,
        }


def coverage(target: Entry, stones: list[Entry], max_distance: float = DEFAULT_DISTANCE) -> Coverage:
    """Compare the target's hair colour and hairstyle tags with the stepping-stone characters'."""
    if not stones:
        raise SabunError("the coverage check needs at least one stepping-stone character")
    distances = [float(ciede2000(np.asarray(target.hair.lab), np.asarray(s.hair.lab))) for s in stones]
    result = Coverage(target, stones, distances, max_distance)
    name, distance = result.nearest
    if distance > max_distance:
        result.warnings.append(
            f"no stepping-stone character's hair is within {max_distance:g} CIEDE2000 of {target.name}'s "
            f"({target.hair.name}, {target.hair.hex}); the nearest is {name} at {distance:.1f}. Add a stepping-stone "
            f"character with {target.hair.name} hair near {target.hair.hex}"
        )
    wanted = hairstyles(target.tags)
    have = {h for s in stones for h in hairstyles(s.tags)}
    for style in wanted:
        if style not in have:
            result.warnings.append(
                f"{target.name}'s hairstyle `{style}` is not among the stepping-stone characters' ({', '.join(sorted(have)) or 'none tagged'}); add one with {style}"
            )
    if not wanted:
        result.warnings.append(
            f"{target.name} has no hairstyle tag (e.g. long hair, twintails), so hairstyle coverage is not checked; give the target's tags"
        )
    return result
