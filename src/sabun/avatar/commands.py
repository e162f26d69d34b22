"""`sabun render model` as a library function: 3D model files in, captioned training images out.

For each model: load and check it, pose it once, and draw every shot of the shot list with the
same camera rule, light and style as every other model. Each image gets `NAME.png`, `NAME.json`
(the model file's sha256, its VRM meta, the view, zoom, pose, style, camera and size) and
`NAME.txt` (its caption under the chosen policy, which `sabun caption DIR --policy ...` rewrites).

Nothing is written until every model has loaded, passed its licence check and had its tags read,
and no existing file is replaced without `overwrite`: a bad input leaves the output folder as it was.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sabun import __version__
from sabun.avatar.camera import METHOD_VIEWS, VIEWS, ZOOMS, camera_for
from sabun.avatar.captions import NAMED_BACKGROUNDS, POLICIES, caption, read_tag_file, require_tags, tags_beside
from sabun.avatar.gltf import load_avatar
from sabun.avatar.pose import POSES, pose_avatar
from sabun.avatar.raster import STYLES, Renderer, composite
from sabun.avatar.types import Avatar, Meta
from sabun.errors import SabunError
from sabun.io import atomic_output, check_writable, remove_stale_temporaries, umask
from sabun.toyworld.colours import srgb_to_lab, to_hex

METADATA_FORMAT = "sabun.avatar/1"
SIZES = (64, 2048)


@dataclass(frozen=True)
class RenderModelConfig:
    """What `sabun render model` renders."""

    models: tuple[Path, ...]
    """.vrm, .glb or .gltf files; each model's tags come from NAME.toml beside it (tags = "red hair, long hair")."""
    out: Path  # output folder: NAME.png, NAME.json (metadata), NAME.txt (caption)
    views: tuple[str, ...] = METHOD_VIEWS
    """Front, left, right, behind, front-left, front-right, back-left, back-right or all; repeat or comma-separate. Default: front,behind."""
    zooms: tuple[str, ...] = ZOOMS  # portrait, upper-body, cowboy-shot, full-body or all. Default: all
    poses: tuple[str, ...] = ("arms-at-sides",)
    """Arms-at-sides, rest, a-pose, arms-up, hands-on-hips or all. Default: arms-at-sides."""
    style: str = "toon"  # toon (MToon shading and outlines), lit (smooth shading: a 3D-render look) or unlit
    size: int = 768  # image side in pixels (512, 768 or 1024 for SD)
    background: str = "white"  # white, grey, black, transparent or #RRGGBB
    supersample: int = 2  # drawn at this many times the size (plus 4x MSAA), then averaged down
    hide: tuple[str, ...] = ()  # leave out a mesh or node by name (clothes, props); see --list. Repeatable
    tags: str | None = None  # the character's booru tags, for one model, instead of NAME.toml
    policy: str = "full"
    """Caption policy of the .txt files: full, stepping-stone or character."""
    author: bool = False  # state that you are the model's author (needed when its VRM meta allows only its author)
    overwrite: bool = False  # replace an existing output

    def __post_init__(self) -> None:
        if not self.models:
            raise SabunError("give at least one .vrm, .glb or .gltf model file")
        if self.style not in STYLES:
            raise SabunError(f"--style {self.style!r} is not valid; choose one of: {', '.join(STYLES)}")
        if self.policy not in POLICIES:
            raise SabunError(f"--policy {self.policy!r} is not valid; choose one of: {', '.join(POLICIES)}")
        if not SIZES[0] <= self.size <= SIZES[1]:
            raise SabunError(
                f"--size {self.size} is out of range; use {SIZES[0]} to {SIZES[1]} pixels (512, 768 or 1024 for SD)"
            )
        if not 1 <= self.supersample <= 4:
            raise SabunError(f"--supersample {self.supersample} is out of range; use 1 to 4")
        for what, values, valid in (
            ("views", self.views, VIEWS),
            ("zooms", self.zooms, ZOOMS),
            ("poses", self.poses, POSES),
        ):
            unknown = [v for v in values if v not in valid]
            if not values or unknown:
                raise SabunError(
                    f"--{what} {', '.join(unknown) or '(empty)'} is not valid; choose from: {', '.join(valid)}"
                )
        background_colour(self.background)
        if self.tags is not None and len(self.models) > 1:
            raise SabunError('--tags applies to one model; for several, write NAME.toml with tags = "..." beside each')
        stems = [m.stem for m in self.models]
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        if repeated:
            raise SabunError(f"two models are named {repeated[0]!r}: their images would share names; rename one file")


