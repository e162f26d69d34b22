"""Hostile and degenerate 3D models: each is a one-line SabunError naming the file (or renders correctly), fast.

Every model is built here, in tmp_path: files that load but cannot be framed or drawn (all vertices at
one point, a flat or zero-area mesh, transforms that overflow, bones away from the mesh), files that
point outside themselves (/dev/zero, absolute paths, '..', symlinks, FIFOs), and small files that
declare huge data (byteLengths, accessor counts, textures). See docs/render.md, "Bad input".
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from sabun.avatar import gltf, pose
from sabun.avatar.commands import RenderModelConfig, render_models
from sabun.avatar.gltf import load_avatar
from sabun.avatar.humanoid import HumanoidSpec
from sabun.errors import SabunError

FLOAT, UBYTE, USHORT, UINT = 5126, 5121, 5123, 5125
TRIANGLE = [[0, 0, 0], [1, 0, 0], [0, 1, 0]]


# --- building files ---


class Model:
    """A glTF document and its binary blob; `triangle()` adds a mesh on a node of the scene."""

    def __init__(self):
        self.doc = {
            "asset": {"version": "2.0"},
            "buffers": [],
            "bufferViews": [],
            "accessors": [],
            "meshes": [],
            "nodes": [],
            "scenes": [{"nodes": []}],
            "scene": 0,
        }
        self.blob = bytearray()

    def view(self, data: bytes) -> int:
        self.blob += b"\0" * (-len(self.blob) % 4)
        self.doc["bufferViews"].append({"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)})
        self.blob += data
        return len(self.doc["bufferViews"]) - 1

    def accessor(self, values, type_: str = "VEC3", component: int = FLOAT) -> int:
        values = np.asarray(values, {FLOAT: "<f4", UBYTE: "u1", USHORT: "<u2", UINT: "<u4"}[component])
        self.doc["accessors"].append(
            {"bufferView": self.view(values.tobytes()), "componentType": component, "count": len(values), "type": type_}
        )
        return len(self.doc["accessors"]) - 1

    def mesh(self, positions=TRIANGLE, **primitive) -> int:
        primitive = {"attributes": {"POSITION": self.accessor(positions)}, **primitive}
        self.doc["meshes"].append({"name": f"mesh{len(self.doc['meshes'])}", "primitives": [primitive]})
        return len(self.doc["meshes"]) - 1

    def node(self, parent: int | None = None, **fields) -> int:
        self.doc["nodes"].append({"name": f"node{len(self.doc['nodes'])}", **fields})
        i = len(self.doc["nodes"]) - 1
        if parent is None:
            self.doc["scenes"][0]["nodes"].append(i)
        else:
            self.doc["nodes"][parent].setdefault("children", []).append(i)
        return i

    def triangle(self, positions=TRIANGLE, parent: int | None = None, **fields) -> int:
        return self.node(parent, mesh=self.mesh(positions), **fields)

    def glb(self) -> bytes:
        self.doc["buffers"] = [{"byteLength": len(self.blob)}]
        blob = bytes(self.blob) + b"\0" * (-len(self.blob) % 4)
        text = json.dumps(self.doc).encode()
        text += b" " * (-len(text) % 4)
        chunks = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(blob), b"BIN\0") + blob
        return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks

    def write(self, path: Path) -> Path:
        path.write_bytes(self.glb())
        return path

    def humanoid(self, bones: dict[str, int]) -> Model:
        """Make it a VRM 1.0 file with these humanoid bones."""
        self.doc["extensionsUsed"] = ["VRMC_vrm"]
        self.doc["extensions"] = {
            "VRMC_vrm": {
                "specVersion": "1.0",
                "humanoid": {"humanBones": {name: {"node": i} for name, i in bones.items()}},
                "meta": {
                    "name": "t",
                    "authors": ["t"],
                    "licenseUrl": "https://vrm.dev/licenses/1.0/",
                    "avatarPermission": "everyone",
                },
            }
        }
        return self


def external(folder: Path, uri: str, byte_length: int = 36, image_uri: str | None = None) -> Path:
    """A .gltf whose one buffer (and optionally one base-colour image) is given by `uri`."""
    doc = {
        "asset": {"version": "2.0"},
        "buffers": [{"uri": uri, "byteLength": byte_length}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}],
        "accessors": [{"bufferView": 0, "componentType": FLOAT, "count": 3, "type": "VEC3"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
        "nodes": [{"mesh": 0}],
        "scenes": [{"nodes": [0]}],
        "scene": 0,
    }
    if image_uri is not None:
        doc["images"] = [{"uri": image_uri}]
        doc["textures"] = [{"source": 0}]
        doc["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}]
        doc["meshes"][0]["primitives"][0]["material"] = 0
    path = folder / "model.gltf"
    path.write_text(json.dumps(doc))
    return path


def good_bin(folder: Path, name: str = "model.bin") -> Path:
    (folder / name).write_bytes(np.asarray(TRIANGLE, "<f4").tobytes())
    return folder / name


def png(side: int = 4) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (side, side), (200, 100, 50, 255)).save(out, format="PNG")
    return out.getvalue()


def load_error(path: Path, **kwargs) -> str:
    """The SabunError of loading `path`: one line naming the file, raised in well under a second."""
    start = time.perf_counter()
    with pytest.raises(SabunError) as caught:
        load_avatar(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, message
    assert time.perf_counter() - start < 5
    return message


def render(path: Path, out: Path, **config) -> list[Path]:
    settings = {"views": ("front",), "zooms": ("portrait", "full-body"), "size": 64, "supersample": 1, **config}
    return render_models(RenderModelConfig(models=(path,), out=out, **settings), note=lambda _: None)


def render_error(path: Path, out: Path, **config) -> str:
    """The SabunError of rendering `path`: one line naming the file, and nothing written."""
    with pytest.raises(SabunError) as caught:
        render(path, out, **config)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, message
    assert not out.exists() or not any(out.iterdir())
    return message


# --- models that load but cannot be framed or drawn ---


def test_cli_one_point_model_is_one_error_line(tmp_path, capsys):
    """The hostile battery's notags.gltf: one triangle, all three vertices at the origin, no skeleton."""
    path = Model()
    path.triangle([[0, 0, 0]] * 3)
    path = path.write(tmp_path / "point.glb")
    out = tmp_path / "rm"
    code, _, err = run_cli(
        capsys,
        "render",
        "model",
        path,
        "--size",
        "64",
        "--supersample",
        "1",
        "--views",
        "front",
        "--zooms",
        "portrait",
        "--out",
        out,
    )
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and "one point" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("positions", "words"),
    [
        ([[0, 0, 0]] * 3, "one point"),
        ([[0, 0, 0], [1, 0, 0], [0, 0, 1]], "flat"),  # lying in the ground plane
        ([[0, 0, 0], [0, 1, 0], [0, 2, 0]], "area"),  # corners on a line
        ([[0, 0, 0], [1e-9, 0, 0], [0, 1, 0]], "area"),  # a sliver far under a pixel
        ([[0, 0, 0], [1, 0, 0], [0, 1e-6, 0]], "flat"),
    ],
)
def test_degenerate_geometry(tmp_path, positions, words):
    model = Model()
    model.triangle(positions)
    message = render_error(model.write(tmp_path / "bad.glb"), tmp_path / "out")
    assert words in message


