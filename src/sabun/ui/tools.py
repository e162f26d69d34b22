"""The text of the results and LoRA-tool pages, from the library's own functions and reports.

The LoRA tools call `sabun.lora.commands` (what `sabun lora ...` and `sabun merge` call) with every
path checked to lie inside the root, and write what the CLI prints; a bad input's SabunError is
shown as the CLI shows it (`error: ...`). The results page reads a run's metrics.json and shows it
as `sabun character` prints it (`rows_of`, `with_interval`); the weight slider draws with the
library's sampler (`applied`, `generate_images`) on the plain model.
"""

from __future__ import annotations

import html
import io
import json
import re
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from sabun.errors import SabunError, os_error_message
from sabun.evaluate.report import rows_of, with_interval
from sabun.generate import Sampler, applied, generate_images
from sabun.lora import commands
from sabun.models.load import load_pipeline
from sabun.ui.safety import Root

VERDICT_COLOURS = {"holds": "#1a7f37", "fails": "#cf222e"}


def destination(message: str) -> str:
    """Name the output a failed write was for, not its temporary (`.NAME.tmp-PID-xxxx` -> `NAME`), as the CLI does."""
    return re.sub(r"\.([^/\\]+?)\.tmp-\d+-[A-Za-z0-9_]+", r"\1", message)


def guarded(action: Callable[[], str]) -> str:
    """Run a tool; an input error becomes the CLI's one line `error: ...` instead of an exception."""
    try:
        return action()
    except SabunError as e:
        return f"error: {destination(str(e))}"
    except OSError as e:
        return f"error: {destination(os_error_message(e))}"
    except Exception as e:  # a bug, not bad input: said on the page, the traceback on the server's terminal
        traceback.print_exc()
        return f"error: unexpected {type(e).__name__}: {e} (see the server's terminal)"


def text_of(*renderables) -> str:
    """What the CLI's rich console prints, as plain text."""
    out = io.StringIO()
    console = Console(file=out, width=140, color_system=None, highlight=False, soft_wrap=True)
    for item in renderables:
        console.print(item, markup=False, highlight=False)
    return out.getvalue().rstrip()


def whole(value: float | int | None, option: str) -> int | None:
    """A whole number from a number box (None stays None)."""
    if value is None or value == "":
        return None
    number = float(value)
    if not number.is_integer():
        raise SabunError(f"{option} {value}: give a whole number")
    return int(number)


def fraction(value: float | None) -> float | None:
    return None if value is None or value == "" or float(value) == 0 else float(value)


# --- LoRA tools -----------------------------------------------------------------------------------


def lora_specs(root: Root, text: str, what: str = "LoRA") -> list[str]:
    """`PATH[:WEIGHT]` lines (or comma-separated), each path made the real path inside the root."""
    specs = []
    for item in re.split(r"[\n,]", text or ""):
        item = item.strip()
        if not item:
            continue
        if ":" in item and not (root.folder / item).exists():
            path, _ = commands.parse_weighted(item, force=True)  # the CLI's message for a weight that is no number
            specs.append(f"{root.path(path, what, 'file')}:{item.rpartition(':')[2].strip()}")
        else:
            specs.append(str(root.path(item, what, "file")))
    if not specs:
        raise SabunError(f"{what}: none given; write one PATH[:WEIGHT] per line")
    return specs


def approximation(report, title: str) -> str:
    table = Table(title=title)
    table.add_column("layer")
    table.add_column("rank", justify="right")
    table.add_column("rel. error", justify="right")
    for name, err in report.per_layer.items():
        table.add_row(name, str(report.ranks[name]), f"{err:.2e}")
    overall = f"overall relative error ||dW - dW_k|| / ||dW||: {report.overall:.3e} over {len(report.per_layer)} layers"
    return text_of(table, overall)