def background_colour(background: str) -> tuple[float, float, float] | None:
    """sRGB 0..1 of a background name or #RRGGBB; None for transparent."""
    if background == "transparent":
        return None
    if background in NAMED_BACKGROUNDS:
        return NAMED_BACKGROUNDS[background]
    if re.fullmatch(r"#[0-9a-fA-F]{6}", background):
        return tuple(int(background[i : i + 2], 16) / 255 for i in (1, 3, 5))
    raise SabunError(
        f"--background {background!r} is not valid; use {', '.join(NAMED_BACKGROUNDS)}, transparent or #RRGGBB"
    )


@dataclass
class Source:
    """One model, checked and ready to render."""

    avatar: Avatar
    tags: str = ""
    clothes: str = ""
    hair_materials: list[str] = field(default_factory=list)
    tag_file: Path | None = None


def meta_record(meta: Meta) -> dict:
    """The VRM meta as written into every render's JSON and, through pipelines, into LoRA metadata."""
    return {
        "name": meta.name,
        "version": meta.version,
        "authors": meta.authors,
        "licence": meta.licence,
        "avatar_permission": meta.avatar_permission,
        "commercial_usage": meta.commercial_usage,
        "allow_sexual": meta.allow_sexual,
        "allow_violent": meta.allow_violent,
        "allow_redistribution": meta.allow_redistribution,
        "modification": meta.modification,
        "raw": meta.raw,
    }


def check_licence(avatar: Avatar, author: bool) -> str:
    """Refuse a model licensed to its author only unless the user says they are the author; returns a warning or ''."""
    meta = avatar.meta
    quoted = json.dumps(
        {k: v for k, v in meta.raw.items() if k in ("avatarPermission", "allowedUserName", "authors", "author")}
    )
    if meta.avatar_permission == "onlyAuthor" and not author:
        raise SabunError(
            f"{avatar.path}: its VRM meta lets only its author use the model ({quoted}); if you are the author, "
            "pass --author; otherwise ask the author for permission"
        )
    if meta.avatar_permission == "onlySeparatelyLicensedPerson":
        return (
            f"{avatar.path}: its VRM meta allows use only under a separate licence ({quoted}); make sure you hold one"
        )
    return ""


HAIR_NAME = re.compile(r"hair|髪", re.IGNORECASE)
NOT_HAIR = re.compile(r"pin|clip|ribbon|acce|ornament|band", re.IGNORECASE)  # hair accessories
MIN_HAIR_PIXELS = 20  # fewer fully covered hair pixels in a shot give no colour reading


def hair_material_indices(source: Source) -> list[int]:
    """The avatar's hair materials: those the tag file names (`hair_materials`), else those whose
    name says hair (`hair`, `髪`) and not a hair accessory (pin, clip, ribbon, band...)."""
    names = [m.name or "" for m in source.avatar.materials]
    if source.hair_materials:
        unknown = [n for n in source.hair_materials if n not in names]
        if unknown:
            raise SabunError(
                f"{source.tag_file}: hair_materials names {unknown[0]!r}, which {source.avatar.path.name} does not have; "
                f"its materials are: {', '.join(n or '(unnamed)' for n in names)}"
            )
        return [i for i, n in enumerate(names) if n in source.hair_materials]
    return [i for i, n in enumerate(names) if HAIR_NAME.search(n) and not NOT_HAIR.search(n)]


def hair_reading(pixels, coverage, names: list[str]) -> dict:
    """The hair's colour in one shot: the median CIE L*a*b* of the pixels hair fully covers
    (`coverage` None: the model has no hair materials)."""

    inside = pixels[..., :3][coverage >= 0.99] if coverage is not None else pixels[:0, 0, :3]
    record = {"materials": names, "pixels": int(len(inside)), "lab": None, "srgb": None}
    if len(inside) >= MIN_HAIR_PIXELS:
        record["lab"] = [round(float(v), 3) for v in np.median(srgb_to_lab(inside), axis=0)]
        record["srgb"] = to_hex(tuple(int(v) for v in np.median(inside, axis=0).round()))
    return record


