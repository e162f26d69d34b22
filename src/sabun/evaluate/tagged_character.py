"""A real character, as a booru tagger judges it: its identity tags (and, for reference, a hair colour).

    name = "mychar"
    tags = "blonde hair, twintails, hair ribbon, blue eyes"   # what makes the character hers
    hair_colour = "#e8b860"                                   # optional; a tagger does not measure it

The identity tags are what `sabun evaluate --tagger` checks in every `1girl` image: one rate per
tag. Give the tags that tell the character apart (hair colour and style, eyes, a signature
accessory), not ones every image has (`1girl`, `solo`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sabun.errors import SabunError
from sabun.evaluate.tagger import normalise_tag
from sabun.io import read_toml
from sabun.toyworld.colours import HAIR_COLOURS, RGB, parse_colour, to_hex

KEYS = ("name", "tags", "hair_colour")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class TaggedCharacter:
    """A character judged by its booru tags."""

    name: str  # file-safe (letters, digits, `_`, `-`)
    tags: tuple[str, ...]  # identity tags, underscore form (`blonde_hair`), without repeats
    hair_colour: RGB | None = None  # a reference hair colour (sRGB); reported, not measured by a tagger

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready fields; the colour as `#rrggbb` (left out when not given)."""
        data: dict[str, object] = {"name": self.name, "tags": list(self.tags)}
        if self.hair_colour is not None:
            data["hair_colour"] = to_hex(self.hair_colour)
        return data


def parse_tags(value: object, where: str) -> tuple[str, ...]:
    """Tags from a comma-separated string or a list of strings, in underscore form, first of each kept."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise SabunError(
            f'{where}: tags must be a string of comma-separated tags, e.g. tags = "blonde hair, twintails"'
        )
    return tuple(dict.fromkeys(normalise_tag(t) for t in items if t.strip()))


def load_tagged_character(path: str | os.PathLike) -> TaggedCharacter:
    """Read a character's TOML file (`name`, `tags`, optional `hair_colour`); its name defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "no such character file"
        raise SabunError(
            f'{path}: {what}; give a .toml file with a line like tags = "blonde hair, twintails, blue eyes"'
        )
    data = read_toml(path, "TOML file", "fix the syntax")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise SabunError(
            f"{path}: unknown key {unknown[0]!r}; a character read by a tagger holds: {', '.join(KEYS)} "
            "(a toy-world character spec is read without --tagger)"
        )
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise SabunError(f"{path}: name = {name!r} is not file-safe; use letters, digits, '_' and '-'")
    if "tags" not in data:
        raise SabunError(
            f'{path}: has no tags; add the character\'s identity tags, e.g. tags = "blonde hair, twintails, blue eyes"'
        )
    tags = parse_tags(data["tags"], str(path))
    if not tags:
        raise SabunError(
            f'{path}: tags is empty; add the character\'s identity tags, e.g. tags = "blonde hair, twintails, blue eyes"'
        )
    colour = None
    if "hair_colour" in data:
        try:
            colour = parse_colour(data["hair_colour"], HAIR_COLOURS, "hair_colour")
        except SabunError as e:
            raise SabunError(f"{path}: {e}") from None
    return TaggedCharacter(name, tags, colour)
