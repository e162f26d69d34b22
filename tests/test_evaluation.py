"""The evaluation protocol over readings: the toy reader's figures, intervals, prompt files, claims,
and the console table."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import random_lora
from rich.console import Console

from sabun.errors import SabunError
from sabun.evaluate.claims import FAILS, HOLDS, OPEN, claims
from sabun.evaluate.intervals import wilson
from sabun.evaluate.metrics import Protocol, measure, read_prompts
from sabun.evaluate.toy_evaluator import EvaluatorConfig, ToyEvaluator, evaluator_dataset
from sabun.lora.file import save_lora
from sabun.toyworld.character import load_character
from sabun.toyworld.colours import ciede2000, srgb_to_lab


@pytest.fixture(scope="module")
def evaluator():
    return ToyEvaluator.load()


@pytest.fixture(scope="module")
def images():
    """Toy renders of random characters and shots, as if the protocol's 7 prompts x 8 seeds made them."""
    array, _, _ = evaluator_dataset(7 * 8, EvaluatorConfig(), seed=5)
    return array.reshape(7, 8, 64, 64, 3)


@pytest.mark.parametrize("name", ["target", "purple_short", "white_ponytail"])
def test_the_toy_readers_figures_are_the_protocols_definitions(evaluator, images, name):
    """Each metric computed here straight from the evaluator's predictions, as the protocol defines
    it, equals what `measure` reports through the readings interface."""
    examples = Path(__file__).resolve().parents[1] / "examples" / "characters"
    target = load_character(name) if name != "purple_short" else load_character(str(examples / "purple_short.toml"))
    protocol = Protocol(seeds=8)
    metrics, _ = measure(None, evaluator, target, protocol, images)

    flat = images.reshape(-1, 64, 64, 3)
    groups = [g for g, _, _ in protocol.prompts() for _ in range(8)]
    expected_values = [e for _, e, _ in protocol.prompts() for _ in range(8)]
    read = evaluator.predict(flat)
    bare = np.array([g == "bare" for g in groups])
    hair_error = ciede2000(read.hair_lab, srgb_to_lab(target.hair_colour)[None])
    expected = {
        "3d_leakage": read.p_3d.mean(),
        "hair_ciede2000": np.median(hair_error[bare]),
        "hairstyle": np.mean(np.array(read.label("hairstyle"))[bare] == target.hairstyle),
        "hair_colour_name": np.mean(np.array(read.hair_colour_name)[bare] == target.hair_colour_name),
        "ribbon": np.mean(np.array(read.label("ribbon"))[bare] == "yes"),
        "background_obeyed": np.mean(
            [read.label("background")[i] == expected_values[i] for i, g in enumerate(groups) if g == "background"]
        ),
        "pose_obeyed": np.mean(
            [read.label("pose")[i] == expected_values[i] for i, g in enumerate(groups) if g == "pose"]
        ),
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(float(value), abs=1e-9), key
        low, high = metrics["intervals"][key]
        assert low <= metrics[key] <= high, key
    assert (
        metrics["n"]["hairstyle"] == 8 and metrics["n"]["background_obeyed"] == 32 and metrics["n"]["3d_leakage"] == 56
    )
    assert metrics["intervals"]["hairstyle"] == pytest.approx(list(wilson(round(metrics["hairstyle"] * 8), 8)))


def test_wilson_intervals_are_those_of_the_formula():
    assert wilson(0, 16) == pytest.approx((0.0, 0.1936), abs=1e-4)
    assert wilson(8, 16) == pytest.approx((0.2800, 0.7200), abs=1e-4)
    assert wilson(16, 16) == pytest.approx((0.8064, 1.0), abs=1e-4)


def test_a_prompt_file_says_what_each_line_tests(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(
        "# my prompts\n[bare] 1girl\n\n[background:outdoor] 1girl, outdoors\n[pose:arms-up] 1girl, arms up\n1girl, school uniform\n",
        encoding="utf-8",
    )
    prompts = read_prompts(path)
    assert [(p.group, p.expected, p.text) for p in prompts] == [
        ("bare", "", "1girl"), ("background", "outdoor", "1girl, outdoors"), ("pose", "arms-up", "1girl, arms up"), ("free", "", "1girl, school uniform")]  # fmt: skip
    bad = tmp_path / "bad.txt"
    for text, needle in (
        ("[background] 1girl", "needs the background"),
        ("[colour:red] 1girl", "a label is"),
        ("# nothing\n", "holds no prompts"),
    ):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(SabunError, match=needle):
            read_prompts(bad)
    with pytest.raises(SabunError, match="no such prompt file"):
        read_prompts(tmp_path / "missing.txt")


def test_a_protocol_of_free_prompts_has_identity_metrics_only(evaluator, images):
    from sabun.evaluate.metrics import Prompt, metric_rows

    protocol = Protocol(seeds=8, custom=tuple(Prompt("free", "", f"1girl, prompt {i}") for i in range(7)))
    metrics, _ = measure(None, evaluator, load_character("target"), protocol, images)
    keys = [row[0] for row in metric_rows(evaluator, load_character("target"), protocol)]
    assert keys == ["3d_leakage", "hair_ciede2000", "hairstyle", "hair_colour_name", "ribbon"]
    assert "background_obeyed" not in metrics and metrics["n"]["hairstyle"] == 56


def condition(**figures):
    """A condition whose figures are given as (value, low, high)."""
    return {k: v[0] for k, v in figures.items()} | {"intervals": {k: [v[1], v[2]] for k, v in figures.items()}}


def test_claims_hold_fail_or_are_not_separable():
    plain = condition(
        **{"3d_leakage": (0.04, 0.03, 0.05), "background_obeyed": (0.4, 0.3, 0.5), "pose_obeyed": (0.6, 0.4, 0.8)}
    )
    no_plan = condition(**{"3d_leakage": (0.5, 0.4, 0.6)})
    half = condition(hair_ciede2000=(25.0, 23.0, 27.0))
    stone = condition(**{"3d_leakage": (0.05, 0.03, 0.07), "hair_ciede2000": (24.0, 22.0, 26.0), "hairstyle": (0.3, 0.15, 0.5),
                         "background_obeyed": (0.4, 0.33, 0.47), "pose_obeyed": (0.5, 0.3, 0.7)})  # fmt: skip
    verdicts = {
        c["claim"]: c["verdict"]
        for c in claims({"plain model": plain, "no plan x1": no_plan, "no plan x0.5": half, "stepping-stone x1": stone})
    }
    assert verdicts["stepping-stone 3D leakage below no plan's"] == HOLDS
    assert verdicts["stepping-stone 3D leakage within 0.1 of the plain model's"] == HOLDS
    assert verdicts["stepping-stone hair-colour error below no plan x0.5's"] == OPEN  # 22-26 overlaps 23-27
    assert verdicts["bare `1girl` draws the target's hairstyle in >= 80 %"] == FAILS
    assert verdicts["prompted background obeyed at >= 80 % of the plain model's rate (0.320)"] == HOLDS
    assert verdicts["prompted pose obeyed at >= 80 % of the plain model's rate (0.480)"] == OPEN


def test_the_console_table_never_drops_a_column():
    from sabun.cli import print_metrics

    names = ["plain model", "no plan x1", "no plan x0.5", "3d tag x1", "stepping-stone x1", "1-character stone x1"]
    report = {"conditions": {n: condition(**{"3d_leakage": (0.1 * i, 0.0, 0.2), "pose_obeyed": (0.5, 0.3, 0.7)}) for i, n in enumerate(names)},
              "metrics": [["3d_leakage", "3D leakage", "lower"], ["pose_obeyed", "pose obeyed", "higher"]]}  # fmt: skip
    buffer = io.StringIO()
    print_metrics(Console(file=buffer, width=80, force_terminal=False), "t", report)
    text = buffer.getvalue()
    for name in names:
        assert name in text, text
    assert "0.500 [0.30, 0.70]" in text


def test_evaluate_with_prompts_and_seeds_writes_metrics_with_intervals(tiny_pipe, tmp_path):
    from sabun.evaluate.commands import evaluate_loras

    lora = save_lora(random_lora(tiny_pipe, rank=2, seed=4), tmp_path / "l.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("[bare] 1girl\n[pose:arms-up] 1girl, arms up\n", encoding="utf-8")
    report = evaluate_loras(
        "tiny", [(str(lora), 1.0)], [1.0], "target", tmp_path / "eval", seeds=2, prompts=prompts, seed_start=7
    )
    written = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert written["protocol"]["seeds"] == 2 and written["protocol"]["seed_start"] == 7
    assert [p[2] for p in written["protocol"]["prompts"]] == ["1girl", "1girl, arms up"]
    for name, metrics in report["conditions"].items():
        assert metrics["images"] == 4, name
        assert set(metrics["intervals"]) == {k for k in metrics if k not in ("images", "intervals", "n")}
        assert "background_obeyed" not in metrics and "pose_obeyed" in metrics
    assert [row[0] for row in written["metrics"]][-1] == "pose_obeyed"
    assert "95 % intervals" in (tmp_path / "eval/report.html").read_text()
