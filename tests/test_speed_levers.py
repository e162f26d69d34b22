"""The trainer's speed levers change no result beyond float rounding.

`training.winograd_convs` and `training.small_conv_gemm`: frozen 3x3 convolutions by Winograd's
algorithm and small ones as one GEMM equal the direct convolution, forward and backward, training
through them gives the same LoRA up to rounding, and the model is handed back untouched. `training.compile`: the U-Net through
torch.compile gives the eager LoRA up to rounding, and a compile failure falls back to eager
without losing the run. The LoRA scale (which compiled graphs read as a constant) stays in step
with the `alpha` buffer."""

from __future__ import annotations

import pytest
import torch
from test_train import config, one_thread, workdir  # noqa: F401  (the fixtures; one_thread is autouse)
from torch import nn

from sabun.lora.file import load_lora
from sabun.lora.network import LoRAModule
from sabun.lora.weights import LoRAWeight
from sabun.train import small_convs, train, winograd
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


def test_in_bf16_the_gemm_conv_matches_the_direct_bf16_conv_and_takes_autocast_s_fp32_inputs(monkeypatch):
    calls = []
    gemm = small_convs.conv3x3_as_gemm
    monkeypatch.setattr(small_convs, "conv3x3_as_gemm", lambda x, *args: calls.append(x.dtype) or gemm(x, *args))
    generator = torch.Generator().manual_seed(3)
    layer = nn.Conv2d(32, 16, 3, padding=1).requires_grad_(False).to(torch.bfloat16)
    changed = small_convs.install(layer)
    assert changed == [layer]
    x = torch.randn(2, 32, 4, 4, generator=generator)
    direct = nn.Conv2d.forward(layer, x.bfloat16())
    routed = layer(x.bfloat16())
    assert routed.dtype == torch.bfloat16 and calls == [torch.bfloat16]
    torch.testing.assert_close(routed.float(), direct.float(), rtol=2e-2, atol=2e-2)
    grad = torch.randn(2, 16, 4, 4, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 input, cast as the convolution would be
        x_routed, x_direct = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = layer(x_routed)
        reference = nn.Conv2d.forward(layer, x_direct)
    assert out.dtype == reference.dtype == torch.bfloat16 and calls == [torch.bfloat16] * 2
    torch.testing.assert_close(out.float(), reference.float(), rtol=2e-2, atol=2e-2)
    out.backward(grad.bfloat16())
    reference.backward(grad.bfloat16())
    assert x_routed.grad.dtype == x_direct.grad.dtype == torch.float32  # autocast's cast, undone
    torch.testing.assert_close(x_routed.grad, x_direct.grad, rtol=3e-2, atol=3e-2)
    assert small_convs.picks_gemm(torch.randn(1, 32, 8, 8), layer)  # 8x8, more channels in than out: bf16 takes it
    with pytest.raises(RuntimeError):  # no autocast: an fp32 input to bf16 weights fails as it would unrouted
        layer(x)
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 weights under autocast: the layer's own
        layer(x)
    assert len(calls) == 2
    layer.double()  # float64: the layer's own
    assert torch.equal(layer(x.double()), nn.Conv2d.forward(layer, x.double())) and len(calls) == 2
    small_convs.uninstall(changed)


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
    narrow = nn.Conv2d(12, 8, 3, padding=1).requires_grad_(False)
    assert not small_convs.picks_gemm(torch.randn(1, 12, 8, 8), narrow)  # fp32, 8x8, 1.5x the channels: direct
    assert small_convs.picks_gemm(torch.randn(1, 12, 8, 8), narrow.bfloat16())  # bf16: the GEMM
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


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("height, width", [(1, 1), (4, 4), (5, 7), (8, 8), (16, 12), (9, 16)])
def test_a_winograd_3x3_conv_equals_the_direct_conv_forward_and_backward(m, height, width):
    generator = torch.Generator().manual_seed(height * 100 + width * 10 + m)
    layer = nn.Conv2d(24, 40, 3, padding=1).requires_grad_(False)
    x = torch.randn(3, 24, height, width, generator=generator, requires_grad=True)
    grad = torch.randn(3, 40, height, width, generator=generator)
    direct = layer(x)
    (direct_grad,) = torch.autograd.grad(direct, x, grad)

    u = winograd.transform_weight(layer.weight, m)
    assert u.shape == ((m + 2) ** 2, 40, 24)
    y = winograd.convolve(x.detach(), u, m) + layer.bias.view(1, -1, 1, 1)
    assert y.shape == direct.shape and y.is_contiguous()
    torch.testing.assert_close(y, direct, rtol=1e-4, atol=1e-5)
    u_grad = winograd.transform_weight(layer.weight, m, for_input_grad=True)
    torch.testing.assert_close(winograd.convolve(grad, u_grad, m), direct_grad, rtol=1e-4, atol=1e-5)

    through = winograd.conv3x3(x, layer.weight, layer.bias)  # the autograd path, tile size by area
    (through_grad,) = torch.autograd.grad(through, x, grad)
    torch.testing.assert_close(through, direct, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(through_grad, direct_grad, rtol=1e-4, atol=1e-5)


def test_the_winograd_tile_follows_the_image_area():
    assert winograd.tile_size(8, 8) == 2 and winograd.tile_size(4, 4) == 2
    assert winograd.tile_size(16, 16) == 4 and winograd.tile_size(8, 9) == 4
    with pytest.raises(ValueError, match="must be 2 or 4"):
        winograd.transform_weight(torch.zeros(1, 1, 3, 3), 3)


def test_only_frozen_3x3_convs_with_enough_channels_go_winograd_and_uninstall_restores(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_PIXELS", 64)
    model = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1),  # frozen below: changed
        nn.Conv2d(64, 64, 3, padding=1, stride=2),  # strided: left alone
        nn.Conv2d(64, 16, 3, padding=1),  # 16 output channels: left alone
        nn.Conv2d(16, 64, 1),  # 1x1: left alone
        nn.Conv2d(64, 64, 3, padding=1),  # trainable: left alone
    )
    model[:4].requires_grad_(False)
    x = torch.randn(1, 64, 8, 8)
    before = model(x)
    fallen_back = []
    changed = winograd.install(
        model, fallback=lambda layer, x: fallen_back.append(x.shape) or layer._conv_forward(x, layer.weight, layer.bias)
    )
    assert changed == [model[0]]
    assert not torch.equal(model[0](x), model[0]._conv_forward(x, model[0].weight, model[0].bias))  # Winograd's sums
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    assert fallen_back == []
    model[0](x[:, :, :4, :4])  # 16 pixels: below MIN_PIXELS, to the fallback
    assert fallen_back == [(1, 64, 4, 4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: the layer's own convolution
        assert torch.equal(model[0](x), nn.Conv2d.forward(model[0], x))
    layer = model[0].double()  # float64: the layer's own convolution
    assert torch.equal(layer(x.double()), nn.Conv2d.forward(layer, x.double()))
    model.float()
    winograd.uninstall(changed)
    assert all("forward" not in layer.__dict__ for layer in model)
    assert torch.equal(model(x), before)


def test_training_through_winograd_convs_gives_the_same_lora_and_hands_back_the_unet(
    workdir,  # noqa: F811
    tiny_pipe,
    monkeypatch,
):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)  # the tiny U-Net's convolutions are narrow
    monkeypatch.setattr(winograd, "MIN_PIXELS", 1)  # and its images small
    changed = []
    original = winograd.install

    def recording(model, **options):
        changed.extend(original(model, **options))
        return changed

    monkeypatch.setattr(winograd, "install", recording)
    fast = load_lora(
        train(config(workdir, "output.name=fast", "training.winograd_convs=true"), pipe=tiny_pipe).lora_path
    ).weights
    assert changed, "the tiny U-Net has frozen 3x3 convolutions the trainer should route"
    assert all("forward" not in layer.__dict__ for layer in tiny_pipe.unet.modules())
    overrides = ("output.name=plain", "training.winograd_convs=false", "training.small_conv_gemm=false")
    plain = load_lora(train(config(workdir, *overrides), pipe=tiny_pipe).lora_path).weights
    assert fast.keys() == plain.keys()
    fast_deltas = torch.cat([fast[key].delta().flatten() for key in plain])
    plain_deltas = torch.cat([plain[key].delta().flatten() for key in plain])
    assert plain_deltas.norm() > 0  # training moved the LoRA off its zero start
    # Adam divides by the gradient's size, so a rounding difference in a near-zero gradient moves a
    # weight by a step's full size: compare the whole delta, not element by element
    assert (fast_deltas - plain_deltas).norm() / plain_deltas.norm() < 1e-3