@pytest.mark.parametrize(
    ("node", "words"),
    [
        ({"scale": [1e30, 1e30, 1e30]}, "reach"),
        ({"translation": [1e9, 0, 0]}, "reach"),
        ({"scale": [1e-12, 1e-12, 1e-12]}, "one point"),
        ({"scale": [0, 0, 0]}, "one point"),
    ],
)
def test_absurd_scales(tmp_path, node, words):
    model = Model()
    model.triangle(**node)
    assert words in render_error(model.write(tmp_path / "scaled.glb"), tmp_path / "out")


def test_transforms_that_overflow(tmp_path):
    # 1e30 per level: float32 vertices overflow after 2 levels, float64 world matrices after 11.
    for depth, words in ((3, "infinity"), (12, "world transform")):
        model = Model()
        parent = None
        for _ in range(depth):
            parent = model.node(parent, scale=[1e30, 1e30, 1e30])
        model.triangle(parent=parent)
        assert words in render_error(model.write(tmp_path / f"deep{depth}.glb"), tmp_path / "out")


def test_node_numbers_too_large_for_float32(tmp_path):
    model = Model()
    model.triangle(translation=[1e39, 0, 0])
    assert "32-bit float" in load_error(model.write(tmp_path / "big.glb"))


def test_morph_weight_that_overflows(tmp_path):
    model = Model()
    model.triangle()
    model.doc["meshes"][0]["primitives"][0]["targets"] = [{"POSITION": model.accessor([[0, 1e30, 0]] * 3)}]
    model.doc["meshes"][0]["weights"] = [1e30]
    assert "infinity" in render_error(model.write(tmp_path / "morph.glb"), tmp_path / "out")


