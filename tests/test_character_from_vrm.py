"""`sabun character` from 3D model files: render stages keyed by content, coverage, provenance."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sabun.avatar.coverage import Entry, HairColour, coverage, hair_colour, hairstyles
from sabun.errors import SabunError
from sabun.lora.file import file_sha256, load_lora
from sabun.pipelines.character import config_from_dict, run_character
from sabun.toyworld.character import load_preset
from sabun.toyworld.colours import srgb_to_lab
from sabun.toyworld.export import export_character
from sabun.train.config import ConfigError

TINY_TRAIN = {"data": {"batch_size": 4}, "training": {"max_steps": 2}}

pytestmark = pytest.mark.usefixtures("one_thread")


def export(folder: Path, preset: str, **change) -> Path:
    vrm, _ = export_character(
        replace(load_preset(preset), **change), folder / f"{preset}.vrm", overwrite=True, segments=6
    )
    return vrm


def vrm_config(out: Path, folder: Path, **stone) -> object:
    return config_from_dict(
        {
            "out": str(out),
            "model": {"path": "tiny"},
            "render": {"views": ["front", "behind"], "zooms": ["portrait", "full-body"], "style": "lit"},
            "stepping_stone": {
                "models": [{"path": str(folder / "red_long.vrm")}, {"path": str(folder / "black_twintails.vrm")}],
                "train": TINY_TRAIN,
            }
            | stone,
            "character": {"model": str(folder / "target.vrm"), "train": TINY_TRAIN},
            "evaluation": {
                "weights": [1.0],
                "seeds": 1,
                "sample_steps": 2,
                "prompts": ["1girl"],
                "character": "target",
            },
        }
    )


def test_character_pipeline_from_vrm_files_renders_once_and_rerenders_only_a_changed_model(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for preset in ("red_long", "black_twintails", "target"):
        export(models, preset)
    messages: list[str] = []
    report = run_character(vrm_config(tmp_path / "run", models), log=messages.append)

    data = tmp_path / "run" / "data"
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == [
        "character",
        "stepping_stone_black_twintails",
        "stepping_stone_red_long",
    ]
    assert len(list((data / "character").glob("*.png"))) == 2 * 2
    stone_caption = (data / "stepping_stone_red_long" / "red_long_front_portrait_arms-at-sides.txt").read_text()
    target_caption = (data / "character" / "target_behind_full-body_arms-at-sides.txt").read_text()
    assert "red hair" in stone_caption and "long hair" in stone_caption and "3d" not in stone_caption
    assert "hair" not in target_caption and "from behind" in target_caption and "white background" in target_caption

    # coverage: printed, in the report and in OUT/coverage.json; blonde is far from red and black
    assert report["coverage"]["nearest"]["name"] in ("red_long", "black_twintails")
    assert any(
        "no stepping-stone character's hair is within 15" in w and "blonde" in w for w in report["coverage"]["warnings"]
    )
    assert not any("twintails" in w for w in report["coverage"]["warnings"])  # black_twintails has them
    assert json.loads((tmp_path / "run" / "coverage.json").read_text())["nearest"] == report["coverage"]["nearest"]
    assert any("stepping-stone coverage" in m for m in messages)

    # provenance: every source model with its sha256 and licence, the stone's own in the character LoRA
    character = json.loads(load_lora(report["loras"]["character"]).metadata["sabun_source_models"])
    stone = json.loads(load_lora(report["loras"]["stepping_stone"]).metadata["sabun_source_models"])
    hashes = {name: file_sha256(models / f"{name}.vrm") for name in ("red_long", "black_twintails", "target")}
    assert {r["sha256"]: r["role"] for r in stone} == {hashes["red_long"]: "data", hashes["black_twintails"]: "data"}
    assert {r["sha256"]: r["role"] for r in character} == {
        hashes["target"]: "data",
        hashes["red_long"]: "stepping-stone",
        hashes["black_twintails"]: "stepping-stone",
    }
    assert all(r["licence"] and r["avatar_permission"] == "everyone" and r["file"].endswith(".vrm") for r in character)

    messages.clear()
    run_character(vrm_config(tmp_path / "run", models), log=messages.append)
    assert not any(m.startswith("training") for m in messages)
    assert sum("up to date, skipped" in m for m in messages) == 3 + 2  # three renders, two LoRAs

    export(models, "black_twintails", eye_colour=(200, 40, 40))  # the file's content changes
    messages.clear()
    run_character(vrm_config(tmp_path / "run", models), log=messages.append)
    skipped = [m.split(":")[0] for m in messages if "up to date, skipped" in m]
    assert skipped == ["stepping_stone_red_long", "character"]  # only that model re-rendered; both LoRAs retrained
    assert [m for m in messages if m.startswith("training")] == ["training stepping_stone", "training character"]


def test_model_sources_are_checked_before_any_stage_runs(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for preset in ("red_long", "black_twintails", "target"):
        export(models, preset)
    (models / "red_long.toml").unlink()  # no tags: the stepping-stone captions need them
    with pytest.raises(ConfigError, match=r"stepping_stone.models\[0\].tags: .*red_long.vrm: has no tags"):
        run_character(vrm_config(tmp_path / "run", models), log=lambda m: None)
    assert not (tmp_path / "run").exists()
    config = vrm_config(tmp_path / "run", models, models=[{"path": str(models / "nope.vrm")}])
    with pytest.raises(ConfigError, match=r"stepping_stone.models\[0\].path: .*nope.vrm: no such file"):
        run_character(config, log=lambda m: None)
    config = vrm_config(
        tmp_path / "run",
        models,
        models=[
            {"path": str(models / "target.vrm"), "tags": "blonde hair"},
            {"path": str(models / "sub" / "target.vrm")},
        ],
    )
    with pytest.raises(ConfigError, match="two sources are both named 'target'"):
        run_character(config, log=lambda m: None)


def hair(rgb) -> HairColour:
    lab = srgb_to_lab(rgb)
    return HairColour((float(lab[0]), float(lab[1]), float(lab[2])), shots=4, pixels=400)


SEED_FIVE = [("red", (200, 35, 45), "long hair"), ("green", (60, 155, 70), "medium hair"), ("blue", (45, 85, 205), "short hair"),
             ("white", (238, 238, 244), "ponytail"), ("black", (30, 28, 36), "twintails")]  # fmt: skip


def test_the_hair_colour_warning_fires_when_every_stepping_stone_is_far_and_not_when_one_is_close():
    stones = [Entry(name, hair(rgb), tags) for name, rgb, tags in SEED_FIVE]
    target = Entry("honey", hair((232, 184, 96)), "blonde hair, twintails")
    far = coverage(target, stones)
    assert len(far.warnings) == 1 and "blonde hair near #e8b860" in far.warnings[0] and far.nearest[0] == "white"
    assert far.nearest[1] > 15
    close = coverage(target, [*stones, Entry("yellow", hair((240, 190, 100)), "long hair")])
    assert close.warnings == [] and close.nearest[0] == "yellow" and close.nearest[1] < 5
    assert coverage(target, stones, max_distance=40.0).warnings == []  # the stated distance decides
    table = far.table().splitlines()
    assert len(table) == 1 + 1 + 5 and all(
        "CIEDE2000 to target" in table[0] and "hairstyle tags" in table[0] for _ in [0]
    )
    assert json.loads(json.dumps(far.to_dict()))["nearest"]["name"] == "white"


def test_the_hairstyle_warning_names_the_missing_style():
    stones = [Entry(name, hair(rgb), tags) for name, rgb, tags in SEED_FIVE[:3]]
    target = Entry("t", hair((200, 40, 40)), "red hair, Twin_Braids, long hair")
    assert hairstyles(target.tags) == ["twin braids", "long hair"]
    warnings = coverage(target, stones).warnings
    assert len(warnings) == 1 and "`twin braids` is not among" in warnings[0]
    assert "no hairstyle tag" in coverage(Entry("t", hair((200, 40, 40)), "red hair"), stones).warnings[0]


def test_hair_colour_is_read_from_the_hair_pixels_of_each_render(tmp_path):
    from sabun.avatar.commands import RenderModelConfig, render_models
    from sabun.avatar.humanoid import HumanoidSpec, build_humanoid
    from sabun.avatar.write import write_glb
    from sabun.toyworld.colours import ciede2000

    colours = {"pink": (245, 150, 190), "teal": (40, 150, 150)}
    readings = {}
    for name, rgb in colours.items():
        path = tmp_path / name / f"{name}.vrm"
        path.parent.mkdir()
        write_glb(build_humanoid(HumanoidSpec(hair_colour=rgb, segments=6)), path)
        render_models(
            RenderModelConfig(
                models=(path,),
                out=tmp_path / name / "renders",
                size=64,
                style="unlit",
                zooms=("portrait", "upper-body"),
            ),
            note=lambda m: None,
        )
        meta = json.loads((tmp_path / name / "renders" / f"{name}_front_portrait_arms-at-sides.json").read_text())
        assert meta["hair"]["materials"] == ["Hair"] and meta["hair"]["pixels"] > 100
        readings[name] = hair_colour(tmp_path / name / "renders")
        assert readings[name].shots == 4
        # unlit: the pixels are the material's colour, so the reading is that colour
        assert float(ciede2000(np.asarray(readings[name].lab), srgb_to_lab(rgb))) < 3
    assert float(ciede2000(np.asarray(readings["pink"].lab), np.asarray(readings["teal"].lab))) > 30


def test_a_wrong_hair_material_name_is_refused_before_drawing(tmp_path):
    from sabun.avatar.commands import RenderModelConfig, render_models

    vrm = export(tmp_path, "red_long")
    (tmp_path / "red_long.toml").write_text('tags = "red hair"\nhair_materials = ["Hiar"]\n')
    with pytest.raises(
        SabunError,
        match=r"red_long.toml: hair_materials names 'Hiar', which red_long.vrm does not have; its materials are: Skin, Hair",
    ):
        render_models(RenderModelConfig(models=(vrm,), out=tmp_path / "out", size=64), note=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_no_hair_pixels_says_how_to_name_the_hair_materials(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps({"model": {"file": "robot.vrm"}, "hair": {"materials": [], "pixels": 0, "lab": None}})
    )
    with pytest.raises(SabunError, match=r"robot.vrm: no hair pixels .* robot.toml beside it with hair_materials"):
        hair_colour(tmp_path)


def test_the_evaluator_reading_of_exported_models_is_measured(tmp_path):
    from sabun.evaluate.vrm_check import check_exported, table

    results = check_exported(tmp_path, count=0, styles=("lit",))
    toy, lit = results["renders"]["toy 3d"], results["renders"]["lit"]
    assert toy["images"] == lit["images"] == 6 * 12
    assert toy["hairstyle"]["rate"] > 0.9 and toy["view"]["rate"] > 0.9  # its own renders: read as trained
    for figure in ("hairstyle", "view", "zoom", "read_as_3d"):
        assert 0.0 <= lit[figure]["low"] <= lit[figure]["rate"] <= lit[figure]["high"] <= 1.0
    assert "hair dE2000" in table(results) and (tmp_path / "renders.png").stat().st_size > 0
