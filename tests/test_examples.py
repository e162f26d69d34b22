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


def close(a, b) -> bool:
    """JSON values equal, numbers to float32 rounding (another CPU's SIMD path moves a last digit)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(close, a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(b, (int, float)) and abs(a - b) <= 1e-6 * max(1.0, abs(a))
    return a == b


def same_glb(written: bytes, shipped: bytes) -> bool:
    """The same GLB: the JSON chunk equal up to float rounding, the binary chunk's words equal up to
    float32 rounding (its integers and PNGs compare exactly: any other byte moves a word far)."""
    import json
    import struct

    import numpy as np

    if written == shipped:
        return True

    def chunks(glb: bytes) -> tuple[object, bytes]:
        length = struct.unpack_from("<I", glb, 12)[0]
        return json.loads(glb[20 : 20 + length]), glb[20 + length :]  # a digit more or less moves the binary

    (json_a, bin_a), (json_b, bin_b) = chunks(written), chunks(shipped)
    if not close(json_a, json_b) or len(bin_a) != len(bin_b):
        return False
    a, b = (np.frombuffer(x[: len(x) // 4 * 4], "<f4") for x in (bin_a, bin_b))
    return bool(np.allclose(a, b, rtol=1e-5, atol=1e-7, equal_nan=True))


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
        assert same_glb(vrm.read_bytes(), Path(path).read_bytes()), (
            f"{path} is stale: sabun toyworld export --character {Path(path).stem} --out {path} --overwrite"
        )
        assert tags.read_text() == Path(path).with_suffix(".toml").read_text()
