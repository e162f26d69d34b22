"""`sabun evaluate`: the protocol's metrics for LoRAs at several weights, beside the plain model."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from sabun.errors import SabunError
from sabun.evaluate.metrics import Protocol, read_prompts, weight_change_norms
from sabun.evaluate.report import evaluate_at_weights
from sabun.evaluate.tagged_character import load_tagged_character
from sabun.evaluate.tagger import Tagger, TaggerReader, load_tag_map
from sabun.evaluate.toy_evaluator import ToyEvaluator
from sabun.io import check_writable
from sabun.models.load import load_pipeline
from sabun.toyworld.character import load_character


def reader_and_target(
    character: str,
    tagger: str | os.PathLike | None = None,
    tag_map: str | os.PathLike | None = None,
    threshold: float = 0.35,
    evaluator=None,
    protocol=None,
):
    """The reader of the images and the character to judge against: the toy evaluator and a toy
    character spec; or, given `tagger`, a booru tagger and a real character spec (identity tags)."""
    if tagger is None:
        return evaluator or ToyEvaluator.load(), load_character(character)
    reader = TaggerReader(Tagger.load(tagger), threshold=threshold, tag_map=load_tag_map(tag_map))
    target = load_tagged_character(character)
    reader.check(
        target, protocol.prompt_list() if protocol else ()
    )  # every tag the run will read is in the tagger's CSV
    return reader, target


def evaluate_loras(
    model: str,
    loras: Sequence[tuple[str, float]],
    weights: Sequence[float],
    character: str,
    out: str | os.PathLike,
    seeds: int = 16,
    overwrite: bool = False,
    evaluator=None,
    prompts: str | os.PathLike | None = None,
    seed_start: int = 1000,
    tagger: str | os.PathLike | None = None,
    tag_map: str | os.PathLike | None = None,
    threshold: float = 0.35,
) -> dict:
    """Metrics of the plain model and of the LoRAs at each weight (scaling every LoRA's own
    multiplier); writes OUT/metrics.json and OUT/report.html and returns the report.

    Args:
        prompts: a prompt file (see `read_prompts`) instead of the protocol's own prompts.
        seeds, seed_start: images per prompt, and the first seed.
        tagger, tag_map, threshold: read the images with a booru tagger (a folder with model.onnx
            and selected_tags.csv) instead of the toy evaluator; `character` is then a real
            character spec (its identity tags).
    """
    out = Path(out)
    if not loras:
        raise SabunError("no LoRA given; pass --lora PATH[:WEIGHT]")
    for name in ("metrics.json", "report.html"):
        check_writable(out / name, overwrite)
    started = time.time()
    protocol = Protocol(seeds=seeds, seed_start=seed_start, custom=read_prompts(prompts) if prompts else None)
    reader, target = reader_and_target(character, tagger, tag_map, threshold, evaluator, protocol)
    pipe = load_pipeline(model)
    conditions = {"plain model": []} | {f"LoRA x{w:g}": [(p, w * m) for p, m in loras] for w in weights}
    report = {
        "character": target.to_dict(),
        "model": model,
        "loras": [{"path": str(p), "multiplier": m} for p, m in loras],
        "weight_change_norms": {str(p): weight_change_norms(Path(p)) for p, _ in loras},
    }
    return evaluate_at_weights(
        out, pipe, reader, target, protocol, conditions, report, overwrite=overwrite, started=started
    )
