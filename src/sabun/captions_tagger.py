"""`sabun caption --tagger`: captions by policy for images without render metadata, from a booru tagger.

Screenshots from any 3D tool (Koikatsu, VRoid Studio, Blender...) have no `NAME.json` saying what
they show, so a WD14-style tagger (sabun.evaluate.tagger) reads each one, and the policies of the
3D-model renders (sabun.avatar.captions) pick from the tags it sees:

- `full`: every general tag seen, most probable first (the booru order a tagger writes).
- `stepping-stone`: the same without the look (the tag map's `3d` tags), the background (`...
  background` and the tag map's backgrounds) and the pose (`arms at sides` and the tag map's poses):
  as for renders, the character's features, clothes, view and zoom are captioned, and the 3D look,
  background and pose the stepping-stone characters share are left for the LoRA to learn.
- `character`: only the method's character tags the tagger sees: `nude` / `completely nude`,
  `arms at sides` (on full-body images), the zoom level (the most probable of `portrait`, `upper
  body`, `cowboy shot`, `full body`), `from behind` and `white background`. No trigger word, no
  `1girl`.

Tags are written as sd-scripts captions hold them: underscores as spaces, except in kaomoji (`^_^`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sabun.data.images import IMAGE_SUFFIXES
from sabun.errors import SabunError
from sabun.evaluate.tagger import DEFAULT_THRESHOLD, GENERAL, Tagger, TagMap, check_threshold, default_tag_map
from sabun.io import atomic_output

POLICIES = ("full", "stepping-stone", "character")

# The method's character captions (docs/method.md, step 6), in the avatar policy's order.
CLOTHES_TAGS = ("nude", "completely_nude")
ARMS_AT_SIDES = "arms_at_sides"
ZOOM_TAGS = ("portrait", "upper_body", "cowboy_shot", "full_body")
FULL_BODY = "full_body"
CHARACTER_VIEWS = ("behind",)  # the tag map's views kept in character captions: `from behind` only, as for renders
CHARACTER_BACKGROUNDS = ("white",)

# Tags whose underscores are part of the face they draw; kept as they are (as the taggers' own tools do).
KAOMOJI = frozenset(
    {
        "0_0",
        "(o)_(o)",
        "+_+",
        "+_-",
        "._.",
        "<o>_<o>",
        "<|>_<|>",
        "=_=",
        ">_<",
        "3_3",
        "6_9",
        ">_o",
        "@_@",
        "^_^",
        "o_o",
        "u_u",
        "x_x",
        "|_|",
        "||_||",
    }
)


def caption_tag(tag: str) -> str:
    """A tag as a caption holds it: `blonde_hair` -> `blonde hair`; kaomoji unchanged."""
    return tag if tag in KAOMOJI else tag.replace("_", " ")


def _seen_general(probs: np.ndarray, tagger: Tagger, threshold: float) -> list[str]:
    """General tags at or above `threshold`, most probable first (ties in CSV order)."""
    columns = np.flatnonzero((tagger.categories == GENERAL) & (probs >= threshold))
    order = columns[np.argsort(-probs[columns], kind="stable")]
    return [tagger.names[i] for i in order]


def _dropped_by_stepping_stone(tag_map: TagMap) -> set[str]:
    dropped = set(tag_map.look) | {ARMS_AT_SIDES}
    for table in (tag_map.backgrounds, tag_map.poses):
        for tags in table.values():
            dropped |= set(tags)
    return dropped


def required_tags(policy: str, tag_map: TagMap) -> list[str]:
    """Every tag `policy` looks up, which the tagger's CSV must list."""
    tags = tag_map.all_tags()
    if policy == "character":
        tags += [*CLOTHES_TAGS, ARMS_AT_SIDES, *ZOOM_TAGS]
    return list(dict.fromkeys(tags))


