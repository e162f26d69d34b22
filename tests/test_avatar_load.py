"""The glTF / VRM loader: tiny files built here, byte by byte, and the third-party VRMs in ../shared/3d."""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from sabun.avatar.gltf import load_avatar, v0_shading_to_v1
from sabun.avatar.types import CLAMP_TO_EDGE, MIRRORED_REPEAT
from sabun.errors import SabunError

THIRD_PARTY = Path(os.environ.get("SABUN_THIRD_PARTY_3D", Path(__file__).resolve().parents[2] / "shared" / "3d"))

FLOAT, UBYTE, USHORT, UINT = 5126, 5121, 5123, 5125


# --- building files ---


def glb_bytes(document: dict, blob: bytes = b"") -> bytes:
    """Pack a glTF JSON object and a BIN chunk into a GLB container (glTF 2.0, "Binary glTF Layout")."""
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text
    if blob:
        blob += b"\0" * (-len(blob) % 4)
        chunks += struct.pack("<I4s", len(blob), b"BIN\0") + blob
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A 1-bit PNG that claims width x height but carries almost no data: enough to test size checks cheaply."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


class Model:
    """A glTF document and its binary blob, grown one bufferView / accessor at a time."""

    def __init__(self):
        self.doc = {"asset": {"version": "2.0"}, "buffers": [], "bufferViews": [], "accessors": []}
        self.blob = bytearray()

    def view(self, data: bytes, stride: int | None = None) -> int:
        self.blob += b"\0" * (-len(self.blob) % 4)
        view = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if stride:
            view["byteStride"] = stride
        self.blob += data
        self.doc["bufferViews"].append(view)
        return len(self.doc["bufferViews"]) - 1

    def accessor(self, values, type_: str, component: int = FLOAT, normalized: bool = False, **fields) -> int:
        dtype = {FLOAT: "<f4", UBYTE: "u1", USHORT: "<u2", UINT: "<u4"}[component]
        values = np.asarray(values, dtype)
        accessor = {
            "bufferView": self.view(values.tobytes()),
            "componentType": component,
            "count": len(values),
            "type": type_,
            **fields,
        }
        if normalized:
            accessor["normalized"] = True
        self.doc["accessors"].append(accessor)
        return len(self.doc["accessors"]) - 1

    def glb(self) -> bytes:
        self.doc["buffers"] = [{"byteLength": len(self.blob)}]
        return glb_bytes(self.doc, bytes(self.blob))

    def write(self, path: Path) -> Path:
        path.write_bytes(self.glb())
        return path


def translation_matrix(x: float, y: float, z: float) -> list[float]:
    """Column-major 4x4, as glTF stores it."""
    return [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, x, y, z, 1]


# A strip of six vertices up the Y axis, two bones: vertex rows 0-1 on bone 0, 2-3 shared, 4-5 on bone 1.
STRIP_POSITIONS = np.array(
    [[-0.5, 0, 0], [0.5, 0, 0], [-0.5, 1, 0], [0.5, 1, 0], [-0.5, 2, 0], [0.5, 2, 0]], np.float32
)
STRIP_NORMALS = np.tile(np.array([0, 0, 1], np.float32), (6, 1))


def skinned_strip(joints=None) -> Model:
    """Two-bone skinned triangle strip: interleaved POSITION/NORMAL, JOINTS_0 / WEIGHTS_0, inverse binds, a
    sparse morph target with default weight 0.25, and a node with a column-major matrix."""
    model = Model()
    interleaved = np.concatenate([STRIP_POSITIONS, STRIP_NORMALS], axis=1)  # (6, 6): x y z nx ny nz
    view = model.view(interleaved.tobytes(), stride=24)
    model.doc["accessors"] += [
        {
            "bufferView": view,
            "byteOffset": 0,
            "componentType": FLOAT,
            "count": 6,
            "type": "VEC3",
            "min": [-0.5, 0, 0],
            "max": [0.5, 2, 0],
        },
        {"bufferView": view, "byteOffset": 12, "componentType": FLOAT, "count": 6, "type": "VEC3"},
    ]
    joints = model.accessor(joints or [[0, 1, 0, 0]] * 6, "VEC4", UBYTE)
    # Unnormalised rows on purpose (sum 2), and one row of zeros.
    weights = model.accessor(
        [[2, 0, 0, 0], [2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 2, 0, 0], [0, 2, 0, 0]], "VEC4"
    )
    indices = model.accessor([0, 1, 2, 3, 4, 5], "SCALAR", USHORT)
    # Morph target: POSITION deltas for vertices 1 and 4 only, as a sparse accessor with no bufferView.
    sparse_indices = model.view(np.array([1, 4], "<u2").tobytes())
    sparse_values = model.view(np.array([[0, 0, 0.5], [0, 0, -0.5]], "<f4").tobytes())
    model.doc["accessors"].append(
        {
            "componentType": FLOAT,
            "count": 6,
            "type": "VEC3",
            "sparse": {
                "count": 2,
                "indices": {"bufferView": sparse_indices, "componentType": USHORT},
                "values": {"bufferView": sparse_values},
            },
        }
    )
    target = len(model.doc["accessors"]) - 1
    inverse_binds = model.accessor([np.eye(4).ravel(), translation_matrix(0, -1, 0)], "MAT4")
    model.doc.update(
        scene=0,
        scenes=[{"nodes": [0]}],
        nodes=[
            {"name": "armature", "children": [1, 3, 4]},
            {"name": "bone0", "children": [2]},
            {"name": "bone1", "translation": [0, 1, 0], "rotation": [0, 0, 0.7071068, 0.7071068]},
            {"name": "body", "mesh": 0, "skin": 0},
            {"name": "prop", "matrix": translation_matrix(1, 2, 3)},
        ],
        skins=[{"name": "rig", "joints": [1, 2], "inverseBindMatrices": inverse_binds}],
        meshes=[
            {
                "name": "body",
                "weights": [0.25],
                "primitives": [
                    {
                        "attributes": {"POSITION": 0, "NORMAL": 1, "JOINTS_0": joints, "WEIGHTS_0": weights},
                        "indices": indices,
                        "mode": 5,
                        "targets": [{"POSITION": target}],
                    }
                ],
            }
        ],
    )
    return model