def info(root: Root, lora: str, model: str | None) -> str:
    """`sabun lora info LORA [--model MODEL]`."""
    path = root.path(lora, "LoRA", "file")
    spec = root.model(model, "--model") if (model or "").strip() else None
    blocks, metadata, fit = commands.info(str(path), spec)
    table = Table(title=root.relative(path))
    for col in ("block", "layers", "rank", "alpha", "||dW||"):
        table.add_column(col, justify="left" if col == "block" else "right")
    fmt = lambda values: ",".join(f"{v:g}" for v in sorted(values))  # noqa: E731
    for b in blocks:
        table.add_row(b.block, str(b.layers), fmt(b.ranks), fmt(b.alphas), f"{b.delta_norm:.4g}")
    lines = [f"{sum(b.layers for b in blocks)} layers"]
    for key in sorted(metadata):
        value = metadata[key] if len(metadata[key]) <= 120 else metadata[key][:117] + "..."
        lines.append(f"  {key} = {value}")
    if fit is not None:
        status = "fits" if fit.ok else "does NOT fit"
        lines.append(
            f"model {model}: {status}: {len(fit.matched)} layers match, {len(fit.not_in_model)} not in the model, "
            f"{len(fit.shape_mismatch)} shape mismatches, {fit.targets_without_lora} model layers without LoRA"
        )
        lines += [f"  not in model: {name}" for name in fit.not_in_model[:10]]
        lines += [f"  shape mismatch: {n}: model {m}, LoRA {s}" for n, m, s in fit.shape_mismatch[:10]]
    return text_of(table, *lines)


def merge(
    root: Root, model: str, loras: str, out: str, overwrite: bool, force: bool, prediction_type: str | None
) -> str:
    """`sabun merge --model MODEL --lora PATH:W ... --out OUT`."""
    specs = lora_specs(root, loras, "--lora")
    target = root.path(out, "--out", exists=False)
    changed = commands.merge(
        root.model(model, "--model"),
        specs,
        target,
        overwrite=overwrite,
        force=force,
        prediction_type=prediction_type or None,
    )
    return f"merged {len(specs)} LoRA(s) into {changed} layers -> {root.relative(target)}"


def combine(
    root: Root, loras: str, out: str, rank, conv_rank, energy, concat: bool, overwrite: bool, force: bool
) -> str:
    """`sabun lora combine PATH:W ... --out OUT [--rank R | --energy E | --concat]`."""
    specs = lora_specs(root, loras)
    target = root.path(out, "--out", exists=False)
    report = commands.combine(
        specs,
        target,
        whole(rank, "--rank"),
        whole(conv_rank, "--conv-rank"),
        fraction(energy),
        concat,
        overwrite,
        False,
        force,
    )
    done = f"wrote {root.relative(target)}"
    return done if report is None else approximation(report, "combine: SVD truncation error per layer") + "\n" + done


def resize(root: Root, lora: str, out: str, rank, energy, overwrite: bool) -> str:
    """`sabun lora resize LORA --out OUT [--rank R | --energy E]`."""
    source = root.path(lora, "LoRA", "file")
    target = root.path(out, "--out", exists=False)
    report = commands.resize(str(source), target, whole(rank, "--rank"), fraction(energy), overwrite)
    return approximation(report, "resize: per-layer error") + f"\nwrote {root.relative(target)}"


def extract(
    root: Root,
    original: str,
    tuned: str,
    rank,
    out: str,
    conv_rank,
    unet_only: bool,
    method: str,
    overwrite: bool,
    prediction_type: str | None,
) -> str:
    """`sabun lora extract --original A --tuned B --rank R --out OUT`."""
    rank = whole(rank, "--rank")
    if rank is None:
        raise SabunError("extract: --rank is required (the rank of Linear and 1x1 layers), e.g. 32")
    target = root.path(out, "--out", exists=False)
    report = commands.extract(
        root.model(original, "--original"),
        root.model(tuned, "--tuned"),
        target,
        rank,
        whole(conv_rank, "--conv-rank"),
        unet_only,
        method,
        overwrite,
        False,
        prediction_type or None,
    )
    lines = [approximation(report, "extract: per-layer error"), *commands.extract_notes(report)]
    lines.append(f"wrote {root.relative(target)}")
    return "\n".join(lines)


