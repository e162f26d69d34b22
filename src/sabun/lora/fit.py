"""Does a LoRA fit a model? Missing layers, extra layers and shape mismatches, named."""

from __future__ import annotations

from dataclasses import dataclass, field

from sabun.errors import SabunError
from sabun.lora.targets import LoRATarget
from sabun.lora.weights import LoRA


@dataclass
class FitReport:
    """How a LoRA's keys match a model's LoRA targets."""

    matched: list[str] = field(default_factory=list)  # keys that fit
    not_in_model: list[str] = field(default_factory=list)  # keys naming no target layer
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )  # (key, model, LoRA)
    targets_without_lora: int = 0  # target layers the LoRA leaves alone (normal: LoRAs need not cover all)

    @property
    def ok(self) -> bool:
        return not self.not_in_model and not self.shape_mismatch


def weight_fits(model_shape: tuple[int, ...], lora_shape: tuple[int, ...]) -> bool:
    """Equal shapes, or a Linear (out, in) against a 1x1 conv (out, in, 1, 1): SD1 and SD2 differ there."""
    if model_shape == lora_shape:
        return True
    squeeze = lambda s: tuple(d for i, d in enumerate(s) if not (i >= 2 and d == 1))  # noqa: E731
    return squeeze(model_shape) == squeeze(lora_shape)


def check_fit(lora: LoRA, targets: dict[str, LoRATarget]) -> FitReport:
    report = FitReport()
    for name, weight in lora.weights.items():
        target = targets.get(name)
        if target is None:
            report.not_in_model.append(name)
            continue
        model_shape = tuple(target.module.weight.shape)
        if not weight_fits(model_shape, weight.weight_shape):
            report.shape_mismatch.append((name, model_shape, weight.weight_shape))
        else:
            report.matched.append(name)
    report.targets_without_lora = len(set(targets) - set(lora.weights))
    return report


def guess_family(names: list[str], metadata: dict[str, str]) -> str | None:
    """The model family a LoRA was made for, from its metadata or its key names."""
    if metadata.get("ss_base_model_version"):
        return metadata["ss_base_model_version"]
    if any(n.startswith(("lora_te1_", "lora_te2_")) or "_input_blocks_" in n or "_output_blocks_" in n for n in names):
        return "sdxl"
    return None


def require_fit(lora: LoRA, targets: dict[str, LoRATarget], source: str) -> FitReport:
    """`check_fit`, raising a one-line SabunError naming `source` when anything does not fit."""
    report = check_fit(lora, targets)
    if report.ok:
        return report
    total = len(lora.weights)
    family = guess_family(report.not_in_model + [n for n, _, _ in report.shape_mismatch], lora.metadata)
    made_for = f"; it looks made for {family}" if family else ""
    if report.shape_mismatch:
        name, model_shape, lora_shape = report.shape_mismatch[0]
        example = f"e.g. {name}: model {model_shape}, LoRA {lora_shape}"
    else:
        example = f"e.g. {report.not_in_model[0]} names no layer of the model"
    bad = len(report.not_in_model) + len(report.shape_mismatch)
    raise SabunError(
        f"{source}: {bad} of {total} LoRA layers do not fit the model ({example}){made_for}; "
        "use a LoRA made for this model's family (see `sabun lora info LORA --model MODEL`)"
    )