def tag_caption(
    probs: np.ndarray, tagger: Tagger, policy: str, threshold: float = DEFAULT_THRESHOLD, tag_map: TagMap | None = None
) -> str:
    """The caption of one image under `policy` from its tag probabilities (tags,)."""
    tag_map = tag_map or default_tag_map()
    seen = _seen_general(probs, tagger, threshold)
    if policy == "full":
        chosen = seen
    elif policy == "stepping-stone":
        dropped = _dropped_by_stepping_stone(tag_map)
        chosen = [t for t in seen if t not in dropped and not t.endswith("_background")]
    elif policy == "character":
        visible = set(seen)
        zooms = [t for t in ZOOM_TAGS if t in visible]
        zoom = max(zooms, key=lambda t: probs[tagger.index(t)]) if zooms else None
        chosen = [t for t in CLOTHES_TAGS if t in visible]
        chosen += [ARMS_AT_SIDES] if ARMS_AT_SIDES in visible and zoom == FULL_BODY else []
        chosen += [zoom] if zoom else []
        for name in CHARACTER_VIEWS:
            chosen += [t for t in tag_map.views.get(name, ()) if t in visible]
        for name in CHARACTER_BACKGROUNDS:
            chosen += [t for t in tag_map.backgrounds.get(name, ()) if t in visible]
    else:
        raise SabunError(f"--policy {policy!r} is not valid; choose one of: {', '.join(POLICIES)}")
    return ", ".join(dict.fromkeys(caption_tag(t) for t in chosen))


def images_to_caption(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images without render metadata, images with it: NAME.json beside them) in `folder`."""
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    rendered = [p for p in images if p.with_suffix(".json").is_file()]
    return [p for p in images if p not in rendered], rendered


def caption_folder_with_tagger(
    folder: str | os.PathLike,
    tagger: str | os.PathLike | Tagger,
    policy: str,
    threshold: float = DEFAULT_THRESHOLD,
    overwrite: bool = False,
    tag_map: TagMap | None = None,
    batch: int = 8,
    log: Callable[[str], None] | None = print,
) -> list[Path]:
    """Write NAME.txt under `policy` for every image in `folder` without render metadata (NAME.json);
    returns the .txt paths.

    Every check (policy, threshold, existing captions, the tagger, each image) is made and every
    caption computed before the first file is written, so a bad input changes nothing.

    Args:
        tagger: a tagger folder (model.onnx, selected_tags.csv) or a loaded `Tagger`.
        threshold: a tag is seen at this probability or above.
        overwrite: replace existing NAME.txt files; otherwise one is an error.
        tag_map: the concept -> tag map (`sabun.evaluate.tagger.load_tag_map`); default: the defaults.
        batch: images tagged at a time.
    """
    if policy not in POLICIES:
        raise SabunError(f"--policy {policy!r} is not valid; choose one of: {', '.join(POLICIES)}")
    threshold = check_threshold(threshold)
    folder = Path(folder)
    if not folder.is_dir():
        raise SabunError(f"{folder}: no such folder; give the folder of images to caption")
    images, rendered = images_to_caption(folder)
    if not images:
        hint = (
            f"its {len(rendered)} images have render metadata: caption them with `sabun caption {folder} --policy {policy}`"
            if rendered
            else "add PNG or JPEG images"
        )
        raise SabunError(f"{folder}: holds no images to tag; {hint}")
    outputs: dict[Path, Path] = {}
    for image in images:
        text = image.with_suffix(".txt")
        if text in outputs:
            raise SabunError(
                f"{image}: shares its caption file {text.name} with {outputs[text].name}; rename one of them"
            )
        outputs[text] = image
    if not overwrite:
        existing = next((t for t in outputs if t.exists()), None)
        if existing is not None:
            raise SabunError(f"{existing}: already exists; pass --overwrite to replace the captions, or move it away")
    tag_map = tag_map or default_tag_map()
    tagger = tagger if isinstance(tagger, Tagger) else Tagger.load(tagger)
    tagger.require(required_tags(policy, tag_map), f"needed by the {policy} captions")
    captions = {}
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        for image, probs in zip(chunk, tagger.predict(chunk, batch=batch)):
            captions[image.with_suffix(".txt")] = tag_caption(probs, tagger, policy, threshold, tag_map)
    if rendered and log is not None:
        log(
            f"skipped {len(rendered)} images with render metadata (NAME.json); `sabun caption {folder} --policy {policy}` captions them"
        )
    for path, text in captions.items():
        with atomic_output(path, overwrite=overwrite) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    return list(captions)
