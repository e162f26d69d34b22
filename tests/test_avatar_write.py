"""The GLB / VRM writer and the procedural humanoid: valid files, anatomy, facing, determinism, round trips."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import numpy as np
import pygltflib
import pytest

from sabun.avatar.humanoid import (
    HAIRSTYLES,
    OUTFITS,
    HumanoidSpec,
    build_humanoid,
    segments_for_triangles,
)
from sabun.avatar.types import TextureRef
from sabun.avatar.write import VRM1_REQUIRED_BONES, glb_bytes, turn_around, write_glb
from sabun.errors import SabunError

COMPONENT_SIZES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
COMPONENT_DTYPES = {5123: np.uint16, 5125: np.uint32, 5126: np.float32}
WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


@pytest.fixture(scope="module")
def avatars():
    return {fmt: build_humanoid(HumanoidSpec(), fmt) for fmt in ("vrm1", "vrm0")}


def parse_glb(data: bytes) -> tuple[dict, bytes]:
    """Split a GLB, checking its header and chunk layout as the glTF 2.0 spec lays them out."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    text = data[20 : 20 + json_length]
    gltf = json.loads(text.decode("utf-8"))
    assert text.rstrip(b" ") == text.rstrip()  # JSON padding is spaces
    offset = 20 + json_length
    bin_length, bin_type = struct.unpack_from("<II", data, offset)
    assert bin_type == 0x004E4942 and bin_length % 4 == 0
    assert offset + 8 + bin_length == len(data)
    return gltf, data[offset + 8 :]


