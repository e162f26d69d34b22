"""Load a .vrm / .glb / .gltf character into an `Avatar`, exactly as the file stores it.

Nothing is re-oriented, posed or morphed here: nodes keep their local transforms, morph targets
stay deltas and VRM 0.x models keep facing -Z. What *is* translated is vocabulary: VRM 0.x
humanoid bone names, licence fields and MToon parameters are mapped onto VRM 1.0's meaning
(see `types.py`), so the rest of sabun handles one convention.

Why pygltflib: it keeps every extension's JSON as written (`VRM`, `VRMC_*`, `KHR_*` stay plain
dicts on the objects they belong to), keeps skins, morph targets and the node tree as the file
has them, and models GLB containers and their BIN chunk. trimesh, the obvious alternative,
flattens a scene into its own mesh objects and drops skins and the VRM extensions, which are the
point of a VRM. pygltflib does not decode accessors, so sabun does that itself with numpy
(component types, `normalized`, strides, sparse accessors, bounds checks), and it reads the GLB
header and the buffers itself too, so a truncated or damaged file gets a message that says so.

Supported: triangles, strips and fans (points and lines are dropped); POSITION, NORMAL,
TEXCOORD_n, COLOR_0, JOINTS_0 / WEIGHTS_0 (four influences; JOINTS_1 / WEIGHTS_1 are not read),
morph target POSITION / NORMAL deltas, KHR_mesh_quantization, KHR_texture_transform,
KHR_materials_unlit, KHR_materials_emissive_strength, EXT_texture_webp, VRMC_materials_mtoon and
VRM 0.x `materialProperties`; PNG, JPEG and WebP images. Not supported, with an error naming the
extension when the file requires it: Draco and meshopt compression, KTX2 / Basis textures.
Only the textures that materials use as base colour or MToon shade are decoded.

`Avatar.sha256` is the hash of the file named by `path` (for a .gltf, of the JSON file only,
not of its .bin and images), which is what identifies the model in sabun's records.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import os
import re
import stat
import struct
import urllib.parse
import warnings
from pathlib import Path

import numpy as np
import pygltflib
from PIL import Image

from sabun.avatar.types import (
    ALPHA_MODES,
    CLAMP_TO_EDGE,
    MIRRORED_REPEAT,
    REPEAT,
    Avatar,
    Material,
    Mesh,
    Meta,
    MToon,
    Node,
    Primitive,
    Skin,
    Texture,
    TextureRef,
)
from sabun.errors import SabunError

SUPPORTED_EXTENSIONS = frozenset(
    {
        "KHR_materials_unlit",
        "KHR_texture_transform",
        "KHR_mesh_quantization",
        "KHR_materials_emissive_strength",
        "EXT_texture_webp",
        "VRM",
        "VRMC_vrm",
        "VRMC_materials_mtoon",
        "VRMC_springBone",
        "VRMC_node_constraint",
        "VRMC_vrm_animation",
    }
)
"""Extensions a file may list in `extensionsRequired` and still load."""

_REEXPORT = "export the model again from its editor (VRoid Studio, Blender's VRM add-on, UniVRM)"

# glTF componentType -> little-endian numpy dtype
_COMPONENTS = {
    5120: np.dtype("<i1"),
    5121: np.dtype("<u1"),
    5122: np.dtype("<i2"),
    5123: np.dtype("<u2"),
    5125: np.dtype("<u4"),
    5126: np.dtype("<f4"),
}
_WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
# Divisors for `normalized` integers (glTF 2.0 spec, "Animations" / "Accessors": signed values clamp at -1).
_NORMALIZERS = {5120: 127.0, 5121: 255.0, 5122: 32767.0, 5123: 65535.0}
_MAX_SPARSE_ONLY_COUNT = 1 << 24
"""An accessor without a bufferView is allocated from its `count` alone; bound it so a damaged count cannot exhaust memory."""
MAX_FILE_BYTES = 1 << 32
"""The largest model file, external buffer or image file read: 4 GiB, the most a GLB can hold."""
MAX_DECODED_BYTES = 2 << 30
"""The most accessor data one file may decode (2 GiB; a 100k-triangle character needs tens of MB).
Accessors may overlap in their buffer and sparse ones are allocated from their count, so a small
file could otherwise declare far more data than it holds."""
MAX_VERTICES = 1 << 24
"""The most vertices (summed over primitives) and, separately, triangles a file may have (16.7M each;
a detailed character has a few hundred thousand)."""
MAX_TEXTURE_PIXELS = 1 << 29
"""The most texture pixels one file may decode (537M, 2 GiB as RGBA: 32 textures of 4096 x 4096)."""
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
"""What glTF allows (plus EXT_texture_webp); limiting PIL to these keeps it off plugins such as EPS (ghostscript)."""
_WRAPS = (REPEAT, CLAMP_TO_EDGE, MIRRORED_REPEAT)
_NEAREST = 9728
_OUTLINE_MODES_V1 = {"none": "none", "worldCoordinates": "world", "screenCoordinates": "screen"}
_OUTLINE_MODES_V0 = ("none", "world", "screen")
_ALPHA_MODES_V0 = ("OPAQUE", "MASK", "BLEND", "BLEND")
"""VRM 0.x MToon `_BlendMode`: 0 opaque, 1 cutout, 2 transparent, 3 transparent with z-write."""
_UNLIT_ALPHA_V0 = {
    "VRM/UnlitTexture": "OPAQUE",
    "VRM/UnlitCutout": "MASK",
    "VRM/UnlitTransparent": "BLEND",
    "VRM/UnlitTransparentZWrite": "BLEND",
}
# VRM 0.x -> 1.0 humanoid renames (VRM 1.0 humanoid spec): 0.x counts the thumb from the metacarpal.
_BONE_RENAMES_V0 = {
    f"{side}{old}": f"{side}{new}"
    for side in ("left", "right")
    for old, new in (("ThumbProximal", "ThumbMetacarpal"), ("ThumbIntermediate", "ThumbProximal"))
}
_AVATAR_PERMISSIONS_V0 = {
    "OnlyAuthor": "onlyAuthor",
    "ExplicitlyLicensedPerson": "onlySeparatelyLicensedPerson",
    "Everyone": "everyone",
}
# UniVRM's MigrationVrmMeta maps 0.x commercialUssageName this way.
_COMMERCIAL_V0 = {"Allow": "personalProfit", "Disallow": "personalNonProfit"}
_ALLOW_V0 = {"Allow": True, "Disallow": False}


def load_avatar(path: str | os.PathLike, max_texture_side: int = 8192) -> Avatar:
    """Read a .vrm, .glb or .gltf file.

    Args:
        path: the file; a .gltf's buffers and images are looked up relative to its folder.
        max_texture_side: images wider or taller than this many pixels are refused (checked from the
            image header, before decoding), so a hostile or mistaken file cannot exhaust memory.

    Returns:
        The Avatar, with the data as stored in the file.

    Raises:
        SabunError: for anything that is not a loadable glTF 2.0 character; the message names the
            file, what is wrong and what to do.
    """
    path = Path(path)
    data = _read_bytes(path)
    document, blob = _split_container(path, data)
    _check_document(path, document)
    gltf = _to_pygltflib(path, document)
    try:
        return _Reader(path, gltf, document, blob, max_texture_side).avatar(hashlib.sha256(data).hexdigest())
    except SabunError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, MemoryError) as exc:
        # The reader validates what it uses; this net keeps a case it missed a one-line SabunError too.
        raise SabunError(f"{path}: is not a usable glTF file ({type(exc).__name__}: {exc}); {_REEXPORT}") from None


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise SabunError(f"{path}: no such file; check the path (expected a .vrm, .glb or .gltf file)")
    if path.is_dir():
        raise SabunError(f"{path}: is a folder, expected a .vrm, .glb or .gltf file")
    try:
        kind = _not_regular(path)
        if kind:
            raise SabunError(f"{path}: is {kind}, not a model file; pass a .vrm, .glb or .gltf file")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SabunError(
                f"{path}: is {size / 2**30:.1f} GiB, larger than a glTF file can be (4 GiB); "
                "pass a .vrm, .glb or .gltf file"
            )
        return _read_regular(path, size)
    except OSError as exc:
        raise SabunError(f"{path}: could not be read ({exc.strerror or exc}); check its permissions") from None


def _not_regular(path: Path) -> str:
    """'' for a regular file (symlinks followed); else what it is, for an error message."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file. Opened without blocking and checked again once open,
    so a file swapped for a pipe or a device after the check is refused rather than read forever."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise OSError(0, "not a regular file")
        return file.read(limit)


