"""Every example config in examples/ loads and validates, so the documented configs stay true."""

from __future__ import annotations

from pathlib import Path

import pytest

from sabun.train import load_config

ROOT = Path(__file__).parent.parent / "examples"
PIPELINES = {
    "character_pipeline.toml",
    "character_from_vrm.toml",
    "copy_machine.toml",
}  # configs of whole pipelines, not of `sabun train`
EXAMPLES = sorted(p for p in ROOT.glob("*.toml") if p.name not in PIPELINES)


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path):
    config = load_config(path)
    assert config.datasets and config.output.name
    assert Path(config.output.dir).is_absolute()  # resolved relative to the config file


def test_character_pipeline_example_validates():
    from sabun.pipelines.character import load_character_config

    config = load_character_config(ROOT / "character_pipeline.toml")
    assert config.model.path == "toy" and len(config.stepping_stone.presets) == 5
    assert Path(config.out).is_absolute()


def test_character_from_vrm_example_validates_and_its_models_are_fresh_exports(tmp_path):
    """The shipped VRMs are what `sabun toyworld export` writes today (re-export them if this fails)."""
    from sabun.pipelines.character import load_character_config
    from sabun.toyworld.character import load_preset
    from sabun.toyworld.export import export_character

    config = load_character_config(ROOT / "character_from_vrm.toml")
    assert (
        config.stepping_stone.presets == [] and len(config.stepping_stone.models) == 5 and config.render.style == "lit"
    )
    for path in [m.path for m in config.stepping_stone.models] + [config.character.model]:
        vrm, tags = export_character(load_preset(Path(path).stem), tmp_path / Path(path).name)
        assert vrm.read_bytes() == Path(path).read_bytes(), (
            f"{path} is stale: sabun toyworld export --character {Path(path).stem} --out {path} --overwrite"
        )
        assert tags.read_text() == Path(path).with_suffix(".toml").read_text()
