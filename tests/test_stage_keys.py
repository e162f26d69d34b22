"""Stage keys hold contents, never paths: a run folder copied, moved or spelled another way skips
every stage whose inputs did not change; a failed stage leaves no partial output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from sabun.pipelines.character import Stages, config_from_dict, lora_inputs, run_character
from sabun.pipelines.stages import key_of, model_key, run_stage, stage_key
from sabun.train.config import TrainConfig, from_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # pipelines of small models run faster on one thread

TINY_TRAIN = {"data": {"batch_size": 4}, "training": {"max_steps": 2}}


def user_renders(folder: Path) -> Path:
    """A user's own folder of captioned renders (images and captions only), outside any run folder."""
    from sabun.toyworld.commands import RenderToyConfig, render_toy

    render_toy(
        RenderToyConfig(out=folder, style="3d", character="blue_short", views=("front", "behind"), zooms=("full-body",))
    )
    for meta in folder.glob("*.json"):
        meta.unlink()
    return folder


def lora_config(model: str, datasets: list[Path], base_weights: list[Path], out: Path, repeats: int = 2) -> TrainConfig:
    return from_dict(
        TrainConfig,
        {
            "model": {"path": model, "base_weights": [{"path": str(p), "multiplier": 0.8} for p in base_weights]},
            "datasets": [{"path": str(d), "repeats": repeats} for d in datasets],
            "data": {
                "resolution": 64,
                "buckets": False,
                "batch_size": 4,
                "cache_latents": "disk",
                "cache_dir": str(out / "latents"),
            },
            "training": {"max_steps": 2},
            "output": {"dir": str(out), "name": "x", "tensorboard": False},
        },
    )


def test_stage_keys_do_not_depend_on_where_the_run_folder_is_or_how_it_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = user_renders(tmp_path / "my renders")
    model = tmp_path / "models" / "my_model.safetensors"  # a user's checkpoint outside the run: keyed by content
    model.parent.mkdir()
    model.write_bytes(os.urandom(4096))

    def stages_of(out: Path, folder: str) -> tuple[list[str], dict]:
        """Data stages and a LoRA's key over run folder `out`, with the user folder spelled `folder`."""
        messages = []
        stages = Stages(out, messages.append)
        data = [
            stages.toy_data("stepping_stone_red_long", "red_long", "stepping-stone"),
            stages.user_data("stepping_stone_mine", folder, "stepping-stone"),
        ]
        stone, _ = run_stage(
            out / "loras",
            "stepping_stone.safetensors",
            {"data": [stage_key(d) for d in data]},
            lambda p: p.write_bytes(b"stepping-stone"),
            messages.append,
        )
        return messages, lora_inputs(lora_config(str(model), data, [stone], out / "loras" / "character"))

    first, inputs = stages_of(Path("runs/demo"), str(mine))
    assert not any("skipped" in m for m in first)
    markers = sorted(p.relative_to("runs/demo") for p in Path("runs/demo").rglob("*.stage.json"))
    shutil.copytree("runs/demo", "runs/demo2")
    for out, folder in [
        (Path("./runs/demo"), "./my renders"),  # the same run, spelled relatively
        (tmp_path / "runs" / "demo2" / ".." / "demo", str(mine)),  # ... and absolutely, through `..`
        (tmp_path / "runs" / "demo2", str(tmp_path / "." / "my renders")),  # a copy of it
    ]:
        messages, again = stages_of(out, folder)
        assert messages == [
            f"{name}: up to date, skipped"
            for name in ("stepping_stone_red_long", "stepping_stone_mine", "stepping_stone.safetensors")
        ]
        assert key_of(again) == key_of(inputs)
        assert sorted(p.relative_to(out) for p in out.rglob("*.stage.json")) == markers
    # no path, inside the run folder or out of it, enters a key or the recorded inputs
    for marker in Path("runs/demo2").rglob("*.stage.json"):
        assert "runs" not in marker.read_text() and str(tmp_path) not in marker.read_text()
    assert (
        "runs" not in json.dumps(inputs)
        and str(tmp_path) not in json.dumps(inputs)
        and "my_model" not in json.dumps(inputs)
    )

    # ... while a change of content changes the key: the model, a data set, a base weight, a setting
    assert model_key("tiny") == "tiny" and model_key(str(model)) == model_key(os.path.relpath(model))
    model.write_bytes(os.urandom(4096))
    assert model_key(str(model)) != inputs["train"]["model"]["path"]
    (mine / "extra.txt").write_text("1girl\n")
    messages, changed = stages_of(Path("runs/demo2"), str(mine))
    assert messages == [
        "stepping_stone_red_long: up to date, skipped"
    ]  # the user folder and what depends on it are redone
    assert changed["data_keys"][0] == inputs["data_keys"][0] and changed["data_keys"][1] != inputs["data_keys"][1]
    assert changed["base"] == inputs["base"]  # the same bytes: the same base weight, wherever it lies
    data = [Path("runs/demo2/data/stepping_stone_red_long")]
    assert key_of(lora_inputs(lora_config("tiny", data, [], Path("a")))) == key_of(
        lora_inputs(lora_config("tiny", data, [], Path("b")))
    )
    assert key_of(lora_inputs(lora_config("tiny", data, [], Path("a")))) != key_of(
        lora_inputs(lora_config("tiny", data, [], Path("a"), repeats=3))
    )


