"""`sabun toyworld export`: toy characters as VRM 1.0 models with their tag files, read back and rendered."""

from __future__ import annotations

import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sabun.avatar.captions import read_tag_file
from sabun.avatar.commands import RenderModelConfig, render_models
from sabun.avatar.gltf import load_avatar
from sabun.avatar.humanoid import srgb_to_linear
from sabun.avatar.write import VRM1_REQUIRED_BONES
from sabun.errors import SabunError
from sabun.toyworld.captions import HAIRSTYLE_TAGS, OUTFIT_TAGS, stepping_stone_caption
from sabun.toyworld.character import OUTFITS, CharacterSpec, load_preset
from sabun.toyworld.colours import THING_COLOURS
from sabun.toyworld.export import character_tags, export_character

SEGMENTS = 6  # coarse, for speed; the geometry's layout does not depend on it


def toy_meta(character: CharacterSpec) -> dict:
    """Toy render metadata of a front, full-body shot of `character`."""
    return {
        "character": character.to_dict(),
        "style": "3d",
        "view": "front",
        "zoom": "full-body",
        "pose": "arms-at-sides",
        "background": "white",
    }


def dressed(outfit: str) -> CharacterSpec:
    return replace(
        load_preset("green_medium"), name=f"green_{outfit}", outfit=outfit, outfit_colour=THING_COLOURS["orange"]
    )


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> tuple[Path, Path]:
    return export_character(load_preset("target"), tmp_path_factory.mktemp("export") / "target.vrm", segments=SEGMENTS)


def bones_of(avatar, mesh_name: str) -> set[str]:
    """Humanoid bones that move any vertex of the mesh `mesh_name`."""
    node_bone = {node: bone for bone, node in avatar.humanoid.items()}
    joints = avatar.skins[0].joints
    mesh = next(m for m in avatar.meshes if m.name == mesh_name)
    used = set()
    for prim in mesh.primitives:
        used |= {node_bone[joints[j]] for j in np.unique(prim.joints[prim.weights > 0])}
    return used


def test_target_reads_back_as_the_spec(target):
    vrm, _ = target
    spec = load_preset("target")
    avatar = load_avatar(vrm)
    assert avatar.format == "vrm1"
    assert set(VRM1_REQUIRED_BONES) <= set(avatar.humanoid)
    materials = {m.name: m for m in avatar.materials}
    for name, colour in (
        ("Hair", spec.hair_colour),
        ("Iris", spec.eye_colour),
        ("Skin", spec.skin_colour),
        ("Ribbon", spec.ribbon_colour),
    ):
        np.testing.assert_allclose(materials[name].base_colour[:3], srgb_to_linear(colour), atol=1e-6, err_msg=name)
    assert "Ribbon" in avatar.mesh_names() and "Outfit" not in avatar.mesh_names()
    assert avatar.meta.name == "target" and avatar.meta.authors == ["sabun toy world"]
    assert (avatar.meta.avatar_permission, avatar.meta.allow_redistribution, avatar.meta.modification) == (
        "everyone",
        True,
        "allowModificationRedistribution",
    )


def test_tag_file_holds_the_toy_captions_tags(target):
    _, tag_file = target
    spec = load_preset("target")
    data = read_tag_file(tag_file)  # the reader `sabun render model` uses: no unknown keys
    assert data == {
        "tags": "blonde hair, twintails, blue eyes, medium breasts, hair ribbon",
        "clothes": "nude",
        "hair_materials": ["Hair"],
    }
    # the toy's stepping-stone caption of a front full-body shot is exactly the character's tags, clothes and zoom
    assert stepping_stone_caption(toy_meta(spec)) == f"{data['tags']}, {data['clothes']}, full body"
    # the spec rides along as a comment that is itself a TOML inline table
    comment = next(line for line in tag_file.read_text().splitlines() if line.startswith("# character = "))
    assert tomllib.loads(comment[2:])["character"] == spec.to_dict()