def triangle(model: Model | None = None, positions=None) -> Model:
    """One triangle on one node, the smallest renderable file."""
    model = model or Model()
    position = model.accessor(positions if positions is not None else [[0, 0, 0], [1, 0, 0], [0, 1, 0]], "VEC3")
    model.doc.setdefault("nodes", []).append({"name": "tri", "mesh": len(model.doc.setdefault("meshes", []))})
    model.doc["meshes"].append({"name": "tri", "primitives": [{"attributes": {"POSITION": position}}]})
    return model


def load_error(path: Path, **kwargs) -> str:
    """The SabunError message for loading path; it must name the file."""
    with pytest.raises(SabunError) as caught:
        load_avatar(path, **kwargs)
    message = str(caught.value)
    assert path.name in message
    assert "\n" not in message
    return message


# --- what a good file gives ---


def test_skinned_strip(tmp_path):
    avatar = load_avatar(skinned_strip().write(tmp_path / "strip.glb"))
    assert avatar.format == "gltf" and avatar.humanoid == {}
    assert [n.name for n in avatar.nodes] == ["armature", "bone0", "bone1", "body", "prop"]
    assert avatar.roots == [0]
    assert avatar.nodes[0].children == [1, 3, 4] and avatar.nodes[2].parent == 1
    np.testing.assert_allclose(avatar.nodes[2].translation, [0, 1, 0])
    np.testing.assert_allclose(avatar.nodes[2].rotation, [0, 0, 0.7071068, 0.7071068])
    # Column-major [.., x, y, z, 1] becomes a matrix with p' = M @ p.
    np.testing.assert_allclose(avatar.nodes[4].matrix @ [0, 0, 0, 1], [1, 2, 3, 1])

    (primitive,) = avatar.meshes[0].primitives
    np.testing.assert_array_equal(primitive.positions, STRIP_POSITIONS)  # from the interleaved view
    np.testing.assert_array_equal(primitive.normals, STRIP_NORMALS)
    # Strip -> triangles with consistent winding (odd triangles swap their last two vertices).
    np.testing.assert_array_equal(primitive.indices, [[0, 1, 2], [1, 3, 2], [2, 3, 4], [3, 5, 4]])
    assert primitive.indices.dtype == np.uint32
    np.testing.assert_array_equal(primitive.joints, [[0, 1, 0, 0]] * 6)
    np.testing.assert_allclose(
        primitive.weights, [[1, 0, 0, 0], [1, 0, 0, 0], [0.5, 0.5, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]]
    )
    assert primitive.weights.dtype == np.float32

    expected_delta = np.zeros((6, 3), np.float32)
    expected_delta[1], expected_delta[4] = (0, 0, 0.5), (0, 0, -0.5)
    np.testing.assert_array_equal(primitive.targets[0]["POSITION"], expected_delta)
    assert avatar.meshes[0].weights == [0.25]

    (skin,) = avatar.skins
    assert skin.joints == [1, 2] and skin.name == "rig"
    assert skin.inverse_bind.shape == (2, 4, 4) and skin.inverse_bind.dtype == np.float32
    np.testing.assert_allclose(skin.inverse_bind[0], np.eye(4))
    # bone1 sits at y = 1, so its inverse bind takes (0, 1, 0) to the origin.
    np.testing.assert_allclose(skin.inverse_bind[1] @ [0, 1, 0, 1], [0, 0, 0, 1])
    assert avatar.triangle_count() == 4
    assert len(avatar.sha256) == 64


