"""The trainer on the tiny model (CPU): learning, invariants, stepping-stones, resume, processes, errors, CLI."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sabun.errors import SabunError
from sabun.lora.file import file_sha256, load_lora, save_lora
from sabun.lora.network import LoRANetwork
from sabun.lora.targets import pipeline_targets
from sabun.train import load_config, train
from sabun.train.checkpoint import list_checkpoints
from sabun.train.model import encode_ids, tokenize

BASE_TOML = """
[model]
path = "tiny"

[[datasets]]
path = "data"

[data]
resolution = 32
bucket_step = 8

[network]
rank = 4
alpha = 4

[optimizer]
learning_rate = 1e-3

[training]
max_steps = 4

[output]
dir = "out"
name = "test"
progress_bar = false
tensorboard = false
"""


def write_images(
    folder: Path, count: int, size: tuple[int, int] = (32, 32), caption: str = "1girl, red hair", seed: int = 0
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        # smooth colour blobs rather than white noise: something a model can learn quickly
        base = rng.random((4, 4, 3)) * 255
        image = Image.fromarray(base.astype("uint8")).resize(size, Image.Resampling.BICUBIC)
        image.save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as in the subprocesses below: the tiny model's ops are too small to
    gain from two, and on a shared, busy machine spinning OpenMP threads make steps 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    write_images(tmp_path / "data", 2)
    (tmp_path / "train.toml").write_text(BASE_TOML)
    return tmp_path


def config(workdir: Path, *overrides: str):
    return load_config(workdir / "train.toml", list(overrides))


def fixed_noise_loss(pipe, lora_path: Path | None, image_path: Path, caption: str) -> float:
    """The denoising loss on one image at fixed timesteps and noise, with an optional LoRA applied."""
    from sabun.data.cache import encode_pixels
    from sabun.data.images import open_rgb, to_tensor

    network = None
    if lora_path is not None:
        network = LoRANetwork.from_lora(load_lora(lora_path), pipeline_targets(pipe)).attach()
    try:
        with torch.no_grad():
            latents = encode_pixels(pipe.vae, to_tensor(open_rgb(image_path))[None]).expand(8, -1, -1, -1)
            text = encode_ids(pipe.text_encoder, tokenize(pipe.tokenizer, [caption] * 8))
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(123))
            timesteps = torch.linspace(50, 950, 8).long()
            noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
            return (pipe.unet(noisy, timesteps, text).sample - noise).pow(2).mean().item()
    finally:
        if network is not None:
            network.detach()


def test_a_short_run_lowers_the_loss_on_one_image(tmp_path, tiny_pipe):
    write_images(tmp_path / "data", 1)
    (tmp_path / "train.toml").write_text(BASE_TOML)
    cfg = config(
        tmp_path, "training.max_steps=30", "optimizer.learning_rate=3e-3", "data.batch_size=4", "datasets.0.repeats=4"
    )
    before = fixed_noise_loss(tiny_pipe, None, tmp_path / "data/img0.png", "1girl, red hair")
    result = train(cfg, pipe=tiny_pipe)
    after = fixed_noise_loss(tiny_pipe, result.lora_path, tmp_path / "data/img0.png", "1girl, red hair")
    assert after < 0.9 * before, (before, after)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])


def test_timestep_range_limits_what_the_unet_sees(workdir, tiny_pipe):
    seen = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[1].clone()))
    try:
        train(
            config(workdir, "training.min_timestep=600", "training.max_timestep=700", "data.batch_size=2"),
            pipe=tiny_pipe,
        )
    finally:
        hook.remove()
    timesteps = torch.cat(seen)
    assert len(timesteps) == 8 and timesteps.min() >= 600 and timesteps.max() < 700
    with pytest.raises(SabunError, match="max_timestep: must be > min_timestep"):
        config(workdir, "training.min_timestep=600", "training.max_timestep=600")
    with pytest.raises(SabunError, match=r"training.max_timestep: 1200 is past this model's 1000"):
        train(config(workdir, "training.max_timestep=1200", "output.name=past"), pipe=tiny_pipe)


def test_bf16_mixed_precision_trains_nearly_the_fp32_lora(workdir, tiny_pipe):
    import copy

    fp32 = load_lora(train(config(workdir), pipe=copy.deepcopy(tiny_pipe)).lora_path)
    bf16 = load_lora(
        train(config(workdir, "training.mixed_precision=bf16", "output.name=bf16"), pipe=tiny_pipe).lora_path
    )
    assert bf16.weights.keys() == fp32.weights.keys()
    assert all(w.up.dtype == torch.float32 and torch.isfinite(w.up).all() for w in bf16.weights.values())
    a, b = (torch.cat([w.up.flatten() for _, w in sorted(lora.weights.items())]) for lora in (fp32, bf16))
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9


def test_only_lora_parameters_change(workdir, tiny_pipe):
    before = {
        f"{c}.{k}": v.clone()
        for c in ("unet", "text_encoder", "vae")
        for k, v in getattr(tiny_pipe, c).state_dict().items()
    }
    result = train(config(workdir), pipe=tiny_pipe)
    after = {
        f"{c}.{k}": v for c in ("unet", "text_encoder", "vae") for k, v in getattr(tiny_pipe, c).state_dict().items()
    }
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    lora = load_lora(result.lora_path)
    assert any(n.startswith("lora_te_") for n in lora.weights) and any(n.startswith("lora_unet_") for n in lora.weights)
    assert all(w.up.abs().max() > 0 for w in lora.weights.values())  # every LoRA layer was trained


def test_output_loads_in_diffusers_and_changes_the_images(workdir, tiny_pipe):
    result = train(config(workdir, "optimizer.learning_rate=1e-2"), pipe=tiny_pipe)
    metadata = load_lora(result.lora_path).metadata
    assert metadata["ss_steps"] == "4" and metadata["ss_network_dim"] == "4" and metadata["ss_output_name"] == "test"
    assert json.loads(metadata["ss_tag_frequency"]) == {"data": {"1girl": 2, "red hair": 2}}
    assert (workdir / "out/test.toml").is_file()

    def image():
        return np.asarray(
            tiny_pipe(
                "1girl", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
            ).images[0]
        )

    plain = image()
    tiny_pipe.load_lora_weights(str(result.lora_path))
    with_lora = image()
    tiny_pipe.unload_lora_weights()
    assert np.abs(with_lora - plain).max() > 1e-3


def test_stepping_stone_changes_the_result_and_is_recorded(workdir, tiny_pipe, make_lora):
    stone = workdir / "stone.safetensors"
    save_lora(make_lora(tiny_pipe, rank=4, seed=7), stone)
    weights_before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    plain = train(config(workdir, "output.name=plain"), pipe=tiny_pipe)
    stepped = train(
        config(workdir, "output.name=stepped", f'model.base_weights=[{{path = "{stone}", multiplier = 0.8}}]'),
        pipe=tiny_pipe,
    )
    a, b = load_lora(plain.lora_path), load_lora(stepped.lora_path)
    assert max((a.weights[n].up - b.weights[n].up).abs().max().item() for n in a.weights) > 1e-6
    assert json.loads(a.metadata["sabun_base_weights"]) == []
    assert json.loads(b.metadata["sabun_base_weights"]) == [
        {"path": str(stone), "sha256": file_sha256(stone), "multiplier": 0.8}
    ]
    assert json.loads(b.metadata["sabun_config"])["model"]["base_weights"][0]["multiplier"] == 0.8
    # the caller's pipeline is handed back plain: the stepping-stone was merged only for training
    assert all(torch.equal(weights_before[k], v) for k, v in tiny_pipe.unet.state_dict().items())


def test_sample_grids_show_training_and_plain_model(workdir, tiny_pipe, make_lora):
    stone = workdir / "stone.safetensors"
    save_lora(make_lora(tiny_pipe, rank=4, seed=7), stone)
    cfg = config(workdir, "sampling.every_n_steps=2", "sampling.steps=2", "sampling.multipliers=[0.0, 1.0]", 'sampling.prompts=["1girl", "solo"]',
                 f'model.base_weights=[{{path = "{stone}"}}]')  # fmt: skip
    result = train(cfg, pipe=tiny_pipe)
    assert [p.name for p in result.samples] == ["test-step000002.png", "test-step000004.png"]
    grid = np.asarray(Image.open(result.samples[-1]))
    # columns: train x1 | plain x0 | plain x1, each cell enlarged to 96 px; rows: two prompts
    assert grid.shape == (14 + 2 * 96, 3 * 96, 3)
    train_cell, plain_cell = grid[14:110, 0:96], grid[14:110, 192:288]
    assert np.abs(train_cell.astype(int) - plain_cell.astype(int)).max() > 0  # the stepping-stone shows


def test_cached_and_uncached_latents_train_the_same(workdir, tiny_pipe):
    cached = train(config(workdir, "output.name=cached"), pipe=tiny_pipe)
    on_disk = train(config(workdir, "output.name=disk", "data.cache_latents=disk"), pipe=tiny_pipe)
    uncached = train(config(workdir, "output.name=uncached", "data.cache_latents=none"), pipe=tiny_pipe)
    a, b, c = (load_lora(r.lora_path) for r in (cached, on_disk, uncached))
    assert len(list((workdir / "out/latent_cache").glob("*.safetensors"))) == 2
    for name in a.weights:
        assert torch.equal(a.weights[name].up, b.weights[name].up)
        assert torch.allclose(a.weights[name].up, c.weights[name].up, atol=1e-6)


def test_validation_loss_is_logged_with_fixed_noise(tmp_path, tiny_pipe):
    write_images(tmp_path / "data", 4)
    (tmp_path / "train.toml").write_text(BASE_TOML)
    result = train(
        config(tmp_path, "validation.split=0.25", "validation.every_n_steps=2", "output.tensorboard=true"),
        pipe=tiny_pipe,
    )
    assert sorted(result.validation) == [2, 4]
    assert all(np.isfinite(v) for v in result.validation.values())
    assert load_lora(result.lora_path).metadata["ss_num_train_images"] == "3"
    assert list((tmp_path / "out/logs/test").glob("events.out.tfevents.*"))


def test_bad_images_are_all_listed_before_training(workdir):
    bad = workdir / "data"
    (bad / "empty.png").write_bytes(b"")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGB", (8, 8)).save(bad / "tiny.png")
    with pytest.raises(SabunError) as info:
        train(config(workdir))
    message = str(info.value)
    assert "3 bad training image(s)" in message
    assert (
        "empty.png: empty" in message and "broken.png: unreadable" in message and "tiny.png: too small (8x8" in message
    )
    assert "data.skip_bad_images" in message
    assert not (workdir / "out").exists()  # failed before anything was written

    with pytest.warns(UserWarning, match="skipping 3 bad"):
        result = train(config(workdir, "data.skip_bad_images=true", "training.max_steps=1"))
    assert load_lora(result.lora_path).metadata["ss_num_train_images"] == "2"


def test_a_diverging_run_stops_and_writes_no_blown_up_weights(workdir, tiny_pipe):
    cfg = config(
        workdir,
        "optimizer.learning_rate=1e15",
        "checkpoint.every_n_steps=1",
        "training.max_steps=6",
        "optimizer.max_grad_norm=0",
    )
    stopped = r"(training loss is (nan|inf) at step \d+|the LoRA's weights at step \d+ are out of range .*), so training stopped"
    with pytest.raises(SabunError, match=stopped) as info:
        train(cfg, pipe=tiny_pipe)
    for _, path in list_checkpoints(workdir / "out", "test"):  # every checkpoint kept is one a reader accepts
        lora = load_lora(path / "lora.safetensors")
        assert all(torch.isfinite(w.up).all() and torch.isfinite(w.down).all() for w in lora.weights.values())
    if list_checkpoints(workdir / "out", "test"):
        assert str(list_checkpoints(workdir / "out", "test")[-1][1]) in str(info.value)
    assert not (workdir / "out/test.safetensors").exists()


def test_a_non_finite_loss_stops_with_the_last_good_checkpoint_kept(workdir, tiny_pipe, monkeypatch):
    from sabun.train import trainer

    cfg = config(workdir, "checkpoint.every_n_steps=1", "training.max_steps=6")
    real, calls = trainer.diffusion_loss, {"n": 0}

    def poisoned(*args, **kwargs):  # the loss turns NaN from the fourth step on
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 4 else loss

    monkeypatch.setattr(trainer, "diffusion_loss", poisoned)
    with pytest.raises(
        SabunError,
        match=r"training loss is nan at step \d+, so training stopped; the last good checkpoint is kept at \S+test-step\d+",
    ) as info:
        train(cfg, pipe=tiny_pipe)
    checkpoints = list_checkpoints(workdir / "out", "test")
    assert checkpoints and str(checkpoints[-1][1]) in str(info.value)
    load_lora(checkpoints[-1][1] / "lora.safetensors")  # valid
    assert not (workdir / "out/test.safetensors").exists()


def test_outputs_are_not_overwritten_without_asking(workdir, tiny_pipe):
    train(config(workdir, "training.max_steps=1"), pipe=tiny_pipe)
    with pytest.raises(SabunError, match="already exists.*--overwrite"):
        train(config(workdir, "training.max_steps=1"), pipe=tiny_pipe)
    train(config(workdir, "training.max_steps=1"), pipe=tiny_pipe, overwrite=True)


# --- processes: resume after SIGKILL, Ctrl-C, two processes, the CLI ------------------------------


def sabun(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "sabun", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for_checkpoint(workdir: Path, process: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while not list_checkpoints(workdir / "out", "test"):
        if process.poll() is not None:
            pytest.fail(f"training ended before its first checkpoint: {process.stderr.read()}")
        if time.time() > deadline:
            process.kill()
            pytest.fail("no checkpoint within the time limit")
        time.sleep(0.02)


def test_sigkill_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(workdir, tiny_pipe):
    overrides = ["training.max_steps=12", "checkpoint.every_n_steps=2", "data.batch_size=2", "training.noise_offset=0.05",
                 "datasets.0.shuffle_caption=true", "datasets.0.flip=true", "schedule.type=cosine", "schedule.warmup_steps=2"]  # fmt: skip
    killed = sabun("train", "train.toml", *[a for o in overrides for a in ("--set", o)], cwd=workdir)
    wait_for_checkpoint(workdir, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (workdir / "out/test.safetensors").exists(), "the run finished before it could be killed"
    resumed_from = list_checkpoints(workdir / "out", "test")[-1][0]
    assert resumed_from < 12

    resumed = train(config(workdir, *overrides), resume=True, pipe=tiny_pipe)
    assert resumed.step == 12 and len(resumed.losses) == 12 - resumed_from
    uninterrupted = train(config(workdir, *overrides, "output.name=whole"), pipe=tiny_pipe)
    a, b = load_lora(resumed.lora_path), load_lora(uninterrupted.lora_path)
    diff = max(
        max(
            (a.weights[n].up - b.weights[n].up).abs().max().item(),
            (a.weights[n].down - b.weights[n].down).abs().max().item(),
        )
        for n in a.weights
    )
    assert diff <= 1e-6
    assert resumed.losses == pytest.approx(uninterrupted.losses[resumed_from:], abs=1e-6)


def test_ctrl_c_writes_a_checkpoint_and_the_printed_command_resumes_it(workdir):
    run = sabun(
        "train", "train.toml", "--set", "training.max_steps=1000", "--set", "checkpoint.every_n_steps=1", cwd=workdir
    )
    wait_for_checkpoint(workdir, run)
    first = list_checkpoints(workdir / "out", "test")[-1][0]
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    stopped = list_checkpoints(workdir / "out", "test")[-1][0]
    assert stopped > first
    hint = re.search(r"continue with: (.+)", stderr)
    assert hint, stderr
    command = shlex.split(hint.group(1))
    assert command[:3] == ["sabun", "train", "train.toml"]
    assert "--set=training.max_steps=1000" in command  # the run's overrides are kept
    # the printed command, with the run shortened (a later --set wins; max_steps may change on resume)
    resumed = sabun(*command[1:], "--set", f"training.max_steps={stopped + 1}", cwd=workdir)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert load_lora(workdir / "out/test.safetensors").metadata["ss_steps"] == str(stopped + 1)


def test_a_bare_resume_flag_means_the_latest_checkpoint(workdir):
    killed = sabun(
        "train", "train.toml", "--set", "training.max_steps=1000", "--set", "checkpoint.every_n_steps=1", cwd=workdir
    )
    wait_for_checkpoint(workdir, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    step = list_checkpoints(workdir / "out", "test")[-1][0]
    done = sabun("train", "train.toml", "--resume", "--set", f"training.max_steps={step + 1}", cwd=workdir)
    _, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr
    assert load_lora(workdir / "out/test.safetensors").metadata["ss_steps"] == str(step + 1)


def test_a_run_killed_between_its_lora_and_its_config_resumes(workdir, tiny_pipe):
    cfg = config(workdir, "training.max_steps=4", "checkpoint.every_n_steps=2")
    train(cfg, pipe=tiny_pipe)
    cfg.config_path.unlink()  # as if killed after the LoRA was written, before its .toml
    with pytest.raises(SabunError, match="already exists"):
        train(cfg, pipe=tiny_pipe)  # not resuming: the file is still protected
    result = train(cfg, resume=True, pipe=tiny_pipe)
    assert result.config_path.exists() and load_lora(result.lora_path).metadata["ss_steps"] == "4"


def test_two_cpu_processes_complete(workdir):
    write_images(workdir / "data", 4)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sabun", "train", "train.toml",
               "--set", "training.max_steps=3", "--set", "data.batch_size=2", "--set", "checkpoint.every_n_steps=2"]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metadata = load_lora(workdir / "out/test.safetensors").metadata
    assert metadata["ss_total_batch_size"] == "4"  # 2 per process x 2 processes
    assert list_checkpoints(workdir / "out", "test")


def test_cli_trains_end_to_end_and_reports_bad_config(workdir):
    run = sabun("train", "train.toml", "--set", "network.rank=2", "--set", "training.max_steps=2", cwd=workdir)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert "wrote" in stdout and "(2 steps" in stdout
    lora = load_lora(workdir / "out/test.safetensors")
    assert lora.ranks() == {2}
    saved = load_config(workdir / "out/test.toml")
    assert saved.network.rank == 2 and saved.training.max_steps == 2


def test_cli_errors_are_one_line(workdir, monkeypatch, capsys):
    from sabun.cli import main

    monkeypatch.setattr(sys, "argv", ["sabun", "train", str(workdir / "train.toml"), "--set", "network.rnk=8"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ") and "network.rnk: unknown field; did you mean `rank`?" in err and err.count("\n") == 1
    )
