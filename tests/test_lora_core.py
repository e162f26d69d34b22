"""The LoRA core on the tiny SD1-style pipeline: names, files, interop, merge, combine, extract, resize."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_lora, unet_and_text_outputs
from safetensors import safe_open
from safetensors.torch import save_file

from sabun.errors import SabunError
from sabun.lora.file import load_lora, lora_state_dict, save_lora
from sabun.lora.network import LoRAModule, LoRANetwork
from sabun.lora.ops import Weighted, combine_concat, combine_svd, extract_lora, merge_into_model, resize_lora
from sabun.lora.targets import pipeline_targets
from sabun.lora.weights import LoRA
from sabun.models.load import load_pipeline, save_pipeline
from sabun.models.tokenizer import build_clip_tokenizer


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# --- names -------------------------------------------------------------------------------------


def test_targets_use_kohya_names(tiny_pipe):
    plain = pipeline_targets(tiny_pipe, conv=False)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in plain
    assert "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0" in plain
    assert "lora_unet_mid_block_attentions_0_proj_in" in plain
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in plain
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2" in plain
    assert not any(t.conv3x3 for t in plain.values())
    assert not any("resnets" in name for name in plain)

    with_conv = pipeline_targets(tiny_pipe, conv=True)
    assert set(plain) < set(with_conv)
    assert with_conv["lora_unet_down_blocks_0_resnets_0_conv1"].conv3x3
    assert with_conv["lora_unet_down_blocks_0_downsamplers_0_conv"].conv3x3
    assert with_conv["lora_unet_up_blocks_0_upsamplers_0_conv"].conv3x3
    # Linear / 1x1 layers inside ResNets take the main rank, as in sd-scripts
    assert not with_conv["lora_unet_down_blocks_0_resnets_0_time_emb_proj"].conv3x3
    assert not with_conv["lora_unet_up_blocks_0_resnets_0_conv_shortcut"].conv3x3


def test_tokenizer_knows_its_words_as_single_tokens():
    tokenizer = build_clip_tokenizer(["blonde hair", "twintails"])
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("blonde hair, twintails, xyz").input_ids)
    assert tokens == [
        "<|startoftext|>",
        "blonde</w>",
        "hair</w>",
        ",</w>",
        "twintails</w>",
        ",</w>",
        "x",
        "y",
        "z</w>",
        "<|endoftext|>",
    ]


# --- network and files -------------------------------------------------------------------------


def test_network_changes_output_and_detach_restores_it(tiny_pipe):
    before = unet_and_text_outputs(tiny_pipe)
    network = LoRANetwork.from_lora(
        random_lora(tiny_pipe, conv_rank=2), pipeline_targets(tiny_pipe, conv=True)
    ).attach()
    during = unet_and_text_outputs(tiny_pipe)
    network.detach()
    after = unet_and_text_outputs(tiny_pipe)
    assert (during[0] - before[0]).abs().max() > 1e-3
    assert (during[1] - before[1]).abs().max() > 1e-3
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])


@pytest.mark.parametrize("layer", [torch.nn.Linear(64, 48), torch.nn.Conv2d(64, 48, 1)], ids=["linear", "conv1x1"])
def test_lora_adds_its_scaled_product_in_fp32_and_under_bf16_autocast(layer):
    """The fused add (scale at rank width, addmm for Linear) is `output + m * alpha / r * up(down(x))`."""
    torch.manual_seed(0)
    lora = LoRAModule(layer, rank=8, alpha=2.0)
    lora.multiplier = 0.7
    torch.nn.init.normal_(lora.lora_up.weight, std=0.2)
    x = torch.randn(2, 5, 64) if isinstance(layer, torch.nn.Linear) else torch.randn(2, 64, 3, 3)
    down, up = lora.lora_down.weight.flatten(1), lora.lora_up.weight.flatten(1)

    def expected(inputs, output):
        h = inputs.float().movedim(1, -1) if inputs.dim() == 4 else inputs.float()
        product = (h @ down.T @ up.T) * (0.7 * 2.0 / 8)
        return output.float() + (product.movedim(-1, 1) if inputs.dim() == 4 else product)

    with torch.no_grad():
        output = layer(x)
        assert torch.allclose(lora.add_to(output, x), expected(x, output), atol=1e-5)
        low = copy.deepcopy(layer).to(torch.bfloat16)
        x_low = x.to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = low(x_low)
            got = lora.add_to(output, x_low)
        reference = expected(x_low, output)
        assert got.dtype == torch.bfloat16
        assert ((got.float() - reference).norm() / reference.norm()).item() < 1e-2


def test_fresh_network_starts_as_the_model(tiny_pipe):
    before = unet_and_text_outputs(tiny_pipe)
    LoRANetwork.create(pipeline_targets(tiny_pipe), rank=4, alpha=2).attach()
    assert torch.equal(unet_and_text_outputs(tiny_pipe)[0], before[0])


@pytest.mark.parametrize("conv_rank", [None, 2])
def test_saved_file_gives_same_output_in_sabun_and_diffusers(tiny_pipe, tmp_path, conv_rank):
    """alpha != rank everywhere; diffusers must read the alphas from our file, not assume alpha = rank."""
    lora = random_lora(tiny_pipe, rank=4, alpha=1.0, conv_rank=conv_rank, conv_alpha=3.0)
    targets = pipeline_targets(tiny_pipe, conv=True)
    base = unet_and_text_outputs(tiny_pipe)

    network = LoRANetwork.from_lora(lora, targets).attach()
    in_memory = unet_and_text_outputs(tiny_pipe)
    network.detach()

    path = save_lora(lora, tmp_path / "a.safetensors")
    network = LoRANetwork.from_lora(load_lora(path), targets).attach()
    reloaded = unet_and_text_outputs(tiny_pipe)
    network.detach()

    tiny_pipe.load_lora_weights(str(path), adapter_name="a")
    by_diffusers = unet_and_text_outputs(tiny_pipe)
    tiny_pipe.unload_lora_weights()

    assert (in_memory[0] - base[0]).abs().max() > 1e-2, "the LoRA must change the U-Net output"
    for got in (reloaded, by_diffusers):
        torch.testing.assert_close(got[0], in_memory[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(got[1], in_memory[1], atol=1e-4, rtol=0)


def test_file_layout_and_metadata(tiny_pipe, tmp_path):
    lora = random_lora(tiny_pipe, rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0)
    lora.metadata["sabun_caption_policy"] = "character"
    path = save_lora(lora, tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        assert f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight").shape == (2, 32, 3, 3)
        assert f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight").shape == (32, 2, 1, 1)
        assert f.get_tensor("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha").dim() == 0
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2")
    assert '"conv_dim": "2"' in meta["ss_network_args"]
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["sabun_caption_policy"] == "character"
    again = load_lora(path)
    for name, w in lora.weights.items():
        assert torch.equal(again.weights[name].down, w.down) and again.weights[name].alpha == w.alpha


def test_missing_alpha_means_alpha_equals_rank(tiny_pipe, tmp_path):
    lora = random_lora(tiny_pipe, rank=4, alpha=4.0)
    tensors = {k: v for k, v in lora_state_dict(lora).items() if not k.endswith(".alpha")}
    save_file(tensors, str(tmp_path / "no_alpha.safetensors"))
    loaded = load_lora(tmp_path / "no_alpha.safetensors")
    assert {w.alpha for w in loaded.weights.values()} == {4.0}


def test_writes_refuse_to_overwrite_and_leave_no_temp_files(tiny_pipe, tmp_path):
    lora = random_lora(tiny_pipe)
    path = save_lora(lora, tmp_path / "a.safetensors")
    stamp = path.stat().st_mtime_ns
    with pytest.raises(SabunError, match="already exists"):
        save_lora(lora, path)
    assert path.stat().st_mtime_ns == stamp
    save_lora(lora, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


# --- merge -------------------------------------------------------------------------------------


def test_merged_equals_unmerged_and_negative_merge_undoes(tiny_pipe):
    lora = random_lora(tiny_pipe, rank=4, alpha=1.0, conv_rank=2, conv_alpha=3.0)
    targets = pipeline_targets(tiny_pipe, conv=True)
    original = {n: t.module.weight.detach().clone() for n, t in targets.items()}
    base = unet_and_text_outputs(tiny_pipe)

    network = LoRANetwork.from_lora(lora, targets)
    network.multiplier = 0.7
    network.attach()
    unmerged = unet_and_text_outputs(tiny_pipe)
    network.detach()

    merge_into_model(targets, [Weighted(lora, 0.7)])
    merged = unet_and_text_outputs(tiny_pipe)
    torch.testing.assert_close(merged[0], unmerged[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(merged[1], unmerged[1], atol=1e-5, rtol=0)

    merge_into_model(targets, [Weighted(lora, -0.7)])
    for name, target in targets.items():
        torch.testing.assert_close(target.module.weight, original[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(unet_and_text_outputs(tiny_pipe)[0], base[0], atol=1e-5, rtol=0)


def test_merge_of_a_lora_that_does_not_fit_changes_nothing(tiny_pipe):
    targets = pipeline_targets(tiny_pipe)
    good = random_lora(tiny_pipe)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    bad = LoRA(
        {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": good.weights[name]},
        {"ss_base_model_version": "sdxl_base_v1-0"},
    )
    before = targets[name].module.weight.clone()
    with pytest.raises(SabunError, match="sdxl_base_v1-0"):
        merge_into_model(targets, [Weighted(good), Weighted(bad, source="sdxl.safetensors")])
    assert torch.equal(targets[name].module.weight, before)


def test_saved_model_folder_loads_back_with_same_output(tiny_pipe, tmp_path):
    merge_into_model(pipeline_targets(tiny_pipe), [Weighted(random_lora(tiny_pipe))])
    out = save_pipeline(tiny_pipe, tmp_path / "merged")
    again = load_pipeline(out)
    torch.testing.assert_close(unet_and_text_outputs(again)[0], unet_and_text_outputs(tiny_pipe)[0], atol=1e-6, rtol=0)


# --- combine, resize, extract ------------------------------------------------------------------


def test_combine_at_full_rank_is_the_exact_difference(tiny_pipe):
    a = random_lora(tiny_pipe, rank=4, alpha=1.0, conv_rank=2, conv_alpha=2.0, seed=1)
    b = random_lora(tiny_pipe, rank=2, alpha=8.0, conv_rank=2, conv_alpha=1.0, seed=2)
    combined, report = combine_svd([Weighted(a, 1.0), Weighted(b, -1.0)])
    for name in a.weights:
        expected = a.weights[name].delta() - b.weights[name].delta()
        assert rel_error(combined.weights[name].delta(), expected) < 1e-5
    assert report.overall < 1e-6


def test_combine_svd_truncation_reports_its_error(tiny_pipe):
    a = random_lora(tiny_pipe, rank=4, seed=1)
    b = random_lora(tiny_pipe, rank=4, seed=2)
    combined, report = combine_svd([Weighted(a, 1.0), Weighted(b, 0.5)], rank=3)
    assert combined.ranks() == {3}
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    expected = a.weights[name].delta() + 0.5 * b.weights[name].delta()
    assert rel_error(combined.weights[name].delta(), expected) == pytest.approx(report.per_layer[name], rel=1e-3)
    assert 0 < report.overall < 1


def test_concat_keeps_strength_exactly(tiny_pipe):
    a = random_lora(tiny_pipe, rank=4, alpha=1.0, conv_rank=2, conv_alpha=2.0, seed=1)
    b = random_lora(tiny_pipe, rank=2, alpha=8.0, conv_rank=2, conv_alpha=1.0, seed=2)
    combined = combine_concat([Weighted(a, 0.5), Weighted(b, -1.5)])
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert combined.weights[name].rank == 4
    for name in a.weights:
        expected = 0.5 * a.weights[name].delta() - 1.5 * b.weights[name].delta()
        assert rel_error(combined.weights[name].delta(), expected) < 1e-6


def test_resize_matches_the_best_rank_k_error(tiny_pipe):
    lora = random_lora(tiny_pipe, rank=8, alpha=4.0, conv_rank=4, conv_alpha=4.0)
    resized, report = resize_lora(lora, rank=3)
    for name, weight in lora.weights.items():
        dense = weight.delta().reshape(weight.weight_shape[0], -1).double()
        S = torch.linalg.svdvals(dense)
        best = float((S[3:] ** 2).sum().sqrt() / (S**2).sum().sqrt())
        assert rel_error(resized.weights[name].delta(), weight.delta()) == pytest.approx(best, rel=1e-4, abs=1e-7)
        assert report.per_layer[name] == pytest.approx(best, rel=1e-4, abs=1e-7)
        assert resized.weights[name].scale == pytest.approx(weight.scale)


def test_resize_by_energy_keeps_that_energy(tiny_pipe):
    lora = random_lora(tiny_pipe, rank=8)
    resized, report = resize_lora(lora, energy=0.9)
    for name in lora.weights:
        assert report.per_layer[name] ** 2 <= 0.1 + 1e-9
    assert max(resized.ranks()) <= 8


def test_extract_recovers_a_merged_lora(tiny_pipe):
    lora = random_lora(tiny_pipe, rank=4, alpha=2.0, conv_rank=2, conv_alpha=2.0, std=0.2)
    tuned = copy.deepcopy(tiny_pipe)
    merge_into_model(pipeline_targets(tuned, conv=True), [Weighted(lora)])
    extracted, report = extract_lora(
        pipeline_targets(tiny_pipe, conv=True), pipeline_targets(tuned, conv=True), rank=4, conv_rank=2
    )
    assert set(extracted.weights) == set(lora.weights)
    for name, weight in lora.weights.items():
        assert rel_error(extracted.weights[name].delta(), weight.delta()) < 1e-4
    assert report.component_norms["te"] > 0 and report.component_norms["unet"] > 0


def test_extract_keeps_a_small_text_encoder_difference_unless_unet_only(tiny_pipe):
    lora = random_lora(tiny_pipe, rank=4)
    for name, w in lora.weights.items():
        if name.startswith("lora_te"):
            w.up.mul_(1e-3)  # a tiny text-encoder change, which some tools drop silently
    tuned = copy.deepcopy(tiny_pipe)
    merge_into_model(pipeline_targets(tuned), [Weighted(lora)])
    t0, t1 = pipeline_targets(tiny_pipe), pipeline_targets(tuned)
    extracted, _ = extract_lora(t0, t1, rank=4)
    assert any(name.startswith("lora_te") for name in extracted.weights)
    unet_only, report = extract_lora(t0, t1, rank=4, unet_only=True)
    assert not any(name.startswith("lora_te") for name in unet_only.weights)
    assert report.left_out_components == ["te"] and report.component_norms["te"] > 0


def test_extract_of_identical_models_is_an_error(tiny_pipe):
    with pytest.raises(SabunError, match="identical"):
        extract_lora(pipeline_targets(tiny_pipe), pipeline_targets(copy.deepcopy(tiny_pipe)), rank=4)