def test_skin_without_inverse_binds_is_identity_and_unskinned_zero_weights_stay_zero(tmp_path):
    model = skinned_strip()
    del model.doc["skins"][0]["inverseBindMatrices"]
    avatar = load_avatar(model.write(tmp_path / "identity.glb"))
    np.testing.assert_array_equal(avatar.skins[0].inverse_bind, np.tile(np.eye(4), (2, 1, 1)))

    del model.doc["nodes"][3]["skin"]
    weights = load_avatar(model.write(tmp_path / "unskinned.glb")).meshes[0].primitives[0].weights
    np.testing.assert_array_equal(weights[3], [0, 0, 0, 0])


def test_roots_without_scenes_are_the_parentless_nodes(tmp_path):
    model = skinned_strip()
    del model.doc["scene"], model.doc["scenes"]
    model.doc["nodes"].append({"name": "loose"})
    assert load_avatar(model.write(tmp_path / "noscene.glb")).roots == [0, 5]


def test_quantized_and_normalized_attributes_and_fans(tmp_path):
    """KHR_mesh_quantization-style integer positions, normalized ushort weights / ubyte colours, a fan, dropped lines."""
    model = Model()
    position = model.accessor([[0, 0, 0], [2, 0, 0], [2, 2, 0], [0, 2, 0]], "VEC3", USHORT)
    colour = model.accessor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], "VEC3", UBYTE, normalized=True)
    uv = model.accessor([[0, 0], [65535, 0], [65535, 65535], [0, 65535]], "VEC2", USHORT, normalized=True)
    model.doc.update(
        extensionsUsed=["KHR_mesh_quantization"],
        extensionsRequired=["KHR_mesh_quantization"],
        nodes=[{"mesh": 0}],
        meshes=[
            {
                "name": "quad",
                "primitives": [
                    {"attributes": {"POSITION": position, "COLOR_0": colour, "TEXCOORD_0": uv}, "mode": 6},
                    {"attributes": {"POSITION": position}, "mode": 1},
                ],
            }
        ],
    )
    avatar = load_avatar(model.write(tmp_path / "quant.glb"))
    (primitive,) = avatar.meshes[0].primitives  # the LINES primitive is dropped
    assert primitive.positions.dtype == np.float32
    np.testing.assert_array_equal(primitive.positions[2], [2, 2, 0])
    np.testing.assert_array_equal(primitive.indices, [[1, 2, 0], [2, 3, 0]])
    np.testing.assert_allclose(primitive.colours[1], [0, 1, 0, 1])
    np.testing.assert_allclose(primitive.texcoords[0][2], [1, 1])
    assert avatar.extensions_used == ["KHR_mesh_quantization"]


def write_gltf_triple(folder: Path, pixels: np.ndarray) -> Path:
    """model.gltf + model.bin + skin.png: a textured quad with KHR_texture_transform and a NEAREST sampler."""
    model = Model()
    position = model.accessor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], "VEC3")
    uv0 = model.accessor([[0, 0], [1, 0], [1, 1], [0, 1]], "VEC2")
    uv1 = model.accessor([[0, 1], [1, 1], [1, 0], [0, 0]], "VEC2")
    colour = model.accessor([[1, 0, 0, 0.5]] * 4, "VEC4")
    indices = model.accessor([0, 1, 2, 0, 2, 3], "SCALAR", UBYTE)
    model.doc.update(
        extensionsUsed=["KHR_texture_transform", "KHR_materials_emissive_strength", "KHR_materials_unlit"],
        nodes=[{"name": "quad", "mesh": 0}],
        meshes=[
            {
                "name": "quad",
                "primitives": [
                    {
                        "attributes": {"POSITION": position, "TEXCOORD_0": uv0, "TEXCOORD_1": uv1, "COLOR_0": colour},
                        "indices": indices,
                        "material": 0,
                    }
                ],
            }
        ],
        materials=[
            {
                "name": "skin",
                "pbrMetallicRoughness": {
                    "baseColorFactor": [0.5, 0.25, 1.0, 0.75],
                    "baseColorTexture": {
                        "index": 0,
                        "extensions": {
                            "KHR_texture_transform": {
                                "offset": [0.5, 0.25],
                                "scale": [2, 3],
                                "rotation": 0.5,
                                "texCoord": 1,
                            }
                        },
                    },
                },
                "emissiveFactor": [1, 0.5, 0],
                "alphaMode": "MASK",
                "doubleSided": True,
                "extensions": {"KHR_materials_emissive_strength": {"emissiveStrength": 2.0}, "KHR_materials_unlit": {}},
            }
        ],
        textures=[{"name": "skin_tex", "source": 0, "sampler": 0}],
        samplers=[{"magFilter": 9728, "wrapS": CLAMP_TO_EDGE, "wrapT": MIRRORED_REPEAT}],
        images=[{"uri": "skin%20tex.png"}],
        buffers=[{"uri": "model.bin", "byteLength": len(model.blob)}],
    )
    (folder / "model.bin").write_bytes(bytes(model.blob))
    (folder / "skin tex.png").write_bytes(png_bytes(pixels))
    (folder / "model.gltf").write_text(json.dumps(model.doc))
    return folder / "model.gltf"


