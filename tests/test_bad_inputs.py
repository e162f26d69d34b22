"""Every command family against bad input: exit 2, one line `error: ...` naming the file, no
traceback, nothing written, existing files unchanged.

The commands run in this process (`sabun.cli.main` with its own argv), so an unexpected exception
fails the test with its traceback instead of being hidden in a subprocess's stderr.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import random_lora, run_cli
from safetensors.torch import save_file
from test_train import BASE_TOML

from sabun.lora.file import lora_state_dict, save_lora

LAYER = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
PROGRESS = re.compile(r"^[\w ]+: +\d+%\|")  # a tqdm line


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under `root`: content hash (files) and mode."""
    out = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(root))] = (digest, path.stat().st_mode)
    return out


def assert_refused(capsys, root: Path, args: list, *needles: str) -> str:
    """Run `sabun ARGS`; assert exit 2, one `error:` line holding each needle, and `root` unchanged."""
    before = snapshot(root)
    code, out, err = run_cli(capsys, *args)
    lines = [
        line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)
    ]  # progress bars are not messages
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(root) == before, "the command wrote or changed files"
    return lines[0]


# --- LoRA files: one checked reader behind merge, info, resize, combine, generate -------------------


def good_state(tiny_pipe) -> dict[str, torch.Tensor]:
    return lora_state_dict(random_lora(tiny_pipe, rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0, seed=1))


def mutate(kind: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    down, up, alpha = f"{LAYER}.lora_down.weight", f"{LAYER}.lora_up.weight", f"{LAYER}.alpha"
    s = dict(state)
    if kind == "nan":
        s[down] = s[down].clone()
        s[down][0, 0] = float("nan")
    elif kind == "inf":
        s[up] = s[up].clone()
        s[up][1, 0] = float("inf")
    elif kind == "alpha-nan":
        s[alpha] = torch.tensor(float("nan"))
    elif kind == "alpha-negative":
        s[alpha] = torch.tensor(-4.0)
    elif kind == "alpha-zero":
        s[alpha] = torch.tensor(0.0)
    elif kind == "alpha-shape-4":
        s[alpha] = torch.ones(4)
    elif kind == "down-3d":
        s[down] = s[down][:, :, None]
    elif kind == "down-0d":
        s[down] = torch.tensor(1.0)
    elif kind == "int32":
        s[down] = (s[down] * 100).to(torch.int32)
    elif kind == "bool":
        s[up] = s[up] > 0
    elif kind == "rank-0":
        s[down], s[up] = s[down][:0], s[up][:, :0]
    elif kind == "rank-65536":
        s[down] = torch.zeros(65536, s[down].shape[1])
        s[up] = torch.zeros(s[up].shape[0], 65536)
    elif kind == "scaled-1e30":
        s = {k: v * 1e30 if k.endswith("weight") else v for k, v in s.items()}
    elif kind == "rank-mismatch":
        s[up] = s[up][:, :2]
    elif kind == "two-families":
        s["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = s[down].clone()
        s["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = s[up].clone()
    else:
        raise AssertionError(kind)
    return s


MUTATIONS = ["nan", "inf", "alpha-nan", "alpha-negative", "alpha-zero", "alpha-shape-4", "down-3d", "down-0d", "int32", "bool",
             "rank-0", "rank-65536", "scaled-1e30", "rank-mismatch", "two-families"]  # fmt: skip


def lora_commands(path: Path, good: Path, out: Path) -> dict[str, list]:
    return {
        "merge": ["merge", "--model", "tiny", "--lora", path, "--out", out / "merged"],
        "info": ["lora", "info", path],
        "resize": ["lora", "resize", path, "--rank", "1", "--out", out / "small.safetensors"],
        "combine": ["lora", "combine", f"{good}:1", f"{path}:1", "--out", out / "sum.safetensors"],
        "generate": [
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "1girl",
            "--lora",
            path,
            "--out",
            out / "g.png",
            "--steps",
            "1",
        ],
    }


@pytest.fixture
def files(tiny_pipe, tmp_path):
    state = good_state(tiny_pipe)
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    return tmp_path, state, good


@pytest.mark.parametrize("kind", MUTATIONS)
def test_a_corrupt_lora_is_refused_by_every_command(capsys, files, kind):
    root, state, good = files
    bad = root / f"{kind}.safetensors"
    save_file({k: v.contiguous() for k, v in mutate(kind, state).items()}, str(bad))
    for command, args in lora_commands(bad, good, root).items():
        line = assert_refused(capsys, root, args, bad.name)
        assert "corrupt" in line or "families" in line or "rank" in line, (command, line)


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "corrupt"),
        (b"not a safetensors file at all", "corrupt"),
        (struct.pack("<Q", 1 << 40) + b"{}", "corrupt"),
        (struct.pack("<Q", 2) + b"[]", "corrupt"),
    ],  # fmt: skip
    ids=["empty", "text", "huge-header", "header-not-a-table"],
)
def test_a_file_that_is_not_safetensors_is_refused(capsys, files, content, needle):
    root, _, good = files
    bad = root / "bad.safetensors"
    bad.write_bytes(content)
    for args in lora_commands(bad, good, root).values():
        assert_refused(capsys, root, args, "bad.safetensors", needle)


