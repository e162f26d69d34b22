"""Bad `sabun train` inputs: each is a one-line SabunError naming the field (or file), raised before
anything is written, and with `--overwrite` before an earlier run's outputs are touched."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch
from test_train import BASE_TOML, write_images

from sabun.errors import SabunError
from sabun.train import load_config, train
from sabun.train.checkpoint import checkpoint_path, list_checkpoints


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- refused when the config is loaded --------------------------------------------------------

LOAD = [
    # 1. optimizer fields
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay: must be in [0, 10], got -1"),
    (["optimizer.weight_decay=nan"], "optimizer.weight_decay: must be a finite number"),
    (["optimizer.eps=-1"], "optimizer.eps: must be in (0, 1]"),
    (["optimizer.eps=0"], "optimizer.eps: must be in (0, 1], got 0"),
    (["optimizer.type=sgd", "optimizer.momentum=-1"], "optimizer.momentum: must be in [0, 1)"),
    (["optimizer.type=sgd", "optimizer.momentum=nan"], "optimizer.momentum: must be a finite number"),
    (["optimizer.betas=[0.9, nan]"], "optimizer.betas[1]: must be a finite number"),
    (["optimizer.max_grad_norm=inf"], "optimizer.max_grad_norm: must be a finite number"),
    # 2. / 10. every float finite, in a range, naming its own field
    (["optimizer.learning_rate=inf"], "optimizer.learning_rate: must be a finite number"),
    (["optimizer.text_encoder_lr=inf"], "optimizer.text_encoder_lr: must be a finite number"),
    (["training.noise_offset=inf"], "training.noise_offset: must be a finite number"),
    (["training.noise_offset=2"], "training.noise_offset: must be in [0, 1]"),
    (["training.min_snr_gamma=inf"], "training.min_snr_gamma: must be a finite number"),
    (["network.alpha=1e30"], "network.alpha: must be in (0, 400]"),
    (["network.conv_rank=4", "network.conv_alpha=nan"], "network.conv_alpha: must be a finite number"),
    (["sampling.guidance_scale=nan"], "sampling.guidance_scale: must be a finite number"),
    (["sampling.multipliers=[nan]"], "sampling.multipliers[0]: must be a finite number"),
    (["sampling.multipliers=[1.0, 20]"], "sampling.multipliers[1]: 20 is beyond +-10"),
    (["sampling.steps=5000"], "sampling.steps: must be in [1, 1000]"),
    (
        ['model.base_weights=[{path = "stone.safetensors", multiplier = 1e30}]'],
        "model.base_weights[0].multiplier: 1e+30 is beyond +-10",
    ),
    (
        ['model.base_weights=[{path = "stone.safetensors", multiplier = nan}]'],
        "model.base_weights[0].multiplier: must be a finite number",
    ),
    # 4. seeds
    (["training.seed=-1", "validation.split=0.5"], "training.seed: must be in [0, 4294967295], got -1"),
    (["sampling.seeds=[0, -5]"], "sampling.seeds[1]: must be in [0,"),
    # 5. sample sizes
    (["sampling.every_n_steps=1", "sampling.width=33"], "sampling.width: must be a multiple of 8"),
    (["sampling.every_n_steps=1", "sampling.width=0"], "sampling.width: must be >= 8, got 0; leave it out"),
    (["sampling.height=8192"], "sampling.height: must be <= 4096, got 8192"),
    # 6. repeats in the config
    (["datasets.0.repeats=0"], "datasets[0].repeats: must be in [1, 10000], got 0"),
    (["datasets.0.repeats=1000000000"], "datasets[0].repeats: must be in [1, 10000]"),
    # 7. output names (a quoted --set value is a TOML string, so escapes work)
    (['output.name="a\\u0000b"'], "output.name: holds a control character ('\\x00')"),
    (['output.name="a\\nb"'], "output.name: holds a control character ('\\n')"),
    (["output.name=.."], "output.name: must not start with `.` or hold `..`"),
    (["output.name=a/b"], "output.name: must be a file name without folders"),
    (["output.name=a:b"], "output.name: must be a file name without folders"),
    (['output.dir="o\\u0000ut"'], "output.dir: holds a NUL byte"),
    (['datasets.0.path="da\\u0000ta"'], "datasets[0].path: holds a NUL byte"),
    # 8. sizes that cannot fit in memory
    (["data.resolution=30000"], "data.resolution: must be <= 4096, got 30000; a larger side does not fit in memory"),
    (["datasets.0.resolution=30000"], "datasets[0].resolution: must be <= 4096"),
    (["data.max_bucket=100000"], "data.max_bucket: must be in [1, 8192]"),
    (["data.resolution=4"], "data.resolution: must be >= 8, got 4"),
    (["data.bucket_step=100000"], "data.bucket_step: must be in [1, 4096]"),
]


@pytest.mark.parametrize("overrides, needle", LOAD, ids=[" ".join(o) for o, _ in LOAD])
def test_a_bad_setting_is_refused_when_the_config_is_loaded(tmp_path, overrides, needle):
    write_images(tmp_path / "data", 2)
    (tmp_path / "train.toml").write_text(BASE_TOML)
    with pytest.raises(SabunError) as info:
        load_config(tmp_path / "train.toml", overrides)
    message = str(info.value)
    assert needle in message and message.startswith(f"{tmp_path / 'train.toml'}: "), message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()


# --- refused when the model, data or network is set up, before an earlier run is touched ---------


def zero_repeats(root: Path) -> list[str]:
    write_images(root / "kohya/0_char", 2)
    return ["datasets.0.path=kohya"]


def many_repeats(root: Path) -> list[str]:
    write_images(root / "kohya/99999_char", 2)
    return ["datasets.0.path=kohya"]


def fifo(root: Path) -> list[str]:
    os.mkfifo(root / "data/pipe.png")
    return []


def dangling(root: Path) -> list[str]:
    (root / "data/gone.png").symlink_to(root / "data/nowhere.png")
    return []


def corrupt(root: Path) -> list[str]:
    (root / "data/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return []


def settings(*overrides: str):
    return lambda root: list(overrides)


RUN = [
    (
        "clip_skip",
        settings("model.clip_skip=100"),
        "model.clip_skip: 100 is more layers than the text encoder of tiny has; the largest clip_skip for it is 2",
    ),
    ("rank", settings("network.rank=1000"), "network.rank: 1000 is larger than the model's layer"),
    ("rank_message", settings("network.rank=1000"), "the largest rank for tiny is 32"),
    ("conv_rank", settings("network.conv_rank=100000"), "network.conv_rank: 100000 is larger than the model's layer"),
    ("zero_repeats", zero_repeats, "0_char: the folder name says 0 repeats"),
    ("many_repeats", many_repeats, "99999_char: the folder name says 99999 repeats; at most 10000"),
    ("fifo", fifo, "pipe.png: a named pipe (FIFO), not an image file"),
    ("dangling", dangling, "gone.png: a symbolic link to"),
    ("corrupt", corrupt, "broken.png: unreadable"),
]

EARLIER = [
    "test.safetensors",
    "test.toml",
    "checkpoints/test-step000002/lora.safetensors",
    "checkpoints/test-step000002/state.pt",
]


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("setup, needle", [(s, n) for _, s, n in RUN], ids=[i for i, _, _ in RUN])
def test_a_bad_run_is_refused_before_an_earlier_run_is_overwritten(tmp_path, tiny_pipe, setup, needle):
    write_images(tmp_path / "data", 2)
    (tmp_path / "train.toml").write_text(BASE_TOML)
    for name in EARLIER:  # an earlier run's output and checkpoint, which --overwrite would replace
        (tmp_path / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / name).write_bytes(name.encode())
    before = tree(tmp_path / "out")
    config = load_config(tmp_path / "train.toml", setup(tmp_path))
    with pytest.raises(SabunError) as info:
        train(config, overwrite=True, pipe=tiny_pipe)
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert tree(tmp_path / "out") == before
    assert [step for step, _ in list_checkpoints(tmp_path / "out", "test")] == [2]


def test_overwrite_removes_the_earlier_checkpoints_once_the_new_run_starts(tmp_path, tiny_pipe):
    write_images(tmp_path / "data", 2)
    (tmp_path / "train.toml").write_text(BASE_TOML)
    earlier = checkpoint_path(tmp_path / "out", "test", 2)
    earlier.mkdir(parents=True)
    (earlier / "lora.safetensors").write_bytes(b"x")
    (earlier / "state.pt").write_bytes(b"x")
    result = train(load_config(tmp_path / "train.toml", ["training.max_steps=1"]), overwrite=True, pipe=tiny_pipe)
    assert result.lora_path.is_file() and not earlier.exists()


# --- reading configs and --set values ------------------------------------------------------------


def test_a_config_with_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "train.toml").write_bytes(b"\xef\xbb\xbf" + BASE_TOML.encode())
    assert load_config(tmp_path / "train.toml").output.name == "test"


def test_a_quoted_set_value_is_a_toml_string(tmp_path):
    (tmp_path / "train.toml").write_text(BASE_TOML)
    config = load_config(tmp_path / "train.toml", ['optimizer.type="sgd"', "output.name=123", "datasets.0.default_caption='1girl, solo'",
                                                    'sampling.negative_prompt=bad hands, "blurry"'])  # fmt: skip
    assert config.optimizer.type == "sgd" and config.output.name == "123"
    assert (
        config.datasets[0].default_caption == "1girl, solo" and config.sampling.negative_prompt == 'bad hands, "blurry"'
    )


def test_a_large_base_weight_multiplier_is_allowed_when_forced(tmp_path):
    (tmp_path / "train.toml").write_text(BASE_TOML)
    config = load_config(
        tmp_path / "train.toml", ['model.base_weights=[{path = "stone.safetensors", multiplier = 20, force = true}]']
    )
    assert config.model.base_weights[0].multiplier == 20


def test_the_cli_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    from sabun.cli import main

    (tmp_path / "train.toml").write_text(BASE_TOML)
    monkeypatch.setattr(sys, "argv", ["sabun", "train", str(tmp_path / "train.toml"), "--set", "optimizer.eps=0"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "optimizer.eps: must be in (0, 1], got 0" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