PIXELS = np.array([[[255, 0, 0, 255], [0, 255, 0, 128]], [[0, 0, 255, 0], [10, 20, 30, 40]]], np.uint8)


def test_gltf_with_external_buffer_and_texture(tmp_path):
    path = write_gltf_triple(tmp_path, PIXELS)
    avatar = load_avatar(path)
    (material,) = avatar.materials
    assert material.name == "skin" and material.alpha_mode == "MASK" and material.alpha_cutoff == 0.5
    assert material.double_sided and material.unlit and material.mtoon is None
    assert material.base_colour == (0.5, 0.25, 1.0, 0.75)
    assert material.emissive == (2.0, 1.0, 0.0)
    ref = material.base_texture
    assert (ref.texcoord, ref.offset, ref.scale, ref.rotation) == (1, (0.5, 0.25), (2, 3), 0.5)
    texture = avatar.textures[ref.texture]
    np.testing.assert_array_equal(texture.image, PIXELS)
    assert texture.image.dtype == np.uint8 and texture.name == "skin_tex"
    assert texture.nearest and (texture.wrap_s, texture.wrap_t) == (CLAMP_TO_EDGE, MIRRORED_REPEAT)
    primitive = avatar.meshes[0].primitives[0]
    assert len(primitive.texcoords) == 2
    np.testing.assert_allclose(primitive.texcoords[1][0], [0, 1])
    np.testing.assert_allclose(primitive.colours[0], [1, 0, 0, 0.5])
    np.testing.assert_array_equal(primitive.indices, [[0, 1, 2], [0, 2, 3]])
    assert avatar.sha256 != load_avatar(skinned_strip().write(tmp_path / "other.glb")).sha256


def test_embedded_image_data_uri_buffer_and_webp(tmp_path):
    model = triangle()
    webp = io.BytesIO()
    Image.fromarray(PIXELS[..., :3].copy()).save(webp, format="WEBP", lossless=True)
    png_view = model.view(png_bytes(PIXELS))
    webp_view = model.view(webp.getvalue())
    model.doc.update(
        extensionsUsed=["EXT_texture_webp", "KHR_texture_basisu"],
        materials=[{"pbrMetallicRoughness": {"baseColorTexture": {"index": i}}} for i in range(3)],
        textures=[
            {"source": 0},
            {"extensions": {"EXT_texture_webp": {"source": 1}}},
            {"extensions": {"KHR_texture_basisu": {"source": 2}}},
        ],
        images=[
            {"bufferView": png_view, "mimeType": "image/png"},
            {"bufferView": webp_view, "mimeType": "image/webp"},
            {"uri": "never_read.ktx2"},
        ],
    )
    path = model.write(tmp_path / "embedded.glb")
    avatar = load_avatar(path)
    np.testing.assert_array_equal(avatar.textures[avatar.materials[0].base_texture.texture].image, PIXELS)
    if features.check("webp"):
        webp_image = avatar.textures[avatar.materials[1].base_texture.texture].image
        np.testing.assert_array_equal(webp_image[..., :3], PIXELS[..., :3])
    # KTX2 is not required, so its texture is skipped and the material keeps its factor.
    assert avatar.materials[2].base_texture is None
    assert len(avatar.textures) == 2

    # A .gltf whose buffer is a data: URI.
    document = copy.deepcopy(triangle().doc)
    blob = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], "<f4").tobytes()
    document["buffers"] = [
        {"uri": "data:application/octet-stream;base64," + base64.b64encode(blob).decode(), "byteLength": len(blob)}
    ]
    (tmp_path / "inline.gltf").write_text(json.dumps(document))
    np.testing.assert_array_equal(load_avatar(tmp_path / "inline.gltf").meshes[0].primitives[0].positions[1], [1, 0, 0])


def vrm1_model() -> Model:
    model = skinned_strip()
    model.doc["extensionsUsed"] = ["VRMC_vrm", "VRMC_materials_mtoon", "KHR_materials_unlit"]
    model.doc["extensions"] = {
        "VRMC_vrm": {
            "specVersion": "1.0",
            "humanoid": {"humanBones": {"hips": {"node": 1}, "spine": {"node": 2}, "leftThumbMetacarpal": {"node": 4}}},
            "meta": {
                "name": "Strip",
                "version": "3",
                "authors": ["Ann", "Bo"],
                "licenseUrl": "https://vrm.dev/licenses/1.0/",
                "avatarPermission": "everyone",
                "commercialUsage": "corporation",
                "allowExcessivelySexualUsage": False,
                "allowExcessivelyViolentUsage": True,
                "allowRedistribution": True,
                "modification": "allowModification",
                "thumbnailImage": 0,
            },
        }
    }
    model.doc["materials"] = [
        {
            "name": "toon",
            "pbrMetallicRoughness": {"baseColorFactor": [1, 0.5, 0.5, 1]},
            "extensions": {
                "KHR_materials_unlit": {},
                "VRMC_materials_mtoon": {
                    "specVersion": "1.0",
                    "shadeColorFactor": [0.2, 0.1, 0.3],
                    "shadingShiftFactor": -0.25,
                    "shadingToonyFactor": 0.8,
                    "outlineWidthMode": "worldCoordinates",
                    "outlineWidthFactor": 0.004,
                    "outlineColorFactor": [0.1, 0.2, 0.3],
                    "outlineLightingMixFactor": 0.5,
                },
            },
        }
    ]
    model.doc["meshes"][0]["primitives"][0]["material"] = 0
    return model


