"""The trainer's speed levers change no result beyond float rounding.

`training.small_conv_gemm`: small frozen 3x3 convolutions as one GEMM equal the direct convolution,
forward and backward, and the model is handed back untouched. `training.compile`: the U-Net through
torch.compile gives the eager LoRA up to rounding, and a compile failure falls back to eager
without losing the run. The LoRA scale (which compiled graphs read as a constant) stays in step
with the `alpha` buffer."""

from __future__ import annotations

import pytest
import torch
from test_train import config, one_thread, workdir  # noqa: F401  (the fixtures; one_thread is autouse)
from torch import nn

from sabun.lora.network import LoRAModule
from sabun.lora.weights import LoRAWeight
from sabun.train import small_convs, train
from sabun.train.compiling import CompiledOrEager


def test_the_lora_scale_follows_alpha_however_it_is_written():
    module = LoRAModule(nn.Linear(8, 8), rank=4, alpha=2.0)
    assert module.scale == 0.5
    module.load_weight(LoRAWeight(torch.zeros(4, 8), torch.zeros(8, 4), 8.0))
    assert module.scale == 2.0
    state = module.state_dict()
    state["alpha"] = torch.tensor(1.0)
    module.load_state_dict(state)
    assert module.scale == 0.25 and float(module.alpha) == 1.0
    module.multiplier = 2.0
    assert module.scale == 0.5


def failing_backend(graph, example_inputs):
    raise RuntimeError("no compiler here")


def test_a_failed_compile_warns_once_and_runs_eagerly():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    wrapped = CompiledOrEager(layer, backend=failing_backend)
    x = torch.randn(2, 4)
    with pytest.warns(UserWarning, match="training.compile: torch.compile could not compile Sequential"):
        out = wrapped(x)
    assert torch.equal(out, layer(x))
    assert wrapped.compiled is None
    assert torch.equal(wrapped(x), layer(x))
    assert wrapped.training is layer.training and wrapped.module is layer  # attributes reach the module


@pytest.mark.parametrize(
    "side, c_in, c_out, bias", [(4, 24, 16, True), (4, 8, 8, False), (8, 32, 8, True), (3, 5, 7, True)]
)
def test_a_3x3_conv_as_one_gemm_equals_the_direct_conv_forward_and_backward(side, c_in, c_out, bias):
    generator = torch.Generator().manual_seed(side * c_in)
    layer = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias).requires_grad_(False)
    x = torch.randn(2, c_in, side, side + 1, generator=generator, requires_grad=True)
    grad = torch.randn(2, c_out, side, side + 1, generator=generator)
    direct = layer(x)
    (direct_grad,) = torch.autograd.grad(direct, x, grad)
    gemm = small_convs.conv3x3_as_gemm(x, layer.weight, layer.bias)
    (gemm_grad,) = torch.autograd.grad(gemm, x, grad)
    assert gemm.shape == direct.shape and gemm.is_contiguous()
    torch.testing.assert_close(gemm, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gemm_grad, direct_grad, rtol=1e-5, atol=1e-5)


def test_only_small_frozen_3x3_convs_change_and_uninstall_restores_the_model():
    model = nn.Sequential(
        nn.Conv2d(16, 8, 3, padding=1),  # frozen below: changed
        nn.Conv2d(8, 8, 3, padding=1, stride=2),  # strided: left alone
        nn.Conv2d(8, 8, 1),  # 1x1: left alone
        nn.Conv2d(8, 8, 3, padding=1),  # trainable: left alone
    )
    model[:3].requires_grad_(False)
    x = torch.randn(1, 16, 8, 8)
    before = model(x)
    changed = small_convs.install(model)
    assert changed == [model[0]]
    assert small_convs.picks_gemm(x, model[0])  # 8x8 with twice the output's channels
    assert not small_convs.picks_gemm(torch.randn(1, 8, 8, 8), model[3])  # 8x8, as many channels: direct
    assert not small_convs.picks_gemm(torch.randn(1, 16, 32, 32), model[0])  # large: direct
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    small_convs.uninstall(changed)
    assert all("forward" not in layer.__dict__ for layer in model)
    assert torch.equal(model(x), before)


def test_training_hands_back_the_unet_without_the_gemm_convs(workdir, tiny_pipe, monkeypatch):  # noqa: F811
    changed = []
    original = small_convs.install

    def recording(model):
        changed.extend(original(model))
        return changed

    monkeypatch.setattr(small_convs, "install", recording)
    train(config(workdir), pipe=tiny_pipe)
    assert changed, "the tiny U-Net has frozen 3x3 convolutions the trainer should route"
    assert all("forward" not in layer.__dict__ for layer in tiny_pipe.unet.modules())
