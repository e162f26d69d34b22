"""Frozen 3x3 convolutions on small images as one matrix product (im2col), on the CPU.

oneDNN's direct convolution, which torch uses on the CPU, slows down badly when the image is a few
pixels across and the channels are many: in an SD 1.5 step at 256 px (batch 4) the U-Net's
1280-channel convolutions at 4x4 run at 31-41 GFLOP/s forward and backward, against 130-160 at
32x32. Unfolding the 3x3 neighbourhoods into a (B*H*W, C*9) matrix and multiplying it by the
weight, as one GEMM of MKL's, runs the same layers at 74-75 GFLOP/s (`python benchmarks/step_floor.py`
lists each layer's rate; docs/benchmarks.md has the measurements). The weights are frozen, so the
backward is one more GEMM and a fold. The sum runs in another order than the direct convolution's,
so results agree to float rounding (about 1e-6 relative), not bit for bit.

In bf16 (the trainer's `mixed_precision = "bf16"`: bf16 weights, autocast) the gap is wider on CPUs
with AMX, whose tile products oneDNN's GEMM uses (`python benchmarks/bench_convs.py --precision
bf16`): at 4x4 the direct convolution runs the 2560->1280 layers at 115 GFLOP/s forward and
backward, the GEMM at 563; at 8x8 with 1920 or 2560 input channels the direct kernel reaches
416-418, the GEMM 666-670 (and from 16x16 on the direct kernel is faster again: 1,453 against the
GEMM's 519 at 1280 channels). In bf16 the input gradient's fold adds the 9 overlapping
contributions in bf16, so it agrees with the direct convolution's to bf16 rounding (about 1e-2
relative), like any bf16 result.

Only layers that are frozen, 3x3, stride 1, padding 1, and only on inputs the rule below picks are
changed; every other call is the layer's own forward. `uninstall` restores the modules exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Where the GEMM beat oneDNN's direct convolution (forward + backward to the input, batch 4,
# direct -> GEMM GFLOP/s): at 4x4 always (fp32, AVX2: 2560->1280 41 -> 74, 1280->1280 31 -> 75;
# bf16, AMX: 115 -> 563, 225 -> 542). At 8x8 only with more input channels than output, by how many
# as measured: fp32 on AVX2 2560->1280 74 -> 94-99 but 1280->1280 129 -> 105, slower (1920->1280
# unmeasured there, so fp32 keeps to twice the channels); bf16 on AMX 2560->1280 416 -> 666 and
# 1920->1280 418 -> 670, but 1280->1280 732 -> 710.
SMALL_AREA, MEDIUM_AREA = 16, 64


def picks_gemm(x: torch.Tensor, layer: nn.Conv2d) -> bool:
    area = x.shape[-2] * x.shape[-1]
    if area <= SMALL_AREA:
        return True
    wide = (
        layer.in_channels > layer.out_channels
        if layer.weight.dtype == torch.bfloat16
        else layer.in_channels >= 2 * layer.out_channels
    )
    return area <= MEDIUM_AREA and wide


def conv3x3_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1)` for a 3x3 kernel, as unfold + one matrix product."""
    batch, channels, height, width = x.shape
    columns = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(batch * height * width, channels * 9)
    flat = weight.reshape(weight.shape[0], -1)
    out = torch.addmm(bias, columns, flat.t()) if bias is not None else columns @ flat.t()
    return out.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()


def eligible(layer: nn.Module) -> bool:
    return (
        type(layer) is nn.Conv2d
        and layer.kernel_size == (3, 3)
        and layer.stride == (1, 1)
        and layer.padding == (1, 1)
        and layer.dilation == (1, 1)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not layer.weight.requires_grad
    )


def input_dtype(x: torch.Tensor, layer: nn.Conv2d) -> torch.dtype | None:
    """The dtype the convolution runs in, as `F.conv2d` would pick it, where the GEMM handles it.

    Without autocast: fp32 or bf16 weights and input alike. Under CPU autocast to bf16 (which casts
    a convolution's inputs to bf16): bf16 weights, the input in fp32 or bf16. None for anything
    else, which goes to the layer's own forward."""
    weight = layer.weight.dtype
    if torch.is_autocast_enabled("cpu"):
        autocast_bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16
        bf16 = weight == torch.bfloat16 and autocast_bf16 and x.dtype in (torch.float32, torch.bfloat16)
        return torch.bfloat16 if bf16 else None
    return weight if weight == x.dtype and weight in (torch.float32, torch.bfloat16) else None


def forward(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4 and x.device.type == "cpu" and picks_gemm(x, layer):
        dtype = input_dtype(x, layer)
        if dtype is not None:
            return conv3x3_as_gemm(x.to(dtype), layer.weight, layer.bias)
    return nn.Conv2d.forward(layer, x)


def install(model: nn.Module) -> list[nn.Conv2d]:
    """Route `model`'s frozen 3x3 convolutions through `forward` above; returns the layers changed."""
    changed = []
    for layer in model.modules():
        if eligible(layer) and "forward" not in layer.__dict__:
            layer.forward = forward.__get__(layer)  # an instance attribute: the class is untouched
            changed.append(layer)
    return changed


def uninstall(layers: list[nn.Conv2d]) -> None:
    for layer in layers:
        layer.__dict__.pop("forward", None)
