"""Toy-world characters as VRM 1.0 models: the procedural humanoid dressed as the spec says, plus its tags.

    sabun toyworld export --character target --out models/target.vrm

writes `target.vrm` and, beside it, the tag file `target.toml` that `sabun render model` reads, so
the model renders straight into captioned training data with the toy world's own tags:

    # character = {name = "target", hair_colour = "#e8b860", ...}
    tags = "blonde hair, twintails, blue eyes, medium breasts, hair ribbon"
    clothes = "nude"
    hair_materials = ["Hair"]

The spec goes in a comment because the tag-file reader accepts only `tags`, `clothes` and
`hair_materials`. Both files are deterministic: the same character always gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from sabun.avatar.humanoid import SEGMENTS, HumanoidSpec, build_humanoid
from sabun.avatar.write import write_glb
from sabun.errors import SabunError
from sabun.io import atomic_output, check_writable
from sabun.toyworld.captions import tags as toy_tags
from sabun.toyworld.character import CharacterSpec

CHARACTER_CATEGORIES = ("hair colour", "hairstyle", "eyes", "body", "signature")
"""The toy caption categories that describe the character herself: the model's `tags`."""
HAIR_MATERIALS = ("Hair",)
"""The humanoid's hair material (the brows are a darker shade and are left out)."""


def humanoid_spec(character: CharacterSpec, segments: int = 10) -> HumanoidSpec:
    """The procedural humanoid that looks like `character`, under a permissive licence.

    The toy characters are generated, not authored, so the model is free to use by anyone: the meta
    allows every user, corporate use, redistribution and modified redistribution (CC0-like).
    """
    return HumanoidSpec(
        name=character.name,
        skin_colour=character.skin_colour,
        hair_colour=character.hair_colour,
        eye_colour=character.eye_colour,
        outfit_colour=character.outfit_colour,
        ribbon_colour=character.ribbon_colour,
        hairstyle=character.hairstyle,
        body=character.body,
        outfit=character.outfit,
        ribbon=character.ribbon,
        segments=segments,
        authors=("sabun toy world",),
        avatar_permission="everyone",
        commercial_usage="corporation",
        allow_redistribution=True,
        modification="allowModificationRedistribution",
    )


def character_tags(character: CharacterSpec) -> tuple[str, str]:
    """(`tags`, `clothes`) of the tag file: exactly what the toy world's stepping-stone caption says of them.

    The toy captions tag an image, not a character, so any shot will do: these categories depend on
    the character alone.
    """
    meta = {
        "character": character.to_dict(),
        "style": "3d",
        "view": "front",
        "zoom": "full-body",
        "pose": "arms-at-sides",
        "background": "white",
    }
    every = toy_tags(meta)
    tags = ", ".join(tag for category, tag in every if category in CHARACTER_CATEGORIES)
    clothes = ", ".join(tag for category, tag in every if category == "clothes")
    return tags, clothes


def tag_file_text(character: CharacterSpec) -> str:
    """The tag file's text: the toy spec as a comment, then `tags`, `clothes` and `hair_materials`."""
    tags, clothes = character_tags(character)
    spec = ", ".join(f"{key} = {json.dumps(value)}" for key, value in character.to_dict().items())
    return (
        "# Written by `sabun toyworld export` from the toy-world character:\n"
        f"# character = {{{spec}}}\n"
        f"tags = {json.dumps(tags)}\n"
        f"clothes = {json.dumps(clothes)}\n"
        f"hair_materials = {json.dumps(list(HAIR_MATERIALS))}\n"
    )


def export_character(
    character: CharacterSpec, out: Path, overwrite: bool = False, segments: int = 10
) -> tuple[Path, Path]:
    """Write `character` as the VRM 1.0 model `out` and its tag file beside it (`out` with suffix .toml).

    Args:
        character: the toy-world character.
        out: the model file; must end in .vrm.
        overwrite: replace an existing model or tag file; otherwise either existing is an error,
            raised before anything is written.
        segments: the humanoid's tessellation (see `sabun.avatar.humanoid`).
    Returns:
        (model path, tag file path).
    """
    if isinstance(segments, bool) or not isinstance(segments, int) or not SEGMENTS[0] <= segments <= SEGMENTS[1]:
        raise SabunError(
            f"--segments {segments!r} is out of range; use {SEGMENTS[0]} to {SEGMENTS[1]} "
            f"(10 gives about 6k triangles, 40 about 95k, {SEGMENTS[1]} about 610k)"
        )
    out = Path(out)
    if out.suffix.lower() != ".vrm":
        raise SabunError(f"{out}: the exported model must be a .vrm file; give --out NAME.vrm")
    tag_file = out.with_suffix(".toml")
    for path in (out, tag_file):
        check_writable(path, overwrite)
    avatar = build_humanoid(humanoid_spec(character, segments), "vrm1")
    write_glb(avatar, out, version="vrm1", overwrite=overwrite)
    with atomic_output(tag_file, overwrite=overwrite) as tmp:
        tmp.write_text(tag_file_text(character), encoding="utf-8")
    return out, tag_file
