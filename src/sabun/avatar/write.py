"""Write an Avatar as a binary glTF: plain glTF 2.0, VRM 1.0 or VRM 0.x.

The GLB is packed by hand (one JSON chunk, one BIN chunk), so every byte is under our control and
the same Avatar always gives the same file. VRM 0.x values are written as the exact inverse of
pixiv/three-vrm's `VRMMaterialsV0CompatPlugin` (0.x -> 1.0), so writing a 0.x file and loading it
back gives the MToon values we started from.

Facing: VRM 1.0 and plain glTF models face +Z, VRM 0.x models face -Z. `write_glb` turns the
geometry round when the Avatar's own format and the written version disagree on facing.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from sabun.avatar.types import FORMATS, Avatar, Material, TextureRef
from sabun.errors import SabunError
from sabun.io import atomic_output

GENERATOR = "sabun avatar writer"
VRM1_DEFAULT_LICENCE = "https://vrm.dev/licenses/1.0/"
VRM1_REQUIRED_BONES = (
    "hips", "spine", "head",
    "leftUpperArm", "leftLowerArm", "leftHand", "rightUpperArm", "rightLowerArm", "rightHand",
    "leftUpperLeg", "leftLowerLeg", "leftFoot", "rightUpperLeg", "rightLowerLeg", "rightFoot",
)  # fmt: skip
# VRM 0.x also requires these; 1.0 made them optional.
VRM0_EXTRA_REQUIRED_BONES = ("chest", "neck")
# VRM 1.0 added a metacarpal bone to the thumb, so 0.x's thumb names sit one joint further in.
VRM1_TO_VRM0_BONE = {
    f"{side}{v1}": f"{side}{v0}"
    for side in ("left", "right")
    for v1, v0 in (("ThumbMetacarpal", "ThumbProximal"), ("ThumbProximal", "ThumbIntermediate"))
}
VRM0_LICENCE_NAMES = (
    "Redistribution_Prohibited", "CC0", "CC_BY", "CC_BY_NC", "CC_BY_SA", "CC_BY_NC_SA", "CC_BY_ND", "CC_BY_NC_ND",
    "Other",
)  # fmt: skip
VRM0_ALLOWED_USER = {"onlyAuthor": "OnlyAuthor", "onlySeparatelyLicensedPerson": "ExplicitlyLicensedPerson",
                     "everyone": "Everyone"}  # fmt: skip
OUTLINE_MODE_V1 = {"none": "none", "world": "worldCoordinates", "screen": "screenCoordinates"}
OUTLINE_MODE_V0 = {"none": 0, "world": 1, "screen": 2}

# glTF component types and buffer-view targets
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
NEAREST, LINEAR, LINEAR_MIPMAP_LINEAR = 9728, 9729, 9987
GLB_MAGIC, JSON_CHUNK, BIN_CHUNK = 0x46546C67, 0x4E4F534A, 0x004E4942

# 180 degrees about +Y: x -> -x, z -> -z
_TURN = np.diag([-1.0, 1.0, -1.0, 1.0]).astype(np.float32)


def write_glb(avatar: Avatar, path, version: str = "vrm1", overwrite: bool = False) -> Path:
    """Write `avatar` as a GLB at `path` (atomically; an existing file only with `overwrite`).

    Args:
        avatar: the model; geometry is taken as facing the way `avatar.format` does.
        path: the output file (.vrm or .glb).
        version: "vrm1", "vrm0" or "gltf" (no VRM extensions; the humanoid map and meta are dropped).
        overwrite: replace an existing file.
    Returns:
        `path` as a Path.
    """
    path = Path(path)
    if version not in FORMATS:
        raise SabunError(f"{path}: unknown version {version!r}; choose one of {', '.join(FORMATS)}")
    if (avatar.format == "vrm0") != (version == "vrm0"):
        avatar = turn_around(avatar)
    data = glb_bytes(avatar, version, str(path))
    with atomic_output(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return path


def turn_around(avatar: Avatar) -> Avatar:
    """A copy of `avatar` rotated 180 degrees about +Y (the model's format is kept).

    Every local transform is conjugated by the turn T (L' = T L T), and mesh-space data is turned
    (v' = T v), so world positions become T W v and skinning T W B^-1 v stays consistent with
    B'^-1 = T B^-1 T. T has determinant +1, so triangle winding is unchanged.
    """
    out = copy.deepcopy(avatar)
    flip = np.array([-1.0, 1.0, -1.0], np.float32)

    def turn(a: np.ndarray, by: np.ndarray = flip) -> np.ndarray:
        # adding 0 turns the -0.0 a negated zero gives back into 0.0, so turning twice is exact
        return (np.asarray(a, np.float32) * by + np.float32(0)).astype(np.float32)

    for node in out.nodes:
        node.translation = turn(node.translation)
        # conjugating a rotation by a half-turn about Y negates the quaternion's x and z
        node.rotation = turn(node.rotation, np.array([-1, 1, -1, 1], np.float32))
        if node.matrix is not None:
            node.matrix = turn(_TURN @ np.asarray(node.matrix, np.float32) @ _TURN, np.float32(1))
    for mesh in out.meshes:
        for prim in mesh.primitives:
            prim.positions = turn(prim.positions)
            if prim.normals is not None:
                prim.normals = turn(prim.normals)
            prim.targets = [
                {key: turn(delta) if key in ("POSITION", "NORMAL") else delta
                 for key, delta in target.items()}
                for target in prim.targets
            ]  # fmt: skip
    for skin in out.skins:
        skin.inverse_bind = turn(_TURN @ np.asarray(skin.inverse_bind, np.float32) @ _TURN, np.float32(1))
    return out


def extensions_for(avatar: Avatar, version: str) -> list[str]:
    """The glTF extensions a file of `avatar` written as `version` uses, sorted."""
    used = set()
    for material in avatar.materials:
        mtoon = material.mtoon is not None and version == "vrm1"
        if material.unlit or mtoon:
            used.add("KHR_materials_unlit")
        if mtoon:
            used.add("VRMC_materials_mtoon")
        refs = [material.base_texture, material.mtoon.shade_texture if mtoon else None]
        if any(ref is not None and not _identity_transform(ref) for ref in refs):
            used.add("KHR_texture_transform")
    used.add({"vrm1": "VRMC_vrm", "vrm0": "VRM", "gltf": ""}[version])
    return sorted(used - {""})


def glb_bytes(avatar: Avatar, version: str, where: str = "avatar") -> bytes:
    """The GLB file of `avatar` as `version`, geometry exactly as given (no turning).

    `where` names the output in error messages.
    """
    _check(avatar, version, where)
    packer = _Packer()
    gltf: dict = {"asset": {"version": "2.0", "generator": GENERATOR}}
    extensions_used = extensions_for(avatar, version)
    if extensions_used:
        gltf["extensionsUsed"] = extensions_used
    gltf["scene"] = 0
    gltf["scenes"] = [{"nodes": list(avatar.roots)}]
    gltf["nodes"] = [_node_json(node) for node in avatar.nodes]
    gltf["meshes"] = [_mesh_json(mesh, packer) for mesh in avatar.meshes]
    if avatar.skins:
        gltf["skins"] = [_skin_json(skin, packer) for skin in avatar.skins]
    if avatar.materials:
        gltf["materials"] = [_material_json(m, version) for m in avatar.materials]
    if avatar.textures:
        samplers: list[dict] = []
        gltf["textures"] = []
        gltf["images"] = []
        for i, texture in enumerate(avatar.textures):
            sampler = {"magFilter": NEAREST if texture.nearest else LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR,
                       "wrapS": int(texture.wrap_s), "wrapT": int(texture.wrap_t)}  # fmt: skip
            if sampler not in samplers:
                samplers.append(sampler)
            gltf["textures"].append({"sampler": samplers.index(sampler), "source": i})
            image = {"bufferView": packer.view(_png(texture.image)), "mimeType": "image/png"}
            if texture.name:
                image["name"] = texture.name
            gltf["images"].append(image)
        gltf["samplers"] = samplers
    if version == "vrm1":
        gltf["extensions"] = {"VRMC_vrm": _vrm1_json(avatar)}
    elif version == "vrm0":
        gltf["extensions"] = {"VRM": _vrm0_json(avatar, where)}
    gltf["accessors"] = packer.accessors
    if packer.views:
        gltf["bufferViews"] = packer.views
        gltf["buffers"] = [{"byteLength": packer.length}]
    text = json.dumps(gltf, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    text += b" " * (-len(text) % 4)  # the spec pads the JSON chunk with spaces
    binary = b"".join(packer.chunks)
    out = [struct.pack("<III", GLB_MAGIC, 2, 12 + 8 + len(text) + (8 + len(binary) if binary else 0)),
           struct.pack("<II", len(text), JSON_CHUNK), text]  # fmt: skip
    if binary:
        out += [struct.pack("<II", len(binary), BIN_CHUNK), binary]
    return b"".join(out)


class _Packer:
    """Collects binary data into one buffer: bufferViews 4-byte aligned, one view per accessor."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.views: list[dict] = []
        self.accessors: list[dict] = []
        self.length = 0

    def view(self, data: bytes, target: int | None = None) -> int:
        view = {"buffer": 0, "byteOffset": self.length, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        padded = data + b"\0" * (-len(data) % 4)
        self.chunks.append(padded)
        self.length += len(padded)
        self.views.append(view)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, component: int, kind: str, target: int | None, bounds: bool = False) -> int:
        dtype = {FLOAT: np.float32, UNSIGNED_SHORT: np.uint16, UNSIGNED_INT: np.uint32}[component]
        array = np.ascontiguousarray(array, dtype=dtype)
        accessor = {"bufferView": self.view(array.tobytes(), target), "componentType": component,
                    "count": int(array.shape[0]), "type": kind}  # fmt: skip
        if bounds:
            flat = array.reshape(array.shape[0], -1)
            accessor["min"] = [_num(v) for v in flat.min(axis=0)]
            accessor["max"] = [_num(v) for v in flat.max(axis=0)]
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def _num(value) -> float | int:
    """A JSON number: ints stay ints, float32 values are written as the exact double they hold."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value)


def _nums(values) -> list:
    return [_num(v) for v in np.asarray(values).reshape(-1)]


def _check(avatar: Avatar, version: str, where: str) -> None:
    """Raise a one-line SabunError for anything that would make an invalid file."""

    def fail(what: str) -> None:
        raise SabunError(f"{where}: cannot write: {what}")

    n_nodes, n_meshes, n_skins = len(avatar.nodes), len(avatar.meshes), len(avatar.skins)
    n_materials, n_textures = len(avatar.materials), len(avatar.textures)
    for root in avatar.roots:
        if not 0 <= root < n_nodes:
            fail(f"root node {root} is out of range ({n_nodes} nodes)")
    skins_of_mesh: dict[int, set[int]] = {}
    for i, node in enumerate(avatar.nodes):
        for child in node.children:
            if not 0 <= child < n_nodes:
                fail(f"node {i} ({node.name!r}) has child {child}, out of range ({n_nodes} nodes)")
        if node.mesh is not None and not 0 <= node.mesh < n_meshes:
            fail(f"node {i} ({node.name!r}) uses mesh {node.mesh}, out of range ({n_meshes} meshes)")
        if node.skin is not None and not 0 <= node.skin < n_skins:
            fail(f"node {i} ({node.name!r}) uses skin {node.skin}, out of range ({n_skins} skins)")
        if node.skin is not None and node.mesh is None:
            fail(f"node {i} ({node.name!r}) has a skin but no mesh")
        if node.mesh is not None and node.skin is not None:
            skins_of_mesh.setdefault(node.mesh, set()).add(node.skin)
    for i, skin in enumerate(avatar.skins):
        if any(not 0 <= j < n_nodes for j in skin.joints):
            fail(f"skin {i} names a joint node out of range ({n_nodes} nodes)")
        if np.shape(skin.inverse_bind) != (len(skin.joints), 4, 4):
            fail(
                f"skin {i} has inverse binds of shape {np.shape(skin.inverse_bind)}, expected ({len(skin.joints)}, 4, 4)"
            )
    for i, material in enumerate(avatar.materials):
        refs = [("base", material.base_texture)]
        if material.mtoon is not None:
            refs.append(("shade", material.mtoon.shade_texture))
        for what, ref in refs:
            if ref is not None and not 0 <= ref.texture < n_textures:
                fail(f"the {what} texture {ref.texture} of material {i} ({material.name!r}) is out of range "
                     f"({n_textures} textures)")  # fmt: skip
        if material.alpha_mode not in ("OPAQUE", "MASK", "BLEND"):
            fail(f"material {i} ({material.name!r}) has alpha mode {material.alpha_mode!r}; use OPAQUE, MASK or BLEND")
        if material.mtoon is not None and material.mtoon.outline_mode not in OUTLINE_MODE_V1:
            fail(f"material {i} ({material.name!r}) has outline mode {material.mtoon.outline_mode!r}; "
                 "use none, world or screen")  # fmt: skip
    for i, texture in enumerate(avatar.textures):
        image = np.asarray(texture.image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 4 or 0 in image.shape:
            fail(f"texture {i} ({texture.name!r}) is {image.dtype} {image.shape}, expected (H, W, 4) uint8")
    for m, mesh in enumerate(avatar.meshes):
        n_targets = {len(p.targets) for p in mesh.primitives}
        if len(n_targets) > 1:
            fail(f"mesh {m} ({mesh.name!r}): its primitives have different numbers of morph targets")
        if mesh.weights and n_targets != {len(mesh.weights)}:
            fail(
                f"mesh {m} ({mesh.name!r}) has {len(mesh.weights)} default weights for {n_targets.pop()} morph targets"
            )
        n_joints = min((len(avatar.skins[s].joints) for s in skins_of_mesh.get(m, ())), default=None)
        for k, prim in enumerate(mesh.primitives):
            problem = _primitive_problem(prim, n_materials, n_joints)
            if problem:
                fail(f"mesh {m} ({mesh.name!r}) primitive {k}: {problem}")
    if version == "gltf":
        return
    for bone, node in avatar.humanoid.items():
        if not 0 <= node < n_nodes:
            fail(f"humanoid bone {bone!r} points at node {node}, out of range ({n_nodes} nodes)")
    required = VRM1_REQUIRED_BONES + (VRM0_EXTRA_REQUIRED_BONES if version == "vrm0" else ())
    missing = [bone for bone in required if bone not in avatar.humanoid]
    if missing:
        fail(f"VRM requires the humanoid bones {', '.join(missing)}; add them, or write version 'gltf'")
    if not avatar.meta.authors:
        fail("VRM meta needs at least one author; set avatar.meta.authors")


def _primitive_problem(prim, n_materials: int, n_joints: int | None) -> str | None:
    """What makes `prim` unwritable, or None."""
    positions = np.asarray(prim.positions)
    if positions.ndim != 2 or positions.shape[1] != 3 or len(positions) == 0:
        return f"positions have shape {positions.shape}, expected (N, 3) with N > 0"
    n = len(positions)
    if not np.isfinite(positions).all():
        return "positions are not all finite"
    indices = np.asarray(prim.indices)
    if indices.ndim != 2 or indices.shape[1] != 3:
        return f"indices have shape {indices.shape}, expected (M, 3)"
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        return f"an index is out of range ({n} vertices)"
    per_vertex = [
        ("normals", prim.normals, 3),
        ("colours", prim.colours, 4),
        ("joints", prim.joints, 4),
        ("weights", prim.weights, 4),
    ] + [(f"texcoords[{i}]", uv, 2) for i, uv in enumerate(prim.texcoords)]
    for t, target in enumerate(prim.targets):
        per_vertex += [(f"morph target {t} {key}", delta, 3) for key, delta in target.items()]
    for what, array, width in per_vertex:
        if array is not None and (np.shape(array) != (n, width) or not np.isfinite(array).all()):
            return f"{what} have shape {np.shape(array)} or non-finite values, expected finite ({n}, {width})"
    if (prim.joints is None) != (prim.weights is None):
        return "joints and weights must be given together"
    # joints of a mesh no skinned node draws are never used, so only a skin gives them a range
    joints = None if prim.joints is None else np.asarray(prim.joints)
    if joints is not None and n_joints is not None and (joints.min() < 0 or joints.max() >= n_joints):
        return f"a joint index is out of range (the skin has {n_joints} joints)"
    if joints is not None and joints.max() > 65535:
        return "a joint index does not fit glTF's unsigned short"
    if prim.material is not None and not 0 <= prim.material < n_materials:
        return f"material {prim.material} is out of range ({n_materials} materials)"
    return None


def _node_json(node) -> dict:
    out: dict = {"name": node.name}
    if node.children:
        out["children"] = [int(c) for c in node.children]
    if node.matrix is not None:
        out["matrix"] = _nums(np.asarray(node.matrix, np.float32).T)  # glTF matrices are column-major
    else:
        if np.any(np.asarray(node.translation) != 0):
            out["translation"] = _nums(np.asarray(node.translation, np.float32))
        if np.any(np.asarray(node.rotation) != np.array([0, 0, 0, 1])):
            out["rotation"] = _nums(np.asarray(node.rotation, np.float32))
        if np.any(np.asarray(node.scale) != 1):
            out["scale"] = _nums(np.asarray(node.scale, np.float32))
    if node.mesh is not None:
        out["mesh"] = int(node.mesh)
    if node.skin is not None:
        out["skin"] = int(node.skin)
    return out


def _mesh_json(mesh, packer: _Packer) -> dict:
    primitives = []
    for prim in mesh.primitives:
        attributes = {"POSITION": packer.accessor(prim.positions, FLOAT, "VEC3", ARRAY_BUFFER, bounds=True)}
        if prim.normals is not None:
            attributes["NORMAL"] = packer.accessor(prim.normals, FLOAT, "VEC3", ARRAY_BUFFER)
        for i, uv in enumerate(prim.texcoords):
            attributes[f"TEXCOORD_{i}"] = packer.accessor(uv, FLOAT, "VEC2", ARRAY_BUFFER)
        if prim.colours is not None:
            attributes["COLOR_0"] = packer.accessor(prim.colours, FLOAT, "VEC4", ARRAY_BUFFER)
        if prim.joints is not None:
            attributes["JOINTS_0"] = packer.accessor(prim.joints, UNSIGNED_SHORT, "VEC4", ARRAY_BUFFER)
            attributes["WEIGHTS_0"] = packer.accessor(prim.weights, FLOAT, "VEC4", ARRAY_BUFFER)
        indices = np.asarray(prim.indices).reshape(-1)
        # 65535 is uint16's primitive-restart value, which glTF forbids in index data
        small = len(prim.positions) < 65535
        out = {"attributes": attributes,
               "indices": packer.accessor(indices, UNSIGNED_SHORT if small else UNSIGNED_INT, "SCALAR",
                                          ELEMENT_ARRAY_BUFFER),
               "mode": 4}  # fmt: skip
        if prim.material is not None:
            out["material"] = int(prim.material)
        if prim.targets:
            out["targets"] = [
                {key: packer.accessor(delta, FLOAT, "VEC3", ARRAY_BUFFER, bounds=key == "POSITION")
                 for key, delta in target.items() if key in ("POSITION", "NORMAL")}
                for target in prim.targets
            ]  # fmt: skip
        primitives.append(out)
    out = {"name": mesh.name, "primitives": primitives}
    if mesh.weights:
        out["weights"] = [float(w) for w in mesh.weights]
    return out


def _skin_json(skin, packer: _Packer) -> dict:
    # (J, 4, 4) row-major p' = M @ p -> glTF's column-major: each matrix transposed
    matrices = np.asarray(skin.inverse_bind, np.float32).transpose(0, 2, 1).reshape(-1, 16)
    out = {
        "joints": [int(j) for j in skin.joints],
        "inverseBindMatrices": packer.accessor(matrices, FLOAT, "MAT4", None),
    }
    if skin.name:
        out["name"] = skin.name
    return out


def _identity_transform(ref: TextureRef) -> bool:
    return tuple(ref.offset) == (0.0, 0.0) and tuple(ref.scale) == (1.0, 1.0) and ref.rotation == 0.0


def _texture_info(ref: TextureRef) -> dict:
    out: dict = {"index": int(ref.texture)}
    if ref.texcoord:
        out["texCoord"] = int(ref.texcoord)
    if not _identity_transform(ref):
        transform = {"offset": [float(v) for v in ref.offset], "scale": [float(v) for v in ref.scale]}
        if ref.rotation:
            transform["rotation"] = float(ref.rotation)
        out["extensions"] = {"KHR_texture_transform": transform}
    return out


def _material_json(material: Material, version: str) -> dict:
    pbr: dict = {"baseColorFactor": [float(v) for v in material.base_colour], "metallicFactor": 0.0,
                 "roughnessFactor": 1.0}  # fmt: skip
    if material.base_texture is not None:
        pbr["baseColorTexture"] = _texture_info(material.base_texture)
    out: dict = {"name": material.name, "pbrMetallicRoughness": pbr}
    if any(material.emissive):
        out["emissiveFactor"] = [float(v) for v in material.emissive]
    out["alphaMode"] = material.alpha_mode
    if material.alpha_mode == "MASK":
        out["alphaCutoff"] = float(material.alpha_cutoff)
    out["doubleSided"] = bool(material.double_sided)
    extensions: dict = {}
    mtoon = material.mtoon if version == "vrm1" else None
    if material.unlit or mtoon is not None:
        # VRM 1.0 exporters add unlit to MToon materials as the fallback for plain glTF viewers
        extensions["KHR_materials_unlit"] = {}
    if mtoon is not None:
        ext = {"specVersion": "1.0", "transparentWithZWrite": False, "renderQueueOffsetNumber": 0,
               "shadeColorFactor": [float(v) for v in mtoon.shade_colour],
               "shadingShiftFactor": float(mtoon.shading_shift), "shadingToonyFactor": float(mtoon.shading_toony),
               "giEqualizationFactor": 0.9,
               "outlineWidthMode": OUTLINE_MODE_V1[mtoon.outline_mode],
               "outlineWidthFactor": float(mtoon.outline_width),
               "outlineColorFactor": [float(v) for v in mtoon.outline_colour],
               "outlineLightingMixFactor": float(mtoon.outline_lighting_mix)}  # fmt: skip
        if mtoon.shade_texture is not None:
            ext["shadeMultiplyTexture"] = _texture_info(mtoon.shade_texture)
        extensions["VRMC_materials_mtoon"] = ext
    if extensions:
        out["extensions"] = extensions
    return out


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _vrm1_json(avatar: Avatar) -> dict:
    meta = avatar.meta
    out_meta: dict = {"name": meta.name, "version": meta.version, "authors": list(meta.authors),
                      "licenseUrl": meta.licence or VRM1_DEFAULT_LICENCE}  # fmt: skip
    optional = {"avatarPermission": meta.avatar_permission, "commercialUsage": meta.commercial_usage,
                "allowExcessivelySexualUsage": meta.allow_sexual, "allowExcessivelyViolentUsage": meta.allow_violent,
                "allowRedistribution": meta.allow_redistribution, "modification": meta.modification}  # fmt: skip
    out_meta.update({key: value for key, value in optional.items() if value is not None})
    bones = {bone: {"node": int(node)} for bone, node in avatar.humanoid.items()}
    return {"specVersion": "1.0", "meta": out_meta, "humanoid": {"humanBones": bones}}


def _gamma(linear) -> list[float]:
    """Linear -> the gamma-2.2 values VRM 0.x stores; the exact inverse of three-vrm's gammaEOTF (x ** 2.2)."""
    return [float(max(v, 0.0) ** (1 / 2.2)) for v in linear]


def _vrm0_shading(shift1: float, toony1: float) -> tuple[float, float]:
    """VRM 1.0 (shadingShift, shadingToony) -> 0.x (_ShadeShift, _ShadeToony).

    three-vrm converts 0.x to 1.0 as toony1 = lerp(toony0, 1, 0.5 + 0.5 * shift0) and
    shift1 = -shift0 - (1 - toony1); this solves those two equations for (shift0, toony0).
    """
    shift0 = -shift1 - (1.0 - toony1)
    denominator = 0.5 - 0.5 * shift0
    # denominator 0 means shift0 = 1, where toony1 is 1 whatever toony0 was
    toony0 = 1.0 - (1.0 - toony1) / denominator if abs(denominator) > 1e-9 else 1.0
    return shift0, toony0


def _vrm0_material(material: Material, where: str) -> dict:
    refs = [("_MainTex", material.base_texture)]
    if material.mtoon is not None:
        refs.append(("_ShadeTexture", material.mtoon.shade_texture))
    refs = [(name, ref) for name, ref in refs if ref is not None]
    transforms = {(tuple(ref.offset), tuple(ref.scale), ref.rotation) for _, ref in refs}
    if len(transforms) > 1 or any(ref.rotation or ref.texcoord for _, ref in refs):
        raise SabunError(
            f"{where}: cannot write material {material.name!r} as VRM 0.x: 0.x shares one unrotated texture "
            "transform on UV set 0 among a material's textures; write version 'vrm1' instead"
        )
    offset, scale = (refs[0][1].offset, refs[0][1].scale) if refs else ((0.0, 0.0), (1.0, 1.0))
    # 0.x keeps Unity's bottom-up V offset; three-vrm converts with offset_y = 1 - scale_y - offset0_y
    main_st = [float(offset[0]), float(1.0 - scale[1] - offset[1]), float(scale[0]), float(scale[1])]
    mode = material.alpha_mode
    blend = {"OPAQUE": 0, "MASK": 1, "BLEND": 2}[mode]
    render_queue = {"OPAQUE": 2000, "MASK": 2450, "BLEND": 3000}[mode]
    render_type = {"OPAQUE": "Opaque", "MASK": "TransparentCutout", "BLEND": "Transparent"}[mode]
    textures = {name: int(ref.texture) for name, ref in refs}
    if material.mtoon is None and not material.unlit:
        return {"name": material.name, "shader": "VRM_USE_GLTFSHADER", "renderQueue": render_queue,
                "floatProperties": {}, "vectorProperties": {}, "textureProperties": {}, "keywordMap": {},
                "tagMap": {}}  # fmt: skip
    if material.mtoon is None:
        shader = {"OPAQUE": "VRM/UnlitTexture", "MASK": "VRM/UnlitCutout", "BLEND": "VRM/UnlitTransparent"}[mode]
        floats = {"_Cutoff": float(material.alpha_cutoff)}
        # three-vrm gamma-decodes all four channels of an unlit _Color, alpha included
        vectors = {"_Color": _gamma(material.base_colour), "_MainTex": main_st}
        return {"name": material.name, "shader": shader, "renderQueue": render_queue, "floatProperties": floats,
                "vectorProperties": vectors, "textureProperties": textures, "keywordMap": {},
                "tagMap": {"RenderType": render_type}}  # fmt: skip
    mtoon = material.mtoon
    shift0, toony0 = _vrm0_shading(mtoon.shading_shift, mtoon.shading_toony)
    transparent = mode == "BLEND"
    floats = {
        "_Cutoff": float(material.alpha_cutoff), "_BlendMode": float(blend),
        "_CullMode": 0.0 if material.double_sided else 2.0, "_OutlineCullMode": 1.0,
        "_SrcBlend": 5.0 if transparent else 1.0, "_DstBlend": 10.0 if transparent else 0.0,
        "_ZWrite": 0.0 if transparent else 1.0,
        "_ShadeShift": float(shift0), "_ShadeToony": float(toony0),
        "_ReceiveShadowRate": 1.0, "_ShadingGradeRate": 1.0, "_LightColorAttenuation": 0.0,
        "_IndirectLightIntensity": 0.1, "_BumpScale": 1.0,
        "_RimLightingMix": 0.0, "_RimFresnelPower": 1.0, "_RimLift": 0.0,
        "_OutlineWidth": float(mtoon.outline_width * 100.0),  # 0.x outline widths are centimetres
        "_OutlineWidthMode": float(OUTLINE_MODE_V0[mtoon.outline_mode]), "_OutlineScaledMaxDistance": 1.0,
        # three-vrm reads the lighting mix only in colour mode 1 (mixed), and takes 0 otherwise
        "_OutlineColorMode": 1.0 if mtoon.outline_lighting_mix else 0.0,
        "_OutlineLightingMix": float(mtoon.outline_lighting_mix),
        "_UvAnimScrollX": 0.0, "_UvAnimScrollY": 0.0, "_UvAnimRotation": 0.0,
        "_MToonVersion": 38.0, "_DebugMode": 0.0,
    }  # fmt: skip
    vectors = {
        # 0.x stores colours gamma-encoded; base alpha stays linear
        "_Color": _gamma(material.base_colour[:3]) + [float(material.base_colour[3])],
        "_ShadeColor": _gamma(mtoon.shade_colour) + [1.0],
        "_MainTex": main_st, "_ShadeTexture": main_st,
        "_EmissionColor": _gamma(material.emissive) + [1.0],
        "_OutlineColor": _gamma(mtoon.outline_colour) + [1.0],
        "_RimColor": [0.0, 0.0, 0.0, 1.0],
    }  # fmt: skip
    keywords = {}
    if mode == "MASK":
        keywords["_ALPHATEST_ON"] = True
    if transparent:
        keywords["_ALPHABLEND_ON"] = True
    if mtoon.outline_mode != "none":
        keywords[f"MTOON_OUTLINE_WIDTH_{mtoon.outline_mode.upper()}"] = True
        keywords["MTOON_OUTLINE_COLOR_MIXED" if mtoon.outline_lighting_mix else "MTOON_OUTLINE_COLOR_FIXED"] = True
    return {"name": material.name, "shader": "VRM/MToon", "renderQueue": render_queue, "floatProperties": floats,
            "vectorProperties": vectors, "textureProperties": textures, "keywordMap": keywords,
            "tagMap": {"RenderType": render_type}}  # fmt: skip


def _vrm0_json(avatar: Avatar, where: str) -> dict:
    meta = avatar.meta
    allow = {True: "Allow", False: "Disallow", None: "Disallow"}
    licence = meta.licence or VRM1_DEFAULT_LICENCE
    out_meta = {
        "title": meta.name, "version": meta.version, "author": ", ".join(meta.authors),
        "contactInformation": "", "reference": "",
        "allowedUserName": VRM0_ALLOWED_USER.get(meta.avatar_permission or "onlyAuthor", "OnlyAuthor"),
        # VRM 0.x spells "Usage" as "Ussage"
        "violentUssageName": allow[meta.allow_violent], "sexualUssageName": allow[meta.allow_sexual],
        "commercialUssageName": allow[meta.commercial_usage in ("personalProfit", "corporation")],
        "otherPermissionUrl": "",
        "licenseName": licence if licence in VRM0_LICENCE_NAMES else "Other",
        "otherLicenseUrl": "" if licence in VRM0_LICENCE_NAMES else licence,
    }  # fmt: skip
    bones = [{"bone": VRM1_TO_VRM0_BONE.get(bone, bone), "node": int(node), "useDefaultValues": True}
             for bone, node in avatar.humanoid.items()]  # fmt: skip
    humanoid = {"humanBones": bones, "armStretch": 0.05, "legStretch": 0.05, "upperArmTwist": 0.5,
                "lowerArmTwist": 0.5, "upperLegTwist": 0.5, "lowerLegTwist": 0.5, "feetSpacing": 0.0,
                "hasTranslationDoF": False}  # fmt: skip
    curve = {"curve": [0, 0, 0, 1, 1, 1, 1, 0], "xRange": 90.0, "yRange": 10.0}
    mesh_nodes = sorted({node.mesh for node in avatar.nodes if node.mesh is not None})
    first_person = {
        "firstPersonBone": int(avatar.humanoid["head"]), "firstPersonBoneOffset": {"x": 0.0, "y": 0.06, "z": 0.0},
        "meshAnnotations": [{"mesh": int(m), "firstPersonFlag": "Auto"} for m in mesh_nodes],
        "lookAtTypeName": "Bone", "lookAtHorizontalInner": curve, "lookAtHorizontalOuter": curve,
        "lookAtVerticalDown": curve, "lookAtVerticalUp": curve,
    }  # fmt: skip
    return {
        "exporterVersion": GENERATOR, "specVersion": "0.0", "meta": out_meta, "humanoid": humanoid,
        "firstPerson": first_person, "blendShapeMaster": {"blendShapeGroups": []},
        "secondaryAnimation": {"boneGroups": [], "colliderGroups": []},
        "materialProperties": [_vrm0_material(m, where) for m in avatar.materials],
    }  # fmt: skip
