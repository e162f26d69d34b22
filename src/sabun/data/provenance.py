"""Which 3D model files a data set was rendered from, for the LoRA's `sabun_source_models` metadata.

`sabun render model` writes NAME.json beside every image with the model file's name, sha256 and
VRM meta (its licence and permissions). A LoRA trained on such images names each source model
once, with that hash and licence, so whoever holds the LoRA can tell what it was made from and
under which terms. A LoRA trained on top of a stepping-stone (`model.base_weights`) also carries
the stepping-stone's own source models, so the character LoRA names every model behind it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

AVATAR_FORMAT = "sabun.avatar/1"  # the metadata format of `sabun render model` (sabun.avatar.commands)
META_KEYS = (
    "name",
    "version",
    "authors",
    "licence",
    "avatar_permission",
    "commercial_usage",
    "allow_redistribution",
    "modification",
)


def _record(meta: dict, role: str) -> dict | None:
    model = meta.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("sha256"), str):
        return None
    vrm = meta.get("meta") if isinstance(meta.get("meta"), dict) else {}
    return {"file": model.get("file"), "sha256": model["sha256"], "role": role} | {k: vrm.get(k) for k in META_KEYS}


def source_models(images: Iterable[Path], role: str = "data") -> list[dict]:
    """One record per distinct model file behind `images` (each image's NAME.json), in first-seen order."""
    found: dict[str, dict] = {}
    for image in images:
        sidecar = Path(image).with_suffix(".json")
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8-sig"))  # a BOM (Notepad) is not an error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not a sabun render: nothing to record
        if not isinstance(meta, dict) or meta.get("format") != AVATAR_FORMAT:
            continue
        record = _record(meta, role)
        if record and record["sha256"] not in found:
            found[record["sha256"]] = record
    return list(found.values())


def inherited(metadata: dict[str, str], role: str = "stepping-stone") -> list[dict]:
    """The source models recorded in a LoRA's metadata (a stepping-stone's), re-labelled `role`."""
    try:
        records = json.loads(metadata.get("sabun_source_models", "[]"))
    except json.JSONDecodeError:
        return []
    return [r | {"role": role} for r in records if isinstance(r, dict) and isinstance(r.get("sha256"), str)]


def merged(*groups: list[dict]) -> list[dict]:
    """The records of every group, each model once (the first group that names it wins)."""
    out: dict[str, dict] = {}
    for group in groups:
        for record in group:
            out.setdefault(record["sha256"], record)
    return list(out.values())
