"""The toy world's data side: characters, the two render styles, metadata, captions, commands."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sabun.captions import caption_folder
from sabun.errors import SabunError
from sabun.toyworld.captions import caption, character_caption, full_caption, stepping_stone_caption
from sabun.toyworld.character import (
    STEPPING_STONE_PRESETS,
    load_character,
    load_preset,
    preset_names,
    random_character,
    spec_from_dict,
)
from sabun.toyworld.colours import HAIR_COLOURS, delta_e, nearest_name
from sabun.toyworld.commands import RenderToyConfig, render_toy
from sabun.toyworld.render import VIEWS, ZOOMS, Shot, render
from sabun.toyworld.stats import soft_gradient_share


def _meta(
    preset="target",
    view="front",
    zoom="full-body",
    pose="arms-at-sides",
    background="white",
    style="anime",
    **character,
) -> dict:
    spec = dataclasses.replace(load_preset(preset), **character)
    return {
        "character": spec.to_dict(),
        "style": style,
        "view": view,
        "zoom": zoom,
        "pose": pose,
        "background": background,
    }


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- characters -----------------------------------------------------------------------------


def test_presets_are_the_seeds_five_and_the_target():
    assert set(preset_names()) == set(STEPPING_STONE_PRESETS) | {"target"}
    stones = [load_preset(n) for n in STEPPING_STONE_PRESETS]
    assert [s.hair_colour_name for s in stones] == ["red", "green", "blue", "white", "black"]
    assert [s.hairstyle for s in stones] == ["long", "medium", "short", "ponytail", "twintails"]
    assert len({s.body for s in stones}) == 3
    assert not any(s.ribbon for s in stones)
    target = load_preset("target")
    assert (target.hair_colour_name, target.hairstyle, target.ribbon) == ("blonde", "twintails", True)
    # honey blonde: called blonde, yet visibly not the blonde every other blonde is drawn near
    assert delta_e(target.hair_colour, HAIR_COLOURS["blonde"]) > 10


def test_colour_names_follow_lab_distance():
    assert nearest_name((232, 184, 96), HAIR_COLOURS) == "blonde"
    assert nearest_name((255, 255, 255), HAIR_COLOURS) == "white"
    assert nearest_name((250, 120, 170), HAIR_COLOURS) == "pink"


def test_random_characters_never_have_the_signature_nor_an_excluded_look():
    rng = np.random.default_rng(0)
    target = load_preset("target")
    specs = [random_character(rng, exclude=(target,)) for _ in range(300)]
    assert not any(s.ribbon for s in specs)
    assert target.look() not in {s.look() for s in specs}
    assert {s.hairstyle for s in specs} == {"long", "medium", "short", "ponytail", "twintails"}
    assert len({s.hair_colour_name for s in specs}) == len(HAIR_COLOURS)


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            {"hairstyle": "bun"},
            "hairstyle = 'bun' is not valid; choose one of: long, medium, short, ponytail, twintails",
        ),
        ({"body": "tall"}, "choose one of: slim, average, curvy"),
        ({"outfit": "hat"}, "choose one of: none, dress, swimsuit, bodysuit"),
        ({"hat": "red"}, "unknown key(s) hat; valid keys: name, hair_colour, hairstyle, eye_colour, body"),
        ({"hair_colour": "#12345"}, "give '#rrggbb', [r, g, b] with 0-255 integers, or one of: blonde, orange"),
        ({"eye_colour": [0, 0, 300]}, "eye_colour = [0, 0, 300] is not a colour"),
        ({"ribbon": "yes"}, "ribbon = 'yes' is not valid; use true or false"),
        ({"name": "a b"}, "is not file-safe"),
    ],
)
def test_invalid_spec_fields_list_what_is_valid(data, expected):
    base = {"name": "x", "hair_colour": "red", "hairstyle": "long", "eye_colour": "#2040ff"}
    with pytest.raises(SabunError) as e:
        spec_from_dict(base | data, "x.toml")
    assert str(e.value).startswith("x.toml: ")
    assert expected in str(e.value)


def test_spec_file_round_trip_and_errors_name_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('hair_colour = "#ff8800"\nhairstyle = "ponytail"\neye_colour = [20, 160, 60]\nbody = "curvy"\n')
    spec = load_character(str(path))
    assert (spec.name, spec.hair_colour, spec.eye_colour_name) == ("mine", (255, 136, 0), "green")
    assert spec_from_dict(spec.to_dict(), "again") == spec
    path.write_text('hairstyle = "long"\n')
    with pytest.raises(SabunError, match=r"mine\.toml: missing key\(s\) hair_colour, eye_colour"):
        load_character(str(path))
    with pytest.raises(SabunError, match="no such character preset; choose one of: black_twintails"):
        load_character("nobody")


# --- rendering --------------------------------------------------------------------------------


def test_render_is_deterministic_rgb_and_sized():
    spec = load_preset("white_ponytail")
    shot = Shot(view="side", zoom="cowboy-shot", pose="arms-up", background="outdoor")
    a, b = render(spec, shot, "3d", seed=7), render(spec, shot, "3d", seed=7)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render(spec, shot, "anime", seed=7))


def test_shot_fields_shape_the_image():
    spec = load_preset("red_long")
    base = render(spec, Shot(), "anime")
    for changed in (Shot(view="behind"), Shot(zoom="portrait"), Shot(pose="arms-up"), Shot(background="indoor")):
        assert np.abs(render(spec, changed, "anime").astype(int) - base).mean() > 1, changed
    assert (render(spec, Shot(background="white"), "anime")[0, 0] == 255).all()


@pytest.mark.parametrize("view", VIEWS)
def test_style_statistic_separates_the_styles_of_one_geometry(view):
    """Every zoom and two backgrounds: smooth 3d shading has more gentle gradients than cel shading."""
    for name in ("target", "black_twintails"):
        spec = load_preset(name)
        for zoom in ZOOMS:
            for background in ("white", "indoor"):
                shot = Shot(view=view, zoom=zoom, background=background)
                anime = soft_gradient_share(render(spec, shot, "anime"))
                solid = soft_gradient_share(render(spec, shot, "3d"))
                assert solid > anime + 0.05, (name, shot, anime, solid)


# --- captions ---------------------------------------------------------------------------------


def test_caption_policies_exact():
    back = _meta(view="behind")
    assert full_caption(back) == (
        "1girl, solo, blonde hair, twintails, blue eyes, medium breasts, hair ribbon, nude, arms at sides, full body, "
        "from behind, white background"
    )
    assert (
        stepping_stone_caption(back)
        == "blonde hair, twintails, blue eyes, medium breasts, hair ribbon, nude, full body, from behind"
    )
    assert character_caption(back) == "nude, arms at sides, full body, from behind, white background"

    front_3d = _meta(zoom="upper-body", style="3d", background="outdoor")
    assert full_caption(front_3d) == (
        "1girl, solo, blonde hair, twintails, blue eyes, medium breasts, hair ribbon, nude, arms at sides, upper body, "
        "looking at viewer, outdoors, blue sky, grass, 3d"
    )
    assert (
        stepping_stone_caption(front_3d)
        == "blonde hair, twintails, blue eyes, medium breasts, hair ribbon, nude, upper body"
    )
    assert character_caption(front_3d) == "nude, upper body"

    stone = _meta("red_long", view="side", zoom="portrait", style="3d")
    assert (
        full_caption(stone)
        == "1girl, solo, red hair, long hair, green eyes, slim, small breasts, nude, portrait, from side, white background, 3d"
    )
    assert (
        stepping_stone_caption(stone)
        == "red hair, long hair, green eyes, slim, small breasts, nude, portrait, from side"
    )
    assert character_caption(stone) == "nude, portrait, white background"

    dressed = _meta(
        pose="hands-on-hips", background="pink", outfit="dress", outfit_colour=(50, 90, 210), ribbon=False, body="curvy"
    )
    assert full_caption(dressed) == (
        "1girl, solo, blonde hair, twintails, blue eyes, curvy, large breasts, wide hips, dress, blue dress, hands on hips, "
        "full body, looking at viewer, pink background"
    )
    assert character_caption(dressed) == "dress, blue dress, full body"
    with pytest.raises(SabunError, match="choose one of: full, stepping-stone, character"):
        caption(back, "short")
    with pytest.raises(SabunError, match="metadata lacks zoom"):
        caption({k: v for k, v in back.items() if k != "zoom"}, "full")


def test_from_behind_exactly_on_back_views(tmp_path):
    render_toy(RenderToyConfig(out=tmp_path, style="anime", random=True, count=24, views=VIEWS, zooms=ZOOMS, seed=3))
    metas = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert {m["view"] for m in metas} == set(VIEWS)
    for meta in metas:
        for policy in ("full", "stepping-stone", "character"):
            assert ("from behind" in caption(meta, policy).split(", ")) == (meta["view"] == "behind")


# --- commands ---------------------------------------------------------------------------------


def test_render_toy_writes_what_was_asked(tmp_path):
    config = RenderToyConfig(
        out=tmp_path,
        style="3d",
        character="blue_short",
        views=("side",),
        zooms=("portrait", "full-body"),
        poses=("hands-on-hips",),
        backgrounds=("indoor",),
        seed=5,
    )
    pngs = render_toy(config)
    assert [p.name for p in pngs] == ["blue_short_3d_00000.png", "blue_short_3d_00001.png"]
    for png, zoom in zip(pngs, ("portrait", "full-body")):
        image = Image.open(png)
        assert (image.mode, image.size) == ("RGB", (64, 64))
        meta = json.loads(png.with_suffix(".json").read_text())
        assert {k: meta[k] for k in ("style", "view", "zoom", "pose", "background", "size")} == {
            "style": "3d",
            "view": "side",
            "zoom": zoom,
            "pose": "hands-on-hips",
            "background": "indoor",
            "size": 64,
        }
        assert meta["character"] == load_preset("blue_short").to_dict()
        assert png.with_suffix(".txt").read_text() == full_caption(meta) + "\n"
        assert np.array_equal(
            np.asarray(image),
            render(load_preset("blue_short"), Shot("side", zoom, "hands-on-hips", "indoor"), "3d", seed=meta["seed"]),
        )


def test_same_seed_same_bytes_and_overwrite_refused(tmp_path):
    config = RenderToyConfig(
        out=tmp_path / "a", style="anime", random=True, count=4, views=VIEWS, backgrounds=("outdoor", "indoor"), seed=11
    )
    render_toy(config)
    render_toy(dataclasses.replace(config, out=tmp_path / "b"))
    first = _files(tmp_path / "a")
    assert len(first) == 12 and first == _files(tmp_path / "b")
    render_toy(dataclasses.replace(config, out=tmp_path / "c", seed=12))
    assert first != _files(tmp_path / "c")

    with pytest.raises(SabunError, match="already exists; choose another output path or pass --overwrite"):
        render_toy(config)
    assert _files(tmp_path / "a") == first
    render_toy(dataclasses.replace(config, overwrite=True))
    assert _files(tmp_path / "a") == first


def test_caption_folder_rewrites_from_metadata(tmp_path):
    render_toy(RenderToyConfig(out=tmp_path, style="3d", character="target", zooms=("full-body",)))
    caption_folder(tmp_path, "character")
    assert [p.read_text() for p in sorted(tmp_path.glob("*.txt"))] == [
        "nude, arms at sides, full body, white background\n",
        "nude, arms at sides, full body, from behind, white background\n",
    ]
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(SabunError, match=r"notes\.json: is not toy-world render metadata"):
        caption_folder(tmp_path, "full")
    assert (tmp_path / "target_3d_00000.txt").read_text() == "nude, arms at sides, full body, white background\n"


def test_cli_end_to_end(tmp_path):
    from sabun.cli import app

    runner = CliRunner()
    out = tmp_path / "renders"
    result = runner.invoke(
        app,
        [
            "render",
            "toy",
            "--character",
            "target",
            "--style",
            "3d",
            "--out",
            str(out),
            "--views",
            "front,behind",
            "--zooms",
            "portrait",
            "--zooms",
            "full-body",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 4
    result = runner.invoke(
        app,
        [
            "render",
            "toy",
            "--random",
            "--count",
            "3",
            "--style",
            "anime",
            "--out",
            str(out),
            "--views",
            "all",
            "--backgrounds",
            "all",
            "--poses",
            "all",
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["caption", str(out), "--policy", "stepping-stone"])
    assert result.exit_code == 0, result.output
    assert "wrote 7 stepping-stone captions" in result.output
    assert (
        out / "target_3d_00002.txt"
    ).read_text() == "blonde hair, twintails, blue eyes, medium breasts, hair ribbon, nude, portrait, from behind\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["render", "toy", "--character", "target", "--out", "{out}"],
            "already exists; choose another output path or pass --overwrite",
        ),
        (
            ["render", "toy", "--character", "target", "--views", "top", "--out", "{out}"],
            "--views 'top' is not valid; choose from: front, side, behind (or all)",
        ),
        (["render", "toy", "--random", "--out", "{out}"], "--random needs --count N"),
        (
            ["render", "toy", "--character", "target", "--exclude", "red_long", "--out", "{out}/new"],
            "--exclude only applies to --random characters",
        ),
        (
            ["caption", "{out}", "--policy", "loose"],
            "--policy 'loose' is not valid; choose one of: full, stepping-stone, character",
        ),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys, args, message):
    from sabun.cli import main

    render_toy(RenderToyConfig(out=tmp_path, style="anime", character="target", zooms=("portrait",)))
    monkeypatch.setattr(sys, "argv", ["sabun"] + [a.replace("{out}", str(tmp_path)) for a in args])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
