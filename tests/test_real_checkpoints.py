"""Real checkpoints offline: SD 1.x / 2.x / SDXL single files (original layout), SDXL kohya names, training.

The models keep the real architectures' every block, layer and key name at reduced widths, with
random weights, and are written as fp16 single files the way checkpoints are shipped. Where sabun
could only agree with itself (its reader and writer share one key map), diffusers' own
`from_single_file` and `load_lora_weights` are the independent check. The slow test at the end runs
the full-size SD 1.5 architecture: `pytest -m slow tests/test_real_checkpoints.py`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_lora
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sabun.errors import SabunError
from sabun.lora.file import load_lora, save_lora
from sabun.lora.network import LoRANetwork
from sabun.lora.targets import pipeline_targets
from sabun.models.architectures import ARCHITECTURES
from sabun.models.clip_tokenizer import clip_tokenizer
from sabun.models.families import base_model_version, looks_like_v_prediction, pipeline_family, resolve_prediction_type
from sabun.models.layout import checkpoint_layout, original_shape
from sabun.models.load import load_pipeline, save_pipeline
from sabun.models.single_file import build_components, component_configs, random_pipeline

FAMILIES = ("sd1", "sd2", "sdxl")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are small: one thread avoids OpenMP's spin-waits, which on two cores shared with
    other processes make each small op cost a scheduler tick (~10 ms; 80x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROMPT = "1girl, red hair, twintails"


def outputs(pipe, prompt: str = PROMPT, seed: int = 0) -> list[torch.Tensor]:
    """[U-Net noise prediction, text conditioning(, pooled text for SDXL)], computed as the pipeline does."""
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        if pipeline_family(pipe) == "sdxl":
            text, _, pooled, _ = pipe.encode_prompt(
                prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            added = {"text_embeds": pooled, "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]])}
            noise = pipe.unet(latents, torch.tensor([500]), text, added_cond_kwargs=added).sample
            return [noise, text, pooled]
        text, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        return [pipe.unet(latents, torch.tensor([500]), text).sample, text]


def assert_same_outputs(got: list[torch.Tensor], expected: list[torch.Tensor], atol: float) -> None:
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=atol, rtol=0)


def state(pipe) -> dict[str, torch.Tensor]:
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
    return {
        f"{n}/{k}": v
        for n in names
        if getattr(pipe, n, None) is not None
        for k, v in getattr(pipe, n).state_dict().items()
    }


def from_single_file_by_diffusers(path: Path, family: str, config_folder: Path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    return cls.from_single_file(str(path), config=str(config_folder), local_files_only=True)


class Checkpoint:
    """A reduced-width model of one family as an fp16 single file, with the pipeline it came from."""

    def __init__(self, family: str, folder: Path):
        self.family = family
        pipe = random_pipeline(family, seed={"sd1": 0, "sd2": 1, "sdxl": 2}[family])
        pipe.to(torch.float16)  # shipped checkpoints are fp16: write one, and keep its exact values
        self.path = save_pipeline(pipe, folder / f"{family}.safetensors")
        pipe.to(torch.float32)
        self.pipe = pipe
        self.config_folder = folder / f"{family}-config"  # what diffusers' from_single_file takes as config
        pipe.save_pretrained(self.config_folder)
        self.expected = outputs(pipe)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    made: dict[str, Checkpoint] = {}

    def get(family: str) -> Checkpoint:
        if family not in made:
            made[family] = Checkpoint(family, tmp_path_factory.mktemp(family))
        return made[family]

    return get


# --- tokenizer ----------------------------------------------------------------------------------


def test_clip_tokenizer_is_clips_own():
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.convert_ids_to_tokens([0, 255, 256, 511, 49406]) == ["!", "Ń", "!</w>", "Ń</w>", "<|startoftext|>"]
    padded = clip_tokenizer("!")("a cat", padding="max_length", max_length=6).input_ids
    assert padded == [49406, 320, 2368, 49407, 0, 0]  # OpenCLIP pads with `!`
    assert clip_tokenizer()("a cat", padding="max_length", max_length=6).input_ids[-2:] == [49407, 49407]


def test_loaded_models_carry_each_familys_tokenizers(checkpoints):
    sd1, sd2, sdxl = (load_pipeline(checkpoints(f).path) for f in FAMILIES)
    assert sd1.tokenizer.pad_token == "<|endoftext|>" and sd2.tokenizer.pad_token == "!"
    assert sdxl.tokenizer.pad_token == "<|endoftext|>" and sdxl.tokenizer_2.pad_token == "!"
    assert sd1.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


# --- loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_loads_as_diffusers_reads_it(checkpoints, family, caplog):
    """sabun's reader and diffusers' converter give the same weights, and the source model's outputs."""
    ckpt = checkpoints(family)
    with caplog.at_level(logging.INFO, logger="sabun"):
        pipe = load_pipeline(ckpt.path)
    assert pipeline_family(pipe) == family
    title = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL base"}[family]
    assert f"{ckpt.path}: {title} checkpoint (original layout)" in caplog.text
    ours, theirs = state(pipe), state(from_single_file_by_diffusers(ckpt.path, family, ckpt.config_folder))
    assert ours.keys() == theirs.keys()
    for key, tensor in ours.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, theirs[key].float()), key
    assert_same_outputs(outputs(pipe), ckpt.expected, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_configs_are_read_from_the_real_architectures_shapes(family):
    """The full-size architecture's shapes (no weights: meta device) give back its config."""
    real = ARCHITECTURES[family]
    components = build_components(real, family, empty=True)
    params = {f"{c}/{k}": tuple(v.shape) for c, m in components.items() for k, v in m.state_dict().items()}
    shapes = {
        e.original: original_shape(e, [params[p] for p in e.parts]) for e in checkpoint_layout(components, family)
    }
    if family == "sd2":  # the 24th OpenCLIP layer, which diffusers does not build
        shapes |= {k.replace("resblocks.0.", "resblocks.23."): s for k, s in shapes.items() if ".resblocks.0." in k}
    configs = component_configs(shapes, family)
    for component, expected in real.items():
        for key, value in expected.items():
            if key != "sample_size":
                assert configs[component][key] == value, (component, key)


# --- LoRAs --------------------------------------------------------------------------------------


def test_sdxl_unet_layers_take_kohya_sgm_names(checkpoints):
    targets = pipeline_targets(load_pipeline(checkpoints("sdxl").path), conv=True)
    for name in (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
        "lora_unet_input_blocks_7_1_transformer_blocks_9_ff_net_2",
        "lora_unet_middle_block_1_transformer_blocks_9_attn1_to_q",
        "lora_unet_output_blocks_0_1_proj_in",
        "lora_unet_input_blocks_1_0_in_layers_2",  # resnet conv1 (LoCon)
        "lora_unet_input_blocks_3_0_op",  # downsampler
        "lora_unet_output_blocks_2_2_conv",  # upsampler after attention
        "lora_unet_output_blocks_8_0_skip_connection",
        "lora_te1_text_model_encoder_layers_11_mlp_fc2",
        "lora_te2_text_model_encoder_layers_31_self_attn_q_proj",
    ):
        assert name in targets, name
    assert not any(
        n.startswith(("lora_unet_down_blocks", "lora_unet_mid_block", "lora_unet_up_blocks", "lora_te_"))
        for n in targets
    )
    sd2 = pipeline_targets(load_pipeline(checkpoints("sd2").path))
    assert (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k" in sd2
    )  # SD 1.x/2.x keep diffusers' names
    assert "lora_te_text_model_encoder_layers_22_self_attn_out_proj" in sd2


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_on_a_single_file_gives_the_same_outputs_in_diffusers(checkpoints, family, tmp_path):
    """A LoRA (LoCon, alpha != rank) applied by sabun and by diffusers' `load_lora_weights` agree.

    For SDXL this is diffusers converting the SGM names back to its modules: the naming is right.
    """
    pipe = load_pipeline(checkpoints(family).path)
    lora = random_lora(pipe, rank=4, alpha=1.0, conv_rank=2, conv_alpha=3.0, std=0.1)
    network = LoRANetwork.from_lora(lora, pipeline_targets(pipe, conv=True)).attach()
    by_sabun = outputs(pipe)
    network.detach()
    path = save_lora(lora, tmp_path / "lora.safetensors", family=family)
    assert load_lora(path).metadata["ss_base_model_version"] == base_model_version(family)

    pipe.load_lora_weights(str(path), adapter_name="a")
    by_diffusers = outputs(pipe)
    pipe.unload_lora_weights()
    assert (by_sabun[0] - checkpoints(family).expected[0]).abs().max() > 1e-2, "the LoRA must change the U-Net output"
    assert (by_sabun[1] - checkpoints(family).expected[1]).abs().max() > 1e-2, (
        "the LoRA must change the text conditioning"
    )
    assert_same_outputs(by_diffusers, by_sabun, atol=1e-4)


def test_base_model_versions_are_sd_scripts_own():
    assert [base_model_version(f) for f in FAMILIES] == ["sd_v1", "sd_v2", "sdxl_base_v1-0"]
    assert base_model_version("sd2", "v_prediction") == "sd_v2_v"


# --- training on single files ---------------------------------------------------------------------

TRAIN_TOML = """
[model]
path = "{model}"
{prediction_type}

[[datasets]]
path = "data"

[data]
resolution = 64
bucket_step = 64

[network]
rank = 4
alpha = 2

[optimizer]
learning_rate = 1e-2

[training]
max_steps = 2

[output]
dir = "out"
name = "trained"
progress_bar = false
tensorboard = false
"""


def write_captioned_images(folder: Path, count: int = 2, size: int = 64) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        # smooth colour fields: 4x4 random colours enlarged, as training images are not noise
        colours = (torch.rand(4, 4, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(colours).resize((size, size), Image.Resampling.BICUBIC).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"1girl, red hair, picture {i}")


@pytest.mark.parametrize("family", FAMILIES)
def test_training_conditions_on_the_text_as_the_pipeline_does(checkpoints, family):
    """The trainer's text conditioning (SDXL: both encoders' penultimate states and the pooled text)
    is exactly what the family's diffusers pipeline computes from the prompt."""
    from sabun.train.model import TextEncoders

    pipe = checkpoints(family).pipe
    with torch.no_grad():
        text, pooled = TextEncoders.of(pipe)([PROMPT])
    assert_same_outputs([text] + ([pooled] if family == "sdxl" else []), checkpoints(family).expected[1:], atol=0)
    assert (pooled is None) == (family != "sdxl")


@pytest.mark.parametrize(
    "family, prediction_type, version",
    [
        ("sd1", None, "sd_v1"),
        ("sd2", None, "sd_v2"),
        ("sd2", "v_prediction", "sd_v2_v"),
        ("sdxl", None, "sdxl_base_v1-0"),
    ],
)
def test_training_on_a_single_file_gives_a_lora_diffusers_applies_alike(
    checkpoints, family, prediction_type, version, tmp_path
):
    """`sabun train` on each family's single file (U-Net and text encoders, alpha != rank): the
    LoRA it writes changes the model, and diffusers' `load_lora_weights` applies it as sabun does."""
    from sabun.train import load_config, train

    ckpt = checkpoints(family)
    write_captioned_images(tmp_path / "data")
    stated = f'prediction_type = "{prediction_type}"' if prediction_type else ""
    (tmp_path / "train.toml").write_text(TRAIN_TOML.format(model=ckpt.path.as_posix(), prediction_type=stated))
    result = train(load_config(tmp_path / "train.toml"))
    assert result.step == 2 and all(torch.isfinite(torch.tensor(result.losses)))

    lora = load_lora(result.lora_path)
    assert lora.metadata["ss_base_model_version"] == version
    assert lora.metadata["ss_v_parameterization"] == str(prediction_type == "v_prediction")
    assert lora.metadata["ss_network_dim"] == "4" and lora.metadata["ss_network_alpha"] == "2"
    components = {name.split("_")[1] for name in lora.weights}
    assert components == ({"unet", "te1", "te2"} if family == "sdxl" else {"unet", "te"})
    if family == "sdxl":  # kohya's SGM names, which every SDXL tool reads
        unet_names = [n for n in lora.weights if n.startswith("lora_unet_")]
        assert any(n.startswith("lora_unet_input_blocks_") for n in unet_names)
        assert all(
            n.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
            for n in unet_names
        )

    pipe = load_pipeline(ckpt.path)  # a fresh copy of the model the LoRA was trained on
    network = LoRANetwork.from_lora(lora, pipeline_targets(pipe)).attach()
    by_sabun = outputs(pipe)
    network.detach()
    pipe.load_lora_weights(str(result.lora_path), adapter_name="trained")
    by_diffusers = outputs(pipe)
    for got, before in zip(by_sabun, ckpt.expected):  # U-Net output, text conditioning (and SDXL's pooled text)
        assert (got - before).abs().max() > 1e-3, "two training steps must change every output"
    assert_same_outputs(by_diffusers, by_sabun, atol=1e-4)


def test_sdxl_training_with_frozen_text_encoders_caches_the_pooled_text(checkpoints, tmp_path):
    """U-Net only: the text (both encoders' hidden states and the pooled text) is encoded once and
    cached; validation and sample grids run through SDXL's pipeline with that conditioning."""
    from sabun.train import load_config, train

    write_captioned_images(tmp_path / "data", count=3)
    (tmp_path / "train.toml").write_text(
        TRAIN_TOML.format(model=checkpoints("sdxl").path.as_posix(), prediction_type="")
    )
    overrides = [
        "network.train_text_encoder=false",
        "validation.split=0.4",
        "sampling.every_n_steps=2",
        "sampling.steps=2",
    ]
    result = train(load_config(tmp_path / "train.toml", overrides))
    lora = load_lora(result.lora_path)
    assert lora.weights and all(name.startswith("lora_unet_") for name in lora.weights)
    assert math.isfinite(result.validation[2]) and [p.name for p in result.samples] == ["trained-step000002.png"]


# --- merge and extract into / between single files ----------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_writes_a_single_file_that_loads_back(checkpoints, family, tmp_path):
    from sabun.lora.commands import merge

    ckpt = checkpoints(family)
    # extras a real checkpoint carries: a schedule buffer (kept) and stale EMA weights (dropped)
    tensors = load_file(ckpt.path) | {
        "alphas_cumprod": torch.rand(1000, dtype=torch.float32),
        "model_ema.decay": torch.tensor(0.999),
    }
    source = tmp_path / "source.safetensors"
    save_file(tensors, str(source))
    pipe = load_pipeline(source)
    lora = random_lora(pipe, rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0, std=0.1)
    lora_path = save_lora(lora, tmp_path / "lora.safetensors", family=family)
    out = tmp_path / "merged.safetensors"
    assert merge(str(source), [f"{lora_path}:0.8"], out) == len(lora.weights)

    from sabun.lora.ops import Weighted, merge_into_model

    merge_into_model(pipeline_targets(pipe, conv=True), [Weighted(lora, 0.8)])
    pipe.to(torch.float16).to(torch.float32)  # what the file holds: the fp32 merge, rounded to the file's fp16
    merged = load_pipeline(out)
    assert_same_outputs(outputs(merged), outputs(pipe), atol=1e-6)
    theirs = state(from_single_file_by_diffusers(out, family, ckpt.config_folder))
    for key, tensor in state(merged).items():
        assert torch.equal(tensor, theirs[key].float()), key

    written = load_file(out)
    assert written.keys() - {"v_pred"} == tensors.keys() - {"model_ema.decay"}
    assert torch.equal(written["alphas_cumprod"], tensors["alphas_cumprod"])
    assert all(written[k].dtype == tensors[k].dtype for k in written)


def test_a_zero_terminal_snr_v_model_keeps_its_schedule_through_a_single_file(checkpoints, tmp_path):
    """Written with the `v_pred` and `ztsnr` marker keys, read back with the same betas, starting
    its sampling at the last (pure-noise) timestep."""
    pipe = copy.deepcopy(checkpoints("sd1").pipe)
    pipe.scheduler = type(pipe.scheduler).from_config(
        pipe.scheduler.config, prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    )
    out = save_pipeline(pipe, tmp_path / "vpred_ztsnr.safetensors")
    assert {"v_pred", "ztsnr"} <= load_file(out).keys()
    loaded = load_pipeline(out)
    config = loaded.scheduler.config
    assert (config.prediction_type, config.rescale_betas_zero_snr, config.timestep_spacing) == (
        "v_prediction", True, "trailing"
    )  # fmt: skip
    assert torch.equal(loaded.scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod)
    assert float(loaded.scheduler.alphas_cumprod[-1]) == 0.0
    # and an epsilon model written from it loses both markers
    loaded.scheduler = type(loaded.scheduler).from_config(
        loaded.scheduler.config, prediction_type="epsilon", rescale_betas_zero_snr=False
    )
    assert not {"v_pred", "ztsnr"} & load_file(save_pipeline(loaded, tmp_path / "eps.safetensors")).keys()


def test_sd2_written_from_diffusers_has_its_24th_text_layer_as_identity(checkpoints, tmp_path):
    """A diffusers SD 2.x model lacks OpenCLIP's last layer; the file gets it as an exact identity."""
    pipe = copy.deepcopy(checkpoints("sd2").pipe)
    out = save_pipeline(pipe, tmp_path / "sd2.safetensors")
    layers = {k.split(".")[4] for k in load_file(out) if ".resblocks." in k}
    assert len(layers) == 24
    with safe_open(str(out), "pt") as f:
        assert not f.get_tensor("cond_stage_model.model.transformer.resblocks.23.attn.out_proj.weight").any()
        assert not f.get_tensor("cond_stage_model.model.transformer.resblocks.23.mlp.c_proj.bias").any()
    assert_same_outputs(outputs(load_pipeline(out)), checkpoints("sd2").expected, atol=0)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_extract_between_single_files(checkpoints, family, tmp_path):
    from sabun.lora.commands import extract, merge

    ckpt = checkpoints(family)
    pipe = load_pipeline(ckpt.path)
    lora = random_lora(pipe, rank=4, alpha=4.0, std=0.1)
    lora_path = save_lora(lora, tmp_path / "lora.safetensors", family=family)
    tuned = tmp_path / "tuned.safetensors"
    merge(str(ckpt.path), [str(lora_path)], tuned, prediction_type="v_prediction" if family == "sd2" else None)
    out = tmp_path / "extracted.safetensors"
    report = extract(
        str(ckpt.path), str(tuned), out, rank=8, prediction_type="v_prediction" if family == "sd2" else None
    )
    extracted = load_lora(out)
    assert set(extracted.weights) == set(lora.weights)
    assert report.overall < 0.05  # what rank 8 misses is the fp16 rounding of the written weights
    assert extracted.metadata["ss_base_model_version"] == {"sd2": "sd_v2_v", "sdxl": "sdxl_base_v1-0"}[family]
    assert extracted.metadata["ss_v2"] == str(family == "sd2")


# --- prediction type ----------------------------------------------------------------------------


def test_prediction_type_is_requested_stated_or_detected(checkpoints, tmp_path, caplog):
    ckpt = checkpoints("sdxl")
    assert load_pipeline(ckpt.path).scheduler.config.prediction_type == "epsilon"  # stated in the metadata sabun writes
    tensors = load_file(ckpt.path)
    save_file(tensors | {"v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}, str(tmp_path / "vpred.safetensors"))
    save_file(tensors, str(tmp_path / "bare.safetensors"))  # no metadata: SDXL defaults to epsilon
    with caplog.at_level(logging.INFO, logger="sabun"):
        vpred = load_pipeline(tmp_path / "vpred.safetensors")
    assert vpred.scheduler.config.prediction_type == "v_prediction" and vpred.scheduler.config.rescale_betas_zero_snr
    assert "prediction type v_prediction (stated by the file)" in caplog.text
    assert load_pipeline(tmp_path / "bare.safetensors").scheduler.config.prediction_type == "epsilon"
    assert (
        load_pipeline(tmp_path / "vpred.safetensors", prediction_type="epsilon").scheduler.config.prediction_type
        == "epsilon"
    )
    with pytest.raises(SabunError, match="unknown prediction type"):
        load_pipeline(ckpt.path, prediction_type="sample")


def test_sd2_without_a_statement_is_tested_by_a_unet_call(checkpoints, tmp_path, caplog):
    save_file(load_file(checkpoints("sd2").path), str(tmp_path / "bare.safetensors"))
    with caplog.at_level(logging.INFO, logger="sabun"):
        pipe = load_pipeline(tmp_path / "bare.safetensors")
    assert "from a test U-Net call" in caplog.text
    assert pipe.scheduler.config.prediction_type == (
        "v_prediction" if looks_like_v_prediction(pipe.unet) else "epsilon"
    )


def test_v_prediction_test_reads_the_unet_output():
    class Unet(torch.nn.Module):
        def __init__(self, shift: float):
            super().__init__()
            self.shift = torch.nn.Parameter(torch.tensor(shift))
            self.config = type("Config", (), {"in_channels": 4, "cross_attention_dim": 8})

        def forward(self, x, t, context):
            return type("Out", (), {"sample": x + self.shift})

    assert looks_like_v_prediction(Unet(-2.0)) and not looks_like_v_prediction(Unet(0.0))
    assert resolve_prediction_type("sd2", None, None, Unet(-2.0))[0] == "v_prediction"
    assert resolve_prediction_type("sd1", None, None, Unet(-2.0)) == ("epsilon", "SD 1.x default")


def test_v_prediction_model_is_written_with_the_v_pred_marker(checkpoints, tmp_path):
    pipe = load_pipeline(checkpoints("sd2").path, prediction_type="v_prediction")
    assert pipe.unet.config.sample_size == 96  # 768-px SD 2.x
    out = save_pipeline(pipe, tmp_path / "v.safetensors")
    with safe_open(str(out), "pt") as f:
        assert "v_pred" in f.keys() and f.metadata()["modelspec.prediction_type"] == "v"
    assert load_pipeline(out).scheduler.config.prediction_type == "v_prediction"


def test_diffusers_folder_prediction_type_can_be_overridden(checkpoints):
    folder = checkpoints("sd1").config_folder
    assert load_pipeline(folder).scheduler.config.prediction_type == "epsilon"
    assert load_pipeline(folder, prediction_type="v_prediction").scheduler.config.prediction_type == "v_prediction"


# --- bad input ----------------------------------------------------------------------------------


def test_pickle_checkpoints_load_only_when_allowed(checkpoints, tmp_path):
    ckpt = checkpoints("sd1")
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(ckpt.path), "global_step": 1}, path)
    with pytest.raises(SabunError, match=r"model\.ckpt: is a pickle"):
        load_pipeline(path)
    assert_same_outputs(outputs(load_pipeline(path, allow_pickle=True)), ckpt.expected, atol=0)


@pytest.mark.parametrize(
    "case, message",
    [
        ("lora", "is a LoRA, not a model"),
        ("empty", "empty file"),
        ("truncated", "not a readable safetensors file"),
        ("missing", "has no tensor model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"),
        ("inpainting", "9 input channels"),
        ("refiner", "SDXL refiner"),
        ("no_vae", "without its VAE"),
        ("text", "neither a .safetensors checkpoint nor a diffusers folder"),
    ],
)
def test_wrong_files_get_one_line_errors_naming_them(checkpoints, tmp_path, case, message):
    tensors = load_file(checkpoints("sd1").path)
    path = tmp_path / f"{case}.safetensors"
    if case == "lora":
        save_file(
            {"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 4)},
            str(path),
        )
    elif case == "empty":
        save_file({}, str(path))
    elif case == "truncated":
        path.write_bytes(checkpoints("sd1").path.read_bytes()[:5000])
    elif case == "missing":
        save_file(
            {
                k: v
                for k, v in tensors.items()
                if k != "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
            },
            str(path),
        )
    elif case == "inpainting":
        conv_in = tensors["model.diffusion_model.input_blocks.0.0.weight"]
        save_file(
            tensors | {"model.diffusion_model.input_blocks.0.0.weight": conv_in.repeat(1, 3, 1, 1)[:, :9].contiguous()},
            str(path),
        )
    elif case == "refiner":
        save_file(
            {
                "model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3),
                "conditioner.embedders.0.model.text_projection": torch.zeros(4, 4),
            },
            str(path),
        )
    elif case == "no_vae":
        save_file({k: v for k, v in tensors.items() if not k.startswith("first_stage_model.")}, str(path))
    elif case == "text":
        path = tmp_path / "model.txt"
        path.write_text("not a model")
    with pytest.raises(SabunError, match=message) as error:
        load_pipeline(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_pickles_are_never_written(checkpoints, tmp_path):
    with pytest.raises(SabunError, match="never as pickles"):
        save_pipeline(checkpoints("sd1").pipe, tmp_path / "out.ckpt")


# --- command line -------------------------------------------------------------------------------


def test_cli_merge_into_a_single_file(checkpoints, tmp_path):
    ckpt = checkpoints("sd1")
    lora = save_lora(random_lora(load_pipeline(ckpt.path)), tmp_path / "lora.safetensors")
    out = tmp_path / "merged.safetensors"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-m", "sabun", "merge", "--model", str(ckpt.path), "--lora", f"{lora}:0.5", "--out", str(out), "--prediction-type", "v_prediction"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (
        f"{ckpt.path}: SD 1.x checkpoint (original layout), prediction type v_prediction (as requested)" in run.stderr
    )
    assert load_pipeline(out).scheduler.config.prediction_type == "v_prediction"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "sabun",
            "merge",
            "--model",
            str(lora),
            "--lora",
            str(lora),
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "is a LoRA, not a model" in bad.stderr and not (tmp_path / "x.safetensors").exists()


# --- full size (slow) ---------------------------------------------------------------------------

SD15_LORA_LAYERS = {"unet": 192, "te": 72}  # what kohya's SD 1.5 LoRAs hold without conv layers


@pytest.mark.slow
def test_full_size_sd15_single_file_trains_one_step(tmp_path):
    """The real SD 1.5 architecture (random weights; 1.07 G parameters, 4.3 GB in fp32), written as
    an fp16 single file as SD 1.5 ships, loaded, trained one step at 256 px; the LoRA has SD 1.5's
    layers and loads onto the model. Peak memory: `benchmarks/bench_memory_sd15.py`."""
    from sabun.train import load_config, train

    pipe = random_pipeline("sd1", reduced=False)
    pipe.to(torch.float16)
    path = save_pipeline(pipe, tmp_path / "sd15.safetensors")
    del pipe
    write_captioned_images(tmp_path / "data", count=1, size=256)
    (tmp_path / "train.toml").write_text(TRAIN_TOML.format(model=path.as_posix(), prediction_type=""))
    result = train(load_config(tmp_path / "train.toml", ["data.resolution=256", "training.max_steps=1"]))
    assert result.step == 1 and math.isfinite(result.losses[0])

    lora = load_lora(result.lora_path)
    components = [name.split("_")[1] for name in lora.weights]
    assert {c: components.count(c) for c in set(components)} == SD15_LORA_LAYERS
    assert lora.metadata["ss_base_model_version"] == "sd_v1"
    pipe = load_pipeline(path)
    network = LoRANetwork.from_lora(lora, pipeline_targets(pipe))
    assert len(list(network.children())) == sum(SD15_LORA_LAYERS.values())
