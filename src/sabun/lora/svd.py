"""Low-rank approximation of weight changes, exact where the change is already low-rank.

A sum of LoRAs is a product of two thin matrices, dW = A @ B with A (out, k) and B (k, in), k the
sum of the ranks. Its SVD needs no (out x in) matrix: with A = Qa Ra and B^T = Qb Rb (thin QR),
dW = Qa (Ra Rb^T) Qb^T, so the SVD of the small (k x k) core gives dW's exactly
(`factored_svd`). A dense difference of two models has no such structure and takes a full or a
randomized SVD (`dense_svd`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SVD:
    """A truncated SVD, dW ~= U diag(S) Vh, with the energy of what was left out."""

    U: torch.Tensor  # (out, k)
    S: torch.Tensor  # (k,)
    Vh: torch.Tensor  # (k, in)
    total_energy: float  # ||dW||_F^2
    discarded_energy: float  # ||dW - U diag(S) Vh||_F^2

    @property
    def relative_error(self) -> float:
        """||dW - dW_k||_F / ||dW||_F (0 when exact)."""
        if self.total_energy <= 0:
            return 0.0
        return (self.discarded_energy / self.total_energy) ** 0.5

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(up2d, down2d) with the singular values split evenly between them."""
        root = self.S.sqrt()
        return self.U * root, root[:, None] * self.Vh


def choose_rank(S: torch.Tensor, rank: int | None = None, energy: float | None = None) -> int:
    """The rank to keep: `rank`, or the smallest rank holding `energy` of sum(S^2); never 0."""
    if rank is not None:
        return max(1, min(rank, S.numel()))
    if energy is None:
        raise ValueError("give rank or energy")
    cumulative = torch.cumsum(S.double() ** 2, 0)
    total = cumulative[-1]
    if total <= 0:
        return 1
    return max(1, int(torch.searchsorted(cumulative, energy * total).item()) + 1)


def truncate(U, S, Vh, total_energy: float, rank: int | None, energy: float | None, full_spectrum: bool = True) -> SVD:
    """Keep the leading singular triplets. With the full spectrum the discarded energy is the sum
    of the tail's S^2 (accurate to fp64); otherwise it is total - kept, clamped at 0."""
    k = min(choose_rank(S, rank, energy), S.numel())
    S64 = S.double()
    if full_spectrum:
        discarded = float((S64[k:] ** 2).sum())
    else:
        discarded = max(total_energy - float((S64[:k] ** 2).sum()), 0.0)
    return SVD(U[:, :k], S[:k], Vh[:k], total_energy, discarded)


def factored_svd(A: torch.Tensor, B: torch.Tensor, rank: int | None = None, energy: float | None = None) -> SVD:
    """Exact truncated SVD of A @ B for thin A (out, k) and B (k, in), computed in fp64."""
    A, B = A.double(), B.double()
    Qa, Ra = torch.linalg.qr(A)  # (out, k), (k, k)
    Qb, Rb = torch.linalg.qr(B.T)  # (in, k), (k, k)
    Uc, S, Vhc = torch.linalg.svd(Ra @ Rb.T)
    U, Vh = Qa @ Uc, Vhc @ Qb.T
    total = float((S**2).sum())
    out = truncate(U, S, Vh, total, rank, energy)
    return SVD(out.U.float(), out.S.float(), out.Vh.float(), total, out.discarded_energy)


def dense_svd(
    dW: torch.Tensor,
    rank: int | None = None,
    energy: float | None = None,
    method: str = "full",
    oversample: int = 8,
    power_iterations: int = 2,
) -> SVD:
    """Truncated SVD of a dense (out, in) matrix.

    Args:
        method: `full` (torch.linalg.svd, exact) or `randomized` (torch.svd_lowrank with
            `oversample` extra columns and `power_iterations`; needs `rank`, much faster on large layers).
    """
    dW = dW.float()
    total = float((dW.double() ** 2).sum())
    if method == "randomized" and rank is not None and rank + oversample < min(dW.shape):
        U, S, V = torch.svd_lowrank(dW, q=rank + oversample, niter=power_iterations)
        return truncate(U, S, V.T, total, rank, None, full_spectrum=False)
    if method not in ("full", "randomized"):
        raise ValueError(f"unknown SVD method {method!r}; use 'full' or 'randomized'")
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    return truncate(U, S, Vh, total, rank, energy)
