"""The method's LoRA arithmetic as functions on tensors: merge, combine, resize, extract.

All sums are formed in fp32 (SVDs in fp64) and cast back only when written into a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from sabun.errors import SabunError
from sabun.lora.file import check_family
from sabun.lora.fit import require_fit
from sabun.lora.svd import SVD, dense_svd, factored_svd
from sabun.lora.targets import LoRATarget
from sabun.lora.weights import LoRA, LoRAWeight


@dataclass
class Weighted:
    """A LoRA with the multiplier it is applied at."""

    lora: LoRA
    multiplier: float = 1.0
    source: str = "LoRA"  # file name, for messages and provenance


@dataclass
class ApproximationReport:
    """Relative Frobenius error of a low-rank step, per layer and overall."""

    per_layer: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    discarded_energy: float = 0.0
    total_energy: float = 0.0

    def add(self, name: str, svd: SVD) -> None:
        self.per_layer[name] = svd.relative_error
        self.ranks[name] = svd.S.numel()
        self.discarded_energy += svd.discarded_energy
        self.total_energy += svd.total_energy

    @property
    def overall(self) -> float:
        """||dW - dW_approx||_F / ||dW||_F over all layers together."""
        return (self.discarded_energy / self.total_energy) ** 0.5 if self.total_energy > 0 else 0.0


# --- merge --------------------------------------------------------------------------------------


@torch.no_grad()
def merge_into_model(targets: dict[str, LoRATarget], loras: Sequence[Weighted]) -> int:
    """Add each LoRA's weight change into the model: W += m * up @ down * alpha / rank, in fp32.

    Every LoRA is checked against the model before any weight is touched, so a LoRA that does not
    fit leaves the model unchanged. Returns the number of layers changed.
    """
    for item in loras:
        require_fit(item.lora, targets, item.source)
        check_multiplier(item.multiplier, item.source, force=True)
    names = list(dict.fromkeys(name for item in loras for name in item.lora.weights))

    def merged(name: str) -> torch.Tensor:
        layer = targets[name].module.weight
        value = layer.float()
        for item in loras:
            if name in item.lora.weights:
                value = value + item.multiplier * item.lora.weights[name].delta().to(layer.device).reshape(layer.shape)
        return value.to(layer.dtype)

    for (
        name
    ) in names:  # every layer checked before any is changed (computing twice costs less than a copy of the model)
        if not bool(torch.isfinite(merged(name)).all()):
            sources = ", ".join(item.source for item in loras if name in item.lora.weights)
            dtype = str(targets[name].module.weight.dtype).removeprefix("torch.")
            raise SabunError(
                f"{sources}: merging gives NaN or infinite values in layer {name} (stored as {dtype}); "
                "the model or the LoRA is corrupt, or the multiplier is too large; nothing was written"
            )
    for name in names:
        targets[name].module.weight.copy_(merged(name))
    return len(names)


MAX_MULTIPLIER = 10.0


def check_multiplier(multiplier: float, source: str, force: bool = False) -> None:
    """A LoRA multiplier must be finite, and beyond +-10 only on purpose (LoRAs are used at ~0.3-1.5)."""
    if not math.isfinite(multiplier):
        raise SabunError(f"{source}: multiplier {multiplier} is not a finite number; give one like 0.8 or 1")
    if abs(multiplier) > MAX_MULTIPLIER and not force:
        raise SabunError(
            f"{source}: multiplier {multiplier:g} is beyond +-{MAX_MULTIPLIER:g} (LoRAs are used at about 0.3-1.5); pass --force if you mean it"
        )


# --- combine ------------------------------------------------------------------------------------


def stacked_factors(loras: Sequence[Weighted], name: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """(A, B, weight_shape) with sum_i m_i dW_i = A @ B for layer `name`; A (out, sum r), B (sum r, in)."""
    ups, downs, shape = [], [], None
    for item in loras:
        weight = item.lora.weights.get(name)
        if weight is None:
            continue
        up2d, down2d = weight.factors()
        if shape is None:
            shape, first = weight.weight_shape, item.source
        elif (
            up2d.shape[0] != ups[0].shape[0] or down2d.shape[1] != downs[0].shape[1]
        ):  # a 1x1 conv and a Linear of one size agree
            raise SabunError(
                f"{item.source}: layer {name} changes a weight of shape {weight.weight_shape}, but in {first} one of shape {shape}; "
                "they are LoRAs of different models and cannot be combined"
            )
        ups.append(up2d * item.multiplier)
        downs.append(down2d)
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0), shape


def layer_names(loras: Sequence[Weighted]) -> list[str]:
    """Every layer any of `loras` changes; refuses LoRAs that share no layer or mix model families."""
    names: dict[str, None] = {}
    for item in loras:
        if names and len(loras) > 1 and not names.keys() & item.lora.weights.keys():
            raise SabunError(
                f"{item.source}: shares no layer with {loras[0].source}; they are LoRAs of different models "
                "(e.g. SD 1.x and SDXL), and combining them gives nothing usable"
            )
        names.update(dict.fromkeys(item.lora.weights))
    check_family(list(names), " + ".join(item.source for item in loras))
    return list(names)


def combine_svd(
    loras: Sequence[Weighted], rank: int | None = None, conv_rank: int | None = None, energy: float | None = None
) -> tuple[LoRA, ApproximationReport]:
    """The weighted sum of weight changes, re-factored by an exact SVD and truncated.

    Args:
        rank: keep this rank per Linear/1x1 layer (None: the full rank of the sum, i.e. exact).
        conv_rank: the same for 3x3 convs (default: `rank`).
        energy: instead of a fixed rank, keep the smallest rank holding this share of sum(S^2).
    Returns the new LoRA (alpha = rank, scale 1) and the per-layer relative errors.
    """
    check_ranks("combine", rank=rank, conv_rank=conv_rank, energy=energy)
    report = ApproximationReport()
    weights = {}
    for name in layer_names(loras):
        A, B, shape = stacked_factors(loras, name)
        is_conv = len(shape) == 4 and shape[2:] != (1, 1)
        keep = (conv_rank or rank) if is_conv else rank
        if energy is not None:
            svd = factored_svd(A, B, energy=energy)
        else:
            svd = factored_svd(A, B, rank=keep or A.shape[1])  # no rank given: exact
        report.add(name, svd)
        up2d, down2d = svd.factors()
        weights[name] = LoRAWeight.from_factors(up2d, down2d, shape)
    return LoRA(weights, combined_metadata(loras, "svd")), report


def check_ranks(
    command: str, rank: int | None = None, conv_rank: int | None = None, energy: float | None = None
) -> None:
    """--rank / --conv-rank at least 1; --energy a share in (0, 1]; not both a rank and an energy."""
    for option, value in (("--rank", rank), ("--conv-rank", conv_rank)):
        if value is not None and value < 1:
            raise SabunError(f"{command}: {option} {value}: a rank must be at least 1")
    if energy is not None:
        if not (math.isfinite(energy) and 0 < energy <= 1):
            raise SabunError(
                f"{command}: --energy {energy}: give the share of the spectrum to keep, in (0, 1], e.g. 0.99"
            )
        if rank is not None or conv_rank is not None:
            raise SabunError(f"{command}: give --rank / --conv-rank or --energy, not both")


def combine_concat(loras: Sequence[Weighted]) -> LoRA:
    """The weighted sum kept exactly by stacking along the rank.

    Each part's scale m_i * alpha_i / r_i is folded into its `up`, and the result gets alpha equal
    to its total rank (scale 1), so the sum of weight changes is exact. Simply concatenating the
    tensors and keeping the first alpha, as some tools do, changes the strength.
    """
    weights = {}
    for name in layer_names(loras):
        A, B, shape = stacked_factors(loras, name)
        weights[name] = LoRAWeight.from_factors(A, B, shape)
    return LoRA(weights, combined_metadata(loras, "concat"))


def combined_metadata(loras: Sequence[Weighted], how: str) -> dict[str, str]:
    parts = [{"source": item.source, "multiplier": item.multiplier} for item in loras]
    meta = {"sabun_combined_from": json.dumps(parts), "sabun_combine_method": how}
    versions = {item.lora.metadata.get("ss_base_model_version") for item in loras} - {None}
    if len(versions) == 1:
        meta["ss_base_model_version"] = versions.pop()
    return meta


# --- resize -------------------------------------------------------------------------------------


def resize_lora(lora: LoRA, rank: int | None = None, energy: float | None = None) -> tuple[LoRA, ApproximationReport]:
    """Lower each layer's rank by an exact SVD of its weight change (the best rank-k approximation).

    Keeps each layer's alpha / rank ratio, so training settings stay meaningful if it is trained on.
    """
    if (rank is None) == (energy is None):
        raise SabunError("resize: give exactly one of --rank or --energy")
    check_ranks("resize", rank=rank, energy=energy)
    if rank is not None:
        largest = max(w.rank for w in lora.weights.values())
        if rank >= largest:
            raise SabunError(
                f"resize: --rank {rank} is not below the LoRA's own rank (at most {largest}), so nothing would change; "
                f"give a rank below {largest}, or --energy"
            )
    report = ApproximationReport()
    weights = {}
    for name, weight in lora.weights.items():
        up2d, down2d = weight.factors()
        svd = factored_svd(up2d, down2d, rank=rank, energy=energy)
        report.add(name, svd)
        new_up, new_down = svd.factors()
        new_rank = new_down.shape[0]
        weights[name] = LoRAWeight.from_factors(new_up, new_down, weight.weight_shape, alpha=new_rank * weight.scale)
    metadata = dict(lora.metadata)
    metadata["sabun_resized"] = f"rank={rank}" if rank is not None else f"energy={energy}"
    return LoRA(weights, metadata), report


# --- extract ------------------------------------------------------------------------------------


@dataclass
class ExtractionReport(ApproximationReport):
    """What differed between the two models, per component, and what the LoRA could hold."""

    component_norms: dict[str, float] = field(default_factory=dict)  # ||dW||_F over target layers
    identical_layers: int = 0  # target layers with no difference (no LoRA written)
    skipped_conv_layers: int = 0  # 3x3 convs that differ but were left out (no conv rank)
    skipped_conv_norm: float = 0.0
    left_out_components: list[str] = field(default_factory=list)  # by request (--unet-only)


@torch.no_grad()
def extract_lora(
    original: dict[str, LoRATarget],
    tuned: dict[str, LoRATarget],
    rank: int,
    conv_rank: int | None = None,
    unet_only: bool = False,
    method: str = "full",
    progress: Callable[[Iterable], Iterable] = iter,
) -> tuple[LoRA, ExtractionReport]:
    """A LoRA approximating (tuned - original) on every LoRA target, by per-layer SVD.

    Every component's difference is measured and reported; text-encoder layers are included
    unless `unet_only`, however small their difference (tools that drop them below a threshold
    silently lose what was learned there). `progress` wraps the loop over layers (e.g. tqdm).
    """
    if set(original) != set(tuned):
        missing = sorted(set(original) ^ set(tuned))[:1]
        raise SabunError(
            f"the two models have different layers (e.g. {missing[0]}); extract needs two models of one architecture"
        )
    report = ExtractionReport()
    energy: dict[str, float] = {}
    weights = {}
    for name, target in progress(original.items()):
        w0, w1 = target.module.weight, tuned[name].module.weight
        if w0.shape != w1.shape:
            raise SabunError(
                f"layer {name} has shape {tuple(w0.shape)} in the original and {tuple(w1.shape)} in the tuned model; extract needs one architecture"
            )
        dW = w1.float() - w0.float()
        sq = float((dW.double() ** 2).sum())
        energy[target.component] = energy.get(target.component, 0.0) + sq
        if sq == 0:
            report.identical_layers += 1
            continue
        if unet_only and target.component != "unet":
            continue
        if target.conv3x3 and not conv_rank:
            report.skipped_conv_layers += 1
            report.skipped_conv_norm = (report.skipped_conv_norm**2 + sq) ** 0.5
            continue
        keep = conv_rank if target.conv3x3 else rank
        svd = dense_svd(dW.reshape(dW.shape[0], -1), rank=keep, method=method)
        report.add(name, svd)
        up2d, down2d = svd.factors()
        weights[name] = LoRAWeight.from_factors(up2d, down2d, tuple(dW.shape))
    report.component_norms = {c: e**0.5 for c, e in energy.items()}
    if unet_only:
        report.left_out_components = [c for c in energy if c != "unet"]
    if not weights:
        raise SabunError("the two models are identical on every LoRA layer; there is nothing to extract")
    return LoRA(weights, {"sabun_extracted": f"rank={rank}, conv_rank={conv_rank}, method={method}"}), report