def test_vrm1_humanoid_meta_and_mtoon(tmp_path):
    avatar = load_avatar(vrm1_model().write(tmp_path / "strip.vrm"))
    assert avatar.format == "vrm1"
    assert avatar.humanoid == {"hips": 1, "spine": 2, "leftThumbMetacarpal": 4}
    meta = avatar.meta
    assert (meta.name, meta.version, meta.authors) == ("Strip", "3", ["Ann", "Bo"])
    assert meta.licence == "https://vrm.dev/licenses/1.0/"
    assert (meta.avatar_permission, meta.commercial_usage, meta.modification) == (
        "everyone",
        "corporation",
        "allowModification",
    )
    assert (meta.allow_sexual, meta.allow_violent, meta.allow_redistribution) == (False, True, True)
    assert "thumbnailImage" not in meta.raw and meta.raw["name"] == "Strip"
    (material,) = avatar.materials
    assert not material.unlit  # KHR_materials_unlit is only the fallback for viewers without MToon
    mtoon = material.mtoon
    assert mtoon.shade_colour == (0.2, 0.1, 0.3)
    assert (mtoon.shading_shift, mtoon.shading_toony) == (-0.25, 0.8)
    assert (mtoon.outline_mode, mtoon.outline_width, mtoon.outline_lighting_mix) == ("world", 0.004, 0.5)
    assert mtoon.outline_colour == (0.1, 0.2, 0.3)


def vrm0_model() -> Model:
    model = skinned_strip()
    model.doc["extensionsUsed"] = ["VRM"]
    model.doc["materials"] = [{"name": "face"}, {"name": "hair", "doubleSided": True}]
    model.doc["meshes"][0]["primitives"][0]["material"] = 0
    model.doc["extensions"] = {
        "VRM": {
            "humanoid": {
                "humanBones": [
                    {"bone": "hips", "node": 1},
                    {"bone": "leftThumbProximal", "node": 2},
                    {"bone": "leftThumbIntermediate", "node": 3},
                    {"bone": "leftThumbDistal", "node": 4},
                ]
            },
            "meta": {
                "title": "Old",
                "version": "0.9",
                "author": "Cy",
                "licenseName": "Other",
                "otherLicenseUrl": "https://example.org/l",
                "allowedUserName": "ExplicitlyLicensedPerson",
                "commercialUssageName": "Disallow",
                "sexualUssageName": "Disallow",
                "violentUssageName": "Allow",
                "texture": 0,
            },
            # Listed in the other order than the glTF materials: matched by name.
            "materialProperties": [
                {
                    "name": "hair",
                    "shader": "VRM/UnlitCutout",
                    "floatProperties": {"_Cutoff": 0.3},
                    "vectorProperties": {"_Color": [0.5, 0.5, 0.5, 0.8]},
                },
                {
                    "name": "face",
                    "shader": "VRM/MToon",
                    "floatProperties": {
                        "_ShadeShift": 0.2,
                        "_ShadeToony": 0.5,
                        "_BlendMode": 1,
                        "_Cutoff": 0.4,
                        "_CullMode": 0,
                        "_OutlineWidthMode": 1,
                        "_OutlineWidth": 0.5,
                        "_OutlineColorMode": 1,
                        "_OutlineLightingMix": 0.25,
                    },
                    "vectorProperties": {
                        "_Color": [0.5, 1.0, 0.25, 0.5],
                        "_ShadeColor": [0.5, 0.25, 1.0, 1.0],
                        "_OutlineColor": [0.5, 0.5, 0.5, 1.0],
                    },
                },
            ],
        }
    }
    return model


