"""`sabun evaluate`: the protocol's metrics for LoRAs at several weights, beside the plain model."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from sabun.errors import SabunError
from sabun.evaluate.metrics import Protocol, measure, weight_change_norms
from sabun.evaluate.report import write_report
from sabun.evaluate.toy_evaluator import ToyEvaluator
from sabun.generate import applied
from sabun.io import atomic_output, check_writable
from sabun.toyworld.character import load_character


def evaluate_loras(
    model: str,
    loras: Sequence[tuple[str, float]],
    weights: Sequence[float],
    character: str,
    out: str | os.PathLike,
    seeds: int = 16,
    overwrite: bool = False,
    evaluator: ToyEvaluator | None = None,
) -> dict:
    """Metrics of the plain model and of the LoRAs at each weight (scaling every LoRA's own
    multiplier); writes OUT/metrics.json and OUT/report.html and returns the report."""
    from sabun.models.load import load_pipeline

    out = Path(out)
    if not loras:
        raise SabunError("no LoRA given; pass --lora PATH[:WEIGHT]")
    for name in ("metrics.json", "report.html"):
        check_writable(out / name, overwrite)
    started = time.time()
    target = load_character(character)
    pipe = load_pipeline(model)
    evaluator = evaluator or ToyEvaluator.load()
    protocol = Protocol(seeds=seeds)
    conditions, grids = {}, {}
    with applied(pipe, loras) as networks:
        for weight in [0.0, *weights]:
            for network, (_, multiplier) in zip(networks, loras):
                network.multiplier = weight * multiplier
            label = "plain model" if weight == 0.0 else f"LoRA x{weight:g}"
            conditions[label], images = measure(pipe, evaluator, target, protocol)
            grids[label] = images[:, :6]
    report = {
        "character": target.to_dict(),
        "model": model,
        "loras": [{"path": str(p), "multiplier": m} for p, m in loras],
        "conditions": conditions,
        "weight_change_norms": {str(p): weight_change_norms(Path(p)) for p, _ in loras},
        "seconds": time.time() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "metrics.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    write_report(out / "report.html", report, grids, protocol)
    return report