def test_empty_scene_and_meshes_on_no_node(tmp_path):
    model = Model()
    model.triangle()
    model.doc["scenes"][0]["nodes"] = []
    assert "scene" in load_error(model.write(tmp_path / "empty_scene.glb"))
    model = Model()
    model.mesh()
    assert "no node" in load_error(model.write(tmp_path / "no_node.glb"))
    model = Model()
    model.mesh()
    model.doc["meshes"][0]["primitives"][0].update(indices=model.accessor([0, 1], "SCALAR", USHORT), mode=5)
    model.node(mesh=0)
    assert "no meshes" in load_error(model.write(tmp_path / "two_index_strip.glb"))


def test_static_mesh_without_skeleton_or_materials_renders(tmp_path):
    """No humanoid, no skin, no material, a node scaled to zero and an empty strip beside a real triangle:
    framed by its bounding box, in every style."""
    model = Model()
    model.triangle([[-0.5, 0, 0], [0.5, 0, 0], [0, 1.6, 0]])
    model.triangle(scale=[0, 0, 0])  # hidden by a zero scale: its normals have no inverse transpose
    model.mesh()
    model.doc["meshes"][2]["primitives"][0].update(indices=model.accessor([0, 1], "SCALAR", USHORT), mode=5)
    model.node(mesh=2)
    path = model.write(tmp_path / "static.glb")
    for style in ("toon", "lit", "unlit"):
        out = tmp_path / style
        written = render(path, out, style=style, poses=("rest", "arms-at-sides", "hands-on-hips"), background="black")
        assert len(written) == 6
        pixels = np.asarray(Image.open(written[1]).convert("RGB"))
        assert (pixels.sum(-1) > 150).mean() > 0.05  # the (white, default-material) triangle fills the full-body shot
        meta = json.loads(written[0].with_suffix(".json").read_text())
        assert meta["bones_in_image"] == {} and "convention" in meta["facing"]


def test_flat_mesh_standing_up_renders_lit(tmp_path):
    """A mesh all at one height was the lit style's crash (no vertex below the ground + 5% band); one standing
    up with its base on one height must render."""
    model = Model()
    model.triangle([[-0.5, 0, 0], [0.5, 0, 0], [0, 1, 0]])
    assert len(render(model.write(tmp_path / "up.glb"), tmp_path / "out", style="lit")) == 2


def bones_at_one_point(model: Model, at=(0.0, 1.0, 0.0)) -> dict[str, int]:
    names = ["hips", "spine", "chest", "neck", "head"] + [
        f"{side}{bone}" for side in ("left", "right") for bone in ("UpperArm", "LowerArm", "Hand", "UpperLeg")
    ]
    return {name: model.node(translation=list(at)) for name in names}