def test_vrm0_humanoid_meta_and_mtoon_conversion(tmp_path):
    avatar = load_avatar(vrm0_model().write(tmp_path / "old.vrm"))
    assert avatar.format == "vrm0"
    # 0.x thumbProximal / thumbIntermediate are 1.0's thumbMetacarpal / thumbProximal.
    assert avatar.humanoid == {"hips": 1, "leftThumbMetacarpal": 2, "leftThumbProximal": 3, "leftThumbDistal": 4}
    meta = avatar.meta
    assert (meta.name, meta.version, meta.authors) == ("Old", "0.9", ["Cy"])
    assert meta.licence == "Other (https://example.org/l)"
    assert meta.avatar_permission == "onlySeparatelyLicensedPerson"
    assert meta.commercial_usage == "personalNonProfit"
    assert (meta.allow_sexual, meta.allow_violent, meta.allow_redistribution) == (False, True, None)
    assert "texture" not in meta.raw and meta.raw["title"] == "Old"

    face, hair = avatar.materials
    assert face.alpha_mode == "MASK" and face.alpha_cutoff == 0.4 and face.double_sided and not face.unlit
    # 0.x colours are gamma-encoded (three-vrm decodes them as v ** 2.2); alpha stays linear.
    np.testing.assert_allclose(face.base_colour, (0.5**2.2, 1.0, 0.25**2.2, 0.5))
    mtoon = face.mtoon
    np.testing.assert_allclose(mtoon.shade_colour, (0.5**2.2, 0.25**2.2, 1.0))
    # three-vrm's V0 compat: toony1 = lerp(0.5, 1, 0.5 + 0.5 * 0.2) = 0.8; shift1 = -0.2 - (1 - 0.8) = -0.4.
    assert math.isclose(mtoon.shading_toony, 0.8) and math.isclose(mtoon.shading_shift, -0.4)
    assert mtoon.outline_mode == "world" and math.isclose(mtoon.outline_width, 0.005)  # 0.5 cm
    np.testing.assert_allclose(mtoon.outline_colour, (0.5**2.2,) * 3)
    assert mtoon.outline_lighting_mix == 0.25

    assert hair.unlit and hair.mtoon is None and hair.alpha_mode == "MASK" and hair.alpha_cutoff == 0.3
    assert hair.double_sided  # the unlit shaders keep the glTF material's culling
    np.testing.assert_allclose(hair.base_colour, (0.5**2.2,) * 3 + (0.8,))


@pytest.mark.parametrize(("shift", "toony"), [(0.0, 0.9), (-1.0, 0.0), (1.0, 0.3), (0.5, 1.0), (-0.375, 7 / 11)])
def test_v0_shading_conversion_matches_three_vrm(shift, toony):
    """THREE.MathUtils.lerp(toony, 1, 0.5 + 0.5 * shift), then -shift - (1 - toony1)."""
    t = 0.5 + 0.5 * shift
    toony1 = (1 - t) * toony + t * 1.0
    assert np.allclose(v0_shading_to_v1(shift, toony), (-shift - (1 - toony1), toony1))


# --- what a bad file gives ---


def test_not_gltf(tmp_path):
    (tmp_path / "photo.vrm").write_bytes(png_bytes(PIXELS))
    assert "not a glTF" in load_error(tmp_path / "photo.vrm")
    (tmp_path / "notes.gltf").write_text("hello")
    assert "not a glTF" in load_error(tmp_path / "notes.gltf")
    assert "no such file" in load_error(tmp_path / "absent.vrm")
    (tmp_path / "folder.vrm").mkdir()
    assert "folder" in load_error(tmp_path / "folder.vrm")


def test_damaged_containers(tmp_path):
    good = skinned_strip().glb()
    (tmp_path / "short.glb").write_bytes(good[:-10])
    assert "truncated" in load_error(tmp_path / "short.glb")
    (tmp_path / "stub.vrm").write_bytes(good[:15])
    assert "truncated" in load_error(tmp_path / "stub.vrm")
    (tmp_path / "v1.glb").write_bytes(good[:4] + struct.pack("<I", 1) + good[8:])
    assert "version 1" in load_error(tmp_path / "v1.glb")
    (tmp_path / "json.glb").write_bytes(glb_bytes({"asset": {"version": "2.0"}})[:20] + b"{nope")
    assert "truncated" in load_error(tmp_path / "json.glb")

    broken = b"{ not json }"
    (tmp_path / "broken.vrm").write_bytes(
        struct.pack("<4sII", b"glTF", 2, 20 + len(broken)) + struct.pack("<I4s", len(broken), b"JSON") + broken
    )
    assert "JSON is not valid" in load_error(tmp_path / "broken.vrm")
    latin = b'{"asset": {"version": "2.0\xff"}}'
    (tmp_path / "latin.vrm").write_bytes(
        struct.pack("<4sII", b"glTF", 2, 20 + len(latin)) + struct.pack("<I4s", len(latin), b"JSON") + latin
    )
    assert "UTF-8" in load_error(tmp_path / "latin.vrm")
    (tmp_path / "old.glb").write_bytes(glb_bytes({"asset": {"version": "1.0"}}))
    assert "2.x" in load_error(tmp_path / "old.glb")
    (tmp_path / "schema.glb").write_bytes(glb_bytes({"asset": {"version": "2.0"}, "nodes": 5}))
    assert "schema" in load_error(tmp_path / "schema.glb")


