"""`sabun generate` and the colour difference the evaluations report."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sabun.cli import app
from sabun.errors import SabunError
from sabun.generate import Sampler, applied, generate_command, generate_images
from sabun.lora.file import save_lora
from sabun.toyworld.colours import ciede2000

FAST = Sampler(steps=3, guidance=4.0, batch=4)


def test_ciede2000_matches_published_test_pairs():
    # Pairs and expected values from Sharma, Wu and Dalal (2005), the CIEDE2000 test data.
    pairs = [
        ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
        ((50.0, -1.3802, -84.2814), (50.0, 0.0, -82.7485), 1.0000),
        ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
        ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
        ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
        ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
    ]
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    np.testing.assert_allclose(ciede2000(a, b), [p[2] for p in pairs], atol=1e-4)
    np.testing.assert_allclose(ciede2000(b, a), ciede2000(a, b), atol=1e-9)


def test_images_depend_on_their_seed_not_on_the_batch(tiny_pipe):
    prompts = ["1girl, red hair", "1girl, blue hair", "1girl, red hair"]
    together = generate_images(tiny_pipe, prompts, [5, 6, 7], FAST)
    alone = generate_images(tiny_pipe, prompts[:1], [5], FAST)
    again = generate_images(tiny_pipe, prompts, [5, 6, 7], FAST)
    assert together.shape == (3, 64, 64, 3) and together.dtype == np.uint8
    np.testing.assert_array_equal(together, again)
    assert np.abs(together[0].astype(int) - alone[0].astype(int)).max() <= 1  # batched matmuls may round differently
    assert not np.array_equal(together[0], together[2])  # same prompt, another seed


def test_lora_weight_changes_images_and_is_removed_afterwards(tiny_pipe, make_lora, tmp_path):
    path = tmp_path / "a.safetensors"
    save_lora(make_lora(tiny_pipe, rank=4, alpha=2.0, std=0.2), path)
    before = generate_images(tiny_pipe, ["1girl"], [0], FAST)
    with applied(tiny_pipe, [(path, 1.0)]) as networks:
        with_lora = generate_images(tiny_pipe, ["1girl"], [0], FAST)
        networks[0].multiplier = 0.0
        at_zero = generate_images(tiny_pipe, ["1girl"], [0], FAST)
    after = generate_images(tiny_pipe, ["1girl"], [0], FAST)
    assert np.abs(with_lora.astype(int) - before.astype(int)).mean() > 1.0
    np.testing.assert_array_equal(at_zero, before)
    np.testing.assert_array_equal(after, before)


def test_grid_over_weights_and_bad_arguments(tiny_pipe, make_lora, tmp_path, monkeypatch):
    monkeypatch.setattr("sabun.models.load.load_pipeline", lambda spec, allow_pickle=False: tiny_pipe)
    lora = tmp_path / "a.safetensors"
    save_lora(make_lora(tiny_pipe, std=0.2), lora)
    out = generate_command(
        "tiny", ["1girl", "1girl, smile"], tmp_path / "grid.png", [(str(lora), 1.0)], [0.0, 1.0], count=2, sampler=FAST
    )
    grid = Image.open(out)
    assert grid.width > 2 * 64 and grid.height > 4 * 64  # 4 rows (2 prompts x 2 seeds), 2 columns
    with pytest.raises(SabunError, match="exists"):
        generate_command("tiny", ["1girl"], out, sampler=FAST)
    with pytest.raises(SabunError, match="no --lora"):
        generate_command("tiny", ["1girl"], tmp_path / "b.png", grid_weights=[1.0], sampler=FAST)
    with pytest.raises(SabunError, match=r"\.png"):
        generate_command("tiny", ["1girl"], tmp_path / "b.gif", sampler=FAST)
    assert not (tmp_path / "b.png").exists()


def test_cli_generate_writes_one_image(tmp_path):
    from typer.testing import CliRunner

    result = CliRunner().invoke(
        app, ["generate", "--model", "tiny", "-p", "1girl", "--steps", "2", "--out", str(tmp_path / "one.png")]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "one.png").size == (64, 64)
