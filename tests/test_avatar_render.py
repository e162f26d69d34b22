"""`sabun render model`: posing, framing, drawing, captions and bad input, on VRM files the tests write."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sabun.avatar.camera import ZOOMS, camera_for, heights
from sabun.avatar.commands import RenderModelConfig, render_models
from sabun.avatar.gltf import load_avatar
from sabun.avatar.humanoid import HumanoidSpec, build_humanoid
from sabun.avatar.pose import pose_avatar
from sabun.avatar.raster import Renderer, composite
from sabun.avatar.write import write_glb
from sabun.captions import caption_folder
from sabun.errors import SabunError

SPEC = HumanoidSpec(name="Tester", hairstyle="twintails", hair_colour=(240, 200, 80), outfit="swimsuit", segments=8)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The same character written as VRM 1.0 and VRM 0.x (which faces the other way along z)."""
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for version in ("vrm1", "vrm0"):
        out[version] = write_glb(build_humanoid(SPEC, version), folder / f"tester_{version}.vrm", version)
    return out


def _draw(
    path: Path, view: str, zoom: str, pose: str = "arms-at-sides", style: str = "toon", size: int = 96
) -> np.ndarray:
    avatar = load_avatar(path)
    posed = pose_avatar(avatar, pose)
    with Renderer(avatar, posed, style, size) as renderer:
        return composite(renderer.draw(camera_for(posed, avatar, view, zoom)), (1.0, 1.0, 1.0))


def _face_box(path: Path, size: int) -> tuple[slice, slice]:
    """Pixels around the projected eye bones of a front portrait: where the face is."""
    avatar = load_avatar(path)
    posed = pose_avatar(avatar)
    camera = camera_for(posed, avatar, "front", "portrait")
    x, y = (camera.project(posed.bone("leftEye", avatar)) + camera.project(posed.bone("rightEye", avatar))) / 2 * size
    return slice(int(y - 0.12 * size), int(y + 0.12 * size)), slice(int(x - 0.15 * size), int(x + 0.15 * size))


@pytest.mark.parametrize("version", ["vrm1", "vrm0"])
def test_front_is_the_face_for_both_vrm_versions(models, version):
    front = _draw(models[version], "front", "portrait")
    behind = _draw(models[version], "behind", "portrait")
    rows, cols = _face_box(models[version], 96)
    # eyes and brows are dark on the face; from behind the same pixels are hair
    dark = lambda image: (image[rows, cols].astype(int).sum(-1) < 250).mean()  # noqa: E731
    assert dark(front) > 0.01
    assert dark(behind) < dark(front) / 4
    assert np.abs(front[rows, cols].astype(int) - behind[rows, cols].astype(int)).mean() > 20


def test_vrm0_and_vrm1_of_one_character_render_alike(models):
    one = _draw(models["vrm1"], "front", "full-body").astype(int)
    zero = _draw(models["vrm0"], "front", "full-body").astype(int)
    assert np.abs(one - zero).mean() < 2.0


@pytest.mark.parametrize("version", ["vrm1", "vrm0"])
def test_arms_at_sides_hands_below_hips_inside_body_margin(models, version):
    avatar = load_avatar(models[version])
    rest = pose_avatar(avatar, "rest")
    posed = pose_avatar(avatar, "arms-at-sides")
    hips = posed.bone("hips", avatar)
    left = posed.frame.left
    h = heights(posed, avatar)
    height = h.top - h.bottom
    body = posed.vertices() - hips
    torso_half_width = np.abs(body[(body[:, 1] > -0.1 * height) & (body[:, 1] < 0.2 * height)] @ left).max()
    positions = np.concatenate([p.positions for p in posed.primitives]) - hips
    bones = np.concatenate([p.bones for p in posed.primitives])
    for side, sign in (("left", 1), ("right", -1)):
        hand = positions[bones == avatar.humanoid[f"{side}Hand"]].mean(0)  # the middle of the hand's mesh
        assert hand[1] < 0, f"{side} hand not below the hips"
        assert 0 < sign * (hand @ left) < torso_half_width + 0.12 * height, f"{side} hand outside the margin"
        # in the T-pose rest the hand is far out to the side, level with the shoulder
        rest_hand = rest.bone(f"{side}Hand", avatar) - rest.bone("hips", avatar)
        assert sign * (rest_hand @ left) > 0.3 * height


def test_arms_do_not_pass_through_the_body(models):
    """Forearm and hand vertices stay outside the hips and thighs beside them."""
    avatar = load_avatar(models["vrm1"])
    posed = pose_avatar(avatar, "arms-at-sides")
    hips = posed.bone("hips", avatar)
    positions = np.concatenate([p.positions for p in posed.primitives]) - hips
    bones = np.concatenate([p.bones for p in posed.primitives])
    body = np.isin(bones, [avatar.humanoid[b] for b in ("hips", "leftUpperLeg", "rightUpperLeg")])
    for side, sign in (("left", 1), ("right", -1)):
        arm = np.isin(bones, [avatar.humanoid[f"{side}LowerArm"], avatar.humanoid[f"{side}Hand"]])
        arm_pts = positions[arm]
        band = positions[body & (positions[:, 1] > arm_pts[:, 1].min()) & (positions[:, 1] < arm_pts[:, 1].max())]
        assert (sign * arm_pts @ posed.frame.left).min() > (sign * band @ posed.frame.left).max()