def test_a_truncated_lora_is_refused(capsys, files):
    root, _, good = files
    bad = root / "cut.safetensors"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size - 100])
    for args in lora_commands(bad, good, root).values():
        assert_refused(capsys, root, args, "cut.safetensors", "corrupt")


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_pickle_is_never_run_and_the_advice_is_sabuns(capsys, files, monkeypatch):
    root, _, _ = files
    monkeypatch.chdir(root)
    evil = root / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"x": Exploit()}))
    line = assert_refused(capsys, root, ["lora", "info", evil], "evil.ckpt", "--allow-pickle")
    line = assert_refused(capsys, root, ["lora", "info", evil, "--allow-pickle"], "evil.ckpt", "safetensors")
    assert "weights_only=False" not in line
    assert not (root / "pwned").exists()


# --- numbers on the command line ------------------------------------------------------------------


@pytest.mark.parametrize("multiplier", ["nan", "inf", "-inf", "1e30", "notanumber"])
def test_a_bad_multiplier_is_refused(capsys, files, multiplier):
    root, _, good = files
    needle = "not a number" if multiplier == "notanumber" else ("--force" if multiplier == "1e30" else "finite")
    assert_refused(
        capsys, root, ["merge", "--model", "tiny", "--lora", f"{good}:{multiplier}", "--out", root / "m"], needle
    )
    assert_refused(capsys, root, ["lora", "combine", f"{good}:{multiplier}", "--out", root / "c.safetensors"], needle)
    if multiplier != "notanumber":
        assert_refused(capsys, root, ["generate", "--model", "tiny", "--prompt", "x", "--lora", good, "--grid-weights", f"0,{multiplier}",
                                      "--out", root / "g.png"], "--grid-weights")  # fmt: skip


def test_a_large_multiplier_is_allowed_with_force(capsys, files):
    root, _, good = files
    code, _, err = run_cli(capsys, "merge", "--model", "tiny", "--lora", f"{good}:20", "--out", root / "m", "--force")
    assert code == 0, err
    assert (root / "m").is_dir()


def test_resize_refuses_ranks_that_do_nothing(capsys, files):
    root, _, good = files
    assert_refused(capsys, root, ["lora", "resize", good, "--rank", "0", "--out", root / "r.safetensors"], "at least 1")
    assert_refused(
        capsys, root, ["lora", "resize", good, "--rank", "100", "--out", root / "r.safetensors"], "not below", "4"
    )


