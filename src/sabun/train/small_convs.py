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
with AMX, whose tile products oneDNN's GEMM uses: at 4x4 the direct convolution runs the
2560->1280 layers at 132 GFLOP/s forward and backward, the GEMM at 584; at 8x8 with 1920 or 2560
input channels 440-470 against 735-740 (and the GEMM is slower again from 16x16 on: 557 against
1,578 at 1280 channels).

Only layers that are frozen, 3x3, stride 1, padding 1, and only on inputs the rule below picks are
changed; every other call is the layer's own forward. `uninstall` restores the modules exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Where the GEMM beat oneDNN's direct convolution (forward + backward to the input, batch 4): at 4x4
# always (fp32, AVX2: 2560->1280 41 -> 74 GFLOP/s, 1280->1280 31 -> 75; bf16, AMX: 132 -> 584,
# 292 -> 618), at 8x8 only when the input has more channels than the output (fp32, AVX2:
# 2560->1280 74 -> 94-99, but 1280->1280 129 -> 105, slower; bf16, AMX: 2560->1280 439 -> 735,
# 1920->1280 467 -> 740, 1280->1280 868 -> 815, slower).
SMALL_AREA, MEDIUM_AREA = 16, 64


def picks_gemm(x: torch.Tensor, layer: nn.Conv2d) -> bool:
    area = x.shape[-2] * x.shape[-1]
    return area <= SMALL_AREA or (area <= MEDIUM_AREA and layer.in_channels > layer.out_channels)


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