def test_humanoid_bones_at_one_point_pose_without_nan(tmp_path):
    model = Model()
    model.triangle([[-0.5, 0, 0], [0.5, 0, 0], [0, 1.6, 0]])
    model.humanoid(bones_at_one_point(model))
    written = render(
        model.write(tmp_path / "stacked.vrm"),
        tmp_path / "out",
        poses=("arms-at-sides", "a-pose", "arms-up", "hands-on-hips"),
    )
    assert len(written) == 8
    for png_path in written:
        assert "NaN" not in png_path.with_suffix(".json").read_text()


@pytest.mark.parametrize(("at", "words"), [((0.0, 50.0, 0.0), "do not match"), ((100.0, 0.8, 0.0), "hips bone")])
def test_humanoid_bones_away_from_the_mesh(tmp_path, at, words):
    model = Model()
    model.triangle([[-0.5, 0, 0], [0.5, 0, 0], [0, 1.6, 0]])
    model.humanoid(bones_at_one_point(model, at))
    assert words in render_error(model.write(tmp_path / "away.vrm"), tmp_path / "out")


def test_one_mesh_on_too_many_nodes(tmp_path, monkeypatch):
    model = Model()
    model.triangle([[-0.5, 0, 0], [0.5, 0, 0], [0, 1.6, 0]])
    for _ in range(20):
        model.node(mesh=0)
    monkeypatch.setattr(pose, "MAX_POSED_VERTICES", 50)
    assert "vertices in all" in render_error(model.write(tmp_path / "instanced.glb"), tmp_path / "out")


def test_bad_model_among_good_ones_writes_nothing(tmp_path):
    good = Model()
    good.triangle([[-0.5, 0, 0], [0.5, 0, 0], [0, 1.6, 0]])
    bad = Model()
    bad.triangle([[0, 0, 0]] * 3)
    out = tmp_path / "out"
    paths = (good.write(tmp_path / "good.glb"), bad.write(tmp_path / "bad.glb"))
    with pytest.raises(SabunError, match="bad.glb"):
        render_models(
            RenderModelConfig(models=paths, out=out, views=("front",), zooms=("portrait",), size=64, supersample=1),
            note=lambda _: None,
        )
    assert not out.exists() or not any(out.iterdir())


# --- files that point outside themselves ---


def test_dev_zero_buffer_is_refused_without_reading(tmp_path):
    for uri, length in (("/dev/zero", 36), ("/dev/zero", 10**12), ("file:///dev/zero", 36)):
        message = load_error(external(tmp_path, uri, length))
        assert "zero" in message


def test_absolute_and_escaping_paths(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    outside = good_bin(tmp_path, "outside.bin")
    assert "absolute path" in load_error(external(folder, str(outside)))
    assert "out of the model's folder with '..'" in load_error(external(folder, "../outside.bin"))
    assert "out of the model's folder" in load_error(external(folder, "sub/../../outside.bin"))
    (folder / "link.bin").symlink_to(outside)
    assert "through a symlink" in load_error(external(folder, "link.bin"))
    (folder / "zero.bin").symlink_to("/dev/zero")
    assert "through a symlink" in load_error(external(folder, "zero.bin"))
    good_bin(folder)
    assert load_avatar(external(folder, "model.bin")).triangle_count() == 1
    (folder / "sub").mkdir()
    good_bin(folder / "sub")
    assert load_avatar(external(folder, "sub/model.bin")).triangle_count() == 1  # below the folder is fine


def test_fifo_and_folder_buffers_do_not_block(tmp_path):
    os.mkfifo(tmp_path / "pipe.bin")
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(message=load_error(external(tmp_path, "pipe.bin"))), daemon=True
    )
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading a FIFO buffer blocked"
    assert "named pipe" in result["message"]
    (tmp_path / "dir.bin").mkdir()
    assert "a folder" in load_error(external(tmp_path, "dir.bin"))