def test_combine_refuses_loras_of_different_models(capsys, files, tiny_pipe):
    root, state, good = files
    sdxl = root / "sdxl.safetensors"
    save_file({f"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.{k.split('.', 1)[1]}": v for k, v in state.items() if k.startswith(LAYER)},
              str(sdxl))  # fmt: skip
    assert_refused(
        capsys,
        root,
        ["lora", "combine", good, sdxl, "--out", root / "c.safetensors"],
        "sdxl.safetensors",
        "shares no layer",
    )
    other = root / "other.safetensors"  # same layer names, other shapes
    wide = {
        k: (torch.randn(v.shape[0], v.shape[1] * 2) * 0.01 if k.endswith("lora_down.weight") and v.dim() == 2 else v)
        for k, v in state.items()
    }
    save_file(wide, str(other))
    assert_refused(
        capsys,
        root,
        ["lora", "combine", good, other, "--out", root / "c.safetensors"],
        "other.safetensors",
        "different models",
    )


# --- OS errors: read-only, full disk, a file where a folder should be ---------------------------------


def test_an_output_under_a_file_is_one_line(capsys, files):
    root, _, good = files
    blocker = root / "blocker"
    blocker.write_text("a file, not a folder")
    assert_refused(capsys, root, ["lora", "resize", good, "--rank", "2", "--out", blocker / "r.safetensors"], "blocker")
    assert_refused(
        capsys, root, ["merge", "--model", "tiny", "--lora", good, "--out", blocker / "m.safetensors"], "blocker"
    )


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_write_is_one_line_and_leaves_the_old_file(capsys, files, monkeypatch, code):
    """A full disk / read-only / forbidden write fails inside the writer: one line, and an existing
    output given --overwrite is left as it was."""
    import safetensors.torch

    root, _, good = files
    out = root / "r.safetensors"
    out.write_bytes(b"the old file")

    def failing(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(args[1]))

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    line = assert_refused(
        capsys, root, ["lora", "resize", good, "--rank", "2", "--out", out, "--overwrite"], os.strerror(code)
    )
    assert "r.safetensors" in line and ".tmp-" not in line
    assert out.read_bytes() == b"the old file"


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB file system (needs root for mount; elsewhere the simulated test above covers it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
        ).returncode
    ):
        pytest.skip("mounting a small file system needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(capsys, tiny_pipe, tmp_path, small_disk):
    lora = random_lora(tiny_pipe, rank=8, seed=3)
    lora.metadata["ss_training_comment"] = "x" * 100_000  # resize keeps the metadata: the output cannot fit
    big = save_lora(lora, tmp_path / "big.safetensors")
    code, _, err = run_cli(capsys, "lora", "resize", big, "--rank", "2", "--out", small_disk / "r.safetensors")
    assert code == 2 and err.startswith("error: ") and "No space left" in err and ".tmp-" not in err, err
    assert list(small_disk.iterdir()) == []


# --- outputs: umask and stale temporaries -------------------------------------------------------------


def test_outputs_take_the_umask_and_stale_temporaries_go(capsys, files):
    root, _, good = files
    stale = root / ".r.safetensors.tmp-999999999-abc"  # a pid that cannot be alive
    stale.write_bytes(b"left by a killed run")
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(capsys, "lora", "resize", good, "--rank", "2", "--out", root / "r.safetensors")
        code2, _, err2 = run_cli(capsys, "merge", "--model", "tiny", "--lora", good, "--out", root / "merged")
    finally:
        os.umask(old)
    assert code == 0 and code2 == 0, err + err2
    assert (root / "r.safetensors").stat().st_mode & 0o777 == 0o644
    assert (root / "merged").stat().st_mode & 0o777 == 0o755
    assert not stale.exists()


# --- configs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[model\npath = 'tiny'", "TOML"),
        ("[model]\npath = 'tiny'\n[nonsense]\nx = 1\n", "nonsense"),
        ("[model]\npath = 'tiny'\n[[datasets]]\npath = 'nowhere'\n[training]\nmax_steps = 1\n", "nowhere"),
    ],  # fmt: skip
    ids=["not-toml", "unknown-section", "missing-data"],
)
def test_a_bad_training_config_is_one_line(capsys, tmp_path, text, needle):
    config = tmp_path / "train.toml"
    config.write_bytes(text.encode())
    assert_refused(capsys, tmp_path, ["train", config], needle)


