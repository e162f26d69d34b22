"""Bad input to the pipelines and the toy world's commands is refused before any work.

Each case gives `sabun demo`, `sabun character`, `sabun copy-machine`, `sabun toyworld pretrain /
check / check-vrm` or `sabun render toy` one bad option, field or file, and asserts a SabunError
naming it, and that nothing was rendered or trained: the output folder is absent (or as it was)
and no "training" line was logged.
"""

from __future__ import annotations

import errno
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sabun.errors import SabunError

pytestmark = pytest.mark.usefixtures("one_thread")

NAN, INF = math.nan, math.inf


def untouched(out: Path, messages: list[str] = ()) -> None:
    """Nothing rendered or trained: `out` absent, or there and empty, and no training logged."""
    assert not out.exists() or not any(out.iterdir()), sorted(str(p) for p in out.rglob("*"))
    assert not any(m.startswith("training") for m in messages), messages


def image_folder(folder: Path, bad: bool = False) -> Path:
    """A user's folder of captioned renders: two 64 px images (and a corrupt one when `bad`)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("1girl, red hair\n")
    if bad:
        (folder / "bad.png").write_bytes(b"not an image at all")
        (folder / "bad.txt").write_text("1girl\n")
    return folder


# --- sabun demo -----------------------------------------------------------------------------------

DEMO = {"model": "tiny", "steps": 1, "seeds": 1, "batch_size": 2, "sample_steps": 1}


@pytest.mark.parametrize(
    "change, named",
    [
        ({"steps": 0}, "--steps: must be at least 1"),
        ({"steps": -1}, "--steps: must be at least 1"),
        ({"seeds": 0}, "--seeds: must be at least 1"),
        ({"character_min_timestep": 5000}, "--character-min-timestep: 5000 is past"),
        ({"character_min_timestep": -1}, "--character-min-timestep: must be 0"),
        ({"learning_rate": INF}, "learning_rate: must be a finite number"),
        ({"alpha": NAN}, "alpha: must be a finite number"),
        ({"rank": 0}, "rank: must be >= 1"),
        ({"sample_steps": 0}, "sample_steps: must be 1 to 1000"),
        ({"characters": ()}, "--character: no target given"),
    ],
)
def test_demo_options_are_checked_when_the_config_is_made(tmp_path, change, named):
    from sabun.pipelines.demo import DemoConfig

    with pytest.raises(SabunError, match=named):
        DemoConfig(**(DEMO | change))


@pytest.mark.parametrize(
    "change, named",
    [
        ({"characters": ("target", "nobody")}, "--character nobody: no such character preset"),
        ({"characters": ("target", "BAD_TOML")}, "--character .*c.toml: is not valid TOML"),
        ({"characters": ("MISSING_TOML",)}, "--character .*missing.toml: no such character file"),
        ({"model": "/nonexistent/model.safetensors"}, "model: /nonexistent/model.safetensors: no such model"),
    ],
)
def test_demo_inputs_are_checked_before_the_first_stage(tmp_path, change, named):
    from sabun.pipelines.demo import DemoConfig, run_demo

    bad = tmp_path / "c.toml"
    bad.write_text("name = = 1\n")
    characters = tuple(
        {"BAD_TOML": str(bad), "MISSING_TOML": str(tmp_path / "missing.toml")}.get(c, c)
        for c in change.get("characters", ("target",))
    )
    messages: list[str] = []
    with pytest.raises(SabunError, match=named):
        run_demo(tmp_path / "run", DemoConfig(**(DEMO | change | {"characters": characters})), log=messages.append)
    untouched(tmp_path / "run", messages)


def test_demo_refuses_a_target_named_like_its_own_folders(tmp_path):
    from sabun.pipelines.demo import DemoConfig, run_demo

    spec = tmp_path / "loras.toml"
    spec.write_text('hair_colour = "red"\nhairstyle = "long"\neye_colour = "blue"\n')
    with pytest.raises(SabunError, match="'loras' would share OUT/loras"):
        run_demo(tmp_path / "run", DemoConfig(**(DEMO | {"characters": (str(spec),)})), log=lambda m: None)
    untouched(tmp_path / "run")


# --- sabun character ------------------------------------------------------------------------------

TINY_TRAIN = {"data": {"batch_size": 2}, "training": {"max_steps": 1}}


def character_raw(tmp_path: Path, **sections) -> dict:
    raw = {
        "out": str(tmp_path / "run"),
        "model": {"path": "tiny"},
        "stepping_stone": {"presets": ["red_long"], "train": TINY_TRAIN},
        "character": {"preset": "target", "train": TINY_TRAIN},
        "evaluation": {"weights": [1.0], "seeds": 1, "sample_steps": 1, "prompts": ["1girl"], "character": "target"},
    }
    for name, values in sections.items():
        raw[name] = (
            values
            if not isinstance(values, dict)
            else {k: v for k, v in (raw.get(name, {}) | values).items() if v is not None}
        )
    return raw


def stone_folder(tmp_path, bad=False):
    return {"presets": [], "folders": [str(image_folder(tmp_path / "stone", bad=bad))], "train": TINY_TRAIN}


CHARACTER_CASES = {
    "model_missing": (
        lambda t: {
            "model": {"path": "/nonexistent/anything-v5.safetensors"},
            "character": {"preset": None, "folder": str(image_folder(t / "mine")), "train": TINY_TRAIN},
        },
        "model.path: /nonexistent/anything-v5.safetensors: no such model",
    ),
    "model_folder_not_diffusers": (
        lambda t: {"model": {"path": str(image_folder(t / "notamodel"))}},
        "model.path: .*notamodel: is a folder without model_index.json",
    ),
    "model_pickle": (lambda t: {"model": {"path": str(t / "m.ckpt")}}, "model.path: .*m.ckpt: is a pickle checkpoint"),
    "character_folder_missing": (
        lambda t: {"character": {"preset": None, "folder": "/nonexistent/char", "train": TINY_TRAIN}},
        "character.folder: /nonexistent/char: no such folder",
    ),
    "stone_folder_missing": (
        lambda t: {"stepping_stone": {"presets": [], "folders": ["/nonexistent/stone"], "train": TINY_TRAIN}},
        r"stepping_stone.folders\[0\]: /nonexistent/stone: no such folder",
    ),
    "stone_folder_corrupt_image": (
        lambda t: {"stepping_stone": stone_folder(t, bad=True)},
        r"stepping_stone.folders\[0\]: .*1 bad training image.*bad.png",
    ),
    "character_folder_corrupt_image": (
        lambda t: {
            "character": {"preset": None, "folder": str(image_folder(t / "mine", bad=True)), "train": TINY_TRAIN}
        },
        "character.folder: .*bad.png.*set character.train.data.skip_bad_images",
    ),
    "character_folder_empty": (
        lambda t: {"character": {"preset": None, "folder": str(_mkdir(t / "empty")), "train": TINY_TRAIN}},
        "character.folder: .*empty: holds no images",
    ),
    "multiplier_nan": (
        lambda t: {"stepping_stone": {"multiplier": NAN}},
        "stepping_stone.multiplier: must be a finite number, got nan",
    ),
    "multiplier_huge": (
        lambda t: {"stepping_stone": {"multiplier": 1e30}},
        r"stepping_stone.multiplier: 1e\+30 is beyond \+-10",
    ),
    "eval_weight_nan": (
        lambda t: {"evaluation": {"weights": [NAN]}},
        r"evaluation.weights\[0\]: must be a finite number, got nan",
    ),
    "eval_guidance_inf": (lambda t: {"evaluation": {"guidance": INF}}, "evaluation.guidance: must be a finite number"),
    "eval_sample_steps_huge": (
        lambda t: {"evaluation": {"sample_steps": 5000}},
        "evaluation.sample_steps: must be 1 to 1000",
    ),
    "eval_threshold": (lambda t: {"evaluation": {"threshold": 2.0}}, r"evaluation.threshold: must be in \[0, 1\]"),
    "eval_prompts_empty": (lambda t: {"evaluation": {"prompts": []}}, "evaluation.prompts: is empty"),
    "eval_character_missing": (
        lambda t: {"evaluation": {"character": str(t / "nobody.toml")}},
        "evaluation.character: .*nobody.toml: no such character file",
    ),
    "eval_prompt_file_missing": (
        lambda t: {"evaluation": {"protocol_prompts": str(t / "prompts.txt")}},
        "evaluation.protocol_prompts: .*prompts.txt: no such prompt file",
    ),
    "stone_preset_bogus": (
        lambda t: {"stepping_stone": {"presets": ["nobody"]}},
        r"stepping_stone.presets\[0\]: nobody: no such character preset",
    ),
    "stone_lr_inf": (
        lambda t: {"stepping_stone": {"train": {"optimizer": {"learning_rate": INF}}}},
        "stepping_stone.train.optimizer.learning_rate: must be a finite number",
    ),
    "character_min_timestep_past": (
        lambda t: {"character": {"preset": "target", "train": {"training": {"min_timestep": 5000}}}},
        "character.train.training.min_timestep: 5000 is past this model's 1000",
    ),
    "hair_distance_inf": (
        lambda t: {"stepping_stone": {"hair_distance": INF}},
        "stepping_stone.hair_distance: must be a finite number",
    ),
    "out_is_a_file": (lambda t: {"out": str(_touch(t / "run"))}, "out: .*run: is a file"),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _touch(path: Path) -> Path:
    path.write_text("")
    return path


@pytest.mark.parametrize("case", list(CHARACTER_CASES))
def test_character_inputs_are_checked_before_the_first_stage(tmp_path, case):
    from sabun.pipelines.character import config_from_dict, run_character

    change, named = CHARACTER_CASES[case]
    (tmp_path / "m.ckpt").write_bytes(b"\x80\x04")
    raw = character_raw(tmp_path, **change(tmp_path))
    messages: list[str] = []
    with pytest.raises(SabunError, match=named):  # at load (config_from_dict) or before the first stage
        run_character(config_from_dict(raw), log=messages.append)
    if case == "out_is_a_file":
        assert (tmp_path / "run").read_text() == ""
    else:
        untouched(tmp_path / "run", messages)


def test_character_set_overrides_are_checked_before_the_first_stage(tmp_path):
    """`sabun character ch.toml --set ...`: the overrides reach the same checks."""
    import tomli_w

    from sabun.pipelines.character import load_character_config, run_character

    path = tmp_path / "ch.toml"
    path.write_text(tomli_w.dumps(character_raw(tmp_path)))
    for override, named in (
        ("stepping_stone.multiplier=nan", "stepping_stone.multiplier: must be a finite"),
        ("evaluation.weights=[nan]", r"evaluation.weights\[0\]: must be a finite"),
    ):
        messages: list[str] = []
        with pytest.raises(SabunError, match=named):
            run_character(load_character_config(path, [override]), log=messages.append)
        untouched(tmp_path / "run", messages)


# --- sabun copy-machine ---------------------------------------------------------------------------

COPY = {
    "model": {"path": "tiny"},
    "b": {"hair_colour": "blue"},
    "copy": {
        "rank": 2,
        "conv_rank": 2,
        "steps_per_round": 1,
        "max_rounds": 1,
        "random_captions": 1,
        "check_prompts": ["1girl, outdoors"],
        "check_seeds": 1,
    },
    "edit": {"rank": 2, "steps": 1},
    "measure": {"prompts": ["1girl, indoors"], "seeds": 1, "steps": 1},
}


@pytest.mark.parametrize(
    "override, named",
    [
        ("edit.learning_rate=inf", "edit.learning_rate: must be a finite number.*got inf"),
        ("copy.learning_rate=nan", "copy.learning_rate: must be a finite number"),
        ("copy.alpha=inf", "copy.alpha: must be a finite number"),
        ("edit.noise_offset=-1", "edit.noise_offset: must be a finite number >= 0"),
        ("copy.noise_offset=inf", "copy.noise_offset: must be a finite number"),
        ("measure.guidance=nan", "measure.guidance: must be a finite"),
        ("measure.steps=5000", "measure.steps: must be 1 to 1000"),
        ("edit.seed=-1", "edit.seed: must be"),
    ],
)
def test_copy_machine_config_is_checked_when_loaded(tmp_path, override, named):
    import tomli_w

    from sabun.pipelines.copy_machine import load_copy_machine_config

    path = tmp_path / "cm.toml"
    path.write_text(tomli_w.dumps(COPY | {"output": {"dir": "run"}}))
    with pytest.raises(SabunError, match=f"cm.toml: {named}"):
        load_copy_machine_config(path, [override])
    untouched(tmp_path / "run")


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"model": {"path": "/nonexistent/model.safetensors"}},
            "model.path: /nonexistent/model.safetensors: no such model",
        ),
        ({"a": {"image": "MISSING"}, "b": {"image": "MISSING_B"}}, "a.image: .*missing_a.png: no such image file"),
        ({"output": {"dir": "FILE"}}, "output.dir: .*afile: is a file"),
    ],
)
def test_copy_machine_inputs_are_checked_before_the_first_stage(tmp_path, change, named):
    from sabun.pipelines.copy_machine import CopyMachineConfig, run_copy_machine
    from sabun.train.config import from_dict

    (tmp_path / "afile").write_text("")
    paths = {
        "MISSING": str(tmp_path / "missing_a.png"),
        "MISSING_B": str(tmp_path / "missing_b.png"),
        "FILE": str(tmp_path / "afile"),
    }
    raw = COPY | {"output": {"dir": str(tmp_path / "run")}}
    for name, values in change.items():
        raw[name] = {k: paths.get(v, v) for k, v in values.items()}
    messages: list[str] = []
    with pytest.raises(SabunError, match=named):
        run_copy_machine(from_dict(CopyMachineConfig, raw), log=messages.append)
    untouched(tmp_path / "run", messages)
    assert (tmp_path / "afile").read_text() == ""


# --- sabun toyworld pretrain ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, named",
    [
        ({"batch": 0}, "--batch: must be a whole number >= 1, got 0"),
        ({"three_d_share": 2.0}, r"--three-d-share: must be a finite number in \[0, 0.5\], got 2.0"),
        ({"three_d_share": NAN}, "--three-d-share: must be a finite number"),
        ({"steps": 0}, "--steps: must be a whole number >= 1, got 0"),
        ({"vae_steps": 0}, "--vae-steps: must be a whole number >= 1"),
        ({"images": 1}, r"--images: 1 is fewer than one batch \(--batch 2\)"),
        ({"images": 0}, "--images: must be a whole number >= 1"),
        ({"seed": -1}, "--seed: must be a whole number from 0"),
        ({"lr": INF}, "lr: must be a finite number > 0"),
        ({"vae_crop": 30}, "vae_crop: must be a multiple of 4"),
        ({"vae_crop": 128}, "vae_crop: must be a whole number from 8 to 64"),
        ({"ema_decay": 1.0}, r"ema_decay: must be a finite number in \[0, 1\)"),
        ({"checkpoint_every": 0}, "checkpoint_every: must be a whole number >= 1"),
        ({"tag_dropout": -0.1}, r"tag_dropout: must be a finite number in \[0, 1\]"),
        ({"prediction_type": "sample"}, "prediction_type: must be one of epsilon, v_prediction, got 'sample'"),
        ({"prediction_type": "epsilon"}, "zero_terminal_snr: needs prediction_type=v_prediction"),
        ({"cross_attention_16": "yes"}, "cross_attention_16: must be true or false"),
        ({"snapshot_every": -1}, "snapshot_every: must be a whole number >= 0"),
        ({"export_weights": "best"}, "export_weights: must be `ema` or `raw`, got 'best'"),
        ({"init_from": "toy"}, "init_from: 'toy''s U-Net reads its own VAE's latents; set vae_from=toy too"),
    ],
)
def test_pretrain_options_are_checked_before_anything_is_written(tmp_path, change, named):
    from sabun.toyworld.pretrain import PretrainConfig

    with pytest.raises(SabunError, match=named):
        PretrainConfig(**({"images": 16, "vae_steps": 1, "steps": 1, "batch": 2} | change))


def test_pretrain_vae_from_names_a_folder_without_a_vae(tmp_path):
    from sabun.toyworld.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(images=4, vae_steps=1, steps=1, batch=2, vae_from=str(tmp_path / "nothing"))
    with pytest.raises(SabunError, match="nothing: no vae/config.json; vae_from takes `toy` or a toy model folder"):
        pretrain(tmp_path / "p", config, stages=("data", "vae"))
    assert not (tmp_path / "p" / "vae.pt").exists()


def test_pretrain_refuses_unknown_stages_and_a_file_as_its_folder(tmp_path):
    from sabun.toyworld.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(images=16, vae_steps=1, steps=1, batch=2)
    with pytest.raises(SabunError, match="stages bogus: choose from data, vae"):
        pretrain(tmp_path / "p", config, stages=("data", "bogus"))
    untouched(tmp_path / "p")
    (tmp_path / "f").write_text("keep")
    with pytest.raises(SabunError, match="f: is a file"):
        pretrain(tmp_path / "f", config)
    assert (tmp_path / "f").read_text() == "keep"


# --- sabun toyworld check / check-vrm --------------------------------------------------------------


@pytest.mark.parametrize(
    "change, named",
    [
        ({"count": 0, "three_d_count": 0}, "--count 0: give at least 1"),
        ({"count": -1}, "--count -1: give at least 1"),
        ({"three_d_count": -1}, "--three-d-count -1: give 0"),
    ],
)
def test_toy_check_options_are_checked_before_the_model_is_loaded(tmp_path, monkeypatch, change, named):
    import sabun.evaluate.toy_check
    from sabun.evaluate.toy_check import check_model
    from sabun.generate import Sampler

    monkeypatch.setattr(sabun.evaluate.toy_check, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SabunError, match=named):
        check_model("tiny", tmp_path / "ck", **({"count": 1, "three_d_count": 1, "sampler": Sampler(steps=1)} | change))
    untouched(tmp_path / "ck")


def test_toy_check_refuses_existing_outputs_before_any_work(tmp_path, monkeypatch):
    import sabun.evaluate.toy_check
    from sabun.evaluate.toy_check import check_model
    from sabun.generate import Sampler

    monkeypatch.setattr(sabun.evaluate.toy_check, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "generations.txt").write_text("mine")
    with pytest.raises(SabunError, match="generations.txt: already exists"):
        check_model("tiny", tmp_path / "ck", count=1, three_d_count=0, sampler=Sampler(steps=1))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["generations.txt"]
    assert (tmp_path / "ck" / "generations.txt").read_text() == "mine"


def test_toy_check_refuses_a_model_that_does_not_draw_64_px_images(tmp_path, monkeypatch):
    import sabun.evaluate.toy_check
    from sabun.evaluate.toy_check import check_model
    from sabun.generate import Sampler
    from sabun.models.tiny import build_tiny_pipeline

    monkeypatch.setattr(
        sabun.evaluate.toy_check, "load_pipeline", lambda *a, **k: build_tiny_pipeline(sample_size=16)
    )  # 32 px images
    with pytest.raises(
        SabunError, match="big.safetensors: draws 32 px images, and the toy evaluator reads the toy model's 64 px ones"
    ):
        check_model("big.safetensors", tmp_path / "ck", count=1, three_d_count=1, sampler=Sampler(steps=1))
    untouched(tmp_path / "ck")


def test_toy_check_runs_with_fewer_images_than_a_sheet(tmp_path):
    """One generation and no `3d` set: the sheet is one cell (it was 8 x 4 only)."""
    from sabun.evaluate.toy_check import check_model
    from sabun.generate import Sampler

    results = check_model("tiny", tmp_path / "ck", count=1, three_d_count=0, sampler=Sampler(steps=1))
    assert results["prompts"]["count"] == 1 and "prompts_with_3d" not in results
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["check.json", "generations.png", "generations.txt"]


@pytest.mark.parametrize(
    "change, named",
    [
        ({"count": -1}, "--count -1: give 0"),
        ({"seed": -1}, "--seed -1: give a whole number"),
        ({"styles": ()}, "--styles '': choose from"),
        ({"styles": ("pbr",)}, "--styles 'pbr': choose from"),
        ({"size": 32}, "size 32: the toy evaluator reads 64 px images"),
        ({"supersample": 0}, "supersample 0: give 1 to 4"),
    ],
)
def test_check_vrm_options_are_checked_before_any_export(tmp_path, change, named):
    from sabun.evaluate.vrm_check import check_exported

    with pytest.raises(SabunError, match=named):
        check_exported(tmp_path / "cv", **({"count": 0, "styles": ("lit",)} | change))
    untouched(tmp_path / "cv")


# --- sabun render toy -----------------------------------------------------------------------------


def full_disk_after(monkeypatch, writes: int) -> None:
    """Path.write_bytes fails with ENOSPC after `writes` successful calls (a disk filling up)."""
    original = Path.write_bytes
    count = {"n": 0}

    def write_bytes(self, data):
        count["n"] += 1
        if count["n"] > writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_render_toy_on_a_full_disk_leaves_nothing_new(tmp_path, monkeypatch):
    from sabun.toyworld.commands import RenderToyConfig, render_toy

    config = RenderToyConfig(
        out=tmp_path / "new" / "rt",
        style="anime",
        character="target",
        views=("front", "behind"),
        zooms=("portrait", "full-body"),
    )
    full_disk_after(monkeypatch, 7)
    with pytest.raises(SabunError, match=r"rt/target_anime_00002.json: No space left on device; free some space"):
        render_toy(config)
    assert sorted(tmp_path.iterdir()) == []  # not even the folders made for it
    monkeypatch.undo()

    # into a folder that holds files already: they stay, and none of the new set is added
    existing = tmp_path / "rt"
    existing.mkdir()
    (existing / "mine.png").write_bytes(b"mine")
    full_disk_after(monkeypatch, 7)
    with pytest.raises(SabunError, match="No space left on device"):
        render_toy(
            RenderToyConfig(
                out=existing,
                style="anime",
                character="target",
                views=("front", "behind"),
                zooms=("portrait", "full-body"),
            )
        )
    assert [p.name for p in tmp_path.iterdir()] == ["rt"]  # no temporary left beside it
    assert [p.name for p in existing.iterdir()] == ["mine.png"] and (existing / "mine.png").read_bytes() == b"mine"


def test_render_toy_moves_a_complete_set_into_place(tmp_path):
    from sabun.toyworld.commands import RenderToyConfig, render_toy

    out = tmp_path / "rt"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    written = render_toy(
        RenderToyConfig(out=out, style="anime", character="target", views=("front",), zooms=("portrait", "full-body"))
    )
    assert [p.name for p in written] == ["target_anime_00000.png", "target_anime_00001.png"]
    assert len(list(out.iterdir())) == 1 + 2 * 3 and [p.name for p in tmp_path.iterdir()] == ["rt"]
    assert oct((out / "target_anime_00000.png").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    fresh = render_toy(
        RenderToyConfig(
            out=tmp_path / "a" / "b", style="anime", character="target", views=("front",), zooms=("portrait",)
        )
    )
    assert fresh[0].is_file() and oct((tmp_path / "a" / "b").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    from sabun.io import umask

    return umask()
