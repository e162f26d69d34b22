"""Frozen 3x3 convolutions by Winograd's minimal filtering, on the CPU.

A 3x3 convolution computes each output pixel with 9 multiplies per channel pair. Winograd's
F(m x m, 3 x 3) computes an m x m block of outputs from an (m+2) x (m+2) input tile with (m+2)^2
multiplies instead of 9 m^2: 2.25x fewer for m = 2 and 4x fewer for m = 4 (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", 2015). The tiles and the weight are each multiplied
by small fixed matrices (the transforms); the rest is (m+2)^2 independent matrix products of
(C_out x C_in) by (C_in x tiles), which MKL runs near the CPU's peak.

oneDNN, which torch uses for convolutions on the CPU, has no Winograd path on CPUs without AVX-512.
`python benchmarks/bench_convs.py` times both on every 3x3 layer shape of an SD 1.5 step at 256 px,
batch 4 (docs/benchmarks.md). On a 2-core Zen 3, with the weight transformed once beforehand, it ran
1.1-3.8x faster than the direct kernel; but each call must transform the weight twice (forward,
backward), which is memory-bound: with that, Winograd won only at 32x32 (0.54-0.63x the direct time
for 640 and more input channels, 1.01x at 320) and lost at 8x8 and below (1.2-1.8x). So only calls
with many output pixels take it (`MIN_PIXELS`); the rest go on to a fallback.

The weights are frozen (a LoRA on a layer keeps the base weight frozen), so the backward needs only
the gradient to the input: the same convolution with the kernel flipped and its channels swapped,
done the same way. Nothing but the weight is kept for the backward, and the weight's transform is
recomputed on every call rather than cached: a cache would hold 4x (m = 2: 1.8x) every frozen
convolution's weight twice over, gigabytes for SDXL.

The transforms add rounding: results agree with the direct convolution to about 1e-5 of the
output's largest value for m = 4 and 5e-6 for m = 2 (fp32), not bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# m = 2 at 8x8 and below (at 4x4 a 4x4 block would need a 6x6 tile for 16 outputs), m = 4 above.
SMALL_AREA = 64
# Below this many channels on either side the matrix products are too thin to beat oneDNN.
MIN_CHANNELS = 64
# The weight's transforms (one for the forward, one for the backward) cost about as much per call
# as the (m+2)^2 products on few pixels (bench_convs.py: 1280->1280 at 8x8, batch 4, 322 ms against
# 259 direct; 640->320 at 32x32 125 against 232). Only calls with at least this many output pixels
# (batch x height x width) go Winograd; the rest go to the fallback.
MIN_PIXELS = 4096


@functools.cache
def _matrices(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input transform, weight transform, flipped-weight transform, output transform), each as the
    Kronecker product of the 1-D matrix with itself, so one matrix product transforms a 2-D tile."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ]
        g = [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"Winograd tile size m must be 2 or 4, not {m}")
    bt, g, at = (torch.tensor(a, dtype=torch.float64) for a in (bt, g, at))
    g_flipped = g.flip(1)  # G applied to a kernel flipped left-right is G with its columns reversed
    kron = torch.kron
    return tuple(a.float() for a in (kron(bt, bt), kron(g, g), kron(g_flipped, g_flipped), kron(at, at)))


def tile_size(height: int, width: int) -> int:
    return 2 if height * width <= SMALL_AREA else 4


def transform_weight(weight: torch.Tensor, m: int, *, for_input_grad: bool = False) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> ((m+2)^2, C_out, C_in); with `for_input_grad`, the kernel of the
    convolution that gives the input's gradient (flipped, channels swapped): ((m+2)^2, C_in, C_out)."""
    _, kg, kg_flipped, _ = _matrices(m)
    out_channels, in_channels = weight.shape[:2]
    if for_input_grad:
        flat = weight.transpose(0, 1).reshape(in_channels * out_channels, 9)
        return (kg_flipped @ flat.t()).view(-1, in_channels, out_channels)
    # ((m+2)^2, C_out*C_in), contiguous: each of the matrix products below reads one plane of it
    return (kg @ weight.reshape(out_channels * in_channels, 9).t()).view(-1, out_channels, in_channels)


def convolve(x: torch.Tensor, u: torch.Tensor, m: int) -> torch.Tensor:
    """A 3x3, stride 1, padding 1 convolution of `x` (N, C_in, H, W) with a transformed weight `u`."""
    kb, _, _, ka = _matrices(m)
    batch, channels, height, width = x.shape
    tile = m + 2
    rows, cols = -(-height // m), -(-width // m)
    # Pad by the convolution's 1 pixel, and on the bottom/right up to whole blocks (cropped below).
    padded = F.pad(x, (1, 1 + cols * m - width, 1, 1 + rows * m - height))
    tiles = padded.unfold(2, tile, m).unfold(3, tile, m)  # (N, C, rows, cols, tile, tile), a view
    tiles = tiles.permute(4, 5, 1, 0, 2, 3).reshape(tile * tile, -1)
    v = (kb @ tiles).view(tile * tile, channels, batch * rows * cols)
    products = torch.bmm(u, v)  # ((m+2)^2, C_out, N*rows*cols)
    out_channels = u.shape[1]
    y = (ka @ products.view(tile * tile, -1)).view(m, m, out_channels, batch, rows, cols)
    y = y.permute(3, 2, 4, 0, 5, 1).reshape(batch, out_channels, rows * m, cols * m)
    if rows * m != height or cols * m != width:
        y = y[:, :, :height, :width]
    return y.contiguous()


class _FrozenConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        m = tile_size(*x.shape[-2:])
        ctx.save_for_backward(weight)
        ctx.m = m
        return convolve(x, transform_weight(weight, m), m)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (weight,) = ctx.saved_tensors
        u = transform_weight(weight, ctx.m, for_input_grad=True)
        return convolve(grad_out.contiguous(), u, ctx.m), None


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1)` for a frozen 3x3 kernel, by Winograd."""
    y = _FrozenConv3x3.apply(x, weight.detach())
    return y if bias is None else y + bias.detach().view(1, -1, 1, 1)


def eligible(layer: nn.Module) -> bool:
    return (
        type(layer) is nn.Conv2d
        and layer.kernel_size == (3, 3)
        and layer.stride == (1, 1)
        and layer.padding == (1, 1)
        and layer.dilation == (1, 1)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and min(layer.in_channels, layer.out_channels) >= MIN_CHANNELS
        and not layer.weight.requires_grad
        and (layer.bias is None or not layer.bias.requires_grad)
    )


def forward(layer: nn.Conv2d, x: torch.Tensor, fallback: Callable = nn.Conv2d.forward) -> torch.Tensor:
    if (
        x.dim() == 4
        and x.device.type == "cpu"
        and x.dtype == layer.weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and x.shape[0] * x.shape[-2] * x.shape[-1] >= MIN_PIXELS
    ):
        return conv3x3(x, layer.weight, layer.bias)
    return fallback(layer, x)


def install(model: nn.Module, fallback: Callable = nn.Conv2d.forward) -> list[nn.Conv2d]:
    """Route `model`'s frozen 3x3 convolutions through `forward` above; returns the layers changed.
    Calls on too few pixels go to `fallback(layer, x)` (e.g. `small_convs.forward`)."""
    changed = []
    for layer in model.modules():
        if eligible(layer) and "forward" not in layer.__dict__:
            # an instance attribute: the class is untouched
            layer.forward = functools.partial(forward, layer, fallback=fallback)
            changed.append(layer)
    return changed


def uninstall(layers: list[nn.Conv2d]) -> None:
    for layer in layers:
        layer.__dict__.pop("forward", None)