def test_a_config_that_is_not_utf8_is_one_line(capsys, tmp_path):
    config = tmp_path / "train.toml"
    config.write_bytes("[model]\npath = 'caf\xe9'\n".encode("cp1252"))
    assert_refused(capsys, tmp_path, ["train", config], "train.toml")


def test_render_model_refuses_files_that_are_not_models(capsys, tmp_path):
    fake = tmp_path / "fake.vrm"
    fake.write_bytes(b"glTF" + b"\x00" * 20)
    assert_refused(capsys, tmp_path, ["render", "model", fake, "--out", tmp_path / "renders"], "fake.vrm")
    text = tmp_path / "notes.vrm"
    text.write_text(json.dumps({"not": "gltf"}))
    assert_refused(capsys, tmp_path, ["render", "model", text, "--out", tmp_path / "renders"], "notes.vrm")


def test_a_file_where_a_folder_goes_and_the_other_way_round(capsys, files):
    root, _, good = files
    (root / "a_file").write_text("keep me")
    (root / "a_folder.safetensors").mkdir()
    assert_refused(
        capsys,
        root,
        ["merge", "--model", "tiny", "--lora", good, "--out", root / "a_file", "--overwrite"],
        "a_file",
        "is a file",
    )
    assert_refused(capsys, root, ["lora", "resize", good, "--rank", "2", "--out", root / "a_folder.safetensors", "--overwrite"],
                   "a_folder.safetensors", "is a folder")  # fmt: skip


# --- training data --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["caption-cp1252", "animated-gif", "truncated-png"])
def test_bad_training_data_is_named_and_nothing_is_trained(capsys, tmp_path, monkeypatch, bad):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(data / f"ok{i}.png")
        (data / f"ok{i}.txt").write_text("1girl, red hair", encoding="utf-8")
    if bad == "caption-cp1252":
        (data / "ok1.txt").write_bytes("1girl, caf\xe9".encode("cp1252"))
        name = "ok1.txt"
    elif bad == "animated-gif":
        frames = [Image.new("RGB", (32, 32), (200 * i, 10, 10)) for i in range(2)]
        frames[0].save(data / "moving.gif", save_all=True, append_images=frames[1:])
        name = "moving.gif"
    else:
        buffer = data / "cut.png"
        Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer)
        buffer.write_bytes(buffer.read_bytes()[:60])
        name = "cut.png"
    (tmp_path / "train.toml").write_text(BASE_TOML)
    monkeypatch.chdir(tmp_path)
    assert_refused(capsys, tmp_path, ["train", tmp_path / "train.toml"], name)


# --- found by a hostile battery: usage errors, numbers, LoRA variants --------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["lora", "resize", "x.safetensors", "--rank", "abc"], "--rank"),
        (["merge", "--model", "tiny"], "--lora"),
        (["nonsense"], "nonsense"),
        (["lora", "combine", "--out", "c.safetensors"], "loras"),
    ],  # fmt: skip
    ids=["not-an-integer", "missing-option", "no-such-command", "missing-argument"],
)
def test_usage_errors_are_one_line(capsys, tmp_path, args, needle):
    line = assert_refused(capsys, tmp_path, args, needle)
    assert "--help" in line


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--rank", "-1"], "--rank -1"),
        (["--rank", "0"], "--rank 0"),
        (["--conv-rank", "-1"], "--conv-rank"),
        (["--energy", "2"], "--energy"),
        (["--energy", "nan"], "--energy"),
        (["--energy", "0"], "--energy"),
        (["--rank", "2", "--energy", "0.9"], "not both"),
    ],  # fmt: skip
)
def test_combine_checks_its_numbers(capsys, files, extra, needle):
    root, _, good = files
    assert_refused(
        capsys, root, ["lora", "combine", f"{good}:1", f"{good}:-0.5", *extra, "--out", root / "c.safetensors"], needle
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-5"], "--steps"),
        (["--guidance", "nan"], "--guidance"),
        (["--guidance", "inf"], "--guidance"),
        (["--seed", "99999999999999999999"], "--seed"),
        (["--seed", "-1"], "--seed"),
    ],  # fmt: skip
)
def test_generate_checks_its_numbers(capsys, tmp_path, args, needle):
    assert_refused(
        capsys, tmp_path, ["generate", "--model", "tiny", "-p", "1girl", *args, "--out", tmp_path / "g.png"], needle
    )


