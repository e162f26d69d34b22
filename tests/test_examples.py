"""Every example config in examples/ loads and validates, so the documented configs stay true."""

from __future__ import annotations

from pathlib import Path

import pytest

from sabun.train import load_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path):
    config = load_config(path)
    assert config.datasets and config.output.name
    assert Path(config.output.dir).is_absolute()  # resolved relative to the config file
