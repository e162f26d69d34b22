"""Data sets of the pipelines: what a character's images come from, and how they are captioned.

A stepping-stone or target character's images are toy-world renders (`render_set`), renders of a
3D model file by `sabun render model` (`render_model_set`, with one `RenderConfig` for every model),
or a copy of the user's own folder (`copy_set`); each is re-captioned by a caption policy where the
images carry sabun's render metadata (NAME.json).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sabun.avatar.camera import METHOD_VIEWS
from sabun.avatar.camera import VIEWS as AVATAR_VIEWS
from sabun.avatar.camera import ZOOMS as AVATAR_ZOOMS
from sabun.avatar.captions import read_tag_file, tags_beside
from sabun.avatar.commands import RenderModelConfig, render_models
from sabun.avatar.pose import POSES as AVATAR_POSES
from sabun.avatar.raster import STYLES as RENDER_STYLES
from sabun.captions import caption_folder
from sabun.config import ConfigError, check, one_of
from sabun.toyworld.commands import RenderToyConfig, render_toy
from sabun.toyworld.render import VIEWS, ZOOMS

CAPTION_POLICIES = ("full", "stepping-stone", "character", "keep", "none")  # keep: as they are; none: empty


@dataclass
class ModelSource:
    """One character's 3D model file, rendered by sabun (`sabun render model`)."""

    path: str  # a .vrm, .glb or .gltf file
    tags: str | None = (
        None  # the character's booru tags, e.g. "red hair, long hair"; default: `tags` of NAME.toml beside the model
    )


@dataclass
class RenderConfig:
    """How the 3D model files are rendered: one camera rule, light, pose and style for every model."""

    views: list[str] = field(default_factory=lambda: list(METHOD_VIEWS))  # the method's: front and behind
    zooms: list[str] = field(default_factory=lambda: list(AVATAR_ZOOMS))  # portrait, upper-body, cowboy-shot, full-body
    poses: list[str] = field(default_factory=lambda: ["arms-at-sides"])  # the method's: arms at sides
    style: str = "toon"  # toon (MToon, as VRoid Studio shows the model), lit (a plain "3D render") or unlit
    size: int | None = None  # image side in pixels; default: 64 on the toy model, else 768
    supersample: int = 2  # drawn at this many times the size, then averaged down
    background: str = "white"  # the method trains on white
    author: bool = False  # you are the author of a model whose licence lets only its author use it

    def __post_init__(self) -> None:
        one_of(self.style, "style", RENDER_STYLES)
        for name, values, valid in (
            ("views", self.views, AVATAR_VIEWS),
            ("zooms", self.zooms, AVATAR_ZOOMS),
            ("poses", self.poses, AVATAR_POSES),
        ):
            check(bool(values), name, f"is empty; choose from: {', '.join(valid)}")
            for value in values:
                one_of(value, name, valid)
        check(self.size is None or 64 <= self.size <= 2048, "size", f"must be 64 to 2048 pixels, got {self.size}")
        check(1 <= self.supersample <= 4, "supersample", f"must be 1 to 4, got {self.supersample}")


def apply_policy(out: Path, policy: str, extra_tag: str | None = None) -> None:
    """Re-caption a folder of sabun renders by policy (`none`: empty captions; `keep`: as rendered),
    then append `extra_tag` to every caption."""
    if policy == "none":
        for path in out.glob("*.txt"):
            path.write_text("")
    elif policy != "keep":
        caption_folder(out, policy)
    if extra_tag:
        for path in out.glob("*.txt"):
            text = path.read_text().strip()
            path.write_text(f"{text}, {extra_tag}\n" if text else f"{extra_tag}\n")


def render_set(out: Path, character: str, policy: str, extra_tag: str | None = None) -> None:
    """A toy character's `3d` renders (every view and zoom, white background, arms at sides), captioned."""
    render_toy(RenderToyConfig(out=out, style="3d", character=character, views=VIEWS, zooms=ZOOMS))
    apply_policy(out, policy, extra_tag)


def model_tags(source: ModelSource) -> str:
    """A model's tags: given in the config, else `tags` of its tag file (NAME.toml beside it), else none."""
    if source.tags is not None:
        return source.tags
    tag_file = tags_beside(Path(source.path))
    return read_tag_file(tag_file).get("tags", "") if tag_file.is_file() else ""


def render_model_set(
    out: Path, source: ModelSource, policy: str, render: RenderConfig, size: int, log, extra_tag: str | None = None
) -> None:
    """One 3D model's shots (`sabun render model` with the pipeline's render settings), captioned by policy."""
    config = RenderModelConfig(
        models=(Path(source.path),),
        out=out,
        views=tuple(render.views),
        zooms=tuple(render.zooms),
        poses=tuple(render.poses),
        style=render.style,
        size=size,
        supersample=render.supersample,
        background=render.background,
        tags=source.tags,
        policy=policy if policy in ("stepping-stone", "character") else "full",
        author=render.author,
    )
    render_models(
        config,
        note=log,
        bar=lambda total: tqdm(total=total, desc=f"rendering {Path(source.path).name}", unit="shot", leave=False),
    )
    apply_policy(out, "none" if policy == "none" else "keep", extra_tag)


def copy_set(source: Path, out: Path, policy: str) -> None:
    """The user's folder copied (their files are never rewritten), captions re-made by policy where
    sabun's render metadata is present."""
    shutil.copytree(source, out)
    if policy == "none":
        for path in out.rglob("*.txt"):
            path.write_text("")
    elif policy != "keep":
        for folder in sorted({p.parent for p in out.rglob("*.json")}):
            caption_folder(folder, policy)


def check_model_file(path: str, where: str) -> Path:
    """A model file that exists and that sabun renders; errors name the config field and the file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(where, f"{file}: no such file; give a .vrm, .glb or .gltf file")
    if file.suffix.lower() not in (".vrm", ".glb", ".gltf"):
        raise ConfigError(where, f"{file}: is not a .vrm, .glb or .gltf file; export the model as VRM or glTF")
    return file
