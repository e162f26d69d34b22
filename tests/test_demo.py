"""`sabun demo` end to end at a tiny size: every stage runs, the report renders, re-runs skip stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sabun.evaluate.metrics import Protocol
from sabun.pipelines.demo import DemoConfig, run_demo
from sabun.pipelines.stages import run_stage

pytestmark = pytest.mark.usefixtures("one_thread")  # pipelines of small models run faster on one thread


def test_stage_runs_once_then_skips_until_its_inputs_change(tmp_path):
    calls = []

    def build(path):
        calls.append(path)
        path.write_text("out")

    assert run_stage(tmp_path, "a", {"x": 1}, build, log=lambda m: None)[1]
    assert not run_stage(tmp_path, "a", {"x": 1}, build, log=lambda m: None)[1]
    assert run_stage(tmp_path, "a", {"x": 2}, build, log=lambda m: None)[1]
    assert len(calls) == 2

    def fail(path):
        path.write_text("half")
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "b", {}, fail, log=lambda m: None)
    assert not (tmp_path / "b.stage.json").exists()  # a failed stage is redone on the next run
    assert run_stage(tmp_path, "b", {}, build, log=lambda m: None)[1]


def test_demo_end_to_end_on_the_tiny_model(tmp_path):
    messages = []
    config = DemoConfig(characters=("target", "red_long"), model="tiny", steps=2, seeds=1, batch_size=4, sample_steps=3)
    summary = run_demo(tmp_path, config, log=messages.append)
    assert list(summary["targets"]) == ["target", "red_long"]
    assert sum(m.startswith("training stepping_stone") for m in messages) == 1  # shared by the targets
    for name, report in summary["targets"].items():
        conditions = report["conditions"]
        assert list(conditions) == ["plain model", "no plan x1", "no plan x0.5", "3d tag x1", "stepping-stone x1"]
        for metrics in conditions.values():
            assert 0.0 <= metrics["3d_leakage"] <= 1.0 and metrics["hair_ciede2000"] >= 0.0
            assert metrics["images"] == len(Protocol().prompts())
        assert json.loads((tmp_path / name / "metrics.json").read_text())["conditions"] == json.loads(
            json.dumps(conditions)
        )
        page = (tmp_path / name / "report.html").read_text()
        assert (
            "<table>" in page and page.count("data:image/png;base64,") == len(conditions) + 1
        )  # + prompts x conditions
    assert json.loads((tmp_path / "metrics.json").read_text())["targets"]["red_long"]["character"]["name"] == "red_long"
    # the character LoRA on the stepping-stone records the stepping-stone it was trained on
    from sabun.lora.file import load_lora

    lora = load_lora(summary["targets"]["target"]["loras"]["character_on_stepping_stone"])
    assert "stepping_stone.safetensors" in lora.metadata["sabun_base_weights"]
    # character LoRAs train on the noisier timesteps only, stepping-stones on all
    from sabun.train import load_config

    paths = {name: Path(path).with_suffix(".toml") for name, path in summary["targets"]["target"]["loras"].items()}
    assert {name: load_config(p).training.min_timestep for name, p in paths.items()} == {
        "no_plan": 500,
        "3d_tag": 500,
        "stepping_stone": 0,
        "character_on_stepping_stone": 500,
    }
    # the plain model's figures are the same for both targets' protocols where they do not depend on the target
    plain = [r["conditions"]["plain model"]["3d_leakage"] for r in summary["targets"].values()]
    assert plain[0] == plain[1]

    messages.clear()
    run_demo(
        tmp_path,
        DemoConfig(characters=("target",), model="tiny", steps=2, seeds=1, batch_size=4, sample_steps=3),
        log=messages.append,
    )
    assert not any(m.startswith("training") for m in messages)
    assert sum("up to date, skipped" in m for m in messages) == 7 + 4  # data stages + LoRAs


def test_demo_full_adds_the_ablations(tmp_path):
    messages = []
    config = DemoConfig(model="tiny", steps=1, seeds=1, batch_size=4, sample_steps=2, full=True)
    report = run_demo(tmp_path, config, log=messages.append)["targets"]["target"]
    assert list(report["conditions"])[-3:] == ["1-character stone x1", "uncaptioned stone x1", "stone + reg. images x1"]
    assert all(
        c == ""
        for c in (p.read_text() for p in (tmp_path / "data" / "stepping_stone_red_long_uncaptioned").glob("*.txt"))
    )
    from sabun.lora.file import load_lora

    one = load_lora(report["loras"]["character_on_1_character_stone"]).metadata
    assert "stepping_stone_1_character.safetensors" in one["sabun_base_weights"]
    regularised = json.loads(load_lora(report["loras"]["character_with_regularisation"]).metadata["sabun_config"])
    assert len(regularised["datasets"]) == 1 + 5 and regularised["datasets"][0]["repeats"] == 5


def test_demo_refuses_two_targets_of_one_name(tmp_path):
    from sabun.errors import SabunError

    with pytest.raises(SabunError, match="share a name"):
        run_demo(tmp_path, DemoConfig(characters=("target", "target"), model="tiny"))


def test_evaluate_reports_the_plain_model_beside_each_weight(tmp_path, tiny_pipe, make_lora):
    from sabun.errors import SabunError
    from sabun.evaluate.commands import evaluate_loras
    from sabun.lora.file import save_lora

    lora = tmp_path / "a.safetensors"
    save_lora(make_lora(tiny_pipe, std=0.2), lora)
    report = evaluate_loras("tiny", [(str(lora), 1.0)], [0.5, 1.0], "target", tmp_path / "eval", seeds=1)
    assert list(report["conditions"]) == ["plain model", "LoRA x0.5", "LoRA x1"]
    assert report["conditions"]["plain model"] != report["conditions"]["LoRA x1"]
    page = (tmp_path / "eval" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 + 1 and "Weight change" in page
    assert report["weight_change_norms"][str(lora)]["unet"] > 0
    with pytest.raises(SabunError, match="already exists"):
        evaluate_loras("tiny", [(str(lora), 1.0)], [1.0], "target", tmp_path / "eval", seeds=1)