def test_framing_puts_the_head_where_each_zoom_says(models):
    avatar = load_avatar(models["vrm1"])
    posed = pose_avatar(avatar)
    heads = {}
    for zoom in ZOOMS:
        camera = camera_for(posed, avatar, "front", zoom)
        x, y = camera.project(posed.bone("head", avatar))
        heads[zoom] = y
        assert abs(x - 0.5) < 0.05, "the character is centred"
        top = posed.vertices()[:, 1].argmax()
        assert 0.0 < camera.project(posed.vertices()[top])[1] < 0.1, "the top of the head is just inside the frame"
    # the closer the zoom, the lower the head bone sits in the frame
    assert heads["full-body"] < heads["cowboy-shot"] < heads["upper-body"] < heads["portrait"]
    assert 0.25 < heads["portrait"] < 0.6
    feet = camera_for(posed, avatar, "front", "full-body").project(posed.bone("leftFoot", avatar))
    assert 0.85 < feet[1] < 1.0, "a full-body shot shows the feet"
    # the same rule on another figure: a taller character fills the same frame
    tall = build_humanoid(HumanoidSpec(height=1.8, segments=6))
    tall_posed = pose_avatar(tall)
    y = camera_for(tall_posed, tall, "front", "portrait").project(tall_posed.bone("head", tall))[1]
    assert abs(y - heads["portrait"]) < 0.08


def test_renders_are_deterministic_and_styles_differ(models):
    first = _draw(models["vrm1"], "front-left", "cowboy-shot", style="toon")
    again = _draw(models["vrm1"], "front-left", "cowboy-shot", style="toon")
    assert np.array_equal(first, again)
    lit = _draw(models["vrm1"], "front-left", "cowboy-shot", style="lit")
    unlit = _draw(models["vrm1"], "front-left", "cowboy-shot", style="unlit")
    assert np.abs(first.astype(int) - lit.astype(int)).mean() > 1
    assert np.abs(first.astype(int) - unlit.astype(int)).mean() > 1


def test_transparent_background_and_mask_and_blend(models, tmp_path):
    avatar = load_avatar(models["vrm1"])
    assert {m.alpha_mode for m in avatar.materials} >= {"OPAQUE", "MASK", "BLEND"}
    posed = pose_avatar(avatar)
    with Renderer(avatar, posed, "toon", 64) as renderer:
        rgba = composite(renderer.draw(camera_for(posed, avatar, "front", "full-body")), None)
    assert rgba.shape == (64, 64, 4)
    assert rgba[0, 0, 3] == 0 and rgba[32, 32, 3] == 255
    # partial coverage only at edges and transparent parts: anti-aliased
    assert ((rgba[..., 3] > 0) & (rgba[..., 3] < 255)).any()


def test_render_models_writes_captioned_shots(models, tmp_path):
    model = tmp_path / "alice.vrm"
    model.write_bytes(models["vrm1"].read_bytes())
    (tmp_path / "alice.toml").write_text('tags = "1girl, blonde hair, twintails"\nclothes = "swimsuit"\n')
    out = tmp_path / "renders"
    written = render_models(RenderModelConfig(models=(model,), out=out, size=64), note=lambda m: None)
    assert len(written) == 8  # the method's set: front and behind at four zooms
    meta = json.loads((out / "alice_behind_full-body_arms-at-sides.json").read_text())
    assert meta["model"]["sha256"] == load_avatar(model).sha256
    assert meta["meta"]["name"] == "Tester" and meta["meta"]["avatar_permission"] == "everyone"
    assert (meta["view"], meta["zoom"], meta["pose"], meta["style"], meta["size"]) == (
        "behind",
        "full-body",
        "arms-at-sides",
        "toon",
        64,
    )
    assert Image.open(out / "alice_behind_full-body_arms-at-sides.png").size == (64, 64)
    txt = lambda name: (out / f"{name}.txt").read_text().strip()  # noqa: E731
    assert txt("alice_behind_full-body_arms-at-sides") == (
        "1girl, blonde hair, twintails, swimsuit, arms at sides, full body, from behind, white background, 3d"
    )
    caption_folder(out, "character")
    assert (
        txt("alice_behind_full-body_arms-at-sides")
        == "swimsuit, arms at sides, full body, from behind, white background"
    )
    assert txt("alice_front_portrait_arms-at-sides") == "swimsuit, portrait, white background"
    caption_folder(out, "stepping-stone")
    assert txt("alice_front_upper-body_arms-at-sides") == "1girl, blonde hair, twintails, swimsuit, upper body"
    # nothing is replaced without overwrite
    before = (out / "alice_front_portrait_arms-at-sides.png").read_bytes()
    with pytest.raises(SabunError, match="already exists"):
        render_models(RenderModelConfig(models=(model,), out=out, size=64, style="lit"), note=lambda m: None)
    assert (out / "alice_front_portrait_arms-at-sides.png").read_bytes() == before