# --- results ----------------------------------------------------------------------------------------


def read_report(path: Path) -> dict:
    """A run's metrics.json (an unreadable one: empty)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def metrics_html(report: dict) -> str:
    """The metrics table with its 95 % intervals and the claim lines, as `sabun character` prints them."""
    parts = []
    if report.get("conditions"):
        conditions = list(report["conditions"])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in conditions)
        rows = []
        for key, name, better in rows_of(report):
            cells = "".join(f"<td>{html.escape(with_interval(m, key))}</td>" for m in report["conditions"].values())
            rows.append(f"<tr><td>{html.escape(name)} ({better}: better)</td>{cells}</tr>")
        title = f"{report.get('character', {}).get('name', 'character')} (character LoRA on the plain model)"
        parts.append(
            f"<table class='sabun-metrics'><caption>{html.escape(title)}</caption>"
            f"<thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "<p class='sabun-note'>[95 % interval]: Wilson for rates, bootstrap over images for means and medians</p>"
        )
    else:
        parts.append("<p>No metrics: this model has no reader (a tagger or the toy evaluator); see samples.png.</p>")
    for claim in report.get("claims", []):
        colour = VERDICT_COLOURS.get(claim["verdict"], "#9a6700")
        parts.append(
            f"<p class='sabun-claim'><b style='color:{colour}'>{html.escape(claim['verdict'])}</b>: "
            f"{html.escape(claim['claim'])} ({html.escape(str(claim['figures']))})</p>"
        )
    norms = report.get("weight_change_norms", {}).get("character", {})
    if norms:
        shown = ", ".join(f"{part} {norm:.3f}" for part, norm in norms.items())
        parts.append(f"<p>character LoRA weight change ||dW||: {html.escape(shown)}</p>")
    if report.get("coverage"):
        parts.append(f"<pre>{html.escape(report['coverage'].get('table', ''))}</pre>")
        parts += [f"<p>warning: {html.escape(w)}</p>" for w in report["coverage"].get("warnings", [])]
    if "seconds" in report:
        parts.append(f"<p class='sabun-note'>run time {report['seconds']:.0f} s</p>")
    return "\n".join(parts)


class Generator:
    """The weight slider: a LoRA on the plain model at a weight, beside the plain model (one model kept loaded)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._pipe = None

    def pipe(self, model: str, allow_pickle: bool = False, prediction_type: str | None = None):
        key = (model, allow_pickle, prediction_type)
        if self._key != key:
            self._pipe, self._key = None, None
            self._pipe = load_pipeline(model, allow_pickle=allow_pickle, prediction_type=prediction_type)
            self._key = key
        return self._pipe

    def images(
        self,
        model: str,
        lora: Path,
        weight: float,
        prompt: str,
        seed: int,
        steps: int,
        guidance: float,
        allow_pickle: bool = False,
        prediction_type: str | None = None,
    ) -> tuple[Image.Image, Image.Image]:
        """(the plain model, the LoRA at `weight`) for one prompt and seed."""
        if not prompt.strip():
            raise SabunError("prompt: is empty; give a prompt, e.g. 1girl")
        commands.parse_multipliers(str(weight), "weight")
        sampler = Sampler(steps=int(steps), guidance=float(guidance), batch=1)
        with self._lock:
            pipe = self.pipe(model, allow_pickle, prediction_type)
            drawn = []
            with applied(pipe, [(lora, 1.0)], allow_pickle=allow_pickle) as (network,):
                for multiplier in (0.0, float(weight)):
                    network.multiplier = multiplier
                    drawn.append(generate_images(pipe, [prompt], [int(seed)], sampler)[0])
        return tuple(shown_large(image) for image in drawn)


def shown_large(image: np.ndarray, side: int = 256) -> Image.Image:
    """A small render scaled up (nearest neighbour) for the page; the pixels are the sampler's."""
    picture = Image.fromarray(image)
    if picture.width >= side:
        return picture
    factor = max(1, side // picture.width)
    return picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