def test_missing_external_files(tmp_path):
    path = write_gltf_triple(tmp_path, PIXELS)
    (tmp_path / "skin tex.png").unlink()
    assert "skin%20tex.png" in load_error(path) and "missing" in load_error(path)
    (tmp_path / "other").mkdir()
    path = write_gltf_triple(tmp_path / "other", PIXELS)
    (tmp_path / "other" / "model.bin").unlink()
    message = load_error(path)
    assert "model.bin" in message and "missing" in message


def test_no_meshes(tmp_path):
    (tmp_path / "empty.vrm").write_bytes(glb_bytes({"asset": {"version": "2.0"}, "nodes": [{"name": "root"}]}))
    assert "no meshes to render" in load_error(tmp_path / "empty.vrm")


def test_nan_positions_name_the_mesh(tmp_path):
    path = triangle(positions=[[0, 0, 0], [np.nan, 0, 0], [0, 1, 0]]).write(tmp_path / "nan.glb")
    message = load_error(path)
    assert "NaN" in message and "'tri'" in message


def test_humanoid_bone_naming_a_missing_node(tmp_path):
    model = vrm1_model()
    model.doc["extensions"]["VRMC_vrm"]["humanoid"]["humanBones"]["head"] = {"node": 99}
    message = load_error(model.write(tmp_path / "bones.vrm"))
    assert "head" in message and "99" in message


@pytest.mark.parametrize("extension", ["KHR_draco_mesh_compression", "EXT_meshopt_compression", "KHR_texture_basisu"])
def test_unsupported_required_extension_is_named(tmp_path, extension):
    model = triangle()
    model.doc["extensionsUsed"] = model.doc["extensionsRequired"] = [extension]
    message = load_error(model.write(tmp_path / "compressed.glb"))
    assert extension in message and "export the model again without it" in message


def textured_triangle(image: bytes) -> Model:
    model = triangle()
    model.doc.update(
        materials=[{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}],
        textures=[{"source": 0}],
        images=[{"bufferView": model.view(image), "mimeType": "image/png", "name": "albedo"}],
    )
    model.doc["meshes"][0]["primitives"][0]["material"] = 0
    return model


def test_oversized_and_undecodable_images(tmp_path):
    huge = textured_triangle(png_header_only(30000, 30000)).write(tmp_path / "huge.glb")
    assert (tmp_path / "huge.glb").stat().st_size < 2000
    message = load_error(huge)
    assert "albedo" in message and "8192" in message
    wide = textured_triangle(png_header_only(9000, 1)).write(tmp_path / "wide.glb")
    assert "9000x1" in load_error(wide)
    small = textured_triangle(png_bytes(PIXELS)).write(tmp_path / "small.glb")
    assert "max_texture_side" in load_error(small, max_texture_side=1)
    garbage = textured_triangle(b"\x89PNG not really").write(tmp_path / "garbage.glb")
    assert "could not be decoded" in load_error(garbage)


def test_accessor_past_the_end_of_its_buffer(tmp_path):
    model = triangle()
    model.doc["accessors"][0]["count"] = 1000
    message = load_error(model.write(tmp_path / "overrun.glb"))
    assert "accessor 0" in message and "past the end" in message
    model = triangle()
    model.doc["bufferViews"][0]["byteLength"] = 10_000
    assert "past the end" in load_error(model.write(tmp_path / "view.glb"))


def test_joints_beyond_the_skin(tmp_path):
    message = load_error(skinned_strip(joints=[[0, 5, 0, 0]] * 6).write(tmp_path / "joints.glb"))
    assert "JOINTS_0" in message and "joint 5" in message


def test_broken_structure(tmp_path):
    model = triangle()
    model.doc["meshes"][0]["primitives"][0]["indices"] = model.accessor([0, 1, 7], "SCALAR", USHORT)
    assert "vertex index 7" in load_error(model.write(tmp_path / "indices.glb"))

    model = skinned_strip()
    model.doc["nodes"][2]["children"] = [1]
    assert "two parents" in load_error(model.write(tmp_path / "two_parents.glb"))
    model = skinned_strip()
    model.doc["nodes"][0]["children"] = []
    model.doc["nodes"][2]["children"] = [1]
    del model.doc["scenes"], model.doc["scene"]
    assert "cycle" in load_error(model.write(tmp_path / "cycle.glb"))

    model = skinned_strip()
    model.doc["skins"][0]["joints"] = [1, 42]
    assert "42" in load_error(model.write(tmp_path / "skin.glb"))


# --- robustness ---


def mutate_value(document: dict, rng: random.Random) -> None:
    """Replace one leaf of the JSON tree with an odd value (wrong type, out of range, negative)."""
    parent, key = None, None
    node = document
    while isinstance(node, (dict, list)) and node:
        parent = node
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        node = node[key]
        if rng.random() < 0.15:
            break
    if parent is not None:
        parent[key] = rng.choice([-1, 0, 1, 3, 2**31, 1e30, 0.5, float("nan"), "x", None, [], {}, True, [0] * 20])