def test_stepping_stone_policy_needs_tags(models, tmp_path):
    with pytest.raises(SabunError, match=r"has no tags.*tags = "):
        render_models(RenderModelConfig(models=(models["vrm1"],), out=tmp_path / "r", policy="stepping-stone", size=64))
    assert not (tmp_path / "r").exists()


def test_only_author_licence_needs_author(tmp_path):
    path = write_glb(build_humanoid(HumanoidSpec(avatar_permission="onlyAuthor", segments=6)), tmp_path / "mine.vrm")
    with pytest.raises(SabunError, match=r"only its author.*onlyAuthor.*--author"):
        render_models(RenderModelConfig(models=(path,), out=tmp_path / "r", size=64))
    assert not (tmp_path / "r").exists()
    written = render_models(
        RenderModelConfig(models=(path,), out=tmp_path / "r", size=64, zooms=("portrait",), author=True),
        note=lambda m: None,
    )
    assert len(written) == 2


def test_hide_leaves_out_a_mesh(models):
    avatar = load_avatar(models["vrm1"])
    everything = pose_avatar(avatar)
    hidden = pose_avatar(avatar, hidden=frozenset({"Outfit"}))
    assert {p.mesh for p in everything.primitives} - {p.mesh for p in hidden.primitives} == {"Outfit"}


def test_cli_render_list_and_bad_input(models, tmp_path):
    from sabun.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["render", "model", str(models["vrm0"]), "--list"])
    assert listed.exit_code == 0, listed.output
    assert "vrm0" in listed.output and "leftUpperArm" in listed.output and "Hair" in listed.output
    out = tmp_path / "cli"
    result = runner.invoke(
        app,
        [
            "render",
            "model",
            str(models["vrm1"]),
            "--out",
            str(out),
            "--size",
            "64",
            "--views",
            "front",
            "--zooms",
            "portrait,full-body",
            "--sheet",
            str(tmp_path / "sheet.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 2 and (tmp_path / "sheet.png").exists()
    for args in (["--views", "top"], ["--size", "5"], ["--background", "plaid"], ["--hide", "NoSuchMesh"]):
        bad = tmp_path / "bad"
        result = runner.invoke(app, ["render", "model", str(models["vrm1"]), "--out", str(bad), *args])
        assert result.exit_code != 0 and isinstance(result.exception, (SabunError, SystemExit)), args
        assert not bad.exists(), args


def test_outlines_only_draw_thin_lines(models):
    """Inverted-hull outlines must never cover a surface (they do when a part's triangles wind inwards)."""
    avatar = load_avatar(models["vrm1"])
    posed = pose_avatar(avatar)
    camera = camera_for(posed, avatar, "front", "full-body")
    with Renderer(avatar, posed, "toon", 128) as renderer:
        with_outlines = composite(renderer.draw(camera), (1.0, 1.0, 1.0)).astype(int)
        for material in avatar.materials:
            if material.mtoon:
                material.mtoon.outline_mode = "none"
        without = composite(renderer.draw(camera), (1.0, 1.0, 1.0)).astype(int)
    changed = (np.abs(with_outlines - without).sum(-1) > 60).mean()
    covered = (without.sum(-1) < 700).mean()  # the figure's share of the image
    assert 0 < changed < 0.15 * covered


THIRD_PARTY = Path(os.environ.get("SABUN_THIRD_PARTY_3D", Path(__file__).resolve().parents[2] / "shared" / "3d"))
THIRD_PARTY_ERRORS = {
    "vrm_broken_draco.vrm": "KHR_draco_mesh_compression",
    "vrm_broken_empty.vrm": "no meshes",
    "vrm_in_minimal.vrm": "no meshes",
}


@pytest.mark.third_party
@pytest.mark.parametrize(
    "name", ["debug_robot.vrm", "mtoon_vrm0.vrm", "mtoon_vrm1.vrm", "vrm_in_sphere.vrm", *THIRD_PARTY_ERRORS]
)
def test_third_party_files_render_or_fail_clearly(name, tmp_path):
    """VRM files written by another project: sensible renders, or one clear error and nothing written."""
    path = THIRD_PARTY / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (set SABUN_THIRD_PARTY_3D); this is not a pass")
    from sabun.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "render",
            "model",
            str(path),
            "--out",
            str(out),
            "--size",
            "64",
            "--author",
            "--views",
            "front,behind",
            "--zooms",
            "full-body",
        ],
    )
    if name in THIRD_PARTY_ERRORS:
        assert isinstance(result.exception, SabunError) and THIRD_PARTY_ERRORS[name] in str(result.exception)
        assert name in str(result.exception)
        assert not out.exists()
        return
    assert result.exit_code == 0, result.output
    front = np.asarray(Image.open(out / f"{path.stem}_front_full-body_arms-at-sides.png"))
    assert (front.astype(int).sum(-1) < 740).mean() > 0.005, "something is drawn"
    meta = json.loads((out / f"{path.stem}_front_full-body_arms-at-sides.json").read_text())
    assert meta["model"]["format"] in ("vrm0", "vrm1") and meta["meta"]["name"]