@pytest.mark.parametrize("outfit", OUTFITS)
def test_every_outfit_exports(tmp_path, outfit):
    spec = dressed(outfit)
    vrm, tag_file = export_character(spec, tmp_path / f"{spec.name}.vrm", segments=SEGMENTS)
    avatar = load_avatar(vrm)
    tags, clothes = character_tags(spec)
    assert read_tag_file(tag_file) == {"tags": tags, "clothes": clothes, "hair_materials": ["Hair"]}
    assert stepping_stone_caption(toy_meta(spec)) == f"{tags}, {clothes}, full body"
    if outfit == "none":
        assert clothes == "nude" and "Outfit" not in avatar.mesh_names()
        return
    assert clothes == f"{OUTFIT_TAGS[outfit]}, orange {OUTFIT_TAGS[outfit]}"
    outfit_material = next(m for m in avatar.materials if m.name == "Outfit")
    np.testing.assert_allclose(outfit_material.base_colour[:3], srgb_to_linear(spec.outfit_colour), atol=1e-6)
    moved = bones_of(avatar, "Outfit")
    # nothing is worn on the hands, feet or head
    assert not moved & {"head", "leftHand", "rightHand", "leftFoot", "rightFoot", "leftToes", "rightToes"}
    # only the bodysuit covers the limbs (upper arms, forearms, thighs, shins), as in the toy world
    limbs = {f"{side}{part}" for side in ("left", "right") for part in ("UpperArm", "LowerArm", "UpperLeg", "LowerLeg")}
    if outfit == "bodysuit":
        assert limbs <= moved
    else:
        assert not moved & limbs


def test_same_character_same_bytes(tmp_path):
    spec = dressed("bodysuit")
    first = export_character(spec, tmp_path / "a" / "x.vrm", segments=SEGMENTS)
    second = export_character(spec, tmp_path / "b" / "x.vrm", segments=SEGMENTS)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_refuses_to_overwrite_and_bad_suffix(tmp_path):
    spec = load_preset("red_long")
    vrm = tmp_path / "red.vrm"
    tag_file = vrm.with_suffix(".toml")
    tag_file.write_text('tags = "mine"\n')
    with pytest.raises(SabunError, match="red.toml: already exists"):
        export_character(spec, vrm, segments=SEGMENTS)
    assert not vrm.exists() and tag_file.read_text() == 'tags = "mine"\n'  # checked before anything is written
    export_character(spec, vrm, overwrite=True, segments=SEGMENTS)
    assert read_tag_file(tag_file)["tags"].startswith("red hair, long hair")
    tag_file.unlink()
    with pytest.raises(SabunError, match="red.vrm: already exists"):
        export_character(spec, vrm, segments=SEGMENTS)
    assert not tag_file.exists()
    with pytest.raises(SabunError, match=r"red\.glb: the exported model must be a \.vrm file"):
        export_character(spec, tmp_path / "red.glb")


def test_render_captions_come_from_the_tag_file(target, tmp_path):
    vrm, _ = target
    spec = load_preset("target")
    pngs = render_models(
        RenderModelConfig(models=(vrm,), out=tmp_path, size=64, style="lit", policy="stepping-stone"),
        note=lambda _: None,
    )
    assert pngs
    for png in pngs:
        text = png.with_suffix(".txt").read_text()
        assert (
            f"{spec.hair_colour_name} hair" in text and HAIRSTYLE_TAGS[spec.hairstyle] in text and "hair ribbon" in text
        )


def test_cli_export(tmp_path, monkeypatch, capsys):
    from sabun.cli import app, main

    out = tmp_path / "models" / "target.vrm"
    result = CliRunner().invoke(
        app, ["toyworld", "export", "--character", "target", "--out", str(out), "--segments", str(SEGMENTS)]
    )
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and str(out.with_suffix(".toml")) in result.output and "triangles" in result.output
    assert load_avatar(out).triangle_count() > 0
    # a second run refuses to replace the files: one line on stderr, exit status 2, as every command does
    monkeypatch.setattr(sys, "argv", ["sabun", "toyworld", "export", "--character", "target", "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert "already exists; choose another output path or pass --overwrite" in capsys.readouterr().err
    result = CliRunner().invoke(
        app,
        ["toyworld", "export", "--character", "target", "--out", str(out), "--segments", str(SEGMENTS), "--overwrite"],
    )
    assert result.exit_code == 0, result.output
