"""Booru-style tags of a rendered image, and the caption policies of the method.

Everything here is a pure function of the render metadata (the `.json` written next to each image),
so captions can be rewritten and tested without any image. A tag is kept with its category, and a
policy is a filter over the categorised tags: the order is always that of the full caption.

Policies (docs/method.md):
- `full`: every tag; what the toy model is pretrained on.
- `stepping-stone`: the character's own features (hair colour, hairstyle, eyes, body, signature,
  clothes), the view (`from side`, `from behind`) and the zoom level. No `1girl`/`solo`, pose,
  background or `3d`: the stepping-stone LoRA should absorb those unconditionally.
- `character`: only `white background`, `from behind`, the clothes (`nude` or the outfit),
  `arms at sides` on full-body views, and the zoom level; no trigger word, no `1girl`, no `solo`.
"""

from __future__ import annotations

from collections.abc import Callable

from sabun.errors import SabunError
from sabun.toyworld.character import CharacterSpec, spec_from_dict
from sabun.toyworld.colours import THING_COLOURS, nearest_name
from sabun.toyworld.render import STYLES, Shot

Tag = tuple[str, str]  # (category, tag)

HAIRSTYLE_TAGS = {
    "long": "long hair",
    "medium": "medium hair",
    "short": "short hair",
    "ponytail": "ponytail",
    "twintails": "twintails",
}
BODY_TAGS = {
    "slim": ("slim", "small breasts"),
    "average": ("medium breasts",),
    "curvy": ("curvy", "large breasts", "wide hips"),
}
OUTFIT_TAGS = {"dress": "dress", "swimsuit": "one-piece swimsuit", "bodysuit": "bodysuit"}
POSE_TAGS = {
    "arms-at-sides": "arms at sides",
    "arms-up": "arms up",
    "hands-on-hips": "hands on hips",
    "arms-behind-back": "arms behind back",
}
ZOOM_TAGS = {"portrait": "portrait", "upper-body": "upper body", "cowboy-shot": "cowboy shot", "full-body": "full body"}
VIEW_TAGS = {"front": ("gaze", "looking at viewer"), "side": ("view", "from side"), "behind": ("view", "from behind")}
BACKGROUND_TAGS = {
    "white": ("white background",),
    "grey": ("grey background",),
    "blue": ("blue background",),
    "pink": ("pink background",),
    "yellow": ("yellow background",),
    "green": ("green background",),
    "outdoor": ("outdoors", "blue sky", "grass"),
    "indoor": ("indoors", "wooden floor"),
}
REQUIRED_KEYS = ("character", "style", "view", "zoom", "pose", "background")


def read_metadata(meta: dict) -> tuple[CharacterSpec, Shot, str]:
    """The character, shot and style recorded in render metadata; errors list what is missing."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise SabunError(f"metadata lacks {', '.join(missing)}; toy-world metadata needs: {', '.join(REQUIRED_KEYS)}")
    if meta["style"] not in STYLES:
        raise SabunError(f"style {meta['style']!r} is not valid; choose one of: {', '.join(STYLES)}")
    spec = spec_from_dict(meta["character"], "metadata character")
    shot = Shot(view=meta["view"], zoom=meta["zoom"], pose=meta["pose"], background=meta["background"])
    return spec, shot, meta["style"]


def _pose_visible(pose: str, zoom: str) -> bool:
    """A portrait frames head and shoulders: only raised arms are in it."""
    return zoom != "portrait" or pose == "arms-up"


def tags(meta: dict) -> list[Tag]:
    """Every tag of the image, with its category, in caption order."""
    spec, shot, style = read_metadata(meta)
    out: list[Tag] = [("count", "1girl"), ("count", "solo")]
    out.append(("hair colour", f"{spec.hair_colour_name} hair"))
    out.append(("hairstyle", HAIRSTYLE_TAGS[spec.hairstyle]))
    out.append(("eyes", f"{spec.eye_colour_name} eyes"))
    out += [("body", t) for t in BODY_TAGS[spec.body]]
    if spec.ribbon:
        out.append(("signature", "hair ribbon"))
    if spec.outfit == "none":
        out.append(("clothes", "nude"))
    else:
        kind = OUTFIT_TAGS[spec.outfit]
        out += [("clothes", kind), ("clothes", f"{nearest_name(spec.outfit_colour, THING_COLOURS)} {kind}")]
    if _pose_visible(shot.pose, shot.zoom):
        out.append(("pose", POSE_TAGS[shot.pose]))
    out.append(("zoom", ZOOM_TAGS[shot.zoom]))
    out.append(VIEW_TAGS[shot.view])
    out += [("background", t) for t in BACKGROUND_TAGS[shot.background]]
    if style == "3d":
        out.append(("style", "3d"))
    return out


def _join(selected: list[Tag]) -> str:
    return ", ".join(tag for _, tag in selected)


def full_caption(meta: dict) -> str:
    """Every tag: `1girl, solo, blonde hair, twintails, blue eyes, ..., white background`."""
    return _join(tags(meta))


STEPPING_STONE_CATEGORIES = ("hair colour", "hairstyle", "eyes", "body", "signature", "clothes", "view", "zoom")


def stepping_stone_caption(meta: dict) -> str:
    """The character's features, `from side`/`from behind` and the zoom level."""
    return _join([t for t in tags(meta) if t[0] in STEPPING_STONE_CATEGORIES])


def character_caption(meta: dict) -> str:
    """Only what the merged stepping-stone model already varies by (docs/method.md, step 6)."""
    every = tags(meta)
    kept = {"white background", "from behind"} | ({"arms at sides"} if meta["zoom"] == "full-body" else set())
    return _join([(category, tag) for category, tag in every if category in ("clothes", "zoom") or tag in kept])


POLICIES: dict[str, Callable[[dict], str]] = {
    "full": full_caption,
    "stepping-stone": stepping_stone_caption,
    "character": character_caption,
}


def caption(meta: dict, policy: str) -> str:
    """The caption of the image described by `meta` under `policy` (one of POLICIES)."""
    if policy not in POLICIES:
        raise SabunError(f"caption policy {policy!r} is not valid; choose one of: {', '.join(POLICIES)}")
    return POLICIES[policy](meta)
