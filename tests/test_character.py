"""`sabun character` end to end at a tiny size: every stage, re-runs skip, user folders, bad configs."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from sabun.errors import SabunError
from sabun.evaluate.report import METRICS
from sabun.lora.file import load_lora
from sabun.pipelines.character import config_from_dict, load_character_config, run_character
from sabun.train.config import ConfigError

TINY_TRAIN = {"data": {"batch_size": 4}, "training": {"max_steps": 2}}


pytestmark = pytest.mark.usefixtures("one_thread")  # pipelines of small models run faster on one thread


def tiny_config(out, **character):
    return config_from_dict(
        {
            "out": str(out),
            "model": {"path": "tiny"},
            "stepping_stone": {"presets": ["red_long", "blue_short"], "train": TINY_TRAIN},
            "character": (character or {"preset": "target"}) | {"train": TINY_TRAIN},
            "evaluation": {
                "weights": [1.0],
                "seeds": 1,
                "sample_steps": 2,
                "prompts": ["1girl", "1girl, arms up"],
                "character": "target",
            },
        }
    )


def test_character_pipeline_end_to_end_then_skips(tmp_path):
    messages = []
    report = run_character(tiny_config(tmp_path / "run"), log=messages.append)
    assert list(report["conditions"]) == ["plain model", "character LoRA x1"]
    assert report["conditions"]["plain model"] != report["conditions"]["character LoRA x1"]
    assert (
        report["weight_change_norms"]["character"]["unet"] > 0 and report["weight_change_norms"]["character"]["te"] > 0
    )
    character = load_lora(report["loras"]["character"])
    assert "stepping_stone.safetensors" in character.metadata["sabun_base_weights"]  # trained on the merged model
    assert json.loads(load_lora(report["loras"]["stepping_stone"]).metadata.get("sabun_base_weights", "[]")) == []
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["conditions"] == json.loads(json.dumps(report["conditions"]))
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 + 1 and page.count("<svg") == len(
        METRICS
    )  # grids, overview, charts
    assert "Weight change" in page
    # captions follow the policies: the stepping-stone keeps its features, the character drops them
    stone_caption = next((tmp_path / "run" / "data" / "stepping_stone_red_long").glob("*.txt")).read_text()
    character_caption = next((tmp_path / "run" / "data" / "character").glob("*.txt")).read_text()
    assert "red hair" in stone_caption and "hair" not in character_caption and "1girl" not in character_caption

    messages.clear()
    run_character(tiny_config(tmp_path / "run"), log=messages.append)
    assert not any(m.startswith("training") for m in messages)
    assert sum("up to date, skipped" in m for m in messages) == 3 + 2  # data sets + LoRAs


def test_a_changed_user_folder_retrains_only_what_depends_on_it(tmp_path):
    from sabun.toyworld.commands import RenderToyConfig, render_toy

    mine = tmp_path / "my_renders"
    render_toy(
        RenderToyConfig(out=mine, style="3d", character="target", views=("front", "behind"), zooms=("full-body",))
    )
    for meta in mine.glob("*.json"):
        meta.unlink()  # a user's own renders: images and captions only
    config = tiny_config(tmp_path / "run", folder=str(mine))
    run_character(config, log=lambda m: None)
    caption = next(mine.glob("*.txt"))
    before = caption.read_text()
    assert (
        tmp_path / "run" / "data" / "character" / caption.name
    ).read_text() == before  # `keep`-like: no metadata, caption kept

    caption.write_text("1girl, white background\n")
    messages = []
    run_character(config, log=messages.append)
    assert [m for m in messages if m.startswith("training")] == ["training character"]
    assert (tmp_path / "run" / "data" / "character" / caption.name).read_text() == "1girl, white background\n"

    shutil.rmtree(mine)
    with pytest.raises(SabunError, match="my_renders: no such folder"):
        run_character(config, log=lambda m: None)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"character": {"preset": "target", "folder": "x"}}, "character.preset: folder or model: give exactly one"),
        ({"character": {"preset": "target", "colour": "red"}}, "character.colour: unknown field"),
        (
            {"character": {"preset": "target", "train": {"network": {"rnak": 4}}}},
            "character.train.network.rnak: unknown field; did you mean `rank`",
        ),
        (
            {"character": {"preset": "target", "train": {"output": {"name": "x"}}}},
            "character.train.output: is set by the pipeline",
        ),
        (
            {"stepping_stone": {"presets": [], "folders": []}},
            "stepping_stone.presets: folders and models are all empty",
        ),
        (
            {"character": {"preset": "target", "model": "x.vrm"}},
            "character.preset: folder or model: give exactly one of them .got preset and model",
        ),
        ({"render": {"style": "cel"}}, "render.style: "),
        ({"render": {"views": ["top"]}}, "render.views: "),
        ({"stepping_stone": {"models": [{"tags": "red hair"}]}}, r"stepping_stone.models\[0\].path: is required"),
        ({"model": {"clip_skip": 2}}, "model.path: is required"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, change, message):
    path = tmp_path / "pipeline.toml"
    import tomli_w

    path.write_text(tomli_w.dumps({"character": {"preset": "target"}} | change))
    with pytest.raises(SabunError, match=message.replace("`", ".").replace("(", r"\(")):
        load_character_config(path)


def test_a_missing_config_file_says_what_to_give(tmp_path):
    with pytest.raises(SabunError, match="nope.toml: no such config file; see examples/character_pipeline.toml"):
        load_character_config(tmp_path / "nope.toml")


def test_set_overrides_reach_the_train_tables(tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text('out = "run"\n[character]\npreset = "target"\n')
    config = load_character_config(path, ["character.preset=red_long", "character.train.training.max_steps=5"])
    assert config.character.preset == "red_long" and config.character.train == {"training": {"max_steps": 5}}
    assert config.out == str(tmp_path / "run")
    with pytest.raises(SabunError, match="character.train.training.max_step: unknown field"):
        load_character_config(path, ["character.train.training.max_step=5"])
    assert issubclass(ConfigError, SabunError)


def test_on_the_toy_model_only_the_character_lora_skips_the_low_noise_timesteps(tmp_path):
    from sabun.pipelines.character import train_config

    path = tmp_path / "pipeline.toml"
    path.write_text(
        'out = "run"\n[model]\npath = "toy"\n[character]\npreset = "target"\n[character.train]\ntraining = { max_steps = 5 }\n'
    )
    config = load_character_config(path)

    def min_timestep(config, section, character):
        return train_config(config, section.train, [tmp_path], tmp_path, "x", character=character).training.min_timestep

    assert (
        min_timestep(config, config.character, True) == 500 and min_timestep(config, config.stepping_stone, False) == 0
    )
    assert (
        train_config(config, config.character.train, [tmp_path], tmp_path, "x", character=True).training.max_steps == 5
    )
    chosen = load_character_config(path, ["character.train.training.min_timestep=0"])
    assert min_timestep(chosen, chosen.character, True) == 0


def test_save_merged_writes_the_model_with_the_stepping_stone_in_it(tmp_path):
    from sabun.lora.commands import load_weighted
    from sabun.lora.ops import merge_into_model
    from sabun.lora.targets import pipeline_targets
    from sabun.models.load import load_pipeline

    config = dataclasses.replace(tiny_config(tmp_path / "run"), save_merged=True)
    config = dataclasses.replace(
        config, stepping_stone=dataclasses.replace(config.stepping_stone, presets=["red_long"])
    )
    report = run_character(config, log=lambda m: None)
    merged = load_pipeline(str(tmp_path / "run" / "merged.safetensors"))
    expected = load_pipeline("tiny")
    merge_into_model(pipeline_targets(expected, conv=True), load_weighted([report["loras"]["stepping_stone"]]))
    plain = load_pipeline("tiny").unet.state_dict()
    changed = 0
    for name, tensor in expected.unet.state_dict().items():
        torch.testing.assert_close(merged.unet.state_dict()[name], tensor, atol=1e-5, rtol=1e-5)
        changed += not torch.equal(tensor, plain[name])
    assert changed > 0  # the stepping-stone is in it


def test_the_evaluation_stage_reads_with_a_tagger_on_any_model(tmp_path):
    pytest.importorskip("onnx")
    from test_tagger import make_tagger

    tagger = make_tagger(tmp_path / "tagger")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("[bare] 1girl\n[pose:arms-up] 1girl, arms up\n", encoding="utf-8")
    config = tiny_config(tmp_path / "run")
    config = dataclasses.replace(config, evaluation=dataclasses.replace(
        config.evaluation, character=None, tagger=str(tagger), identity="blonde hair, twintails", protocol_prompts=str(prompts)))  # fmt: skip
    report = run_character(config, log=lambda m: None)
    assert report["reader"].startswith("tagger")
    assert [row[0] for row in report["metrics"]] == ["3d_leakage", "tag:blonde_hair", "tag:twintails", "pose_obeyed"]
    assert set(report["conditions"]["character LoRA x1"]["intervals"]) >= {"3d_leakage", "tag:twintails", "pose_obeyed"}

    messages = []
    bad = dataclasses.replace(
        config, out=str(tmp_path / "bad"), evaluation=dataclasses.replace(config.evaluation, identity="cat ears")
    )
    with pytest.raises(SabunError, match="cat_ears"):
        run_character(bad, log=messages.append)
    assert not any(m.startswith("training") for m in messages)  # refused before any work