def _split_container(path: Path, data: bytes) -> tuple[dict, bytes | None]:
    """The glTF JSON object and the GLB BIN chunk (None for a .gltf or a GLB without one)."""
    if data[:4] == b"glTF":
        text, blob = _split_glb(path, data)
    elif data.lstrip()[:1] == b"{" and path.suffix.lower() not in (".vrm", ".glb"):
        text, blob = _decode_text(path, data, "file"), None
    else:
        raise SabunError(
            f"{path}: is not a glTF file (a .vrm or .glb starts with the bytes 'glTF', a .gltf is JSON); "
            "pass a .vrm, .glb or .gltf file"
        )
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise SabunError(f"{path}: its glTF JSON is not valid ({exc}); {_REEXPORT}") from None
    except RecursionError:
        raise SabunError(f"{path}: its glTF JSON is nested too deeply to be a glTF; {_REEXPORT}") from None
    if not isinstance(document, dict):
        raise SabunError(f"{path}: its glTF JSON is not an object; {_REEXPORT}")
    return document, blob


def _split_glb(path: Path, data: bytes) -> tuple[str, bytes | None]:
    """Validate a GLB container (glTF 2.0 spec, "Binary glTF Layout") and return its JSON text and BIN chunk."""
    truncated = f"{path}: is truncated or damaged (%s); download or export it again"
    if len(data) < 20:
        raise SabunError(truncated % f"{len(data)} bytes, too short for a GLB header")
    _, version, length = struct.unpack_from("<4sII", data, 0)
    if version != 2:
        raise SabunError(f"{path}: is GLB version {version}; sabun reads glTF 2.0, so convert the model to glTF 2.0")
    if length != len(data):
        raise SabunError(truncated % f"the header says {length} bytes, the file has {len(data)}")
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    if json_type != b"JSON":
        raise SabunError(truncated % f"the first chunk is {json_type!r}, not the JSON chunk")
    if 20 + json_length > length:
        raise SabunError(truncated % f"the JSON chunk claims {json_length} bytes, past the end of the file")
    text = _decode_text(path, data[20 : 20 + json_length], "JSON chunk")
    blob = None
    offset = 20 + json_length
    while offset < length:
        if offset + 8 > length:
            raise SabunError(truncated % f"{length - offset} stray bytes after the last chunk")
        chunk_length, chunk_type = struct.unpack_from("<I4s", data, offset)
        start, offset = offset + 8, offset + 8 + chunk_length
        if offset > length:
            raise SabunError(
                truncated % f"a {chunk_type!r} chunk claims {chunk_length} bytes, past the end of the file"
            )
        # The spec allows one BIN chunk, right after JSON; other chunk types are for extensions and skipped.
        if chunk_type == b"BIN\x00" and blob is None:
            blob = data[start:offset]
    return text, blob


