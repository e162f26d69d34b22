"""`sabun merge` and `sabun lora ...` end to end, and every bad input as a user meets it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import random_lora, unet_and_text_outputs
from safetensors.torch import save_file

from sabun.lora.file import load_lora, lora_state_dict, save_lora
from sabun.lora.network import LoRANetwork
from sabun.lora.ops import Weighted, merge_into_model
from sabun.lora.targets import pipeline_targets
from sabun.models.load import load_pipeline

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}


def sabun(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sabun", *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300
    )


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit status 2, one line on stderr starting with `error:`, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def lora_files(tiny_pipe, tmp_path):
    a = save_lora(
        random_lora(tiny_pipe, rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0, seed=1), tmp_path / "a.safetensors"
    )
    b = save_lora(
        random_lora(tiny_pipe, rank=2, alpha=1.0, conv_rank=2, conv_alpha=1.0, seed=2), tmp_path / "b.safetensors"
    )
    return a, b


def test_merge_command_writes_a_model_equal_to_the_unmerged_lora(tiny_pipe, lora_files, tmp_path):
    a, _ = lora_files
    result = sabun("merge", "--model", "tiny", "--lora", f"{a}:0.5", "--out", tmp_path / "merged")
    assert result.returncode == 0, result.stderr
    merged = load_pipeline(tmp_path / "merged")
    network = LoRANetwork.from_lora(load_lora(a), pipeline_targets(tiny_pipe, conv=True))
    network.multiplier = 0.5
    network.attach()
    torch.testing.assert_close(unet_and_text_outputs(merged)[0], unet_and_text_outputs(tiny_pipe)[0], atol=1e-5, rtol=0)


def test_combine_resize_info_commands(lora_files, tmp_path):
    a, b = lora_files
    result = sabun("lora", "combine", f"{a}:1", f"{b}:-1", "--out", tmp_path / "diff.safetensors")
    assert result.returncode == 0, result.stderr
    assert "overall relative error" in result.stdout
    diff = load_lora(tmp_path / "diff.safetensors")
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    expected = load_lora(a).weights[name].delta() - load_lora(b).weights[name].delta()
    assert float((diff.weights[name].delta() - expected).norm() / expected.norm()) < 1e-5

    result = sabun("lora", "combine", f"{a}:1", f"{b}:-1", "--concat", "--out", tmp_path / "cat.safetensors")
    assert result.returncode == 0, result.stderr
    assert load_lora(tmp_path / "cat.safetensors").weights[name].rank == 4

    result = sabun("lora", "resize", a, "--rank", "2", "--out", tmp_path / "small.safetensors")
    assert result.returncode == 0, result.stderr
    assert load_lora(tmp_path / "small.safetensors").ranks() == {2}

    result = sabun("lora", "info", a, "--model", "tiny")
    assert result.returncode == 0, result.stderr
    assert "unet down_blocks_0" in result.stdout and "te layer 1" in result.stdout
    assert "ss_network_dim = 4" in result.stdout
    assert "fits" in result.stdout


def test_extract_command_reports_both_parts(tiny_pipe, tmp_path):
    tuned = tiny_pipe
    merge_into_model(pipeline_targets(tuned), [Weighted(random_lora(tuned, rank=4, std=0.2))])
    tuned.save_pretrained(tmp_path / "tuned")
    result = sabun(
        "lora",
        "extract",
        "--original",
        "tiny",
        "--tuned",
        tmp_path / "tuned",
        "--rank",
        "4",
        "--out",
        tmp_path / "x.safetensors",
    )
    assert result.returncode == 0, result.stderr
    assert "difference norm, unet" in result.stdout and "difference norm, te" in result.stdout
    assert any(n.startswith("lora_te_") for n in load_lora(tmp_path / "x.safetensors").weights)


def test_bad_inputs_give_one_line_errors_and_no_output(tiny_pipe, lora_files, tmp_path):
    a, _ = lora_files
    out = tmp_path / "out.safetensors"

    # a missing path
    assert_clean_error(
        sabun("lora", "resize", tmp_path / "nope.safetensors", "--rank", "2", "--out", out),
        "nope.safetensors",
        "no such",
    )

    # a truncated file
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(a.read_bytes()[: a.stat().st_size // 2])
    assert_clean_error(
        sabun("lora", "resize", truncated, "--rank", "2", "--out", out), "truncated.safetensors", "corrupt"
    )

    # a safetensors file that is not a LoRA
    not_lora = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(4, 4)}, str(not_lora))
    assert_clean_error(
        sabun("lora", "combine", f"{not_lora}:1", "--out", out), "model.safetensors", "not a kohya-format LoRA"
    )

    # an SDXL LoRA on an SD1 model
    w = random_lora(tiny_pipe).weights["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    sdxl = tmp_path / "sdxl.safetensors"
    save_file(
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": w.down,
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": w.up,
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": w.down.clone(),
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": w.up.clone(),
        },
        str(sdxl),
    )
    assert_clean_error(
        sabun("merge", "--model", "tiny", "--lora", sdxl, "--out", tmp_path / "merged"), "sdxl.safetensors", "sdxl"
    )
    assert not (tmp_path / "merged").exists()

    # a .ckpt pickle: refused, then loaded weights-only when allowed
    ckpt = tmp_path / "a.ckpt"
    torch.save(lora_state_dict(load_lora(a)), ckpt)
    assert_clean_error(sabun("lora", "resize", ckpt, "--rank", "2", "--out", out), "a.ckpt", "--allow-pickle")
    assert not out.exists()
    assert sabun("lora", "resize", ckpt, "--rank", "2", "--out", out, "--allow-pickle").returncode == 0
    assert out.exists()

    # an existing output is never replaced without --overwrite
    stamp = out.stat().st_mtime_ns
    assert_clean_error(sabun("lora", "resize", a, "--rank", "1", "--out", out), "already exists", "--overwrite")
    assert out.stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_info_reports_a_lora_that_does_not_fit(tiny_pipe, tmp_path):
    lora = random_lora(tiny_pipe)
    renamed = {k.replace("lora_te_", "lora_te2_"): v for k, v in lora_state_dict(lora).items()}
    path = tmp_path / "other.safetensors"
    save_file(renamed, str(path))
    result = sabun("lora", "info", path, "--model", "tiny")
    assert result.returncode == 1
    assert "does NOT fit" in result.stdout and "not in model: lora_te2_text_model" in result.stdout