def load_source(path: Path, config: RenderModelConfig) -> tuple[Source, str]:
    """Load one model, check its licence, read its tags; returns the source and a warning or ''."""
    avatar = load_avatar(path)
    warning = check_licence(avatar, config.author)
    unknown = [
        name for name in config.hide if name not in avatar.mesh_names() and name not in {n.name for n in avatar.nodes}
    ]
    if unknown:
        raise SabunError(
            f"{path}: has no mesh or node named {unknown[0]!r}; its meshes are: {', '.join(avatar.mesh_names())}"
        )
    source = Source(avatar=avatar)
    tag_file = tags_beside(path)
    if tag_file.is_file():
        data = read_tag_file(tag_file)
        source = Source(
            avatar, data.get("tags", ""), data.get("clothes", ""), list(data.get("hair_materials", [])), tag_file
        )
    if config.tags is not None:
        source.tags = config.tags
    hair_material_indices(source)  # a wrong hair_materials name fails before anything is drawn
    # A model that loads but cannot be framed or drawn (all vertices at one point, transforms that overflow,
    # bones away from the mesh) fails here, in its rest pose, before any image of any model is written.
    rest = pose_avatar(avatar, "rest", frozenset(config.hide))
    for zoom in config.zooms:
        camera_for(rest, avatar, config.views[0], zoom)
    return source, warning


def _shots(config: RenderModelConfig) -> list[tuple[str, str, str]]:
    """(pose, view, zoom) of every image of one model, in order."""
    return list(itertools.product(config.poses, config.views, config.zooms))


def image_name(model: Path, pose: str, view: str, zoom: str) -> str:
    return f"{model.stem}_{view}_{zoom}_{pose}"


def metadata(
    source: Source, config: RenderModelConfig, name: str, pose: str, view: str, zoom: str, camera, posed, note: str
) -> dict:
    avatar = source.avatar
    bones = {}
    for bone in ("head", "neck", "hips", "leftHand", "rightHand", "leftFoot", "rightFoot"):
        position = posed.bone(bone, avatar)
        if position is not None:
            where = camera.image_position(position)
            if where is not None:
                bones[bone] = [round(float(v), 5) for v in where]
    return {
        "format": METADATA_FORMAT,
        "name": name,
        "model": {
            "file": avatar.path.name,
            "path": str(avatar.path),
            "sha256": avatar.sha256,
            "format": avatar.format,
            "triangles": avatar.triangle_count(),
        },
        "meta": meta_record(avatar.meta),
        "tags": source.tags,
        "clothes": source.clothes,
        "hair_materials": source.hair_materials,
        "view": view,
        "zoom": zoom,
        "pose": pose,
        "pose_note": note,
        "facing": posed.frame.how,
        "style": config.style,
        "background": config.background,
        "hidden": list(config.hide),
        "size": config.size,
        "supersample": config.supersample,
        "camera": camera.to_json(),
        "bones_in_image": bones,
        "sabun_version": __version__,
    }