def test_model_file_that_is_a_device_or_fifo(tmp_path):
    message = load_error(Path("/dev/zero"))
    assert "device" in message
    os.mkfifo(tmp_path / "pipe.vrm")
    assert "named pipe" in load_error(tmp_path / "pipe.vrm")


def test_buffer_file_shorter_than_its_byte_length(tmp_path):
    good_bin(tmp_path)
    message = load_error(external(tmp_path, "model.bin", byte_length=4000))
    assert "36 bytes" in message and "4000" in message and "truncated" in message


def test_data_uri_sizes_are_checked_before_decoding(tmp_path):
    data = base64.b64encode(np.asarray(TRIANGLE, "<f4").tobytes()).decode()
    uri = f"data:application/octet-stream;base64,{data}"
    assert load_avatar(external(tmp_path, uri, 36)).triangle_count() == 1
    assert "truncated" in load_error(external(tmp_path, uri, 10**9))
    assert "4 GiB" in load_error(external(tmp_path, uri, 10**12))
    assert "without a ','" in load_error(external(tmp_path, "data:application/octet-stream;base64"))


# --- images ---


def test_image_uris_follow_the_same_rules(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    good_bin(folder)
    (tmp_path / "outside.png").write_bytes(png())
    assert "absolute path" in load_error(external(folder, "model.bin", image_uri="/dev/zero"))
    assert "with '..'" in load_error(external(folder, "model.bin", image_uri="../outside.png"))
    (folder / "zero.png").symlink_to("/dev/zero")
    assert "symlink" in load_error(external(folder, "model.bin", image_uri="zero.png"))
    os.mkfifo(folder / "pipe.png")
    assert "named pipe" in load_error(external(folder, "model.bin", image_uri="pipe.png"))
    (folder / "tex.png").write_bytes(png())
    assert load_avatar(external(folder, "model.bin", image_uri="tex.png")).textures[0].image.shape == (4, 4, 4)


def test_huge_image_files_are_refused_before_reading(tmp_path):
    good_bin(tmp_path)
    with open(tmp_path / "huge.png", "wb") as f:  # sparse: takes no disk space
        f.truncate(200 << 20)
    message = load_error(external(tmp_path, "model.bin", image_uri="huge.png"), max_texture_side=64)
    assert "more than any image" in message
    big = "data:image/png;base64," + "A" * (2 << 20)
    assert "more than any image" in load_error(external(tmp_path, "model.bin", image_uri=big), max_texture_side=64)


def test_decompression_bomb_and_texture_budget(tmp_path, monkeypatch):
    good_bin(tmp_path)
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, format="PNG")  # 9000 px a side in a few tens of kB
    (tmp_path / "bomb.png").write_bytes(bomb.getvalue())
    assert "larger than 8192 px" in load_error(external(tmp_path, "model.bin", image_uri="bomb.png"))
    (tmp_path / "tex.png").write_bytes(png(16))
    monkeypatch.setattr(gltf, "MAX_TEXTURE_PIXELS", 100)
    assert "pixels" in load_error(external(tmp_path, "model.bin", image_uri="tex.png"))


# --- declared sizes, indices and values ---


def test_huge_declared_counts(tmp_path, monkeypatch):
    model = Model()
    model.triangle()
    model.doc["accessors"][0]["count"] = 2**31
    assert "past the end" in load_error(model.write(tmp_path / "count.glb"))
    model = Model()
    model.triangle()
    model.doc["accessors"].append({"componentType": FLOAT, "count": 2**31, "type": "VEC3"})
    model.doc["meshes"][0]["primitives"][0]["targets"] = [{"POSITION": 1}]
    assert "2147483648 values for 3 vertices" in load_error(model.write(tmp_path / "target_count.glb"))
    # sparse-only accessors are allocated from their count: each below its own bound, all of them past the budget
    model = Model()
    model.node(mesh=model.mesh())
    sparse = {"componentType": FLOAT, "count": 3 << 18, "type": "VEC3"}  # 9 MiB each
    model.doc["accessors"] = [sparse] * 5
    model.doc["meshes"][0]["primitives"][0]["targets"] = [{"POSITION": i} for i in (1, 2, 3, 4)]
    monkeypatch.setattr(gltf, "MAX_DECODED_BYTES", 1 << 25)
    assert "accessor data past" in load_error(model.write(tmp_path / "sparse.glb"))