def read_accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    accessor = gltf["accessors"][index]
    view = gltf["bufferViews"][accessor["bufferView"]]
    dtype = COMPONENT_DTYPES[accessor["componentType"]]
    width = WIDTHS[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    return np.frombuffer(binary, dtype, accessor["count"] * width, start).reshape(accessor["count"], width)


def world_positions(avatar) -> np.ndarray:
    """Rest world position of every node (the humanoid's nodes carry translations only)."""
    out = np.zeros((len(avatar.nodes), 3))

    def visit(i, origin):
        out[i] = origin + avatar.nodes[i].translation
        for child in avatar.nodes[i].children:
            visit(child, out[i])

    for root in avatar.roots:
        visit(root, np.zeros(3))
    return out


@pytest.mark.parametrize("version", ["vrm1", "vrm0", "gltf"])
def test_glb_is_valid(avatars, tmp_path, version):
    avatar = avatars["vrm0" if version == "vrm0" else "vrm1"]
    path = write_glb(avatar, tmp_path / "a.vrm", version=version)
    data = path.read_bytes()
    gltf, binary = parse_glb(data)
    assert gltf["buffers"] == [{"byteLength": len(binary)}]
    for view in gltf["bufferViews"]:
        assert view["byteOffset"] % 4 == 0 and view["byteOffset"] + view["byteLength"] <= len(binary)
    for accessor in gltf["accessors"]:
        view = gltf["bufferViews"][accessor["bufferView"]]
        size = COMPONENT_SIZES[accessor["componentType"]] * WIDTHS[accessor["type"]] * accessor["count"]
        assert size <= view["byteLength"]
    for mesh in gltf["meshes"]:
        for prim in mesh["primitives"]:
            for accessor_index in [prim["attributes"]["POSITION"]] + [t["POSITION"] for t in prim.get("targets", [])]:
                values = read_accessor(gltf, binary, accessor_index)
                accessor = gltf["accessors"][accessor_index]
                assert accessor["min"] == values.min(axis=0).tolist() and accessor["max"] == values.max(axis=0).tolist()
            n = gltf["accessors"][prim["attributes"]["POSITION"]]["count"]
            assert read_accessor(gltf, binary, prim["indices"]).max() < n
            assert gltf["accessors"][prim["attributes"]["JOINTS_0"]]["componentType"] == 5123
    # every extension named anywhere is listed in extensionsUsed, and nothing else is
    named = set()

    def collect(value):
        if isinstance(value, dict):
            named.update(value.get("extensions", {}))
            for v in value.values():
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(gltf)
    assert named == set(gltf.get("extensionsUsed", []))
    expected = {"vrm1": "VRMC_vrm", "vrm0": "VRM", "gltf": None}[version]
    assert (expected in named) if expected else not named & {"VRM", "VRMC_vrm", "VRMC_materials_mtoon"}
    # an independent reader accepts it
    loaded = pygltflib.GLTF2().load_binary(path)
    assert len(loaded.meshes) == len(avatar.meshes) and len(loaded.nodes) == len(avatar.nodes)


def test_vrm_extensions_content(avatars):
    gltf, _ = parse_glb(glb_bytes(avatars["vrm1"], "vrm1"))
    vrm = gltf["extensions"]["VRMC_vrm"]
    assert vrm["specVersion"] == "1.0"
    assert vrm["meta"]["authors"] and vrm["meta"]["licenseUrl"] == "https://vrm.dev/licenses/1.0/"
    assert vrm["meta"]["avatarPermission"] == "everyone"
    assert set(VRM1_REQUIRED_BONES) <= set(vrm["humanoid"]["humanBones"])
    mtoon = [m for m in gltf["materials"] if "VRMC_materials_mtoon" in m.get("extensions", {})]
    assert mtoon and all("KHR_materials_unlit" in m["extensions"] for m in mtoon)  # the fallback
    hair = next(m for m in gltf["materials"] if m["name"] == "Hair")["extensions"]["VRMC_materials_mtoon"]
    assert hair["outlineWidthMode"] == "worldCoordinates" and 0.0015 <= hair["outlineWidthFactor"] <= 0.003

    gltf, _ = parse_glb(glb_bytes(avatars["vrm0"], "vrm0"))
    vrm = gltf["extensions"]["VRM"]
    assert vrm["specVersion"] == "0.0" and vrm["meta"]["allowedUserName"] == "Everyone"
    assert vrm["meta"]["commercialUssageName"] == "Allow" and vrm["meta"]["licenseName"] == "Other"
    bones = {b["bone"] for b in vrm["humanoid"]["humanBones"]}
    assert set(VRM1_REQUIRED_BONES) | {"chest", "neck"} <= bones
    properties = vrm["materialProperties"]
    assert [p["name"] for p in properties] == [m["name"] for m in gltf["materials"]]
    shaders = {p["name"]: p["shader"] for p in properties}
    assert shaders["Skin"] == "VRM/MToon" and shaders["EyeHighlight"] == "VRM/UnlitTexture"
    skin = next(p for p in properties if p["name"] == "Skin")
    assert skin["floatProperties"]["_OutlineWidth"] == pytest.approx(0.2)  # centimetres
    assert "VRMC_materials_mtoon" not in json.dumps(gltf)


def test_thumb_bones_renamed_for_vrm0(avatars):
    avatar = replace(avatars["vrm0"], humanoid={**avatars["vrm0"].humanoid, "leftThumbMetacarpal": 14,
                                                "leftThumbProximal": 15})  # fmt: skip
    gltf, _ = parse_glb(glb_bytes(avatar, "vrm0"))
    bones = {b["bone"]: b["node"] for b in gltf["extensions"]["VRM"]["humanoid"]["humanBones"]}
    assert bones["leftThumbProximal"] == 14 and bones["leftThumbIntermediate"] == 15


@pytest.mark.parametrize("fmt", ["vrm1", "vrm0"])
def test_humanoid_anatomy_and_facing(avatars, fmt):
    avatar = avatars[fmt]
    world = world_positions(avatar)
    y = {bone: world[node][1] for bone, node in avatar.humanoid.items()}
    assert y["head"] > y["neck"] > y["upperChest"] > y["chest"] > y["spine"] > y["hips"]
    assert y["hips"] > y["leftUpperLeg"] > y["leftLowerLeg"] > y["leftFoot"] > y["leftToes"] >= 0
    assert y["leftEye"] > y["head"]
    facing = 1 if fmt == "vrm1" else -1
    x = {bone: world[node][0] for bone, node in avatar.humanoid.items()}
    assert facing * x["leftHand"] > facing * x["leftLowerArm"] > facing * x["leftUpperArm"] > 0.05
    assert facing * x["rightHand"] < -0.3 and facing * x["leftUpperLeg"] > 0
    # face features lie on the facing side of the head, the hair's bulk behind it
    head = world[avatar.humanoid["head"]]
    assert facing * (world[avatar.humanoid["leftEye"]][2] - head[2]) > 0
    meshes = {mesh.name: mesh for mesh in avatar.meshes}
    face = np.concatenate([p.positions for p in meshes["Face"].primitives])
    assert facing * (face[:, 2].mean() - head[2]) > 0.05
    hair = meshes["Hair"].primitives[0].positions
    assert facing * (hair[:, 2].mean() - head[2]) < 0
    # about 1.55 m with a head of about 1/6.5 of the height
    top = max(p.positions[:, 1].max() for m in avatar.meshes for p in m.primitives)
    assert top == pytest.approx(1.55, abs=0.01)
    assert top / (top - y["head"]) == pytest.approx(6.5, abs=0.3)  # the head bone sits at the chin


def test_skin_weights_and_binds(avatars):
    avatar = avatars["vrm1"]
    world = world_positions(avatar)
    skin = avatar.skins[0]
    np.testing.assert_allclose(skin.inverse_bind[:, :3, 3], -world[skin.joints], atol=1e-6)
    for mesh in avatar.meshes:
        for prim in mesh.primitives:
            np.testing.assert_allclose(prim.weights.sum(axis=1), 1.0, atol=1e-6)
            assert prim.joints.max() < len(skin.joints) and (prim.weights >= 0).all()
    # joints blend smoothly: the body has vertices shared between the knee's two bones
    body = avatar.meshes[0].primitives[0]
    blended = (body.weights[:, 1] > 0.05) & (body.weights[:, 0] > 0.05)
    pairs = {tuple(sorted(j)) for j in body.joints[blended][:, :2].tolist()}
    joint = {bone: skin.joints.index(node) for bone, node in avatar.humanoid.items()}
    for a, b in [("leftUpperLeg", "leftLowerLeg"), ("leftUpperArm", "leftLowerArm"), ("neck", "head"),
                 ("hips", "leftUpperLeg"), ("leftShoulder", "leftUpperArm")]:  # fmt: skip
        assert tuple(sorted((joint[a], joint[b]))) in pairs


def skinned_rest(avatar) -> list[np.ndarray]:
    """Linear-blend-skinned positions in the rest pose: must equal the stored positions."""
    world = world_positions(avatar)
    skin = avatar.skins[0]
    matrices = np.tile(np.eye(4), (len(skin.joints), 1, 1))
    matrices[:, :3, 3] = world[skin.joints]
    matrices = matrices @ skin.inverse_bind
    out = []
    for mesh in avatar.meshes:
        for prim in mesh.primitives:
            homogeneous = np.c_[prim.positions, np.ones(len(prim.positions))]
            blended = np.einsum("nk,nkij->nij", prim.weights, matrices[prim.joints])
            out.append(np.einsum("nij,nj->ni", blended, homogeneous)[:, :3])
    return out


def test_turn_around(avatars):
    avatar = avatars["vrm1"]
    before = glb_bytes(avatar, "vrm1")
    turned = turn_around(avatar)
    twice = turn_around(turned)
    assert glb_bytes(twice, "vrm1") == before
    assert glb_bytes(avatar, "vrm1") == before  # the original is untouched
    for before, after in zip(skinned_rest(avatar), skinned_rest(turned), strict=True):
        np.testing.assert_allclose(after, before * [-1, 1, -1], atol=1e-5)
    # the humanoid's vrm0 build is the vrm1 build turned
    assert glb_bytes(turned, "vrm0") == glb_bytes(avatars["vrm0"], "vrm0")


def test_rest_pose_consistent_after_skinning(avatars):
    for avatar in avatars.values():
        for positions, prim in zip(skinned_rest(avatar), (p for m in avatar.meshes for p in m.primitives), strict=True):
            np.testing.assert_allclose(positions, prim.positions, atol=1e-5)


def test_deterministic(tmp_path):
    spec = HumanoidSpec(hairstyle="twintails", outfit="swimsuit", body="curvy", rest="A")
    a = write_glb(build_humanoid(spec), tmp_path / "a.vrm")
    b = write_glb(build_humanoid(spec), tmp_path / "b.vrm")
    assert a.read_bytes() == b.read_bytes()


def test_triangle_count_scales_as_documented():
    counts = {s: build_humanoid(HumanoidSpec(segments=s)).triangle_count() for s in (8, 16, 32)}
    assert 3000 <= build_humanoid().triangle_count() <= 6000
    assert 3.2 < counts[16] / counts[8] < 4.2 and 3.5 < counts[32] / counts[16] < 4.2  # about quadratic
    for target in (30_000, 100_000):
        count = build_humanoid(HumanoidSpec(segments=segments_for_triangles(target))).triangle_count()
        assert abs(count - target) < 0.06 * target


def test_a_pose_lowers_the_arms():
    avatar = build_humanoid(HumanoidSpec(rest="A"))
    world = world_positions(avatar)
    upper, hand = world[avatar.humanoid["leftUpperArm"]], world[avatar.humanoid["leftHand"]]
    angle = np.degrees(np.arctan2(upper[1] - hand[1], hand[0] - upper[0]))
    assert angle == pytest.approx(35.0, abs=0.5)


def test_test_features_present(avatars):
    avatar = avatars["vrm1"]
    materials = {m.name: m for m in avatar.materials}
    for name in ("Skin", "Hair", "Outfit"):
        mtoon = materials[name].mtoon
        assert mtoon.shading_shift != 0 and 0 < mtoon.shading_toony < 1 and any(mtoon.shade_colour)
        assert mtoon.outline_mode == "world" and 0.0015 <= mtoon.outline_width <= 0.003
    assert any(m.unlit and m.mtoon is None for m in avatar.materials)
    mask = next(m for m in avatar.materials if m.alpha_mode == "MASK")
    image = avatar.textures[mask.base_texture.texture].image
    assert set(np.unique(image[..., 3]).tolist()) == {0, 255}
    assert mask.base_texture.scale != (1.0, 1.0)
    assert any(m.alpha_mode == "BLEND" and 0.3 <= m.base_colour[3] <= 0.7 for m in avatar.materials)
    assert {"Body", "Face", "Hair", "Outfit", "Ribbon"} <= set(avatar.mesh_names())
    weights = {mesh.name: mesh.weights for mesh in avatar.meshes if mesh.primitives[0].targets}
    assert 0.0 in weights["Face"] and any(weights["Face"])
    assert all(m.name != "Ribbon" or "Hair" not in m.name for m in avatar.materials)
    mannequin = build_humanoid(HumanoidSpec(outfit="none", ribbon=False))
    assert "Outfit" not in mannequin.mesh_names() and "Ribbon" not in mannequin.mesh_names()


@pytest.mark.parametrize("hairstyle", HAIRSTYLES)
@pytest.mark.parametrize("outfit", OUTFITS)
def test_every_variant_writes(tmp_path, hairstyle, outfit):
    spec = HumanoidSpec(hairstyle=hairstyle, outfit=outfit, segments=6, body="slim", height=1.4)
    for fmt in ("vrm1", "vrm0"):
        gltf, _ = parse_glb(glb_bytes(build_humanoid(spec, fmt), fmt))
        assert gltf["meshes"]


def test_writer_errors(avatars, tmp_path):
    avatar = avatars["vrm1"]
    path = write_glb(avatar, tmp_path / "a.vrm")
    with pytest.raises(SabunError, match="already exists"):
        write_glb(avatar, path)
    write_glb(avatar, path, overwrite=True)
    with pytest.raises(SabunError, match="unknown version"):
        write_glb(avatar, tmp_path / "b.vrm", version="vrm2")
    bad = turn_around(avatar)  # a copy
    bad.materials[0].base_texture = TextureRef(texture=7)
    with pytest.raises(SabunError, match="texture 7 .* out of range") as error:
        write_glb(bad, tmp_path / "c.vrm")
    assert "\n" not in str(error.value) and not (tmp_path / "c.vrm").exists()
    bad = turn_around(avatar)
    bad.humanoid.pop("hips")
    with pytest.raises(SabunError, match="hips"):
        write_glb(bad, tmp_path / "d.vrm")
    write_glb(bad, tmp_path / "d.glb", version="gltf")  # plain glTF needs no humanoid
    bad = turn_around(avatar)
    next(m for m in bad.materials if m.alpha_mode == "MASK").base_texture.rotation = 0.5
    with pytest.raises(SabunError, match="VRM 0.x"):
        write_glb(bad, tmp_path / "e.vrm", version="vrm0")


# --- round trips through the loader ---------------------------------------------------------------------------


def assert_same_avatar(loaded, built):
    assert len(loaded.meshes) == len(built.meshes) and loaded.mesh_names() == built.mesh_names()
    for got_mesh, want_mesh in zip(loaded.meshes, built.meshes, strict=True):
        assert got_mesh.weights == pytest.approx(want_mesh.weights)
        for got, want in zip(got_mesh.primitives, want_mesh.primitives, strict=True):
            np.testing.assert_array_equal(got.positions, want.positions)
            np.testing.assert_array_equal(got.indices, want.indices)
            np.testing.assert_allclose(got.normals, want.normals, atol=1e-6)
            np.testing.assert_array_equal(got.joints, want.joints)
            np.testing.assert_allclose(got.weights, want.weights, atol=1e-6)
            np.testing.assert_array_equal(got.texcoords[0], want.texcoords[0])
            assert got.material == want.material and len(got.targets) == len(want.targets)
            for got_target, want_target in zip(got.targets, want.targets, strict=True):
                np.testing.assert_array_equal(got_target["POSITION"], want_target["POSITION"])
    np.testing.assert_allclose(loaded.skins[0].inverse_bind, built.skins[0].inverse_bind, atol=1e-7)
    assert loaded.skins[0].joints == built.skins[0].joints
    assert [n.name for n in loaded.nodes] == [n.name for n in built.nodes]
    for got, want in zip(loaded.nodes, built.nodes, strict=True):
        np.testing.assert_array_equal(got.translation, want.translation)
        assert got.children == want.children and got.mesh == want.mesh and got.skin == want.skin
    assert loaded.humanoid == built.humanoid
    for got, want in zip(loaded.materials, built.materials, strict=True):
        assert got.name == want.name and got.alpha_mode == want.alpha_mode and got.unlit == want.unlit
        assert got.double_sided == want.double_sided
        assert got.base_colour == pytest.approx(want.base_colour, abs=1e-9)
        if want.alpha_mode == "MASK":
            assert got.alpha_cutoff == pytest.approx(want.alpha_cutoff)
        if want.base_texture is None:
            assert got.base_texture is None
        else:
            assert got.base_texture.texture == want.base_texture.texture
            assert got.base_texture.offset == pytest.approx(want.base_texture.offset)
            assert got.base_texture.scale == pytest.approx(want.base_texture.scale)
        assert (got.mtoon is None) == (want.mtoon is None)
        if want.mtoon is not None:
            for key in ("shade_colour", "shading_shift", "shading_toony", "outline_width", "outline_colour",
                        "outline_lighting_mix"):  # fmt: skip
                assert getattr(got.mtoon, key) == pytest.approx(getattr(want.mtoon, key), abs=1e-9), key
            assert got.mtoon.outline_mode == want.mtoon.outline_mode
    for got, want in zip(loaded.textures, built.textures, strict=True):
        np.testing.assert_array_equal(got.image, want.image)
        assert got.nearest == want.nearest and (got.wrap_s, got.wrap_t) == (want.wrap_s, want.wrap_t)


@pytest.mark.parametrize("fmt", ["vrm1", "vrm0"])
def test_round_trip_through_loader(avatars, tmp_path, fmt):
    gltf = pytest.importorskip("sabun.avatar.gltf")
    built = avatars[fmt]
    loaded = gltf.load_avatar(write_glb(built, tmp_path / "a.vrm", version=fmt))
    assert loaded.format == fmt
    assert_same_avatar(loaded, built)
    meta = loaded.meta
    assert meta.name == built.meta.name and meta.version == built.meta.version
    assert meta.avatar_permission == "everyone" and meta.allow_sexual is False and meta.allow_violent is False
    assert built.meta.licence in meta.licence
    if fmt == "vrm1":
        assert meta.authors == built.meta.authors and meta.licence == built.meta.licence
        assert meta.commercial_usage == "corporation" and meta.allow_redistribution is True
        assert meta.modification == built.meta.modification


def test_vrm1_avatar_written_as_vrm0_faces_minus_z(avatars, tmp_path):
    gltf = pytest.importorskip("sabun.avatar.gltf")
    loaded = gltf.load_avatar(write_glb(avatars["vrm1"], tmp_path / "a.vrm", version="vrm0"))
    assert loaded.format == "vrm0"
    assert world_positions(loaded)[loaded.humanoid["leftHand"]][0] < -0.3
    assert_same_avatar(loaded, avatars["vrm0"])
