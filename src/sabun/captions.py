"""`sabun caption`: rewrite every caption of a rendered folder from its render metadata.

A folder may hold toy-world renders (`sabun render toy`) and 3D-model renders (`sabun render
model`); each `.json` says which it is (`format`), and its caption is computed by that kind's
policy functions. Captions are computed for every file before any is written, so one bad file
changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sabun.avatar import captions as avatar_captions
from sabun.avatar.commands import METADATA_FORMAT as AVATAR_FORMAT
from sabun.errors import SabunError
from sabun.io import atomic_output
from sabun.toyworld import captions as toy_captions
from sabun.toyworld.commands import METADATA_FORMAT as TOY_FORMAT

POLICIES = tuple(toy_captions.POLICIES)
CAPTIONERS: dict[str, Callable[[dict, str], str]] = {
    TOY_FORMAT: toy_captions.caption,
    AVATAR_FORMAT: avatar_captions.caption,
}


def caption_folder(folder: Path, policy: str) -> list[Path]:
    """Rewrite NAME.txt from NAME.json for every render in `folder` under `policy`; returns the .txt paths."""
    if policy not in POLICIES:
        raise SabunError(f"--policy {policy!r} is not valid; choose one of: {', '.join(POLICIES)}")
    if not folder.is_dir():
        raise SabunError(f"{folder}: no such folder; give the folder that `sabun render` wrote")
    sources = sorted(folder.glob("*.json"))
    if not sources:
        raise SabunError(
            f"{folder}: holds no .json render metadata; render with `sabun render toy` or `sabun render model` first"
        )
    captions = {}
    for source in sources:
        try:
            meta = json.loads(source.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SabunError(f"{source}: is not valid JSON ({e}); re-render it") from None
        captioner = CAPTIONERS.get(meta.get("format")) if isinstance(meta, dict) else None
        if captioner is None:
            raise SabunError(
                f"{source}: is not toy-world render metadata ({TOY_FORMAT}) nor 3D-model render metadata ({AVATAR_FORMAT}); "
                f"move it out of {folder}"
            )
        try:
            captions[source.with_suffix(".txt")] = captioner(meta, policy)
        except SabunError as e:
            raise SabunError(f"{source}: {e}") from None
    for path, text in captions.items():
        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    return list(captions)