def test_overlapping_accessors_count_against_the_budget(tmp_path, monkeypatch):
    model = Model()
    model.triangle()
    # a thousand accessors over the same 36 bytes, each its own morph target
    model.doc["accessors"] += [dict(model.doc["accessors"][0]) for _ in range(1000)]
    model.doc["meshes"][0]["primitives"][0]["targets"] = [{"POSITION": i} for i in range(1, 1001)]
    path = model.write(tmp_path / "overlap.glb")
    assert len(load_avatar(path).meshes[0].primitives[0].targets) == 1000
    monkeypatch.setattr(gltf, "MAX_DECODED_BYTES", 3600)
    assert "accessor data past" in load_error(path)


def test_one_accessor_shared_is_decoded_once(tmp_path):
    model = Model()
    model.triangle()
    model.doc["meshes"][0]["primitives"][0]["targets"] = [{"POSITION": 0}] * 500
    primitive = load_avatar(model.write(tmp_path / "shared.glb")).meshes[0].primitives[0]
    assert all(target["POSITION"] is primitive.positions for target in primitive.targets)


def test_vertex_and_triangle_budgets(tmp_path, monkeypatch):
    model = Model()
    for _ in range(10):
        model.triangle()
    path = model.write(tmp_path / "many.glb")
    monkeypatch.setattr(gltf, "MAX_VERTICES", 20)
    assert "past 20 vertices" in load_error(path)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            lambda m: m.doc["meshes"][0]["primitives"][0].update(indices=m.accessor([0, 1, 7], "SCALAR", USHORT)),
            "vertex index 7",
        ),
        (
            lambda m: m.doc["meshes"][0]["primitives"][0]["attributes"].update(
                NORMAL=m.accessor([[0, 0, 1], [0, 0, np.nan], [0, 0, 1]])
            ),
            "NaN",
        ),
        (
            lambda m: m.doc["meshes"][0]["primitives"][0].update(
                targets=[{"POSITION": m.accessor([[0, 0, np.inf]] * 3)}]
            ),
            "NaN",
        ),
        (
            lambda m: m.doc["meshes"][0]["primitives"][0]["attributes"].update(
                TEXCOORD_0=m.accessor([[0, 0], [np.nan, 0], [0, 1]], "VEC2")
            ),
            "NaN",
        ),
    ],
)
def test_bad_indices_and_values(tmp_path, change, words):
    model = Model()
    model.triangle()
    change(model)
    assert words in load_error(model.write(tmp_path / "values.glb"))


# --- the humanoid builder's size parameters ---


@pytest.mark.parametrize("segments", [3, 101, 100000, 10.5, True])
def test_humanoid_segments_are_bounded(segments):
    with pytest.raises(SabunError, match="segments"):
        HumanoidSpec(segments=segments)


@pytest.mark.parametrize("height", [0.0, -1.0, float("nan"), float("inf"), 1e30, 0.01, 100.0])
def test_humanoid_height_is_bounded(height):
    with pytest.raises(SabunError, match="height"):
        HumanoidSpec(height=height)


def test_cli_export_segments_huge(tmp_path, capsys):
    out = tmp_path / "x.vrm"
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "toyworld", "export", "--character", "target", "--segments", "100000", "--out", out)
    assert code == 2 and err.startswith("error: --segments 100000") and err.count("\n") == 1, err
    assert time.perf_counter() - start < 5
    assert not out.exists() and not out.with_suffix(".toml").exists()
