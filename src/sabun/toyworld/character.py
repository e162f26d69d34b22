"""Character specs of the toy world: the dataclass, TOML files, shipped presets, random characters.

A spec holds only what a person would use to describe the character (hair, eyes, body, clothes, the
signature ribbon); how it is drawn lives in `geometry.py` and `render.py`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING, asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import numpy as np

from sabun.errors import SabunError
from sabun.toyworld.colours import EYE_COLOURS, HAIR_COLOURS, RGB, THING_COLOURS, nearest_name, parse_colour, to_hex

HAIRSTYLES = ("long", "medium", "short", "ponytail", "twintails")
BODY_TYPES = ("slim", "average", "curvy")
OUTFITS = ("none", "dress", "swimsuit", "bodysuit")
SKIN_TONES: dict[str, RGB] = {"fair": (252, 226, 208), "light": (245, 208, 180), "tan": (214, 165, 125)}

STEPPING_STONE_PRESETS = ("red_long", "green_medium", "blue_short", "white_ponytail", "black_twintails")
TARGET_PRESET = "target"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_COLOUR_FIELDS = {
    "hair_colour": HAIR_COLOURS,
    "eye_colour": EYE_COLOURS,
    "skin_colour": SKIN_TONES,
    "outfit_colour": THING_COLOURS,
    "ribbon_colour": THING_COLOURS,
}
_CHOICES = {"hairstyle": HAIRSTYLES, "body": BODY_TYPES, "outfit": OUTFITS}


@dataclass(frozen=True)
class CharacterSpec:
    """One toy-world character. Colours are 8-bit sRGB triples."""

    name: str
    """File-safe name, used to name rendered files (letters, digits, `_`, `-`)."""
    hair_colour: RGB
    """Any RGB; the booru tag (`blonde hair`...) is the nearest named hair colour in L*a*b*."""
    hairstyle: str
    """One of HAIRSTYLES."""
    eye_colour: RGB
    """Iris colour; tagged by the nearest named eye colour."""
    body: str = "average"
    """One of BODY_TYPES: changes shoulder, chest, waist, hip and limb widths."""
    skin_colour: RGB = SKIN_TONES["fair"]
    """Skin tone (not tagged)."""
    outfit: str = "none"
    """One of OUTFITS; `none` renders and tags the character nude."""
    outfit_colour: RGB = THING_COLOURS["white"]
    """Colour of the outfit; ignored when `outfit` is `none`."""
    ribbon: bool = False
    """The signature feature: a hair ribbon (bows at the hair ties). Never in random characters."""
    ribbon_colour: RGB = THING_COLOURS["red"]
    """Colour of the ribbon; ignored when `ribbon` is false."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SabunError(f"name = {self.name!r} is not file-safe; use letters, digits, '_' and '-'")
        for key, choices in _CHOICES.items():
            value = getattr(self, key)
            if value not in choices:
                raise SabunError(f"{key} = {value!r} is not valid; choose one of: {', '.join(choices)}")
        for key in _COLOUR_FIELDS:
            value = getattr(self, key)
            if not (
                isinstance(value, tuple) and len(value) == 3 and all(type(v) is int and 0 <= v <= 255 for v in value)
            ):
                raise SabunError(f"{key} = {value!r} is not an (r, g, b) tuple of 0-255 integers")
        if not isinstance(self.ribbon, bool):
            raise SabunError(f"ribbon = {self.ribbon!r} is not valid; use true or false")

    @property
    def hair_colour_name(self) -> str:
        """Booru colour word of the hair (`blonde`, `red`...)."""
        return nearest_name(self.hair_colour, HAIR_COLOURS)

    @property
    def eye_colour_name(self) -> str:
        """Booru colour word of the eyes."""
        return nearest_name(self.eye_colour, EYE_COLOURS)

    def look(self) -> tuple[str, str, str]:
        """What a caption says of the face and hair: (hair colour name, hairstyle, eye colour name)."""
        return (self.hair_colour_name, self.hairstyle, self.eye_colour_name)

    def to_dict(self) -> dict[str, object]:
        """Plain TOML/JSON-ready fields; colours as `#rrggbb`."""
        data = asdict(self)
        for key in _COLOUR_FIELDS:
            data[key] = to_hex(data[key])
        return data


