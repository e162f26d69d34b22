"""The evaluation report: a self-contained HTML page with the metrics table and image grids."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sabun.evaluate.claims import claims
from sabun.evaluate.metrics import Protocol, measure_conditions, metric_rows
from sabun.generate import grid_image
from sabun.io import atomic_output

# (metric key, label, which direction is better) for a target with the signature ribbon (the
# `target` preset); `metrics_for` gives the table for any character.
METRICS = (
    ("3d_leakage", "3D leakage, mean P(3d)", "lower"),
    ("hair_ciede2000", "hair colour error, CIEDE2000 (1girl)", "lower"),
    ("hairstyle", "target hairstyle (1girl)", "higher"),
    ("hair_colour_name", "target hair-colour name (1girl)", "higher"),
    ("ribbon", "ribbon seen (1girl)", "higher"),
    ("background_obeyed", "prompted background obeyed", "higher"),
    ("pose_obeyed", "prompted pose obeyed", "higher"),
)


def metrics_for(character) -> tuple[tuple[str, str, str], ...]:
    """METRICS for `character` (a CharacterSpec, or its `to_dict()` as stored in a report):
    "ribbon seen" is better higher for a character with a ribbon and lower for one without, whose
    drawing should show none. The metric keys are the same for every character."""
    if character is None:
        return METRICS
    has_ribbon = character.get("ribbon", True) if isinstance(character, dict) else getattr(character, "ribbon", True)
    if has_ribbon:
        return METRICS
    return tuple(
        (key, "ribbon seen (1girl; the character has none)", "lower") if key == "ribbon" else (key, title, better)
        for key, title, better in METRICS
    )


def _png_data(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def bar_chart(title: str, labels: list[str], values: list[float], better: str, intervals: list | None = None) -> str:
    """One metric across the conditions as an inline SVG bar chart (the plain model's bar grey), with
    each figure's 95 % interval drawn as a whisker."""
    width, bar, gap, top = 400, 16, 6, 22
    height = top + len(values) * (bar + gap)
    intervals = intervals or [None] * len(values)
    scale = max([abs(v) for v in values] + [abs(i[1]) for i in intervals if i] + [1e-9])
    bars = []
    for i, (label, value, interval) in enumerate(zip(labels, values, intervals)):
        y = top + i * (bar + gap)
        w = 180 * abs(value) / scale
        colour = "#999" if i == 0 else "#3a7bd5"
        whisker = ""
        if interval:
            lo, hi = (150 + 180 * abs(v) / scale for v in interval)
            whisker = f"<line x1='{lo:.1f}' x2='{hi:.1f}' y1='{y + bar / 2}' y2='{y + bar / 2}' stroke='#222' stroke-width='1.5'/>"
        right = 155 + max(w, 180 * abs(interval[1]) / scale if interval else 0)
        bars.append(
            f"<text x='0' y='{y + 12}' font-size='11'>{html.escape(label[:24])}</text>"
            f"<rect x='150' y='{y}' width='{w:.1f}' height='{bar}' fill='{colour}'/>{whisker}"
            f"<text x='{right:.1f}' y='{y + 12}' font-size='11'>{value:.3f}</text>"
        )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' style='margin:6px'>"
        f"<text x='0' y='14' font-size='12' font-weight='bold'>{html.escape(title)} ({better} is better)</text>{''.join(bars)}</svg>"
    )


def evaluate_at_weights(
    out: Path,
    pipe,
    reader,
    target,
    protocol: Protocol,
    conditions: dict[str, list[tuple[str | Path, float]]],
    report: dict,
    log=print,
    plain: dict | None = None,
    overwrite: bool = True,
    metrics_json: bool = True,
    with_claims: bool = False,
    started: float | None = None,
) -> dict:
    """The one measurement of `sabun evaluate`, `sabun demo` and `sabun character`: each condition
    (LoRA files at their multipliers; none: the plain model) measured by `reader` under `protocol`,
    put into `report` (with the claim lines if `with_claims`, and the seconds since `started`) and
    written by `write_evaluation`."""
    report["conditions"], grids = measure_conditions(pipe, reader, target, protocol, conditions, log, plain)
    report.setdefault("character", target.to_dict())
    if with_claims:
        report["claims"] = claims(report["conditions"])
    if started is not None:
        report["seconds"] = time.time() - started
    return write_evaluation(
        out, report, grids, protocol, reader, target, overwrite=overwrite, metrics_json=metrics_json
    )


