"""Captions of 3D-model renders under the method's policies: pure functions of the render metadata.

A model cannot tell its own booru tags, so the user gives them once, beside the model file
(`alice.vrm` + `alice.toml` with `tags = "red hair, long hair, large breasts"`, and optionally
`clothes = "nude"`); everything else (view, zoom, pose, background) the render knows. The policies
are those of the toy world's captions (docs/toyworld.md), with the user's tags in the place of the
toy character's features:

- `full`: the character's tags, clothes, pose, zoom, view, background and `3d`.
- `stepping-stone`: the character's tags, clothes, `from side` / `from behind`, and the zoom.
- `character`: only `white background`, `from behind`, the clothes, `arms at sides` on full-body
  views and the zoom; no trigger word, no `1girl`. Needs no tags at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sabun.errors import SabunError
from sabun.io import read_toml

Tag = tuple[str, str]  # (category, tag)

POSE_TAGS = {
    "arms-at-sides": "arms at sides",
    "a-pose": "arms at sides",
    "arms-up": "arms up",
    "hands-on-hips": "hands on hips",
}
ZOOM_TAGS = {"portrait": "portrait", "upper-body": "upper body", "cowboy-shot": "cowboy shot", "full-body": "full body"}
VIEW_TAGS: dict[str, Tag | None] = {
    "front": ("gaze", "looking at viewer"),
    "left": ("view", "from side"),
    "right": ("view", "from side"),
    "behind": ("view", "from behind"),
    "back-left": ("view", "from behind"),
    "back-right": ("view", "from behind"),
    "front-left": None,
    "front-right": None,
}
NAMED_BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "grey": (0.5, 0.5, 0.5), "black": (0.0, 0.0, 0.0)}
REQUIRED_KEYS = ("model", "view", "zoom", "pose", "background")
TAG_FILE_KEYS = ("tags", "clothes", "hair_materials")


def split_tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def read_tag_file(path: Path) -> dict:
    """The user's tags for one model (`tags`, optional `clothes` and `hair_materials`); errors name the file."""
    data = read_toml(path, "TOML tag file", 'it should hold a line like tags = "red hair, long hair"')
    unknown = sorted(set(data) - set(TAG_FILE_KEYS))
    if unknown:
        raise SabunError(f"{path}: unknown key {unknown[0]!r}; a model's tag file may hold: {', '.join(TAG_FILE_KEYS)}")
    for key in ("tags", "clothes"):
        if key in data and not isinstance(data[key], str):
            raise SabunError(
                f'{path}: {key} must be a string of comma-separated tags, e.g. {key} = "red hair, long hair"'
            )
    return data


def tags_beside(model: Path) -> Path:
    """Where a model's tag file is looked for: `alice.vrm` -> `alice.toml`."""
    return model.with_suffix(".toml")


def _pose_visible(pose: str, zoom: str) -> bool:
    """A portrait frames head and shoulders: only raised arms are in it."""
    return pose in POSE_TAGS and (zoom != "portrait" or pose == "arms-up")


def tags(meta: dict) -> list[Tag]:
    """Every tag of the image with its category, in caption order."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise SabunError(
            f"metadata lacks {', '.join(missing)}; 3D-model render metadata needs: {', '.join(REQUIRED_KEYS)}"
        )
    out: list[Tag] = [("character", t) for t in split_tags(meta.get("tags", ""))]
    out += [("clothes", t) for t in split_tags(meta.get("clothes", ""))]
    if _pose_visible(meta["pose"], meta["zoom"]):
        out.append(("pose", POSE_TAGS[meta["pose"]]))
    out.append(("zoom", ZOOM_TAGS[meta["zoom"]]))
    view = VIEW_TAGS.get(meta["view"])
    if view:
        out.append(view)
    background = meta["background"]
    if background in NAMED_BACKGROUNDS:
        out.append(("background", f"{background} background"))
    elif background == "transparent":
        out.append(("background", "transparent background"))
    else:
        out.append(("background", "simple background"))
    out.append(("style", "3d"))
    return out


def _join(selected: list[Tag]) -> str:
    return ", ".join(dict.fromkeys(tag for _, tag in selected))


def full_caption(meta: dict) -> str:
    return _join(tags(meta))


def require_tags(model_file: str, tags_text: str, policy: str) -> None:
    """The stepping-stone policy captions each character by its features: refuse a model without tags."""
    if policy == "stepping-stone" and not split_tags(tags_text):
        raise SabunError(
            f"{model_file}: has no tags, and the stepping-stone policy captions each character by its features; write "
            f'{Path(model_file).with_suffix(".toml").name} beside it with tags = "red hair, long hair, ..." and render again'
        )


def stepping_stone_caption(meta: dict) -> str:
    """The character's tags, clothes, the view (`from side` / `from behind`) and the zoom level."""
    require_tags(meta.get("model", {}).get("file", "the model"), meta.get("tags", ""), "stepping-stone")
    return _join([t for t in tags(meta) if t[0] in ("character", "clothes", "view", "zoom")])


def character_caption(meta: dict) -> str:
    """Only what the merged stepping-stone model already varies by (the method's character captions)."""
    kept = {"white background", "from behind"} | ({"arms at sides"} if meta["zoom"] == "full-body" else set())
    return _join([(c, t) for c, t in tags(meta) if c in ("clothes", "zoom") or t in kept])


POLICIES: dict[str, Callable[[dict], str]] = {
    "full": full_caption,
    "stepping-stone": stepping_stone_caption,
    "character": character_caption,
}


def caption(meta: dict, policy: str) -> str:
    if policy not in POLICIES:
        raise SabunError(f"caption policy {policy!r} is not valid; choose one of: {', '.join(POLICIES)}")
    return POLICIES[policy](meta)