def test_fuzzed_files_load_or_raise_sabun_error(tmp_path):
    model = vrm0_model()
    model.doc["images"] = [{"bufferView": model.view(png_bytes(PIXELS)), "mimeType": "image/png"}]
    model.doc["textures"] = [{"source": 0, "sampler": 0}]
    model.doc["samplers"] = [{"magFilter": 9728}]
    model.doc["materials"][0]["pbrMetallicRoughness"] = {"baseColorTexture": {"index": 0}}
    good = model.glb()
    json_length = struct.unpack_from("<I", good, 12)[0]
    rng = random.Random(0)
    path = tmp_path / "fuzz.vrm"
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(600):
        kind = case % 4
        if kind == 0:
            data = good[: rng.randrange(len(good))]
        elif kind in (1, 2):
            data = bytearray(good)
            start, end = (20, 20 + json_length) if kind == 1 else (28 + json_length, len(good))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
        else:
            document = copy.deepcopy(model.doc)
            mutate_value(document, rng)
            data = glb_bytes(document, bytes(model.blob))
        path.write_bytes(bytes(data))
        try:
            load_avatar(path)
            outcomes["loaded"] += 1
        except SabunError as exc:
            assert path.name in str(exc), f"case {case}: {exc}"
            outcomes["refused"] += 1
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 0


# --- third-party files ---


@pytest.fixture
def third_party() -> Path:
    if not THIRD_PARTY.is_dir():
        pytest.skip(f"third-party VRM folder {THIRD_PARTY} not found (set SABUN_THIRD_PARTY_3D to check real files)")
    return THIRD_PARTY


def third_party_file(folder: Path, name: str) -> Path:
    path = folder / name
    assert path.is_file(), f"{path} is missing from the third-party folder"
    return path


@pytest.mark.third_party
def test_third_party_debug_robot(third_party):
    avatar = load_avatar(third_party_file(third_party, "debug_robot.vrm"))
    assert avatar.format == "vrm1" and len(avatar.humanoid) == 53
    assert {"hips", "head", "leftHand", "rightUpperLeg"} <= set(avatar.humanoid)
    assert avatar.skins == [] and avatar.triangle_count() > 0
    assert all(material.unlit for material in avatar.materials)
    assert avatar.meta.name == "VRM Animation Debug Robot" and avatar.meta.avatar_permission == "everyone"
    assert avatar.meta.authors == ["@saturday06"]


@pytest.mark.third_party
def test_third_party_mtoon_vrm0_matches_vrm1(third_party):
    """The same four materials written as 0.x materialProperties and as VRMC_materials_mtoon convert alike."""
    old = load_avatar(third_party_file(third_party, "mtoon_vrm0.vrm"))
    new = load_avatar(third_party_file(third_party, "mtoon_vrm1.vrm"))
    assert (old.format, new.format) == ("vrm0", "vrm1")
    old_materials = {m.name: m for m in old.materials}
    new_materials = {m.name: m for m in new.materials}
    assert set(old_materials) == set(new_materials) == {"Opaque", "Cutout", "Transparent", "TransparentWithZWrite"}
    for name, material in new_materials.items():
        converted = old_materials[name]
        assert material.mtoon is not None and converted.mtoon is not None and not converted.unlit
        assert converted.alpha_mode == material.alpha_mode
        np.testing.assert_allclose(converted.base_colour, material.base_colour, atol=1e-6)
        np.testing.assert_allclose(converted.mtoon.shade_colour, material.mtoon.shade_colour, atol=1e-6)
        np.testing.assert_allclose(converted.mtoon.shading_shift, material.mtoon.shading_shift, atol=1e-6)
        np.testing.assert_allclose(converted.mtoon.shading_toony, material.mtoon.shading_toony, atol=1e-6)
        np.testing.assert_allclose(converted.mtoon.outline_colour, material.mtoon.outline_colour, atol=1e-6)
        assert converted.mtoon.outline_mode == material.mtoon.outline_mode
    opaque = new_materials["Opaque"].mtoon
    assert (opaque.outline_mode, opaque.outline_width, opaque.outline_lighting_mix) == ("world", 0.0625, 0.5)
    assert math.isclose(old_materials["Opaque"].mtoon.outline_width, 0.0625)  # 6.25 cm
    assert old_materials["Opaque"].base_texture.offset == new_materials["Opaque"].base_texture.offset


@pytest.mark.third_party
def test_third_party_sphere(third_party):
    avatar = load_avatar(third_party_file(third_party, "vrm_in_sphere.vrm"))
    assert avatar.format == "vrm0" and avatar.triangle_count() == 960
    assert len(avatar.skins) == 1 and avatar.humanoid


@pytest.mark.third_party
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("vrm_in_minimal.vrm", "no meshes to render"),
        ("vrm_broken_empty.vrm", "no meshes to render"),
        ("vrm_broken_draco.vrm", "KHR_draco_mesh_compression"),
    ],
)
def test_third_party_unusable_files(third_party, name, words):
    assert words in load_error(third_party_file(third_party, name))
