"""LoRA weights as plain tensors: one `LoRAWeight` per layer, a `LoRA` per file.

The weight change a LoRA makes to a layer is dW = up @ down * (alpha / rank). For a conv layer,
`down` is a conv with the layer's own kernel and `up` a 1x1 conv, and their composition is exactly
a conv whose kernel is up @ down (flattened over in-channels x kernel), so the same formula holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class LoRAWeight:
    """The LoRA of one layer."""

    down: torch.Tensor  # (r, in) for Linear, (r, in, kh, kw) for Conv2d
    up: torch.Tensor  # (out, r) for Linear, (out, r, 1, 1) for Conv2d
    alpha: float  # scale = alpha / rank

    def __post_init__(self) -> None:
        if self.down.shape[0] != self.up.shape[1]:
            raise ValueError(f"rank mismatch: down {tuple(self.down.shape)} vs up {tuple(self.up.shape)}")

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def conv3x3(self) -> bool:
        """True for a conv with a kernel larger than 1x1 (takes the conv rank)."""
        return self.down.dim() == 4 and tuple(self.down.shape[2:]) != (1, 1)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the layer weight this LoRA changes: (out, in) or (out, in, kh, kw)."""
        return (self.up.shape[0], *self.down.shape[1:])

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(up2d, down2d) in fp32 with the scale folded into `up`: dW2d = up2d @ down2d."""
        up2d = self.up.reshape(self.up.shape[0], self.rank).float() * self.scale
        down2d = self.down.reshape(self.rank, -1).float()  # (r, in * kh * kw)
        return up2d, down2d

    def delta(self) -> torch.Tensor:
        """The weight change dW in fp32, shaped like the layer's weight."""
        up2d, down2d = self.factors()
        return (up2d @ down2d).reshape(self.weight_shape)

    @classmethod
    def from_factors(
        cls, up2d: torch.Tensor, down2d: torch.Tensor, weight_shape: tuple[int, ...], alpha: float | None = None
    ) -> LoRAWeight:
        """Build a LoRA whose dW is `up2d @ down2d`, with the given alpha (default: rank, scale 1)."""
        rank = down2d.shape[0]
        alpha = float(rank) if alpha is None else alpha
        up2d = up2d / (alpha / rank)  # so that up @ down * alpha / rank == up2d @ down2d
        if len(weight_shape) == 4:
            down = down2d.reshape(rank, *weight_shape[1:])
            up = up2d.reshape(weight_shape[0], rank, 1, 1)
        else:
            down, up = down2d, up2d
        return cls(down=down.contiguous(), up=up.contiguous(), alpha=alpha)


@dataclass
class LoRA:
    """A LoRA file's content: per-layer weights by kohya name, and string metadata."""

    weights: dict[str, LoRAWeight]
    metadata: dict[str, str] = field(default_factory=dict)

    def ranks(self) -> set[int]:
        return {w.rank for w in self.weights.values()}

    def deltas(self) -> dict[str, torch.Tensor]:
        return {name: w.delta() for name, w in self.weights.items()}
