"""Shared fixtures: the tiny SD1-style pipeline and LoRAs with random, non-zero weights."""

from __future__ import annotations

import copy
import os

# Nothing in sabun may reach a model hub; make any accidental attempt fail loudly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

from sabun.lora.network import LoRANetwork
from sabun.lora.targets import pipeline_targets
from sabun.models.tiny import build_tiny_pipeline


@pytest.fixture
def one_thread():
    """Run the test with torch on one thread (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pipe_session():
    return build_tiny_pipeline(seed=0)


@pytest.fixture
def tiny_pipe(tiny_pipe_session):
    """A fresh copy per test, so tests that merge into weights do not leak into others."""
    return copy.deepcopy(tiny_pipe_session)


def random_lora(
    pipe,
    rank: int = 4,
    alpha: float = 1.0,
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
    seed: int = 0,
    std: float = 0.05,
):
    """A LoRA on `pipe` whose up and down are both random (a trained-looking LoRA, not a zero one)."""
    targets = pipeline_targets(pipe, conv=conv_rank is not None)
    torch.manual_seed(seed)
    network = LoRANetwork.create(targets, rank=rank, alpha=alpha, conv_rank=conv_rank, conv_alpha=conv_alpha)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0.0, std)
    return network.to_lora()


@pytest.fixture
def make_lora():
    return random_lora


def unet_and_text_outputs(pipe, prompt: str = "1girl, red hair", seed: int = 0):
    """U-Net noise prediction and text embedding for a fixed latent, timestep and prompt."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size, generator=generator)
    ids = pipe.tokenizer(
        [prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
        noise = pipe.unet(latents, torch.tensor([500]), text).sample
    return noise, text


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`sabun ARGS` in this process (so an unexpected exception fails the test with its traceback):
    (exit status, stdout, stderr)."""
    import sys

    from sabun.cli import main

    argv = sys.argv
    sys.argv = ["sabun", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err