def test_a_failed_stage_leaves_no_partial_output(tmp_path):
    def half_folder(path: Path) -> None:
        path.mkdir()
        (path / "image_00.png").write_bytes(b"half")
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError, match="stage failed"):
        run_stage(tmp_path, "a", {"x": 1}, half_folder, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []  # neither the folder, nor its marker, nor a temporary sibling

    def whole_folder(path: Path) -> None:
        path.mkdir()
        (path / "image_00.png").write_bytes(b"whole")

    run_stage(tmp_path, "a", {"x": 1}, whole_folder, log=lambda m: None)
    with pytest.raises(RuntimeError):  # new inputs, failed build: the old output is not left as if current
        run_stage(tmp_path, "a", {"x": 2}, half_folder, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert run_stage(tmp_path, "a", {"x": 2}, whole_folder, log=lambda m: None)[1]
    assert (tmp_path / "a" / "image_00.png").read_bytes() == b"whole" and sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["a", "a.stage.json"]


def test_a_copied_run_folder_skips_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = user_renders(tmp_path / "mine")

    def config(out: str):
        return config_from_dict(
            {
                "out": out,
                "model": {"path": "tiny"},
                "stepping_stone": {"presets": ["red_long"], "folders": [str(mine)], "train": TINY_TRAIN},
                "character": {"preset": "target", "train": TINY_TRAIN},
                "evaluation": {
                    "weights": [1.0],
                    "seeds": 1,
                    "sample_steps": 1,
                    "prompts": ["1girl"],
                    "character": "target",
                },
                "save_merged": True,
            }
        )

    messages = []
    run_character(config("runs/demo"), log=messages.append)
    assert [m for m in messages if m.startswith("training")] == ["training stepping_stone", "training character"]
    stages = sorted(p.relative_to("runs/demo") for p in Path("runs/demo").rglob("*.stage.json"))
    assert len(stages) == 3 + 1 + 2  # data sets, merged model, LoRAs
    outputs = {p.relative_to("runs/demo"): p.read_bytes() for p in Path("runs/demo").rglob("*.safetensors")}
    assert {p.name for p in outputs} >= {"stepping_stone.safetensors", "character.safetensors", "merged.safetensors"}

    shutil.copytree("runs/demo", "runs/demo2")
    messages.clear()
    report = run_character(config(str(tmp_path / "runs" / ".." / "runs" / "demo2")), log=messages.append)
    assert not any(m.startswith("training") for m in messages)
    assert sum("up to date, skipped" in m for m in messages) == len(stages)
    assert {p.relative_to("runs/demo2"): p.read_bytes() for p in Path("runs/demo2").rglob("*.safetensors")} == outputs
    assert (
        Path(report["loras"]["character"]).resolve()
        == (tmp_path / "runs" / "demo2" / "loras" / "character" / "character.safetensors").resolve()
    )
    assert not [p for p in Path("runs").rglob(".*.tmp-*")]