def write_evaluation(
    out: Path,
    report: dict,
    grids: dict[str, np.ndarray],
    protocol: Protocol,
    reader,
    target,
    overwrite: bool = True,
    metrics_json: bool = True,
) -> dict:
    """Complete `report` (the metrics' rows, the reader, the protocol) and write OUT/report.html and
    (unless the caller writes a fuller one) OUT/metrics.json; returns the report."""
    report["metrics"] = [list(row) for row in metric_rows(reader, target, protocol)]
    report["reader"] = reader.name
    report["protocol"] = {"seeds": protocol.seeds, "seed_start": protocol.seed_start, "prompts": protocol.prompts(),
                          "sampler": {"steps": protocol.sampler.steps, "guidance": protocol.sampler.guidance}}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    if metrics_json:
        with atomic_output(out / "metrics.json", overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    write_report(out / "report.html", report, grids, protocol)
    return report


def rows_of(report: dict) -> list[tuple[str, str, str]]:
    """The (key, title, better) rows of a report: as it recorded them, or the toy metrics of old reports."""
    if report.get("metrics"):
        return [tuple(row) for row in report["metrics"]]
    return list(metrics_for(report.get("character")))


def with_interval(condition: dict, key: str) -> str:
    """`0.528 [0.44, 0.61]`, or the bare figure when no interval was recorded."""
    value = condition.get(key)
    if value is None:
        return "-"
    interval = condition.get("intervals", {}).get(key)
    digits = 1 if key == "hair_ciede2000" else 3
    if interval is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits if digits == 1 else 2}f}, {interval[1]:.{digits if digits == 1 else 2}f}]"


def write_report(path: Path, report: dict, grids: dict[str, np.ndarray], protocol: Protocol) -> None:
    """A self-contained HTML page: the metrics table and one bar chart per metric; an image grid of
    prompts x conditions (first seed); per condition, one image row per prompt."""
    conditions = list(report["conditions"])
    metrics = [row for row in rows_of(report) if all(row[0] in report["conditions"][c] for c in conditions)]
    rows = "".join(
        f"<tr><td>{html.escape(title)} <small>({better} is better)</small></td>"
        + "".join(f"<td>{html.escape(with_interval(report['conditions'][c], key))}</td>" for c in conditions)
        + "</tr>"
        for key, title, better in metrics
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in conditions)
    charts = "".join(
        bar_chart(
            title,
            conditions,
            [report["conditions"][c][key] for c in conditions],
            better,
            [report["conditions"][c].get("intervals", {}).get(key) for c in conditions],
        )
        for key, title, better in metrics
    )
    prompts = [p for _, _, p in protocol.prompts()]
    side_by_side = np.stack([grids[c][:, 0] for c in conditions], axis=1)
    overview = f"<img src='data:image/png;base64,{_png_data(grid_image(side_by_side, prompts, [c[:14] for c in conditions], scale=2))}'>"
    sections = "".join(
        f"<h3>{html.escape(c)}</h3><img src='data:image/png;base64,{_png_data(grid_image(grids[c], prompts, [''] * grids[c].shape[1], scale=2))}'>"
        for c in conditions
    )
    norms = ""
    if report.get("weight_change_norms"):
        items = "".join(
            f"<li>{html.escape(name)}: {', '.join(f'{part} {value:.4f}' for part, value in parts.items())}</li>"
            for name, parts in report["weight_change_norms"].items()
        )
        norms = f"<h2>Weight change ||dW||<sub>F</sub> at weight 1 (it scales with the weight)</h2><ul>{items}</ul>"
    finished = f"<p>Finished in {report['seconds']:.0f} s.</p>" if "seconds" in report else ""
    page = f"""<!doctype html><meta charset="utf-8"><title>sabun report</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}} td:first-child{{text-align:left}}</style>
<h1>sabun: {html.escape(report["character"]["name"])}</h1>
<p>Each LoRA is used alone on the plain model; the first column is the plain model's own figures. {protocol.seeds} images per prompt, read by the {html.escape(report.get("reader", "toy evaluator"))}. In brackets: 95 % intervals (Wilson for rates, a bootstrap over images for means and medians); figures whose intervals overlap are not told apart by this many images.</p>
<table><tr><th>metric</th>{head}</tr>{rows}</table>
<div>{charts}</div>
{norms}
<h2>Prompts x conditions (first seed)</h2>{overview}
<h2>Images (rows: prompts; the first six seeds)</h2>{sections}
{finished}"""
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(page)
