"""Every `sabun` command run as a user runs it, end to end through the CLI, at the smallest settings
that still take the real path: exit status 0, the promised files exist and load, the figures are
finite, and what the command prints names what it wrote.

This file covers the commands no other test ran end to end through the CLI:

- `sabun toyworld pretrain` (and its resume-by-rerun), `sabun toyworld check` (on a pretraining
  run's model folder and on the shipped `toy`), `sabun toyworld check-vrm`,
  `sabun toyworld train-evaluator` (with a diffusers VAE folder; the pretraining run's `vae.pt` path
  is a `slow` test, see `test_toyworld_train_evaluator_with_a_pretraining_runs_vae`),
- `sabun demo` (toy renderer, and `--from-vrm`), `sabun character` (on examples/character_pipeline.toml),
  `sabun evaluate`.

Commands already covered end to end through the CLI elsewhere (not repeated here):

- `sabun render toy`, `sabun caption` (from render metadata): tests/test_toyworld.py::test_cli_end_to_end
- `sabun caption --tagger`: tests/test_tagger.py::test_caption_command_with_a_tagger
- `sabun render model` (also `--list`, `--sheet`): tests/test_avatar_render.py::test_cli_render_list_and_bad_input
- `sabun train`: tests/test_train.py::test_cli_trains_end_to_end_and_reports_bad_config (and the
  resume tests beside it, which run `python -m sabun train` in subprocesses)
- `sabun generate`: tests/test_generate.py::test_cli_generate_writes_one_image
- `sabun copy-machine`: tests/test_copy_machine.py::test_cli_runs_the_pipeline_and_reports_bad_configs
- `sabun merge`: tests/test_cli_core.py::test_merge_command_writes_a_model_equal_to_the_unmerged_lora
- `sabun lora combine`, `lora resize`, `lora info`: tests/test_cli_core.py::test_combine_resize_info_commands
  (`lora info` not fitting: tests/test_cli_core.py::test_info_reports_a_lora_that_does_not_fit)
- `sabun lora extract`: tests/test_cli_core.py::test_extract_command_reports_both_parts
- `sabun toyworld export`: tests/test_toyworld_export.py::test_cli_export

The commands run in this process through `sabun.cli.main` (conftest.run_cli), so an unexpected
exception fails the test with its traceback. Everything is written under the test's tmp_path: the
working directory, the system temporary folder and Mesa's shader cache are moved there.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import random_lora, run_cli
from PIL import Image
from safetensors.torch import load_file

from sabun.lora.file import load_lora, save_lora
from sabun.models.load import load_pipeline, shipped_toy_model

pytestmark = pytest.mark.usefixtures("one_thread")  # small models run faster on one thread

DEMO_CONDITIONS = ["plain model", "no plan x1", "no plan x0.5", "3d tag x1", "stepping-stone x1"]
METRIC_KEYS = {"3d_leakage", "hair_ciede2000", "hairstyle", "hair_colour_name", "ribbon", "background_obeyed",
               "pose_obeyed", "images", "intervals", "n"}  # fmt: skip
RATES = {"3d_leakage", "hairstyle", "hair_colour_name", "ribbon", "background_obeyed", "pose_obeyed"}


@pytest.fixture(autouse=True)
def sandbox(tmp_path, monkeypatch):
    """Run in tmp_path, with every incidental write (temporary folders, GL shader cache) there too,
    and a console wide enough that rich never folds a printed path."""
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv("XDG_CACHE_HOME", str(scratch / "cache"))
    monkeypatch.setenv("MESA_SHADER_CACHE_DIR", str(scratch / "mesa"))
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setenv("NO_COLOR", "1")


def sabun(capsys, *args) -> tuple[str, str]:
    """`sabun ARGS`, which must succeed: (stdout, stderr)."""
    code, out, err = run_cli(capsys, *args)
    assert code == 0, (code, out, err[-4000:])
    return out, err


def flat(text: str) -> str:
    """Whitespace collapsed, so a line rich wrapped still matches."""
    return " ".join(text.split())


def finite_numbers(value, where: str = "") -> int:
    """Assert every number in a JSON value is finite; returns how many there are."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return 0
    if isinstance(value, (int, float)):
        assert math.isfinite(value), f"{where}: {value}"
        return 1
    if isinstance(value, dict):
        return sum(finite_numbers(v, f"{where}.{k}") for k, v in value.items())
    if isinstance(value, list):
        return sum(finite_numbers(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise AssertionError(f"{where}: unexpected {type(value).__name__}")


def assert_finite_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(path))
    assert tensors, path
    for name, tensor in tensors.items():
        assert torch.isfinite(tensor).all(), (path, name)
    return tensors


def assert_metrics(conditions: dict, names: list[str]) -> None:
    """The evaluation metrics of every condition: all there, finite, rates in [0, 1]."""
    assert list(conditions) == names
    for name, metrics in conditions.items():
        assert METRIC_KEYS <= set(metrics), (name, sorted(metrics))
        assert finite_numbers(metrics, name) > 0
        for key in RATES:
            assert 0.0 <= metrics[key] <= 1.0, (name, key, metrics[key])
            low, high = metrics["intervals"][key]
            assert low - 1e-9 <= metrics[key] <= high + 1e-9, (name, key)
        assert metrics["hair_ciede2000"] >= 0.0 and metrics["images"] >= 1


def assert_loads_as_lora(path: str | Path, steps: int | None = None):
    lora = load_lora(path)
    assert lora.weights, path
    for name, w in lora.weights.items():
        assert torch.isfinite(w.up).all() and torch.isfinite(w.down).all(), (path, name)
    if steps is not None:
        assert lora.metadata["ss_steps"] == str(steps), (path, lora.metadata.get("ss_steps"))
    return lora


def assert_png(path: Path, min_size: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert image.width >= min_size[0] and image.height >= min_size[1], (path, image.size)
        return image.size


# --- sabun toyworld pretrain / check / check-vrm / train-evaluator --------------------------------


PRETRAIN = ["--images", "4", "--vae-steps", "1", "--steps", "1", "--batch", "2", "--seed", "3"]


def pretrain_stages(run: Path) -> list[str]:
    return [json.loads(line)["stage"] for line in (run / "pretrain_log.jsonl").read_text().splitlines()]


def test_toyworld_pretrain_writes_a_model_that_check_reads_and_a_rerun_resumes(tmp_path, capsys):
    run = tmp_path / "pretrain"
    out, _ = sabun(capsys, "toyworld", "pretrain", "--out", run, *PRETRAIN)
    model = run / "model"
    assert f"toy model written to {model}" in flat(out)
    saved = json.loads((run / "pretrain_config.json").read_text())
    assert {k: saved[k] for k in ("images", "vae_steps", "steps", "batch", "seed")} == {
        "images": 4, "vae_steps": 1, "steps": 1, "batch": 2, "seed": 3
    }  # fmt: skip
    assert pretrain_stages(run) == ["data", "vae", "latents", "diffusion", "export"]
    # by default: v-prediction on betas rescaled to zero terminal SNR, sampled from the last timestep
    scheduler = json.loads((run / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["prediction_type"], scheduler["rescale_betas_zero_snr"], scheduler["timestep_spacing"]) == (
        "v_prediction", True, "trailing"
    )  # fmt: skip
    # a diffusers folder of the toy model's layout, with finite weights
    index = json.loads((model / "model_index.json").read_text())
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    for part in ("unet", "vae"):
        assert_finite_tensors(model / part / "diffusion_pytorch_model.safetensors")
    assert_finite_tensors(model / "text_encoder" / "model.safetensors")

    # re-running with the same settings resumes: the finished stages are not redone
    stamps = {name: (run / name).stat().st_mtime_ns for name in ("data.npz", "vae.pt", "latents.pt")}
    out, _ = sabun(capsys, "toyworld", "pretrain", "--out", run, *PRETRAIN)
    assert f"toy model written to {model}" in flat(out)
    assert {name: (run / name).stat().st_mtime_ns for name in stamps} == stamps
    assert pretrain_stages(run)[5:] == ["export"]

    # the export may change after training: the raw weights instead of their moving average
    unet = model / "unet" / "diffusion_pytorch_model.safetensors"
    ema = load_file(unet)
    sabun(capsys, "toyworld", "pretrain", "--out", run, *PRETRAIN, "--set", "export_weights=raw")
    assert pretrain_stages(run)[5:] == ["export", "export"]
    assert json.loads((run / "pretrain_log.jsonl").read_text().splitlines()[-1])["weights"] == "raw"
    raw = load_file(unet)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)

    # the pretrained model folder is what `sabun toyworld check --model` takes
    check = tmp_path / "check"
    out, _ = sabun(capsys, "toyworld", "check", "--model", model, "--out", check,
                   "--count", "1", "--three-d-count", "1", "--steps", "1")  # fmt: skip
    written = json.loads((check / "check.json").read_text())
    assert json.loads(out) == written  # what it prints is what it wrote
    assert written["model"] == str(model) and written["sampler"]["steps"] == 1
    assert written["prompts"]["count"] == 1 and written["prompts_with_3d"]["count"] == 1


def test_toyworld_pretrain_the_first_recipe_with_the_shipped_vae(tmp_path, capsys):
    """The levers off and on: the first model's epsilon objective on SD's own betas, cross-attention
    at 16x16, the VAE taken from the shipped model, and snapshots of EMA and raw weights."""
    run = tmp_path / "pretrain"
    sets = ["prediction_type=epsilon", "zero_terminal_snr=false", "cross_attention_16=true", "vae_from=toy",
            "snapshot_every=1"]  # fmt: skip
    sabun(capsys, "toyworld", "pretrain", "--out", run, *PRETRAIN, "--steps", "2",
          *[arg for s in sets for arg in ("--set", s)])  # fmt: skip
    # the VAE is the shipped one, bit for bit
    shipped = load_file(shipped_toy_model() / "vae" / "diffusion_pytorch_model.safetensors")
    written = load_file(run / "model" / "vae" / "diffusion_pytorch_model.safetensors")
    assert shipped.keys() == written.keys() and all(torch.equal(shipped[k], written[k]) for k in shipped)
    pipe = load_pipeline(str(run / "model"))
    config = pipe.scheduler.config
    assert (config.prediction_type, config.rescale_betas_zero_snr, config.timestep_spacing) == (
        "epsilon", False, "leading"
    )  # fmt: skip
    assert float(pipe.scheduler.alphas_cumprod[-1]) > 0.004  # SD's last timestep keeps some signal
    assert pipe.unet.config.down_block_types[0] == "CrossAttnDownBlock2D"
    # one snapshot (step 1 of 2), as EMA and raw weights, which differ
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step-000001", "step-000001-raw"]
    ema, raw = (load_file(run / "snapshots" / n / "unet" / "diffusion_pytorch_model.safetensors")
                for n in ("step-000001", "step-000001-raw"))  # fmt: skip
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    assert "snapshot" in pretrain_stages(run)


def test_toyworld_pretrain_continues_from_the_shipped_model(tmp_path, capsys):
    """`init_from=toy` starts the diffusion stage from the shipped U-Net and text encoder (and, with
    vae_from=toy, its VAE): at a vanishing learning rate the exported model is the shipped one."""
    run = tmp_path / "pretrain"
    sets = ["vae_from=toy", "init_from=toy", "lr=1e-12", "warmup=0"]
    sabun(capsys, "toyworld", "pretrain", "--out", run, *PRETRAIN, *[arg for s in sets for arg in ("--set", s)])
    for name, file in (("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        shipped = load_file(shipped_toy_model() / name / file)
        written = load_file(run / "model" / name / file)
        assert shipped.keys() == written.keys()
        assert all(torch.allclose(shipped[k], written[k], atol=1e-6) for k in shipped), name
    fresh = tmp_path / "fresh"  # the same run from random weights is another model
    sabun(capsys, "toyworld", "pretrain", "--out", fresh, *PRETRAIN, "--set", "vae_from=toy", "--set", "lr=1e-12")
    shipped = load_file(shipped_toy_model() / "unet" / "diffusion_pytorch_model.safetensors")
    written = load_file(fresh / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.allclose(shipped[k], written[k], atol=1e-3) for k in shipped)


def test_toyworld_check_on_the_shipped_toy_model(tmp_path, capsys):
    check = tmp_path / "check"
    out, _ = sabun(capsys, "toyworld", "check", "--out", check, "--count", "2", "--three-d-count", "1",
                   "--steps", "2", "--guidance", "4")  # fmt: skip
    assert sorted(p.name for p in check.iterdir()) == [
        "check.json", "generations.png", "generations.txt", "generations_3d.png", "generations_3d.txt"
    ]  # fmt: skip
    results = json.loads((check / "check.json").read_text())
    assert json.loads(out) == results
    assert results["model"] == "toy" and results["sampler"] == {"steps": 2, "guidance": 4.0}
    assert finite_numbers(results) > 0
    for group, count in (("prompts", 2), ("prompts_with_3d", 1)):
        assert results[group]["count"] == count
        for key in ("hair colour", "hairstyle", "background", "pose", "view", "zoom", "p_3d_mean"):
            assert 0.0 <= results[group][key] <= 1.0, (group, key)
    assert set(results["targets"]) <= set(results["prompts"])
    assert_png(check / "generations.png", (2 * 64, 64))  # the 2 generations, side by side
    sheet_text = (check / "generations.txt").read_text()
    assert sheet_text.startswith("prompted -> read") and sheet_text.count("1girl") == 2
    assert sheet_text.count("P(3d) 0.") + sheet_text.count("P(3d) 1.") == 2
    assert_png(check / "generations_3d.png", (64, 64))  # the one `3d` generation
    assert ", 3d" in (check / "generations_3d.txt").read_text()


def test_toyworld_check_vrm(tmp_path, capsys):
    check = tmp_path / "check_vrm"
    out, _ = sabun(capsys, "toyworld", "check-vrm", "--out", check, "--count", "0", "--styles", "toon")
    assert f"wrote {check / 'check_vrm.json'} and {check / 'renders.png'}" in flat(out)
    results = json.loads((check / "check_vrm.json").read_text())
    assert results["characters"] == 6 and results["size"] == 64  # the six presets, no random ones
    assert list(results["renders"]) == ["toy 3d", "toon"]
    assert finite_numbers(results) > 0
    for name, readings in results["renders"].items():
        assert readings["images"] == 6 * 12  # every preset from every view and zoom
        for key in ("hair_colour_name", "hairstyle", "view", "zoom", "read_as_3d"):
            r = readings[key]
            assert 0.0 <= r["low"] <= r["rate"] <= r["high"] <= 1.0, (name, key)
    # the printed table has a column per kind of render and the figures of the file
    assert "toy 3d" in out and "toon" in out and "hair dE2000 (mean)" in out
    assert f"{results['renders']['toon']['hair_ciede2000']['mean']:.2f}" in out
    assert_png(check / "renders.png", (12 * 64, 2 * 6 * 64))  # 12 shots x (6 presets x 2 kinds)
    assert not list((tmp_path / "scratch").glob("sabun-check-vrm-*"))  # its exports are cleaned up


def micro_vae_folder(path: Path) -> Path:
    """A diffusers VAE folder (what --vae also takes) small enough to round-trip the evaluator's
    2000 held-out renders in seconds: the toy model's own VAE takes minutes there on one core."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, layers_per_block=1,
                        latent_channels=4, mid_block_add_attention=False)  # fmt: skip
    vae.save_pretrained(path)
    return path


def assert_trained_evaluator(folder: Path, out: str, with_vae: bool) -> dict:
    assert sorted(p.name for p in folder.iterdir()) == [
        "evaluator.safetensors", "evaluator_config.json", "evaluator_validation.json"
    ]  # fmt: skip
    report = json.loads((folder / "evaluator_validation.json").read_text())
    assert json.loads(out) == report  # what it prints is what it wrote
    assert set(report) == {"renders", "seconds", *(["vae_roundtrips"] if with_vae else [])}
    assert finite_numbers(report) > 0
    for part in set(report) - {"seconds"}:
        accuracies = {k: v for k, v in report[part].items() if k.endswith("_accuracy")}
        assert len(accuracies) >= 8 and all(0.0 <= v <= 1.0 for v in accuracies.values()), part
        assert report[part]["hair_ciede2000_median"] >= 0.0
    config = json.loads((folder / "evaluator_config.json").read_text())
    assert (config["images"], config["steps"], config["batch"]) == (4, 1, 2)
    # a drop-in replacement for the shipped evaluator: the same tensors, finite
    trained = assert_finite_tensors(folder / "evaluator.safetensors")
    shipped = load_file(str(importlib.resources.files("sabun") / "assets/toy_evaluator/evaluator.safetensors"))
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in shipped.items()}
    return report


def test_toyworld_train_evaluator_with_a_vae_folder(tmp_path, capsys):
    vae = micro_vae_folder(tmp_path / "vae")
    folder = tmp_path / "evaluator"
    out, _ = sabun(capsys, "toyworld", "train-evaluator", "--out", folder, "--vae", vae,
                   "--images", "4", "--steps", "1", "--batch", "2")  # fmt: skip
    assert_trained_evaluator(folder, out, with_vae=True)


@pytest.mark.slow
def test_toyworld_train_evaluator_with_a_pretraining_runs_vae(tmp_path, capsys):
    """The documented chain, pretrain -> train-evaluator --vae RUN/vae.pt. Slow (about 2 minutes on
    one core) and not made smaller: the toy VAE's size is fixed and so is the evaluator's hold-out
    (2000 renders, every one round-tripped through it); the CLI exposes neither."""
    run = tmp_path / "pretrain"
    sabun(capsys, "toyworld", "pretrain", "--out", run, *PRETRAIN)
    folder = tmp_path / "evaluator"
    out, _ = sabun(capsys, "toyworld", "train-evaluator", "--out", folder, "--vae", run / "vae.pt",
                   "--images", "4", "--steps", "1", "--batch", "2")  # fmt: skip
    assert_trained_evaluator(folder, out, with_vae=True)


# --- sabun demo / character / evaluate -----------------------------------------------------------


def assert_demo(out_dir: Path, printed: str, from_vrm: bool) -> dict:
    text = flat(printed)
    assert f"report: {out_dir / 'target' / 'report.html'}" in text and f"metrics: {out_dir / 'metrics.json'}" in text
    for condition in DEMO_CONDITIONS:
        assert condition in printed  # a column of the printed table
    summary = json.loads((out_dir / "metrics.json").read_text())
    assert summary["settings"]["steps"] == 1 and summary["settings"]["seeds"] == 1
    assert summary["settings"]["from_vrm"] is from_vrm
    report = summary["targets"]["target"]
    assert_metrics(report["conditions"], DEMO_CONDITIONS)
    assert json.loads((out_dir / "target" / "metrics.json").read_text())["conditions"] == report["conditions"]
    assert set(report["loras"]) == {"no_plan", "3d_tag", "stepping_stone", "character_on_stepping_stone"}
    for path in report["loras"].values():
        assert Path(path).is_relative_to(out_dir)
        assert_loads_as_lora(path, steps=1)
    assert report["claims"] and all(c["verdict"] in printed for c in report["claims"])
    page = (out_dir / "target" / "report.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page
    return report


def test_demo(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    printed, _ = sabun(capsys, "demo", "--out", out_dir, "--steps", "1", "--seeds", "1")
    assert_demo(out_dir, printed, from_vrm=False)
    shots = list((out_dir / "data" / "stepping_stone_red_long").glob("*.png"))
    assert shots and all(assert_png(p) == (64, 64) for p in shots)  # the toy renderer's 64 px shots


def test_demo_from_vrm(tmp_path, capsys):
    out_dir = tmp_path / "demo_vrm"
    printed, _ = sabun(capsys, "demo", "--out", out_dir, "--steps", "1", "--seeds", "1", "--from-vrm")
    assert_demo(out_dir, printed, from_vrm=True)
    # the characters were exported to VRM and the data sets are `sabun render model` renders of them
    assert (out_dir / "vrm" / "red_long" / "red_long.vrm").stat().st_size > 0
    shot = next((out_dir / "data" / "stepping_stone_red_long").glob("*.json"))
    assert json.loads(shot.read_text())["model"]["file"] == "red_long.vrm"
    assert assert_png(shot.with_suffix(".png")) == (64, 64)


def test_character_on_the_example_config(tmp_path, capsys):
    example = Path(__file__).parent.parent / "examples" / "character_pipeline.toml"
    out_dir = tmp_path / "character"
    printed, _ = sabun(
        capsys, "character", example, "--out", out_dir,
        "--set", 'stepping_stone.presets=["red_long"]',
        "--set", "stepping_stone.train.training.max_steps=1",
        "--set", "character.train.training.max_steps=1",
        "--set", "evaluation.weights=[1.0]",
        "--set", "evaluation.seeds=1",
        "--set", "evaluation.sample_steps=2",
        "--set", 'evaluation.prompts=["1girl"]',
    )  # fmt: skip
    text = flat(printed)
    character = out_dir / "loras" / "character" / "character.safetensors"
    assert f"character LoRA: {character}" in text
    assert f"samples: {out_dir / 'samples.png'}" in text and f"metrics: {out_dir / 'metrics.json'}" in text
    report = json.loads((out_dir / "metrics.json").read_text())
    assert_metrics(report["conditions"], ["plain model", "character LoRA x1"])
    assert report["loras"] == {
        "stepping_stone": str(out_dir / "loras" / "stepping_stone" / "stepping_stone.safetensors"),
        "character": str(character),
    }
    assert_loads_as_lora(report["loras"]["stepping_stone"], steps=1)
    lora = assert_loads_as_lora(character, steps=1)
    assert "stepping_stone.safetensors" in lora.metadata["sabun_base_weights"]  # trained on the merged model
    norms = report["weight_change_norms"]["character"]
    assert finite_numbers(norms) == 2 and norms["unet"] > 0
    assert f"unet {norms['unet']:.3f}" in text
    assert assert_png(out_dir / "samples.png", (2 * 64, 64))  # the prompt at weight 0 and 1
    page = (out_dir / "report.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page
    assert not (example.parent.parent / "runs" / "character").exists()  # --out replaced the config's `out`


def test_evaluate(tmp_path, capsys):
    from sabun.models.load import load_pipeline

    lora = save_lora(random_lora(load_pipeline("toy"), rank=2, std=0.05), tmp_path / "toy_lora.safetensors")
    out_dir = tmp_path / "evaluation"
    printed, _ = sabun(capsys, "evaluate", "--lora", f"{lora}:1", "--out", out_dir, "--weights", "0.5,1",
                       "--seeds", "1", "--character", "target")  # fmt: skip
    assert f"report: {out_dir / 'report.html'} metrics: {out_dir / 'metrics.json'}" in flat(printed)
    assert "sabun evaluate: target (read by the toy evaluator)" in flat(printed)
    report = json.loads((out_dir / "metrics.json").read_text())
    assert report["character"]["name"] == "target" and report["model"] == "toy"
    assert_metrics(report["conditions"], ["plain model", "LoRA x0.5", "LoRA x1"])
    assert report["conditions"]["plain model"] != report["conditions"]["LoRA x1"]
    norms = report["weight_change_norms"][str(lora)]
    assert finite_numbers(norms) > 0 and norms["unet"] > 0
    for condition in report["conditions"]:
        assert condition in printed
    page = (out_dir / "report.html").read_text()
    assert "<table>" in page and page.count("data:image/png;base64,") >= 3 and "Weight change" in page


def test_toyworld_train_evaluator_checks_its_options_and_keeps_an_earlier_evaluator(tmp_path, capsys):
    """A bad option is a one-line error before any rendering; an earlier evaluator is kept unless --overwrite."""
    for args, named in ((["--steps", "0"], "--steps"), (["--images", "0"], "--images"), (["--set", "lr=-1"], "lr")):
        code, _, err = run_cli(capsys, "toyworld", "train-evaluator", "--out", tmp_path / "bad", *args)
        assert code == 2 and f"error: {named}:" in err and "Traceback" not in err
        assert not (tmp_path / "bad").exists()
    folder = tmp_path / "ev"
    folder.mkdir()
    (folder / "evaluator.safetensors").write_bytes(b"mine")
    code, _, err = run_cli(capsys, "toyworld", "train-evaluator", "--out", folder, "--images", "4", "--steps", "1")
    assert code == 2 and "evaluator.safetensors: already exists; pass --overwrite" in err
    assert (folder / "evaluator.safetensors").read_bytes() == b"mine"
