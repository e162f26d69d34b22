"""`sabun copy-machine` end to end at a tiny size: every stage, re-runs skip, user images, bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sabun.errors import SabunError
from sabun.lora.file import load_lora
from sabun.pipelines.copy_machine import (
    CopyMachineConfig,
    copy_captions,
    load_copy_machine_config,
    pixel_difference,
    run_copy_machine,
    summary,
)
from sabun.train.config import ConfigError, from_dict

EXAMPLE = Path(__file__).parent.parent / "examples" / "copy_machine.toml"
TINY = {
    "model": {"path": "tiny"},
    "b": {"hair_colour": "blue"},
    "copy": {
        "rank": 2,
        "conv_rank": 2,
        "steps_per_round": 2,
        "max_rounds": 2,
        "threshold": 0.0,
        "random_captions": 2,
        "check_prompts": ["1girl, outdoors"],
        "check_seeds": 1,
    },
    "edit": {"rank": 4, "steps": 2, "resize_rank": 2},
    "measure": {"prompts": ["1girl, indoors", "1girl, arms up"], "seeds": 1, "steps": 2},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # pipelines of small models run faster on one thread


def tiny_config(out: Path, **sections) -> CopyMachineConfig:
    raw = {k: dict(v) for k, v in TINY.items()} | {"output": {"dir": str(out)}}
    for name, values in sections.items():
        merged = values if name in ("a", "b") else raw.get(name, {}) | values
        raw[name] = {k: v for k, v in merged.items() if v is not None}  # None: back to the default
    return from_dict(CopyMachineConfig, raw)


def test_copy_machine_end_to_end_then_skips(tmp_path):
    messages = []
    report = run_copy_machine(tiny_config(tmp_path), log=messages.append)

    # threshold 0 is never met: every round runs, and the log says so
    assert [r["round"] for r in report["copy"]["rounds"]] == [1, 2] and report["copy"]["met"] is False
    assert any("NOT met" in m for m in messages)
    # the copy LoRA is the exact sum of its rounds (ranks stacked)
    copy = load_lora(tmp_path / "copy" / "copy.safetensors")
    assert all(w.rank == 4 for w in copy.weights.values())
    # the edit LoRA: trained on the copy, resized, for the plain model
    edit = load_lora(tmp_path / "edit.safetensors")
    assert {w.rank for w in edit.weights.values()} == {2}
    assert "copy.safetensors" in edit.metadata["sabun_base_weights"]
    assert float(edit.metadata["sabun_resize_error"]) == report["edit"]["resize_error"] >= 0.0
    # measured at -1, 0, +1 on the plain model; metrics.json holds the same report
    weights = report["transfer"]["weights"]
    assert list(weights) == ["-1", "+0", "+1"] and weights["+0"]["shift"] == 0.0
    assert (
        weights["+1"]["mean_lab"] != weights["-1"]["mean_lab"]
    )  # the LoRA changes what the plain model draws, both ways
    assert report["transfer"]["images_per_weight"] == 2
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["transfer"] == report["transfer"]
    assert Image.open(tmp_path / "samples.png").size[1] > 2 * 64
    title, headers, rows, notes = summary(report)
    assert len(rows) == 3 and "NOT met" in notes[0]

    messages.clear()
    again = run_copy_machine(tiny_config(tmp_path), log=messages.append)
    assert not any(m.startswith("training") for m in messages)
    assert (
        sum("up to date, skipped" in m for m in messages) == 2 + 2 + 1 + 1 + 1 + 1
    )  # data, rounds, copy, edit training, edit, metrics
    assert again["transfer"] == report["transfer"]

    # a different resize redoes only the last steps; a met threshold drops round 2 and retrains the edit
    messages.clear()
    run_copy_machine(tiny_config(tmp_path, edit={"resize_rank": 1}), log=messages.append)
    assert not any(m.startswith("training") for m in messages)
    assert {w.rank for w in load_lora(tmp_path / "edit.safetensors").weights.values()} == {1}
    messages.clear()
    met = run_copy_machine(tiny_config(tmp_path, copy={"threshold": 1.0}), log=messages.append)
    assert met["copy"]["met"] is True and len(met["copy"]["rounds"]) == 1
    assert [m for m in messages if m.startswith("training")] == ["training the edit LoRA on B with the copy merged"]


def test_copy_machine_on_user_images(tmp_path):
    from sabun.pipelines.copy_machine import render_pair

    a, b = render_pair(tiny_config(tmp_path))
    assert pixel_difference(a[None], a) == 0.0 < pixel_difference(b[None], a)  # B is A with other hair, same shot
    Image.fromarray(a).resize((96, 80)).save(tmp_path / "a.png")  # not square: centre-cropped like the trainer does
    Image.fromarray(b).save(tmp_path / "b.jpg")
    config = tiny_config(
        tmp_path / "run",
        a={"image": str(tmp_path / "a.png"), "caption": "1girl, solo"},
        b={"image": str(tmp_path / "b.jpg")},
        copy={"max_rounds": 1},
        edit={"resize_rank": None},
        measure={"enabled": False},
    )
    report = run_copy_machine(config, log=lambda m: None)
    assert "transfer" not in report and (tmp_path / "run" / "edit.safetensors").is_file()
    assert (tmp_path / "run" / "data" / "b" / "image_00.txt").read_text().strip() == "1girl, solo"
    assert summary(report)[2] == []


def test_copy_captions_include_the_empty_caption_and_never_a_check_prompt():
    config = from_dict(CopyMachineConfig, {"b": {"hair_colour": "blue"}, "copy": {"random_captions": 20}})
    captions = copy_captions(config)
    assert captions[:2] == ["1girl", ""] and len(set(captions)) == 22
    assert not set(captions) & set(config.copy.check_prompts)


@pytest.mark.parametrize(
    "raw, field, words",
    [
        (
            {"b": {"hair_colour": "blue"}, "copy": {"steps_per_rnd": 3}},
            "copy.steps_per_rnd",
            "did you mean `steps_per_round`",
        ),
        ({"b": {"hair_colour": "blue", "image": "b.png"}}, "b.image", "exactly one"),
        ({}, "b", "is required"),
        ({"b": {"hair_colour": "blue"}, "a": {"image": "a.png"}}, "b.image", "is required when A is a file"),
        ({"b": {"hairstyle": "bald"}}, "b.hairstyle", "must be one of"),
        ({"b": {"hair_colour": "blue"}, "copy": {"threshold": 3}}, "copy.threshold", "must be in [0, 1]"),
        ({"b": {"hair_colour": "blue"}, "a": {"view": "above"}}, "a.view", "must be one of"),
        ({"b": {"hair_colour": "blue"}, "edit": {"steps": "many"}}, "edit.steps", "must be an integer"),
    ],
)
def test_bad_config_names_the_field(raw, field, words):
    with pytest.raises(ConfigError) as error:
        from_dict(CopyMachineConfig, raw)
    assert error.value.path == field and words in error.value.message


def test_config_file_errors_name_the_file_and_overrides_apply(tmp_path):
    path = tmp_path / "cm.toml"
    path.write_text('[b]\nhair_colour = "blue"\n[output]\ndir = "runs/cm"\n')
    config = load_copy_machine_config(path, ["copy.max_rounds=5", "edit.resize_rank=4", "a.caption=1girl, smile"])
    assert (config.copy.max_rounds, config.edit.resize_rank, config.a.caption) == (5, 4, "1girl, smile")
    assert config.output.dir == str((tmp_path / "runs" / "cm").resolve())
    with pytest.raises(SabunError, match=r"cm.toml: copy.max_round: unknown field"):
        load_copy_machine_config(path, ["copy.max_round=5"])
    path.write_text('[b]\nhair_colour = "blue"\n[copy]\nthreshold = -1\n')
    with pytest.raises(SabunError, match=r"cm.toml: copy.threshold: must be in \[0, 1\]"):
        load_copy_machine_config(path)
    with pytest.raises(SabunError, match="no such config file"):
        load_copy_machine_config(tmp_path / "missing.toml")
    path.write_text('[b]\nimage = "missing.png"\n[a]\nimage = "also_missing.png"\n[model]\npath = "tiny"\n')
    with pytest.raises(SabunError, match="also_missing.png: no such image file"):
        run_copy_machine(load_copy_machine_config(path), log=lambda m: None)


def test_example_config_validates():
    config = load_copy_machine_config(EXAMPLE)
    assert config.model.path == "toy" and config.b.hair_colour and config.measure.enabled
    assert Path(config.output.dir).is_absolute()


def test_cli_runs_the_pipeline_and_reports_bad_configs(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    path = tmp_path / "cm.toml"
    lines = [
        f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()) for name, values in TINY.items()
    ]
    path.write_text("".join(lines) + '[output]\ndir = "run"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sabun",
            "copy-machine",
            str(path),
            "--set",
            "copy.max_rounds=1",
            "--set",
            "measure.seeds=2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "position A->B" in result.stdout and "copy: mean |generated - A|" in result.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["transfer"]["images_per_weight"] == 4
    bad = subprocess.run(
        [sys.executable, "-m", "sabun", "copy-machine", str(path), "--set", "edit.stepz=3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("error: ")
        and "edit.stepz: unknown field; did you mean `steps`" in bad.stderr
    )
    assert "Traceback" not in bad.stderr