def test_generate_refuses_empty_grid_weights(capsys, files):
    root, _, good = files
    assert_refused(
        capsys,
        root,
        ["generate", "--model", "tiny", "-p", "1girl", "--lora", good, "--grid-weights", "", "--out", root / "g.png"],
        "--grid-weights",
    )


def test_extract_and_merge_check_their_choices(capsys, files):
    root, _, good = files
    assert_refused(
        capsys,
        root,
        [
            "lora",
            "extract",
            "--original",
            "tiny",
            "--tuned",
            "tiny",
            "--rank",
            "2",
            "--method",
            "bogus",
            "--out",
            root / "e.safetensors",
        ],
        "--method",
    )
    assert_refused(
        capsys,
        root,
        ["merge", "--model", "tiny", "--lora", good, "--prediction-type", "bogus", "--out", root / "m"],
        "--prediction-type",
    )


@pytest.mark.parametrize(
    "suffix, kind",
    [
        ("dora_scale", "DoRA"),
        ("lora_mid.weight", "LoCon"),
        ("hada_w1_a", "LoHa"),
        ("lokr_w1", "LoKr"),
        ("diff_b", "full weight"),
    ],
)
def test_lora_variants_sabun_does_not_read_are_refused_not_dropped(capsys, files, suffix, kind):
    root, state, _ = files
    variant = root / "variant.safetensors"
    save_file({**state, f"{LAYER}.{suffix}": torch.ones(4, 1)}, str(variant))
    assert_refused(
        capsys, root, ["merge", "--model", "tiny", "--lora", variant, "--out", root / "m"], "variant.safetensors", kind
    )
    assert_refused(capsys, root, ["lora", "info", variant], kind)


def test_a_failed_write_names_the_output(capsys, files, monkeypatch):
    """An OS error raised without a file name inside the writer (as a full disk's write() does) names
    the output it was writing."""
    from PIL import Image as PILImage

    root, _, good = files

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PILImage.Image, "save", full)
    line = assert_refused(
        capsys,
        root,
        ["generate", "--model", "tiny", "-p", "1girl", "--steps", "1", "--out", root / "g.png"],
        "g.png",
        "No space",
    )
    assert ".tmp-" not in line


def test_render_model_on_a_full_disk_leaves_no_partial_set(capsys, tmp_path, monkeypatch):
    """The disk fills after a few files: nothing new is left in --out, and the error names a render."""
    model = Path(__file__).resolve().parents[1] / "examples" / "vrm" / "target.vrm"
    real, calls = Path.write_bytes, {"n": 0}

    def filling(self, data):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", filling)
    out = tmp_path / "renders"
    line = assert_refused(capsys, tmp_path, ["render", "model", model, "--tags", "blonde hair", "--size", "64", "--supersample", "1",
                                             "--views", "front,behind", "--zooms", "portrait", "--out", out], "No space")  # fmt: skip
    assert "renders/target_" in line and ".tmp-" not in line
    assert not out.exists()


def test_merge_names_a_mistyped_extension_and_extract_names_both_models(capsys, files, tiny_pipe):
    root, _, good = files
    assert_refused(
        capsys,
        root,
        ["merge", "--model", "tiny", "--lora", good, "--out", root / "m.safetensor"],
        "did you mean .safetensors",
    )
    line = assert_refused(
        capsys,
        root,
        ["lora", "extract", "--original", "tiny", "--tuned", "toy", "--rank", "2", "--out", root / "e.safetensors"],
        "other layers",
    )
    assert "tiny" in line and "toy" in line