def _decode_text(path: Path, data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SabunError(
            f"{path}: its {what} is not UTF-8 text ({exc.reason} at byte {exc.start}); {_REEXPORT}"
        ) from None


def _check_document(path: Path, document: dict) -> None:
    """What must hold before anything is decoded: glTF 2.x, and no required extension sabun cannot decode."""
    asset = document.get("asset")
    version = asset.get("version") if isinstance(asset, dict) else None
    if not isinstance(version, str) or not version.startswith("2."):
        raise SabunError(
            f"{path}: asset.version is {_show(version)}, but sabun reads glTF 2.x; convert the model to glTF 2.0"
        )
    required = document.get("extensionsRequired", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        raise SabunError(f"{path}: extensionsRequired is not a list of names; {_REEXPORT}")
    for name in required:
        if name not in SUPPORTED_EXTENSIONS:
            raise SabunError(
                f"{path}: needs the glTF extension {name}, which sabun cannot decode; export the model again "
                "without it (for Draco: turn off mesh compression in the exporter)"
            )


def _to_pygltflib(path: Path, document: dict) -> pygltflib.GLTF2:
    # pygltflib re-parses the text and casts fields to their declared types; a value that cannot be
    # cast (a node that is a number, a children list that is a string) surfaces as one of these.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pygltflib.GLTF2.gltf_from_json(json.dumps(document))
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        raise SabunError(f"{path}: its JSON does not follow the glTF 2.0 schema ({exc}); {_REEXPORT}") from None


def _gamma_to_linear(values: tuple[float, ...]) -> tuple[float, ...]:
    """VRM 0.x stores MToon colours gamma-encoded; three-vrm's `gammaEOTF` decodes them as v ** 2.2."""
    return tuple(max(v, 0.0) ** 2.2 for v in values)


def v0_shading_to_v1(shade_shift: float, shade_toony: float) -> tuple[float, float]:
    """VRM 0.x MToon `_ShadeShift`, `_ShadeToony` -> VRM 1.0 (shadingShiftFactor, shadingToonyFactor).

    The conversion of pixiv/three-vrm, packages/three-vrm-materials-v0compat/src/VRMMaterialsV0CompatPlugin.ts
    (`_parseV0MToonProperties`, "convert v0 shade shift / shade toony"):
        toony_1 = lerp(toony_0, 1, 0.5 + 0.5 * shift_0);  shift_1 = -shift_0 - (1 - toony_1)
    0.x's shift has the opposite sign and the 0.x lit/shade band is re-expressed as 1.0's margin.
    """
    toony = shade_toony + (1.0 - shade_toony) * (0.5 + 0.5 * shade_shift)
    return -shade_shift - (1.0 - toony), toony


def _show(value) -> str:
    """A JSON value for an error message: its repr, cut short (a damaged file may hold huge lists or numbers)."""
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python will print
        text = "a huge number"
    return text if len(text) <= 60 else text[:57] + "..."


def _clamped_float(value: float) -> float:
    """float(value), with integers too large for a float (a damaged file's 1e400-digit number) as infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _lookup(mapping: dict, value):
    """mapping[value] for a VRM 0.x enum string; None for a value the spec does not define."""
    return mapping.get(value) if isinstance(value, str) else None


def _triangles(indices: np.ndarray, mode: int) -> np.ndarray:
    """(K,) vertex indices of a TRIANGLES (4), TRIANGLE_STRIP (5) or TRIANGLE_FAN (6) primitive -> (M, 3) uint32."""
    if mode == 4:
        return indices.reshape(-1, 3)
    count = len(indices) - 2
    if count < 1:
        return np.zeros((0, 3), np.uint32)
    i = np.arange(count)
    if mode == 5:
        # glTF spec: strip triangle i is (v_i, v_{i+1+i%2}, v_{i+2-i%2}), so every triangle keeps the winding.
        return np.stack([indices[i], indices[i + 1 + i % 2], indices[i + 2 - i % 2]], axis=1)
    return np.stack([indices[i + 1], indices[i + 2], np.full(count, indices[0])], axis=1)


def _normalised_weights(weights: np.ndarray, skinned: bool) -> np.ndarray:
    """Rows scaled to sum 1.

    A row summing to 0 would collapse its vertex to the origin under skinning. On a skinned mesh it
    is bound wholly to the joint in its first JOINTS_0 slot (exporters write unweighted vertices with
    joints 0, 0, 0, 0); on a mesh no node skins, weights are unused and such rows stay 0.
    """
    sums = weights.sum(axis=1, keepdims=True)
    out = np.divide(weights, sums, out=np.zeros_like(weights), where=sums > 0)
    if skinned:
        out[sums[:, 0] <= 0] = (1.0, 0.0, 0.0, 0.0)
    return out.astype(np.float32)


class _Reader:
    """Walks one parsed file and builds the Avatar; every check raises a SabunError naming the file."""

    def __init__(self, path: Path, gltf: pygltflib.GLTF2, document: dict, blob: bytes | None, max_texture_side: int):
        self.path = path
        self.gltf = gltf
        self.document = document
        self.blob = blob
        self.max_texture_side = max_texture_side
        # An explicit `null` for a top-level list reaches us as None; treat it as the empty list it means.
        for name in (
            "accessors",
            "bufferViews",
            "buffers",
            "images",
            "materials",
            "meshes",
            "nodes",
            "samplers",
            "scenes",
            "skins",
            "textures",
            "extensionsUsed",
        ):
            if getattr(gltf, name) is None:
                setattr(gltf, name, [])
            if any(entry is None for entry in getattr(gltf, name)):
                raise self.error(f"{name} has a null entry")
        self.buffers: dict[int, bytes] = {}
        self.decoded = 0
        """Bytes of accessor data decoded so far (see MAX_DECODED_BYTES)."""
        self.decoded_arrays: dict[tuple[str, int], np.ndarray] = {}
        self.vertices = self.triangles = self.pixels = 0
        """Running totals over primitives and decoded images (see MAX_VERTICES, MAX_TEXTURE_PIXELS)."""
        self.images: dict[int, np.ndarray] = {}
        self.textures: list[Texture] = []
        self.texture_slots: dict[int, int | None] = {}
        extensions = self.obj(document.get("extensions"), "the file's extensions")
        self.vrm1 = self.obj(extensions.get("VRMC_vrm"), "extensions.VRMC_vrm")
        self.vrm0 = self.obj(extensions.get("VRM"), "extensions.VRM")

    def error(self, problem: str, fix: str = _REEXPORT) -> SabunError:
        return SabunError(f"{self.path}: {problem}; {fix}")

    # --- typed access to JSON values (pygltflib casts known fields; extension dicts are raw JSON) ---

    def index(self, value, count: int, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
            raise self.error(f"{what} is {_show(value)}, but the file has {count} of them")
        return value

    def integer(self, value, what: str, default: int | None = None, minimum: int = 0) -> int:
        if value is None and default is not None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(f"{what} is {_show(value)}, expected a whole number >= {minimum}")
        return value

    def number(self, value, what: str, default: float) -> float:
        if value is None:
            return float(default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(_clamped_float(value)):
            raise self.error(f"{what} is {_show(value)}, expected a finite number")
        return float(value)

    def numbers(self, value, n: int, what: str, default: tuple[float, ...]) -> tuple[float, ...]:
        """The first n numbers of a list (VRM 0.x writes RGBA where RGB is meant); default when absent."""
        if value is None:
            return default
        if not isinstance(value, list) or len(value) < n or None in value[:n]:
            raise self.error(f"{what} is {_show(value)}, expected {n} numbers")
        return tuple(self.number(v, what, 0.0) for v in value[:n])

    def obj(self, value, what: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(f"{what} is {_show(value)}, expected a JSON object")
        return value

    def string(self, value, what: str, default: str = "") -> str:
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(f"{what} is {_show(value)}, expected a string")
        return value

    # --- the whole file ---

    def avatar(self, sha256: str) -> Avatar:
        gltf = self.gltf
        nodes = self.nodes()
        skins = [self.skin(i, skin) for i, skin in enumerate(gltf.skins)]
        materials = [self.material(i, material) for i, material in enumerate(gltf.materials)]
        meshes = [self.mesh(i, mesh, nodes, skins) for i, mesh in enumerate(gltf.meshes)]
        avatar = Avatar(
            path=self.path,
            sha256=sha256,
            format="vrm1" if self.vrm1 else "vrm0" if self.vrm0 else "gltf",
            nodes=nodes,
            roots=self.roots(nodes),
            meshes=meshes,
            skins=skins,
            materials=materials,
            textures=self.textures,
            humanoid=self.humanoid(len(nodes)),
            meta=self.meta(),
            extensions_used=[self.string(name, "extensionsUsed") for name in gltf.extensionsUsed or []],
        )
        if avatar.triangle_count() == 0:
            raise self.error("has no meshes to render (no triangles in any mesh)", "export the model with its meshes")
        shown = avatar.scene_nodes()
        if not any(avatar.nodes[i].mesh is not None and avatar.meshes[avatar.nodes[i].mesh].primitives for i in shown):
            where = f"its scene {gltf.scene or 0}" if gltf.scenes else "the file"
            raise self.error(
                f"has meshes, but no node of {where} shows one ({len(avatar.roots)} root nodes, "
                f"{len(shown)} nodes in all)",
                "export the model with its meshes in the scene",
            )
        return avatar

    # --- nodes ---

    def nodes(self) -> list[Node]:
        gltf = self.gltf
        count = len(gltf.nodes)
        nodes = [self.node(i, node) for i, node in enumerate(gltf.nodes)]
        for i, node in enumerate(gltf.nodes):
            for child in node.children or []:
                child = self.index(child, count, f"a child of node {i}")
                if child == i:
                    raise self.error(f"node {i} lists itself as its child")
                if nodes[child].parent is not None:
                    raise self.error(f"node {child} has two parents (nodes {nodes[child].parent} and {i})")
                nodes[child].parent = i
                nodes[i].children.append(child)
        # One parent each, so walking up from a node either reaches a root or goes round a cycle.
        rooted: set[int] = set()
        for i in range(count):
            path, walker = [], i
            while walker is not None and walker not in rooted:
                if len(path) > count:
                    raise self.error(f"node {i} is part of a cycle in the node tree")
                path.append(walker)
                walker = nodes[walker].parent
            rooted.update(path)
        return nodes

    def node(self, i: int, node: pygltflib.Node) -> Node:
        with np.errstate(over="ignore"):  # a number past float32's range is refused below, naming the node
            return self.node_transforms(i, node)

    def node_transforms(self, i: int, node: pygltflib.Node) -> Node:
        what = f"node {i}"
        out = Node(name=self.string(node.name, f"{what} name"))
        if node.mesh is not None:
            out.mesh = self.index(node.mesh, len(self.gltf.meshes), f"{what} mesh")
        if node.skin is not None:
            out.skin = self.index(node.skin, len(self.gltf.skins), f"{what} skin")
        if node.translation is not None:
            out.translation = np.array(self.numbers(node.translation, 3, f"{what} translation", ()), np.float32)
        if node.rotation is not None:
            out.rotation = np.array(self.numbers(node.rotation, 4, f"{what} rotation", ()), np.float32)
        if node.scale is not None:
            out.scale = np.array(self.numbers(node.scale, 3, f"{what} scale", ()), np.float32)
        if node.matrix is not None:
            # glTF matrices are column-major: reshape reads rows, so transpose to get p' = M @ p.
            out.matrix = np.array(self.numbers(node.matrix, 16, f"{what} matrix", ()), np.float32).reshape(4, 4).T
        for field_name in ("translation", "rotation", "scale", "matrix"):
            value = getattr(out, field_name)
            if value is not None and not np.isfinite(value).all():
                raise self.error(
                    f"{what} {field_name} holds a number too large for a 32-bit float "
                    f"({_show(getattr(node, field_name))})"
                )
        return out

    def roots(self, nodes: list[Node]) -> list[int]:
        gltf = self.gltf
        if not gltf.scenes:
            return [i for i, node in enumerate(nodes) if node.parent is None]
        scene = self.index(gltf.scene if gltf.scene is not None else 0, len(gltf.scenes), "scene")
        roots = [self.index(i, len(nodes), f"a node of scene {scene}") for i in gltf.scenes[scene].nodes or []]
        for i in roots:
            if nodes[i].parent is not None:
                raise self.error(
                    f"scene {scene} lists node {i}, which is not a root (its parent is node {nodes[i].parent})"
                )
        return roots

    # --- buffers and accessors ---

    def uri_bytes(self, uri, what: str, length: int | None = None, limit: int = MAX_FILE_BYTES) -> bytes:
        """The bytes a buffer or image `uri` names: a data: URI, or a file in (or below) the model's folder.

        A buffer passes its byteLength as `length`: a file or data: URI holding less is refused before
        it is read, and no more than `length` bytes are read. An image passes `limit`, its largest size.
        Absolute paths, paths that leave the model's folder (`..`, a symlink pointing out) and anything
        but a regular file (a device such as /dev/zero, a FIFO) are refused: a model names its own files.
        """
        uri = self.string(uri, f"{what} uri")
        if uri.startswith("data:"):
            return self.data_uri(uri, what, length, limit)
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", uri):
            raise self.error(f"{what} refers to {uri}, and sabun does not download", "save that file next to the model")
        shown = _show(uri)
        own_files = (
            "put that file in the model's folder and refer to it by its name, or export the model as a single .glb/.vrm"
        )
        relative = urllib.parse.unquote(uri)
        if not relative or "\0" in relative:
            raise self.error(f"{what} has the uri {shown}, which names no file")
        if os.path.isabs(relative) or relative.startswith("\\") or re.match(r"[A-Za-z]:[\\/]", relative):
            raise self.error(
                f"{what} refers to the absolute path {shown}; a glTF names its files relative to its own folder",
                own_files,
            )
        file = self.path.parent / relative
        missing = self.error(
            f"{what} refers to {shown}, which is missing or unreadable (looked for {file})",
            "put that file next to the model, or export the model as a single .glb/.vrm",
        )
        try:
            resolved, home = file.resolve(), self.path.parent.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise missing from None
        if resolved != home and home not in resolved.parents:
            how = "through a symlink" if ".." not in Path(relative).parts else "with '..'"
            raise self.error(
                f"{what} refers to {shown}, which leads out of the model's folder {how} (to {resolved})", own_files
            )
        try:
            kind = _not_regular(resolved)
            if kind:
                raise self.error(f"{what} refers to {shown}, which is {kind}, not a file", own_files)
            size = resolved.stat().st_size
            if length is not None and size < length:
                raise self.error(
                    f"{what} refers to {shown}, which has {size} bytes, but byteLength says {length}; "
                    "the file is truncated",
                    "copy it again, or export the model again",
                )
            if length is None and size > limit:
                raise self.error(
                    f"{what} refers to {shown}, a file of {size} bytes, more than any image sabun reads "
                    f"({limit} bytes)",
                    "scale the texture down in the model's editor and export again",
                )
            return _read_regular(resolved, length if length is not None else limit)
        except OSError:
            raise missing from None

    def data_uri(self, uri: str, what: str, length: int | None, limit: int) -> bytes:
        """A data: URI's bytes; its size is checked against `length` (or `limit`) before it is decoded."""
        header, comma, payload = uri.partition(",")
        if not comma:
            raise self.error(f"{what} has a data: URI without a ',' before its data")
        base64_encoded = header.endswith(";base64")
        # what the payload decodes to: 3 bytes per 4 base64 characters; at most one per character otherwise
        size = len(payload) // 4 * 3 - payload[-2:].count("=") if base64_encoded else len(payload)
        if length is not None and size < length:
            raise self.error(
                f"{what} has a data: URI of {max(size, 0)} bytes, but byteLength says {length}; the data is truncated"
            )
        if length is None and size > limit:
            raise self.error(
                f"{what} has a data: URI of about {size} bytes, more than any image sabun reads ({limit} bytes)",
                "scale the texture down in the model's editor and export again",
            )
        try:
            if base64_encoded:
                if length is not None:
                    payload = payload[: -(-length // 3) * 4]  # only the characters the declared bytes need
                return base64.b64decode(payload, validate=True)
            return urllib.parse.unquote_to_bytes(payload)
        except (binascii.Error, ValueError):
            raise self.error(f"{what} has a data: URI that is not valid base64") from None

    def buffer(self, i: int) -> bytes:
        if i not in self.buffers:
            what = f"buffer {i}"
            buffer = self.gltf.buffers[i]
            length = self.integer(buffer.byteLength, f"{what} byteLength", minimum=1)
            if length > MAX_FILE_BYTES:
                raise self.error(f"{what} byteLength is {length}, more than a glTF buffer holds (4 GiB)")
            if buffer.uri is not None:
                data = self.uri_bytes(buffer.uri, what, length=length)
            elif i == 0 and self.blob is not None:
                data = self.blob
            else:
                raise self.error(f"{what} has no uri and the file has no binary chunk for it")
            if len(data) < length:
                raise self.error(f"{what} has {len(data)} bytes but byteLength says {length}; the data is truncated")
            self.buffers[i] = data[:length]
        return self.buffers[i]

    def view_bytes(self, i, what: str) -> tuple[bytes, int, int, int | None]:
        """(buffer, start, length, byteStride) of bufferView i, checked to lie inside its buffer."""
        i = self.index(i, len(self.gltf.bufferViews), f"{what} bufferView")
        view = self.gltf.bufferViews[i]
        what = f"bufferView {i}"
        buffer = self.buffer(self.index(view.buffer, len(self.gltf.buffers), f"{what} buffer"))
        start = self.integer(view.byteOffset, f"{what} byteOffset", default=0)
        length = self.integer(view.byteLength, f"{what} byteLength", minimum=1)
        stride = None if view.byteStride is None else self.integer(view.byteStride, f"{what} byteStride", minimum=1)
        if start + length > len(buffer):
            raise self.error(f"{what} runs past the end of its buffer ({start} + {length} > {len(buffer)} bytes)")
        return buffer, start, length, stride

    def accessor(self, i, what: str) -> tuple[np.ndarray, pygltflib.Accessor]:
        """Accessor i as a (count, width) array: float32 when normalized, else its stored dtype."""
        i = self.index(i, len(self.gltf.accessors), f"{what} accessor")
        accessor = self.gltf.accessors[i]
        what = f"accessor {i} ({what})"
        if accessor.componentType not in _COMPONENTS or accessor.type not in _WIDTHS:
            raise self.error(
                f"{what} has componentType {accessor.componentType!r} / type {accessor.type!r}, not glTF's"
            )
        dtype, width = _COMPONENTS[accessor.componentType], _WIDTHS[accessor.type]
        if accessor.type in ("MAT2", "MAT3") and dtype.itemsize < 4:
            # Such matrices have padded columns; nothing sabun reads uses them.
            raise self.error(
                f"{what} is a {accessor.type} of {dtype.itemsize}-byte components, which sabun does not read"
            )
        count = self.integer(accessor.count, f"{what} count", minimum=1)
        if accessor.bufferView is None:
            if count > _MAX_SPARSE_ONLY_COUNT:
                raise self.error(f"{what} has no bufferView and a count of {count}, too many to be real")
            self.spend(count * width * dtype.itemsize, what)
            values = np.zeros((count, width), dtype)
        else:
            values = self.strided(accessor, count, dtype, width, what)
        if accessor.sparse is not None:
            self.apply_sparse(values, accessor.sparse, dtype, width, what)
        if accessor.normalized:
            if accessor.componentType not in _NORMALIZERS:
                raise self.error(f"{what} is normalized, which glTF allows only for 8- and 16-bit integers")
            values = np.maximum(values / np.float32(_NORMALIZERS[accessor.componentType]), -1.0).astype(np.float32)
        return values, accessor

    def strided(self, accessor: pygltflib.Accessor, count: int, dtype: np.dtype, width: int, what: str) -> np.ndarray:
        buffer, start, length, stride = self.view_bytes(accessor.bufferView, what)
        offset = self.integer(accessor.byteOffset, f"{what} byteOffset", default=0)
        element = dtype.itemsize * width
        stride = stride or element
        if stride < element:
            raise self.error(f"{what} has elements of {element} bytes but its bufferView's byteStride is {stride}")
        end = offset + stride * (count - 1) + element
        if end > length:
            raise self.error(f"{what} runs past the end of its bufferView ({end} > {length} bytes)")
        self.spend(count * element, what)
        # (count, width) view with the file's stride (interleaved attributes), copied out of the file's bytes.
        return np.ndarray((count, width), dtype, buffer, start + offset, (stride, dtype.itemsize)).copy()

    def spend(self, size: int, what: str) -> None:
        """Count `size` bytes of decoded accessor data against MAX_DECODED_BYTES, before they are allocated."""
        self.decoded += size
        if self.decoded > MAX_DECODED_BYTES:
            raise self.error(
                f"{what} takes the file's accessor data past {MAX_DECODED_BYTES / 2**30:g} GiB, far more "
                "than a character needs (accessors that overlap in their buffer, or sparse ones with huge "
                "counts); the file is damaged"
            )

    def apply_sparse(
        self, values: np.ndarray, sparse: pygltflib.Sparse, dtype: np.dtype, width: int, what: str
    ) -> None:
        """Overwrite the elements a sparse accessor substitutes (glTF 2.0 spec, "Sparse Accessors")."""
        count = self.integer(sparse.count, f"{what} sparse count", minimum=1)
        if sparse.indices is None or sparse.values is None:
            raise self.error(f"{what} is sparse without indices or values")
        index_type = sparse.indices.componentType
        if index_type not in (5121, 5123, 5125):
            raise self.error(f"{what} has sparse indices of componentType {index_type!r}, not an unsigned integer")
        indices = self.packed(sparse.indices, count, _COMPONENTS[index_type], 1, f"{what} sparse indices")[:, 0]
        replacements = self.packed(sparse.values, count, dtype, width, f"{what} sparse values")
        if indices.max() >= len(values):
            raise self.error(f"{what} has a sparse index {int(indices.max())} past its count {len(values)}")
        values[indices] = replacements

    def packed(self, part, count: int, dtype: np.dtype, width: int, what: str) -> np.ndarray:
        buffer, start, length, _ = self.view_bytes(part.bufferView, what)
        offset = self.integer(part.byteOffset, f"{what} byteOffset", default=0)
        size = count * width * dtype.itemsize
        if offset + size > length:
            raise self.error(f"{what} runs past the end of its bufferView ({offset + size} > {length} bytes)")
        self.spend(size, what)
        return np.frombuffer(buffer, dtype, count * width, start + offset).reshape(count, width).copy()

    def floats(self, i, what: str, types: tuple[str, ...], vertices: int | None = None) -> np.ndarray:
        """A float attribute (integers, normalized or quantized, converted), checked to be finite.

        Decoded once per accessor: primitives and morph targets that share an accessor share the array
        (exporters such as UniVRM share a mesh's attributes between its primitives). A per-vertex
        attribute passes `vertices`, checked against the accessor's count before anything is decoded."""
        i = self.index(i, len(self.gltf.accessors), f"{what} accessor")
        if self.gltf.accessors[i].type not in types:
            raise self.error(f"{what} is a {self.gltf.accessors[i].type} accessor, expected {' or '.join(types)}")
        self.check_count(i, what, vertices)
        if ("floats", i) not in self.decoded_arrays:
            values = self.accessor(i, what)[0].astype(np.float32, copy=False)
            if not np.isfinite(values).all():
                raise self.error(f"{what} contains NaN or infinite values")
            self.decoded_arrays["floats", i] = values
        return self.decoded_arrays["floats", i]

    def ints(self, i, what: str, type_: str, components: tuple[int, ...], vertices: int | None = None) -> np.ndarray:
        i = self.index(i, len(self.gltf.accessors), f"{what} accessor")
        accessor = self.gltf.accessors[i]
        if accessor.type != type_ or accessor.componentType not in components or accessor.normalized:
            raise self.error(
                f"{what} is {accessor.type} of componentType {accessor.componentType}"
                f"{' (normalized)' if accessor.normalized else ''}, expected {type_} of {components}"
            )
        self.check_count(i, what, vertices)
        if ("ints", i) not in self.decoded_arrays:
            self.decoded_arrays["ints", i] = self.accessor(i, what)[0].astype(np.int64)
        return self.decoded_arrays["ints", i]

    def check_count(self, i: int, what: str, vertices: int | None) -> None:
        count = self.gltf.accessors[i].count
        if vertices is not None and count != vertices:
            raise self.error(f"{what} has {_show(count)} values for {vertices} vertices")

    # --- meshes ---

    def mesh(self, i: int, mesh: pygltflib.Mesh, nodes: list[Node], skins: list[Skin]) -> Mesh:
        name = self.string(mesh.name, f"mesh {i} name")
        # JOINTS_0 must fit every skin that deforms this mesh; the smallest bounds them.
        joint_counts = [len(skins[node.skin].joints) for node in nodes if node.mesh == i and node.skin is not None]
        primitives = []
        for k, primitive in enumerate(mesh.primitives or []):
            converted = self.primitive(primitive, f"mesh {i} '{name}' primitive {k}", min(joint_counts, default=None))
            if converted is not None:
                primitives.append(converted)
        weights = [self.number(w, f"mesh {i} '{name}' weights", 0.0) for w in mesh.weights or []]
        for primitive in primitives:
            if weights and primitive.targets and len(primitive.targets) != len(weights):
                raise self.error(
                    f"mesh {i} '{name}' has {len(weights)} morph weights but {len(primitive.targets)} targets"
                )
        return Mesh(name=name, primitives=primitives, weights=weights)

    def primitive(self, primitive: pygltflib.Primitive, what: str, joint_count: int | None) -> Primitive | None:
        """One primitive as triangles; None for points and lines, which sabun does not draw."""
        mode = self.integer(primitive.mode, f"{what} mode", default=4)
        if mode in (0, 1, 2, 3):
            return None
        if mode not in (4, 5, 6):
            raise self.error(f"{what} has mode {mode}, which glTF does not define")
        attributes = vars(primitive.attributes) if primitive.attributes is not None else {}
        if attributes.get("POSITION") is None:
            raise self.error(f"{what} has no POSITION attribute")
        positions = self.floats(attributes["POSITION"], f"{what} POSITION", ("VEC3",))
        n = len(positions)
        self.vertices += n
        if self.vertices > MAX_VERTICES:
            raise self.error(
                f"{what} takes the file past {MAX_VERTICES} vertices, far more than a character has; "
                "the file is damaged, or its meshes should be decimated before rendering"
            )
        triangles = self.indices(primitive, what, n, mode)
        self.triangles += len(triangles)
        if self.triangles > MAX_VERTICES:
            raise self.error(
                f"{what} takes the file past {MAX_VERTICES} triangles, far more than a character has; "
                "the file is damaged, or its meshes should be decimated before rendering"
            )
        if not len(triangles):
            return None  # a strip or fan of fewer than 3 indices: nothing to draw

        def vertex_floats(semantic: str, types: tuple[str, ...]) -> np.ndarray | None:
            if attributes.get(semantic) is None:
                return None
            return self.floats(attributes[semantic], f"{what} {semantic}", types, vertices=n)

        texcoords = []
        while attributes.get(f"TEXCOORD_{len(texcoords)}") is not None:
            texcoords.append(vertex_floats(f"TEXCOORD_{len(texcoords)}", ("VEC2",)))
        colours = vertex_floats("COLOR_0", ("VEC3", "VEC4"))
        if colours is not None and colours.shape[1] == 3:
            colours = np.concatenate([colours, np.ones((n, 1), np.float32)], axis=1)
        joints, weights = self.skinning(attributes, what, n, joint_count)
        return Primitive(
            positions=positions,
            indices=triangles,
            normals=vertex_floats("NORMAL", ("VEC3",)),
            texcoords=texcoords,
            colours=colours,
            joints=joints,
            weights=weights,
            material=None
            if primitive.material is None
            else self.index(primitive.material, len(self.gltf.materials), f"{what} material"),
            targets=[
                self.target(target, f"{what} morph target {t}", n) for t, target in enumerate(primitive.targets or [])
            ],
        )

    def indices(self, primitive: pygltflib.Primitive, what: str, n: int, mode: int) -> np.ndarray:
        if primitive.indices is None:
            indices = np.arange(n, dtype=np.int64)
        else:
            indices = self.ints(primitive.indices, f"{what} indices", "SCALAR", (5121, 5123, 5125))[:, 0]
            if len(indices) and indices.max() >= n:
                raise self.error(f"{what} has vertex index {int(indices.max())}, but only {n} vertices")
        if mode == 4 and len(indices) % 3:
            raise self.error(f"{what} has {len(indices)} triangle indices, not a multiple of 3")
        return _triangles(indices, mode).astype(np.uint32)

    def skinning(self, attributes: dict, what: str, n: int, joint_count: int | None):
        """(joints, weights) of JOINTS_0 / WEIGHTS_0, or (None, None) when the primitive has neither."""
        if attributes.get("JOINTS_0") is None and attributes.get("WEIGHTS_0") is None:
            return None, None
        if attributes.get("JOINTS_0") is None or attributes.get("WEIGHTS_0") is None:
            raise self.error(f"{what} has only one of JOINTS_0 and WEIGHTS_0")
        joints = self.ints(attributes["JOINTS_0"], f"{what} JOINTS_0", "VEC4", (5121, 5123), vertices=n)
        weights = self.floats(attributes["WEIGHTS_0"], f"{what} WEIGHTS_0", ("VEC4",), vertices=n)
        if (weights < 0).any():
            raise self.error(f"{what} WEIGHTS_0 has negative weights")
        if joint_count is not None and joints.max() >= joint_count:
            raise self.error(f"{what} JOINTS_0 uses joint {int(joints.max())}, but its skin has {joint_count} joints")
        return joints, _normalised_weights(weights, skinned=joint_count is not None)

    def target(self, target, what: str, n: int) -> dict[str, np.ndarray]:
        out = {}
        for semantic in ("POSITION", "NORMAL"):
            if self.obj(target, what).get(semantic) is not None:
                out[semantic] = self.floats(target[semantic], f"{what} {semantic}", ("VEC3",), vertices=n)
        return out

    # --- skins ---

    def skin(self, i: int, skin: pygltflib.Skin) -> Skin:
        what = f"skin {i}"
        joints = [self.index(j, len(self.gltf.nodes), f"a joint of {what}") for j in skin.joints or []]
        if not joints:
            raise self.error(f"{what} has no joints")
        if skin.inverseBindMatrices is None:
            inverse_bind = np.tile(np.eye(4, dtype=np.float32), (len(joints), 1, 1))
        else:
            matrices = self.floats(skin.inverseBindMatrices, f"{what} inverseBindMatrices", ("MAT4",))
            if len(matrices) < len(joints):
                raise self.error(f"{what} has {len(joints)} joints but {len(matrices)} inverseBindMatrices")
            # (J, 16) column-major -> (J, 4, 4) with p' = M @ p
            inverse_bind = matrices[: len(joints)].reshape(-1, 4, 4).transpose(0, 2, 1).copy()
        return Skin(joints=joints, inverse_bind=inverse_bind, name=self.string(skin.name, f"{what} name"))

    # --- materials and textures ---

    def material(self, i: int, material: pygltflib.Material) -> Material:
        what = f"material {i}"
        extensions = self.obj(material.extensions, f"{what} extensions")
        pbr = material.pbrMetallicRoughness
        base_info = pbr.baseColorTexture if pbr is not None else None
        emissive = self.numbers(material.emissiveFactor, 3, f"{what} emissiveFactor", (0.0, 0.0, 0.0))
        strength = self.obj(
            extensions.get("KHR_materials_emissive_strength"), f"{what} KHR_materials_emissive_strength"
        )
        alpha_mode = material.alphaMode or "OPAQUE"
        if alpha_mode not in ALPHA_MODES:
            raise self.error(f"{what} alphaMode is {_show(alpha_mode)}, expected one of {ALPHA_MODES}")
        mtoon_json = extensions.get("VRMC_materials_mtoon")
        out = Material(
            name=self.string(material.name, f"{what} name"),
            base_colour=self.numbers(pbr.baseColorFactor if pbr else None, 4, f"{what} baseColorFactor", (1.0,) * 4),
            base_texture=None
            if base_info is None
            else self.texture_ref(
                {"index": base_info.index, "texCoord": base_info.texCoord, "extensions": base_info.extensions},
                f"{what} baseColorTexture",
            ),
            emissive=tuple(
                e * self.number(strength.get("emissiveStrength"), f"{what} emissiveStrength", 1.0) for e in emissive
            ),
            alpha_mode=alpha_mode,
            alpha_cutoff=self.number(material.alphaCutoff, f"{what} alphaCutoff", 0.5),
            double_sided=bool(material.doubleSided),
            # VRM 1.0 MToon materials also carry KHR_materials_unlit, as the fallback for viewers without MToon.
            unlit="KHR_materials_unlit" in extensions and mtoon_json is None,
            mtoon=None
            if mtoon_json is None
            else self.mtoon_v1(self.obj(mtoon_json, f"{what} VRMC_materials_mtoon"), what),
        )
        v0 = self.v0_properties(i, out.name)
        return out if v0 is None else self.material_v0(out, v0, f"{what} (VRM 0.x materialProperties)")

    def texture_ref(self, info, what: str) -> TextureRef | None:
        """A textureInfo object; None when its texture has no image sabun can decode (the factor alone applies)."""
        info = self.obj(info, what)
        slot = self.texture_slot(self.index(info.get("index"), len(self.gltf.textures), f"{what} index"))
        if slot is None:
            return None
        texcoord = self.integer(info.get("texCoord"), f"{what} texCoord", default=0)
        extensions = self.obj(info.get("extensions"), f"{what} extensions")
        transform = self.obj(extensions.get("KHR_texture_transform"), f"{what} KHR_texture_transform")
        return TextureRef(
            texture=slot,
            texcoord=self.integer(
                transform.get("texCoord"), f"{what} KHR_texture_transform texCoord", default=texcoord
            ),
            offset=self.numbers(transform.get("offset"), 2, f"{what} KHR_texture_transform offset", (0.0, 0.0)),
            scale=self.numbers(transform.get("scale"), 2, f"{what} KHR_texture_transform scale", (1.0, 1.0)),
            rotation=self.number(transform.get("rotation"), f"{what} KHR_texture_transform rotation", 0.0),
        )

    def texture_slot(self, i: int) -> int | None:
        """Index into Avatar.textures of glTF texture i, decoding it on first use."""
        if i not in self.texture_slots:
            texture = self.gltf.textures[i]
            what = f"texture {i}"
            extensions = self.obj(texture.extensions, f"{what} extensions")
            webp = self.obj(extensions.get("EXT_texture_webp"), f"{what} EXT_texture_webp")
            source = webp.get("source", texture.source)
            if source is None:
                # Only KHR_texture_basisu (KTX2) supplies images that way, and it is refused above when required.
                self.texture_slots[i] = None
                return None
            image = self.image(self.index(source, len(self.gltf.images), f"{what} source"))
            wrap_s, wrap_t, nearest = REPEAT, REPEAT, False
            if texture.sampler is not None:
                sampler = self.gltf.samplers[self.index(texture.sampler, len(self.gltf.samplers), f"{what} sampler")]
                wrap_s = self.wrap(sampler.wrapS, f"{what} sampler wrapS")
                wrap_t = self.wrap(sampler.wrapT, f"{what} sampler wrapT")
                nearest = sampler.magFilter == _NEAREST
            self.textures.append(
                Texture(
                    image=image,
                    name=self.string(texture.name, f"{what} name"),
                    wrap_s=wrap_s,
                    wrap_t=wrap_t,
                    nearest=nearest,
                )
            )
            self.texture_slots[i] = len(self.textures) - 1
        return self.texture_slots[i]

    def wrap(self, value, what: str) -> int:
        if value is None:
            return REPEAT
        if value not in _WRAPS:
            raise self.error(f"{what} is {_show(value)}, expected one of {_WRAPS}")
        return value

    def image(self, i: int) -> np.ndarray:
        """Image i as (H, W, 4) uint8 RGBA, its size checked from the header before any pixel is decoded."""
        if i not in self.images:
            image = self.gltf.images[i]
            what = f"image {i}" + (f" '{image.name}'" if isinstance(image.name, str) and image.name else "")
            if image.bufferView is not None:
                buffer, start, length, _ = self.view_bytes(image.bufferView, what)
                data = buffer[start : start + length]
            elif image.uri is not None:
                # the largest file an image within max_texture_side can be: uncompressed RGBA, twice over
                data = self.uri_bytes(image.uri, what, limit=max(8 * self.max_texture_side**2, 1 << 20))
            else:
                raise self.error(f"{what} has neither a uri nor a bufferView")
            self.images[i] = self.decode_image(data, what)
        return self.images[i]

    def decode_image(self, data: bytes, what: str) -> np.ndarray:
        limit = self.max_texture_side
        too_large = f"{what} is larger than {limit} px a side, sabun's max_texture_side"
        fix = "scale the texture down in the model's editor, or raise max_texture_side"
        try:
            # PIL's own bomb guard is superseded by the side limit below; its error still fires for images
            # over 2 * Image.MAX_IMAGE_PIXELS (about 13400 px square), which the default limit refuses anyway.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS) as picture:
                    if max(picture.size) > limit:
                        raise self.error(f"{too_large} ({picture.size[0]}x{picture.size[1]})", fix)
                    self.pixels += picture.size[0] * picture.size[1]
                    if self.pixels > MAX_TEXTURE_PIXELS:
                        raise self.error(
                            f"{what} ({picture.size[0]}x{picture.size[1]}) takes the model's textures "
                            f"past {MAX_TEXTURE_PIXELS} pixels, more than sabun decodes for one model",
                            "scale the textures down in the model's editor and export again",
                        )
                    return np.asarray(picture.convert("RGBA"), dtype=np.uint8).copy()
        except Image.DecompressionBombError:
            raise self.error(too_large, fix) from None
        except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
            raise self.error(
                f"{what} could not be decoded as PNG, JPEG or WebP ({exc})",
                "save the texture again as PNG or JPEG and export the model again",
            ) from None

    def mtoon_v1(self, mtoon: dict, what: str) -> MToon:
        """VRMC_materials_mtoon, whose values already have VRM 1.0's meaning."""
        what = f"{what} VRMC_materials_mtoon"
        mode = self.string(mtoon.get("outlineWidthMode"), f"{what} outlineWidthMode", "none")
        if mode not in _OUTLINE_MODES_V1:
            raise self.error(f"{what} outlineWidthMode is {_show(mode)}, expected one of {tuple(_OUTLINE_MODES_V1)}")
        shade_info = mtoon.get("shadeMultiplyTexture")
        return MToon(
            shade_colour=self.numbers(mtoon.get("shadeColorFactor"), 3, f"{what} shadeColorFactor", (0.0, 0.0, 0.0)),
            shade_texture=None if shade_info is None else self.texture_ref(shade_info, f"{what} shadeMultiplyTexture"),
            shading_shift=self.number(mtoon.get("shadingShiftFactor"), f"{what} shadingShiftFactor", 0.0),
            shading_toony=self.number(mtoon.get("shadingToonyFactor"), f"{what} shadingToonyFactor", 0.9),
            outline_mode=_OUTLINE_MODES_V1[mode],
            outline_width=self.number(mtoon.get("outlineWidthFactor"), f"{what} outlineWidthFactor", 0.0),
            outline_colour=self.numbers(mtoon.get("outlineColorFactor"), 3, f"{what} outlineColorFactor", (0.0,) * 3),
            outline_lighting_mix=self.number(
                mtoon.get("outlineLightingMixFactor"), f"{what} outlineLightingMixFactor", 1.0
            ),
        )

    def v0_properties(self, i: int, name: str) -> dict | None:
        """The VRM 0.x materialProperties entry of glTF material i: matched by name, else by position."""
        entries = self.vrm0.get("materialProperties")
        if entries is None:
            return None
        if not isinstance(entries, list):
            raise self.error("extensions.VRM.materialProperties is not a list")
        for entry in entries:
            if isinstance(entry, dict) and name and entry.get("name") == name:
                return entry
        return self.obj(entries[i], f"VRM materialProperties[{i}]") if i < len(entries) else None

    def material_v0(self, material: Material, entry: dict, what: str) -> Material:
        """Overlay a VRM 0.x materialProperties entry on the glTF material, as three-vrm's
        VRMMaterialsV0CompatPlugin does: MToon and the unlit shaders replace it, VRM_USE_GLTFSHADER
        (and an unknown shader) keeps it. 0.x colours are gamma-encoded; alpha is linear."""
        shader = self.string(entry.get("shader"), f"{what} shader")
        floats = self.obj(entry.get("floatProperties"), f"{what} floatProperties")
        vectors = self.obj(entry.get("vectorProperties"), f"{what} vectorProperties")
        textures = self.obj(entry.get("textureProperties"), f"{what} textureProperties")
        if shader != "VRM/MToon" and shader not in _UNLIT_ALPHA_V0:
            return material

        def number(key: str, default: float) -> float:
            return self.number(floats.get(key), f"{what} {key}", default)

        def colour(key: str, default: tuple[float, ...]) -> tuple[float, ...]:
            return _gamma_to_linear(self.numbers(vectors.get(key), 3, f"{what} {key}", default))

        def texture(key: str) -> TextureRef | None:
            if textures.get(key) is None:
                return None
            ref = self.texture_ref({"index": textures[key]}, f"{what} {key}")
            # 0.x `_MainTex` vector is Unity's (offset.xy, scale.xy) with V flipped; three-vrm's _portTextureTransform.
            main = self.numbers(vectors.get("_MainTex"), 4, f"{what} _MainTex", (0.0, 0.0, 1.0, 1.0))
            if ref is not None:
                ref.offset, ref.scale = (main[0], 1.0 - main[3] - main[1]), (main[2], main[3])
            return ref

        colour_rgba = self.numbers(vectors.get("_Color"), 4, f"{what} _Color", (1.0, 1.0, 1.0, 1.0))
        material.base_colour = (*_gamma_to_linear(colour_rgba[:3]), colour_rgba[3])
        material.base_texture = texture("_MainTex")
        material.alpha_cutoff = number("_Cutoff", 0.5)
        if shader in _UNLIT_ALPHA_V0:
            material.alpha_mode, material.unlit, material.mtoon = _UNLIT_ALPHA_V0[shader], True, None
            return material
        material.alpha_mode = self.choice(number("_BlendMode", 0), _ALPHA_MODES_V0, f"{what} _BlendMode")
        material.double_sided = number("_CullMode", 2) == 0  # Unity CullMode: 0 off, 1 front, 2 back
        material.emissive = colour("_EmissionColor", (0.0, 0.0, 0.0))
        material.unlit = False
        shift, toony = v0_shading_to_v1(number("_ShadeShift", 0.0), number("_ShadeToony", 0.9))
        material.mtoon = MToon(
            shade_colour=colour("_ShadeColor", (0.97, 0.81, 0.86)),
            shade_texture=texture("_ShadeTexture"),
            shading_shift=shift,
            shading_toony=toony,
            outline_mode=self.choice(number("_OutlineWidthMode", 0), _OUTLINE_MODES_V0, f"{what} _OutlineWidthMode"),
            outline_width=0.01 * number("_OutlineWidth", 0.0),  # 0.x gives centimetres (three-vrm scales both modes)
            outline_colour=colour("_OutlineColor", (0.0, 0.0, 0.0)),
            # 0.x mixes lighting into the outline only in "mixed" colour mode (_OutlineColorMode 1).
            outline_lighting_mix=number("_OutlineLightingMix", 1.0) if number("_OutlineColorMode", 0) == 1 else 0.0,
        )
        return material

    def choice(self, value: float, options: tuple[str, ...], what: str) -> str:
        if not value.is_integer() or not 0 <= value < len(options):
            raise self.error(f"{what} is {value}, expected 0 .. {len(options) - 1}")
        return options[int(value)]

    # --- VRM humanoid and meta ---

    def humanoid(self, node_count: int) -> dict[str, int]:
        if self.vrm1:
            humanoid = self.obj(self.vrm1.get("humanoid"), "VRMC_vrm.humanoid")
            bones = self.obj(humanoid.get("humanBones"), "VRMC_vrm.humanoid.humanBones")
            pairs = [(name, self.obj(bone, f"humanoid bone {name}").get("node")) for name, bone in bones.items()]
        elif self.vrm0:
            humanoid = self.obj(self.vrm0.get("humanoid"), "VRM.humanoid")
            bones = humanoid.get("humanBones") or []
            if not isinstance(bones, list):
                raise self.error("VRM.humanoid.humanBones is not a list")
            pairs = []
            for bone in bones:
                bone = self.obj(bone, "a VRM.humanoid.humanBones entry")
                name = self.string(bone.get("bone"), "a VRM.humanoid.humanBones bone name")
                pairs.append((_BONE_RENAMES_V0.get(name, name), bone.get("node")))
        else:
            return {}
        out = {}
        for name, node in pairs:
            if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < node_count:
                raise self.error(
                    f"humanoid bone {name} names node {_show(node)}, which does not exist ({node_count} nodes)",
                    "fix the humanoid bone mapping in the VRM exporter and export again",
                )
            if name in out:
                raise self.error(
                    f"humanoid bone {name} is mapped twice", "fix the humanoid bone mapping and export again"
                )
            out[name] = node
        return out

    def meta(self) -> Meta:
        if self.vrm1:
            raw = self.obj(self.vrm1.get("meta"), "VRMC_vrm.meta")
            authors = raw.get("authors") or []
            if not isinstance(authors, list):
                raise self.error("VRMC_vrm.meta.authors is not a list")
            return Meta(
                name=self.string(raw.get("name"), "meta name"),
                version=self.string(raw.get("version"), "meta version"),
                authors=[self.string(a, "meta authors") for a in authors],
                licence=self.string(raw.get("licenseUrl"), "meta licenseUrl"),
                avatar_permission=self.optional_string(raw, "avatarPermission"),
                commercial_usage=self.optional_string(raw, "commercialUsage"),
                allow_sexual=self.optional_bool(raw, "allowExcessivelySexualUsage"),
                allow_violent=self.optional_bool(raw, "allowExcessivelyViolentUsage"),
                allow_redistribution=self.optional_bool(raw, "allowRedistribution"),
                modification=self.optional_string(raw, "modification"),
                raw={k: v for k, v in raw.items() if k != "thumbnailImage"},
            )
        if self.vrm0:
            raw = self.obj(self.vrm0.get("meta"), "VRM.meta")
            author = self.string(raw.get("author"), "meta author")
            licence = self.string(raw.get("licenseName"), "meta licenseName")
            url = self.string(raw.get("otherLicenseUrl"), "meta otherLicenseUrl")
            return Meta(
                name=self.string(raw.get("title"), "meta title"),
                version=self.string(raw.get("version"), "meta version"),
                authors=[author] if author else [],
                licence=f"{licence} ({url})" if licence and url else licence or url,
                avatar_permission=_lookup(_AVATAR_PERMISSIONS_V0, raw.get("allowedUserName")),
                commercial_usage=_lookup(_COMMERCIAL_V0, raw.get("commercialUssageName")),  # sic, 0.x spelling
                allow_sexual=_lookup(_ALLOW_V0, raw.get("sexualUssageName")),
                allow_violent=_lookup(_ALLOW_V0, raw.get("violentUssageName")),
                raw={k: v for k, v in raw.items() if k != "texture"},
            )
        return Meta()

    def optional_string(self, raw: dict, key: str) -> str | None:
        return None if raw.get(key) is None else self.string(raw[key], f"meta {key}")

    def optional_bool(self, raw: dict, key: str) -> bool | None:
        value = raw.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.error(f"meta {key} is {_show(value)}, expected true or false")
        return value