def _png(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA" if pixels.shape[-1] == 4 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: Path, data: bytes, overwrite: bool) -> None:
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def render_models(
    config: RenderModelConfig, note: Callable[[str], None] = print, bar: Callable[[int], object] | None = None
) -> list[Path]:
    """Render every shot of every model of `config` into `config.out`; returns the PNG paths.

    `note` receives warnings and notes (one line each); `bar(total)` makes a progress bar (tqdm-like:
    `update()`, `set_postfix_str()`, `close()`) if given.
    """
    loaded = [load_source(path, config) for path in config.models]
    for source, warning in loaded:
        if warning:
            note(f"warning: {warning}")
    shots = _shots(config)
    for source, _ in loaded:
        for pose, view, zoom in shots:
            name = image_name(source.avatar.path, pose, view, zoom)
            for suffix in (".png", ".json", ".txt"):
                check_writable(config.out / f"{name}{suffix}", config.overwrite)
        require_tags(source.avatar.path.name, source.tags, config.policy)  # before any drawing
    background = background_colour(config.background)
    hidden = frozenset(config.hide)
    written, files = [], []
    progress = bar(len(loaded) * len(shots)) if bar else None
    for source, _ in loaded:
        avatar = source.avatar
        hair = hair_material_indices(source)
        hair_names = [avatar.materials[i].name for i in hair]
        for pose in config.poses:
            posed = pose_avatar(avatar, pose, hidden)
            if posed.note:
                note(f"note: {avatar.path.name}: {posed.note}")
            images = []
            with Renderer(avatar, posed, config.style, config.size, config.supersample) as renderer:
                for view, zoom in itertools.product(config.views, config.zooms):
                    camera = camera_for(posed, avatar, view, zoom)
                    pixels = composite(renderer.draw(camera), background)
                    name = image_name(avatar.path, pose, view, zoom)
                    meta = metadata(source, config, name, pose, view, zoom, camera, posed, posed.note)
                    coverage = renderer.material_coverage(camera, set(hair)) if hair else None
                    meta["hair"] = hair_reading(pixels, coverage, hair_names)
                    images.append((name, pixels, meta))
                    if progress:
                        progress.set_postfix_str(name)
                        progress.update()
            for name, pixels, meta in images:
                files.append((f"{name}.png", _png(pixels)))
                files.append((f"{name}.json", (json.dumps(meta, indent=2) + "\n").encode()))
                files.append((f"{name}.txt", (caption(meta, config.policy) + "\n").encode()))
                written.append(config.out / f"{name}.png")
    if progress:
        progress.close()
    write_set(config.out, files)
    return written


def write_set(out: Path, files: list[tuple[str, bytes]]) -> None:
    """Write every (name, bytes) into `out` or none: into a temporary folder beside it first, then
    renamed into place, so a full disk or Ctrl-C leaves no partial set of renders."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    current = out
    try:
        for name, data in files:
            current = out / name
            (stage / name).write_bytes(data)
            os.chmod(stage / name, 0o666 & ~umask())
        for name, _ in files:
            current = out / name
            os.replace(stage / name, out / name)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(current)) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def describe(avatar: Avatar) -> str:
    """What `sabun render model --list` prints: meshes, materials, bones and the licence."""
    lines = [f"{avatar.path.name}: {avatar.format}, {avatar.triangle_count()} triangles, sha256 {avatar.sha256[:16]}"]
    lines.append("meshes (hide one with --hide NAME):")
    for mesh in avatar.meshes:
        triangles = sum(len(p.indices) for p in mesh.primitives)
        morphs = max((len(p.targets) for p in mesh.primitives), default=0)
        lines.append(
            f"  {mesh.name or '(unnamed)'}: {len(mesh.primitives)} primitives, {triangles} triangles"
            + (f", {morphs} morph targets" if morphs else "")
        )
    hair = set(hair_material_indices(Source(avatar)))
    lines.append("materials (* hair, for the hair-colour reading; name others with hair_materials in NAME.toml):")
    for i, m in enumerate(avatar.materials):
        kind = "MToon" if m.mtoon else "unlit" if m.unlit else "PBR"
        outline = (
            f", outline {m.mtoon.outline_mode} {m.mtoon.outline_width:g}"
            if m.mtoon and m.mtoon.outline_mode != "none"
            else ""
        )
        lines.append(
            f"  {'*' if i in hair else ' '}{m.name or '(unnamed)'}: {kind}, {m.alpha_mode}{', double-sided' if m.double_sided else ''}{outline}"
        )
    if avatar.humanoid:
        lines.append(f"humanoid bones ({len(avatar.humanoid)}):")
        lines.append("  " + ", ".join(f"{bone}={avatar.nodes[i].name}" for bone, i in avatar.humanoid.items()))
    else:
        lines.append("humanoid bones: none (renders in the rest pose as stored)")
    meta = avatar.meta
    lines.append(
        f"meta: name {meta.name!r}, authors {', '.join(meta.authors) or '(none)'}, licence {meta.licence or '(none)'}"
    )
    lines.append(
        f"  avatar permission {meta.avatar_permission}, commercial {meta.commercial_usage}, sexual {meta.allow_sexual}, "
        f"violent {meta.allow_violent}, redistribution {meta.allow_redistribution}, modification {meta.modification}"
    )
    return "\n".join(lines)


def contact_sheet(pngs: list[Path], path: Path, columns: int = 8, thumb: int = 192, overwrite: bool = False) -> Path:
    """A labelled grid of rendered images (for looking, not for training: write it outside the data set)."""
    rows = (len(pngs) + columns - 1) // columns
    label = 14
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + label)), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    for i, png in enumerate(pngs):
        x, y = (i % columns) * thumb, (i // columns) * (thumb + label)
        with Image.open(png) as image:
            sheet.paste(image.convert("RGB").resize((thumb, thumb), Image.LANCZOS), (x, y + label))
        meta = json.loads(png.with_suffix(".json").read_text(encoding="utf-8"))
        draw.text((x + 3, y + 1), f"{meta['view']} / {meta['zoom']}", fill=(40, 40, 40))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    _write(path, buffer.getvalue(), overwrite)
    return path