def spec_from_dict(data: dict[str, object], source: str, default_name: str | None = None) -> CharacterSpec:
    """Build a spec from parsed TOML/JSON; errors name `source` and list the valid keys or values."""
    valid = [f.name for f in fields(CharacterSpec)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise SabunError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    values = dict(data)
    if "name" not in values and default_name is not None:
        values["name"] = default_name
    missing = [f.name for f in fields(CharacterSpec) if f.name not in values and f.default is MISSING]
    if missing:
        raise SabunError(
            f"{source}: missing key(s) {', '.join(missing)}; a character needs at least: name, hair_colour, hairstyle, eye_colour"
        )
    try:
        for key, palette in _COLOUR_FIELDS.items():
            if key in values:
                values[key] = parse_colour(values[key], palette, key)
        return CharacterSpec(**values)
    except SabunError as e:
        raise SabunError(f"{source}: {e}") from None


def load_spec_file(path: str | Path) -> CharacterSpec:
    """Read a character TOML file; its name defaults to the file stem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SabunError(
            f"{path}: no such character file; check the path or use a preset: {', '.join(preset_names())}"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise SabunError(f"{path}: is not valid TOML ({e}); fix the syntax") from None
    return spec_from_dict(data, str(path), default_name=path.stem)


def _presets_dir():
    return resources.files("sabun") / "assets" / "characters"


def preset_names() -> list[str]:
    """Names of the characters shipped with sabun."""
    return sorted(p.name[: -len(".toml")] for p in _presets_dir().iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> CharacterSpec:
    """A shipped character by name (`target`, `red_long`...)."""
    if name not in preset_names():
        raise SabunError(
            f"{name}: no such character preset; choose one of: {', '.join(preset_names())}, or give a .toml path"
        )
    source = _presets_dir() / f"{name}.toml"
    return spec_from_dict(tomllib.loads(source.read_text(encoding="utf-8")), f"preset {name}", default_name=name)


def load_character(spec: str | Path) -> CharacterSpec:
    """A character from a TOML path (anything ending in .toml or naming a file) or a preset name."""
    text = str(spec)
    if text.endswith(".toml") or Path(text).is_file():
        return load_spec_file(text)
    return load_preset(text)


def _jitter(rng: np.random.Generator, anchor: RGB, spread: float) -> RGB:
    """An RGB near `anchor` (uniform +-spread per channel), clipped to 0-255."""
    values = np.clip(np.asarray(anchor) + rng.uniform(-spread, spread, size=3), 0, 255)
    return (int(round(values[0])), int(round(values[1])), int(round(values[2])))


def random_character(
    rng: np.random.Generator, name: str = "random", exclude: tuple[CharacterSpec, ...] = ()
) -> CharacterSpec:
    """A random character for pretraining data: never with the signature ribbon.

    Colours are drawn around a uniformly chosen named colour, so every tag is well represented. A
    character with the same look (hair colour name, hairstyle, eye colour name) as one in `exclude`
    is drawn again, so the toy model never sees, say, the target's combination.
    """
    looks = {spec.look() for spec in exclude}
    for _ in range(1000):
        hair = _jitter(rng, HAIR_COLOURS[rng.choice(list(HAIR_COLOURS))], 28)
        eyes = _jitter(rng, EYE_COLOURS[rng.choice(list(EYE_COLOURS))], 28)
        dressed = rng.random() < 0.5
        outfit_colour = _jitter(rng, THING_COLOURS[rng.choice(list(THING_COLOURS))], 20)
        spec = CharacterSpec(
            name=name,
            hair_colour=hair,
            hairstyle=str(rng.choice(HAIRSTYLES)),
            eye_colour=eyes,
            body=str(rng.choice(BODY_TYPES)),
            skin_colour=SKIN_TONES[str(rng.choice(list(SKIN_TONES)))],
            outfit=str(rng.choice(OUTFITS[1:])) if dressed else "none",
            outfit_colour=outfit_colour if dressed else THING_COLOURS["white"],
        )
        if spec.look() not in looks:
            return spec
    raise SabunError("random character: every draw matched an excluded character; exclude fewer characters")
