"""The library functions behind `sabun merge` and `sabun lora ...`: load, compute, write, report."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from sabun.errors import SabunError
from sabun.io import check_writable
from sabun.lora.file import load_lora, save_lora
from sabun.lora.fit import FitReport, check_fit
from sabun.lora.info import BlockSummary, summarize
from sabun.lora.ops import (
    ApproximationReport,
    ExtractionReport,
    Weighted,
    check_multiplier,
    combine_concat,
    combine_svd,
    extract_lora,
    merge_into_model,
    resize_lora,
)
from sabun.lora.targets import pipeline_targets
from sabun.models.families import TITLES, base_model_version, pipeline_family
from sabun.models.load import load_pipeline, save_pipeline


def parse_weighted(spec: str, force: bool = False) -> tuple[str, float]:
    """`path[:multiplier]` -> (path, multiplier); the multiplier defaults to 1.0 and must be finite
    (beyond +-10 only with `force`)."""
    path, sep, tail = spec.rpartition(":")
    if not sep or Path(spec).exists():
        return spec, 1.0
    try:
        multiplier = float(tail)
    except ValueError:
        raise SabunError(
            f"{spec}: the weight {tail!r} after the last ':' is not a number; write PATH or PATH:0.8"
        ) from None
    check_multiplier(multiplier, path, force)
    return path, multiplier


def parse_multipliers(text: str, option: str, force: bool = False) -> list[float]:
    """`0,0.5,1` -> [0.0, 0.5, 1.0]; each finite (beyond +-10 only with `force`)."""
    try:
        values = [float(w) for w in text.split(",")]
    except ValueError:
        raise SabunError(f"{option} {text!r}: give numbers separated by commas, e.g. 0,0.5,1") from None
    for value in values:
        check_multiplier(value, option, force)
    return values


def load_weighted(specs: Sequence[str], allow_pickle: bool = False, force: bool = False) -> list[Weighted]:
    if not specs:
        raise SabunError("no LoRA given; pass one or more PATH[:MULTIPLIER]")
    out = []
    for spec in specs:
        path, multiplier = parse_weighted(spec, force)
        out.append(Weighted(load_lora(path, allow_pickle=allow_pickle), multiplier, os.path.basename(path)))
    return out


def merge(
    model: str,
    loras: Sequence[str],
    out: str | os.PathLike,
    overwrite: bool = False,
    allow_pickle: bool = False,
    prediction_type: str | None = None,
    force: bool = False,
) -> int:
    """Merge LoRAs into a model and save it (a `.safetensors` name: one file in the original layout;
    otherwise a diffusers folder); returns the number of layers changed.

    `prediction_type` overrides the model's (it is written into the output).
    """
    suffix = Path(out).suffix.lower()
    if suffix != ".safetensors" and suffix.startswith((".safe", ".sft", ".st")):
        raise SabunError(
            f"{out}: did you mean .safetensors? A name ending in .safetensors writes one file; any other name, a diffusers folder"
        )
    check_writable(Path(out), overwrite, directory=suffix != ".safetensors")
    weighted = load_weighted(loras, allow_pickle, force)
    pipe = load_pipeline(model, allow_pickle=allow_pickle, prediction_type=prediction_type)
    changed = merge_into_model(pipeline_targets(pipe, conv=True), weighted)
    save_pipeline(pipe, out, overwrite=overwrite)
    return changed


def combine(
    loras: Sequence[str],
    out: str | os.PathLike,
    rank: int | None = None,
    conv_rank: int | None = None,
    energy: float | None = None,
    concat: bool = False,
    overwrite: bool = False,
    allow_pickle: bool = False,
    force: bool = False,
) -> ApproximationReport | None:
    """Write the weighted sum of LoRAs; returns the SVD error report (None for --concat, which is exact)."""
    if concat and (rank or conv_rank or energy):
        raise SabunError("combine: --concat keeps every rank exactly; do not give --rank/--conv-rank/--energy with it")
    check_writable(Path(out), overwrite, directory=False)
    weighted = load_weighted(loras, allow_pickle, force)
    if concat:
        lora, report = combine_concat(weighted), None
    else:
        lora, report = combine_svd(weighted, rank=rank, conv_rank=conv_rank, energy=energy)
    save_lora(lora, out, overwrite=overwrite)
    return report


def resize(
    lora_path: str,
    out: str | os.PathLike,
    rank: int | None = None,
    energy: float | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> ApproximationReport:
    check_writable(Path(out), overwrite, directory=False)
    lora, report = resize_lora(load_lora(lora_path, allow_pickle), rank=rank, energy=energy)
    save_lora(lora, out, overwrite=overwrite)
    return report


def extract(
    original: str,
    tuned: str,
    out: str | os.PathLike,
    rank: int,
    conv_rank: int | None = None,
    unet_only: bool = False,
    method: str = "full",
    overwrite: bool = False,
    allow_pickle: bool = False,
    prediction_type: str | None = None,
) -> ExtractionReport:
    """Extract a LoRA from the difference tuned - original and write it.

    The LoRA's `ss_base_model_version` names the original's family and prediction type
    (`prediction_type` overrides the detected one) as sd-scripts does.
    """
    check_writable(Path(out), overwrite, directory=False)
    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise SabunError("extract: --rank and --conv-rank must be >= 1")
    if method not in ("full", "randomized"):
        raise SabunError(f"extract: --method {method!r}: choose full (exact) or randomized (faster on large layers)")
    m0 = load_pipeline(original, allow_pickle=allow_pickle, prediction_type=prediction_type)
    m1 = load_pipeline(tuned, allow_pickle=allow_pickle, prediction_type=prediction_type)
    family0, family1 = pipeline_family(m0), pipeline_family(m1)
    if family0 != family1:
        raise SabunError(
            f"{tuned}: is {TITLES[family1]} but {original} is {TITLES[family0]}; extract needs two models of one architecture"
        )
    targets0, targets1 = pipeline_targets(m0, conv=True), pipeline_targets(m1, conv=True)
    if set(targets0) != set(targets1):
        example = sorted(set(targets0) ^ set(targets1))[0]
        raise SabunError(
            f"{tuned}: has other layers than {original} (e.g. {example}); extract needs two models of one architecture"
        )
    bar = lambda items: tqdm(items, total=len(targets0), desc="extract", unit="layer", leave=False)  # noqa: E731
    lora, report = extract_lora(targets0, targets1, rank, conv_rank, unet_only, method, progress=bar)
    lora.metadata["sabun_extracted_from"] = json.dumps({"original": str(original), "tuned": str(tuned)})
    lora.metadata["ss_base_model_version"] = base_model_version(family0, m0.scheduler.config.prediction_type)
    lora.metadata["ss_sd_model_name"] = Path(original).name
    save_lora(lora, out, overwrite=overwrite, family=family0)
    return report


def info(
    lora_path: str, model: str | None = None, allow_pickle: bool = False
) -> tuple[list[BlockSummary], dict[str, str], FitReport | None]:
    """Per-block summary and metadata of a LoRA, and how it fits `model` if given."""
    lora = load_lora(lora_path, allow_pickle)
    fit = None
    if model is not None:
        fit = check_fit(lora, pipeline_targets(load_pipeline(model, allow_pickle=allow_pickle), conv=True))
    return summarize(lora), lora.metadata, fit


def extract_notes(report) -> list[str]:
    """What `sabun lora extract` says beside its error table: each model part's difference norm, the
    layers with nothing to extract, the 3x3 convs left out (the CLI and `sabun ui` print the same lines)."""
    lines = []
    for component, norm in report.component_norms.items():
        left = " (left out: --unet-only)" if component in report.left_out_components else ""
        lines.append(f"difference norm, {component}: {norm:.4e}{left}")
    if report.identical_layers:
        lines.append(f"{report.identical_layers} layers identical in both models (nothing to extract there)")
    if report.skipped_conv_layers:
        lines.append(
            f"{report.skipped_conv_layers} 3x3 conv layers differ (norm {report.skipped_conv_norm:.3e}) but were left out; pass --conv-rank to include them"
        )
    return lines
