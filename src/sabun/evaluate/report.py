"""The evaluation report: a self-contained HTML page with the metrics table and image grids."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from sabun.evaluate.metrics import Protocol
from sabun.generate import grid_image
from sabun.io import atomic_output

METRICS = (
    ("3d_leakage", "3D leakage, mean P(3d)", "lower"),
    ("hair_ciede2000", "hair colour error, CIEDE2000 (1girl)", "lower"),
    ("hairstyle", "target hairstyle (1girl)", "higher"),
    ("hair_colour_name", "target hair-colour name (1girl)", "higher"),
    ("ribbon", "ribbon seen (1girl)", "higher"),
    ("background_obeyed", "prompted background obeyed", "higher"),
    ("pose_obeyed", "prompted pose obeyed", "higher"),
)


def _png_data(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(path: Path, report: dict, grids: dict[str, np.ndarray], protocol: Protocol) -> None:
    """A self-contained HTML page: the metrics table and, per condition, one image row per prompt."""
    conditions = list(report["conditions"])
    rows = "".join(
        f"<tr><td>{html.escape(title)} <small>({better} is better)</small></td>" + "".join(f"<td>{report['conditions'][c][key]:.3f}</td>" for c in conditions) + "</tr>"
        for key, title, better in METRICS
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in conditions)
    prompts = [p for _, _, p in protocol.prompts()]
    sections = "".join(
        f"<h3>{html.escape(c)}</h3><img src='data:image/png;base64,{_png_data(grid_image(grids[c], prompts, [''] * grids[c].shape[1], scale=2))}'>"
        for c in conditions
    )
    finished = f"<p>Finished in {report['seconds']:.0f} s.</p>" if "seconds" in report else ""
    page = f"""<!doctype html><meta charset="utf-8"><title>sabun report</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}} td:first-child{{text-align:left}}</style>
<h1>sabun: {html.escape(report['character']['name'])}</h1>
<p>Each LoRA is used alone on the plain model; the first column is the plain model's own figures. {protocol.seeds} images per prompt, read by the toy evaluator.</p>
<table><tr><th>metric</th>{head}</tr>{rows}</table>
<h2>Images (rows: prompts; the first six seeds)</h2>{sections}
{finished}"""
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(page)
