"""The VRM writer and the procedural humanoid: valid files that load back to what was written."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from sabun.avatar.gltf import load_avatar
from sabun.avatar.humanoid import HumanoidSpec, build_humanoid, segments_for_triangles
from sabun.avatar.pose import local_matrix, world_matrices
from sabun.avatar.write import turn_around, write_glb

SPEC = HumanoidSpec(segments=6)


def _glb_json(data: bytes) -> dict:
    magic, version, length = struct.unpack_from("<4sII", data)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    chunk_length, chunk_type = struct.unpack_from("<I4s", data, 12)
    assert chunk_type == b"JSON" and chunk_length % 4 == 0
    return json.loads(data[20 : 20 + chunk_length])


@pytest.mark.parametrize("version", ["vrm1", "vrm0"])
def test_round_trip(tmp_path, version):
    avatar = build_humanoid(SPEC, version)
    path = write_glb(avatar, tmp_path / f"h.{version}.vrm", version)
    document = _glb_json(path.read_bytes())
    assert ("VRMC_vrm" if version == "vrm1" else "VRM") in document["extensions"]
    back = load_avatar(path)
    assert back.format == version
    assert back.humanoid == avatar.humanoid
    assert back.meta.name == avatar.meta.name and back.meta.avatar_permission == avatar.meta.avatar_permission
    for mesh, mesh_back in zip(avatar.meshes, back.meshes, strict=True):
        assert mesh.name == mesh_back.name and list(mesh.weights) == pytest.approx(list(mesh_back.weights))
        for p, q in zip(mesh.primitives, mesh_back.primitives, strict=True):
            np.testing.assert_allclose(p.positions, q.positions, atol=1e-6)
            np.testing.assert_array_equal(p.indices, q.indices)
            if p.weights is not None:
                np.testing.assert_allclose(p.weights, q.weights, atol=1e-6)
                np.testing.assert_array_equal(p.joints, q.joints)
            assert len(p.targets) == len(q.targets)
    for skin, skin_back in zip(avatar.skins, back.skins, strict=True):
        np.testing.assert_allclose(skin.inverse_bind, skin_back.inverse_bind, atol=1e-6)
    for m, n in zip(avatar.materials, back.materials, strict=True):
        assert (m.name, m.alpha_mode, m.double_sided, m.unlit) == (n.name, n.alpha_mode, n.double_sided, n.unlit)
        np.testing.assert_allclose(m.base_colour, n.base_colour, atol=2e-3)
        assert (m.mtoon is None) == (n.mtoon is None)
        if m.mtoon:
            np.testing.assert_allclose(m.mtoon.shade_colour, n.mtoon.shade_colour, atol=2e-3)
            assert n.mtoon.shading_shift == pytest.approx(m.mtoon.shading_shift, abs=1e-4)
            assert n.mtoon.shading_toony == pytest.approx(m.mtoon.shading_toony, abs=1e-4)
            assert (n.mtoon.outline_mode, n.mtoon.outline_width) == (m.mtoon.outline_mode, pytest.approx(m.mtoon.outline_width))
        if m.base_texture:
            assert (n.base_texture.scale, n.base_texture.offset) == (m.base_texture.scale, m.base_texture.offset)


def test_anatomy_and_facing():
    for version, facing in (("vrm1", 1.0), ("vrm0", -1.0)):
        avatar = build_humanoid(SPEC, version)
        world = world_matrices(avatar, [local_matrix(avatar, i) for i in range(len(avatar.nodes))])
        at = {bone: world[i][:3, 3] for bone, i in avatar.humanoid.items()}
        assert at["head"][1] > at["neck"][1] > at["hips"][1] > at["leftLowerLeg"][1] > at["leftFoot"][1]
        assert np.sign(at["leftHand"][0]) == facing  # VRM 1.0: the left hand at +X; VRM 0.x faces -Z, so -X
        assert np.sign(at["leftEye"][2] - at["head"][2]) == facing
        for mesh in avatar.meshes:
            for p in mesh.primitives:
                if p.weights is not None:
                    np.testing.assert_allclose(p.weights.sum(1), 1.0, atol=1e-6)


def test_deterministic_and_turn_around_twice_is_identity(tmp_path):
    a = write_glb(build_humanoid(SPEC), tmp_path / "a.vrm")
    b = write_glb(build_humanoid(SPEC), tmp_path / "b.vrm")
    assert a.read_bytes() == b.read_bytes()
    avatar = build_humanoid(SPEC)
    twice = turn_around(turn_around(avatar))
    for p, q in zip(avatar.meshes[0].primitives, twice.meshes[0].primitives, strict=True):
        np.testing.assert_allclose(p.positions, q.positions, atol=1e-6)


def test_triangle_budget():
    for target in (30000, 100000):
        triangles = build_humanoid(HumanoidSpec(segments=segments_for_triangles(target))).triangle_count()
        assert 0.8 * target < triangles < 1.2 * target
