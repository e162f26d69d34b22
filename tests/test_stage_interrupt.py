"""A LoRA stage whose training is interrupted (Ctrl-C, SIGTERM) fails: it is never marked done
without its LoRA, and the next run trains it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import sabun.pipelines.stages as stages
from sabun.errors import SabunError
from sabun.pipelines.recipe import lora_config, toy_recipe


def test_an_interrupted_lora_stage_is_not_marked_done(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    config = lora_config(toy_recipe(False), {"path": "tiny"}, [data], tmp_path / "o", "x")
    calls = []

    def interrupted(config, pipe=None):
        calls.append(config.output.name)
        return SimpleNamespace(interrupted=True, lora_path=None)

    monkeypatch.setattr(stages, "train", interrupted)
    with pytest.raises(SabunError, match="stage stone: training was interrupted; run the same command again"):
        stages.Stages(tmp_path / "run", log=lambda m: None).lora("stone", config)
    assert calls == ["stone"]
    assert not (tmp_path / "run" / "loras" / "stone.stage.json").exists()
    assert not (tmp_path / "run" / "loras" / "stone").exists()
