"""`sabun ui` in a real browser: a character run from the form to its report, a past run after a
restart, the queue and cancel, the LoRA tools, errors shown on the page, paths outside the root
refused, and a non-local bind refused without a password.

The browser is Debian's Chromium (`.ci/run` installs it), driven by Playwright; nothing is
downloaded (never `playwright install`), and every request the page makes to anywhere but the
server is refused and counted. Screenshots for docs/ui.md: `SABUN_UI_SCREENSHOTS=docs pytest tests/test_ui.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import typing
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import random_lora

from sabun.config import field_docs
from sabun.errors import SabunError
from sabun.lora.file import load_lora, save_lora
from sabun.pipelines.character import CharacterConfig, config_from_dict, resolve
from sabun.pipelines.recipe import PIPELINE_KEYS
from sabun.train.config import TrainConfig
from sabun.ui import forms, runs
from sabun.ui.safety import Root, serve_options

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_MS = 240_000  # a tiny character run on the toy model: about 20 s on one core
SCREENSHOTS = os.environ.get("SABUN_UI_SCREENSHOTS")


def sabun_env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1,localhost"}


# --- without a browser: options, paths, the form ---------------------------------------------------


def test_a_non_local_bind_without_a_password_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sabun", "ui", "--host", "0.0.0.0", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        env=sabun_env(),
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0: serving beyond this machine needs a password; give --auth USER:PASS or "
        "--auth-file FILE (or keep the default --host 127.0.0.1)"
    ]
    bad = subprocess.run(
        [sys.executable, "-m", "sabun", "ui", "--host", "0.0.0.0", "--auth", "nocolon", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        env=sabun_env(),
        timeout=60,
    )
    assert bad.returncode == 2 and "--auth: expected USER:PASS" in bad.stderr


def test_serve_options(tmp_path):
    assert serve_options("127.0.0.1", 7860, tmp_path).auth is None
    assert serve_options("::1", 7860, tmp_path).host == "::1"
    assert serve_options("0.0.0.0", 7860, tmp_path, auth="me:secret").auth == ("me", "secret")
    (tmp_path / "login").write_text("me:from file\n")
    assert serve_options("192.168.1.2", 80, tmp_path, auth_file=tmp_path / "login").auth == ("me", "from file")
    with pytest.raises(SabunError, match="needs a password"):
        serve_options("192.168.1.2", 7860, tmp_path)
    with pytest.raises(SabunError, match="no such folder"):
        serve_options("127.0.0.1", 7860, tmp_path / "missing")
    with pytest.raises(SabunError, match="not both"):
        serve_options("127.0.0.1", 7860, tmp_path, auth="a:b", auth_file=tmp_path / "login")


def test_paths_outside_the_root_are_refused(tmp_path):
    root_folder, outside = tmp_path / "root", tmp_path / "outside"
    (root_folder / "sub").mkdir(parents=True)
    outside.mkdir()
    (root_folder / "sub" / "a.txt").write_text("a")
    (outside / "b.txt").write_text("b")
    (root_folder / "link").symlink_to(outside)
    root = Root(root_folder)
    assert root.path("sub/a.txt", "x", "file") == (root_folder / "sub" / "a.txt").resolve()
    assert root.path(str(root_folder / "sub"), "x", "folder") == (root_folder / "sub").resolve()
    for text, reason in [
        ("../outside/b.txt", "`..` is not allowed"),
        ("sub/../sub/a.txt", "`..` is not allowed"),
        (str(outside / "b.txt"), "is outside the root"),
        ("/etc/passwd", "is outside the root"),
        ("link/b.txt", "leads outside the root through a symlink"),
        ("sub/missing.txt", "no such file"),
        ("", "is empty"),
    ]:
        with pytest.raises(SabunError, match=reason.replace("(", r"\(")):
            root.path(text, "x", "file")
    assert root.model("toy") == "toy"
    assert root.path("new.safetensors", "--out", exists=False) == root_folder.resolve() / "new.safetensors"
    assert "link/b.txt" not in root.files((".txt",)) and "sub/a.txt" in root.files((".txt",))


def test_the_form_is_generated_from_the_config_dataclasses():
    fields = forms.character_fields()
    keys = {f.key for f in fields}
    # every setting of every section is a field, or one of the source pickers
    hints = typing.get_type_hints(CharacterConfig)
    for section in ("model", "stepping_stone", "character", "render", "evaluation"):
        for name, doc in field_docs(hints[section]).items():
            key = f"{section}.{name}"
            if key in forms.SOURCE_KEYS:
                continue
            if key in forms.TRAIN_TABLES:
                continue
            assert key in keys, key
            assert next(f for f in fields if f.key == key).doc == doc
    # each LoRA's train table: every trainer section but those the pipeline sets, blank by default
    train_sections = [s for s in field_docs(TrainConfig) if s not in PIPELINE_KEYS]
    for table in forms.TRAIN_TABLES:
        given = {f.key.removeprefix(table + ".").split(".")[0] for f in fields if f.key.startswith(table + ".")}
        assert given == set(train_sections)
        assert all(forms.initial(f) == "" for f in fields if f.key.startswith(table + "."))
    # the form as it starts is the TOML loader's config of the same sources
    root = Root(Path.cwd())
    values = {f.key: forms.initial(f) for f in fields}
    sources = forms.Sources(presets=["red_long"])
    raw = forms.build_raw(root, sources, values, fields)
    expected = config_from_dict(
        {
            "out": ".",
            "model": {"path": "toy"},
            "stepping_stone": {"presets": ["red_long"]},
            "character": {"preset": "target"},
        }
    )
    assert forms.check(raw) == expected
    # what a user types is read as `--set` reads it, and checked as a TOML file is
    values |= {"evaluation.seeds": "1", "evaluation.weights": "0.5, 1", "character.train.training.max_steps": "2"}
    config = forms.check(forms.build_raw(root, sources, values, fields))
    assert config.evaluation.weights == [0.5, 1.0] and config.character.train == {"training": {"max_steps": 2}}
    assert config_from_dict(tomllib.loads(forms.config_text(config))) == config
    values["evaluation.seeds"] = "0"
    with pytest.raises(SabunError, match=r"evaluation.seeds: must be >= 1, got 0"):
        forms.check(forms.build_raw(root, sources, values, fields))
    values |= {"evaluation.seeds": "1", "stepping_stone.train.network.rank": "many"}
    with pytest.raises(SabunError, match=r"stepping_stone.train.network.rank: must be an integer"):
        forms.check(forms.build_raw(root, sources, values, fields))


def test_a_config_with_3d_model_files_goes_through_the_form_unchanged():
    """The VRM example loaded into the form (as "Load the selected run's config" does) and read back
    is the config the TOML loader reads from the file."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    raw = tomllib.loads((examples / "character_from_vrm.toml").read_text())
    root = Root(examples)
    sources, values = forms.form_values(raw)
    assert sources.target == "model" and "black_twintails: black hair" in sources.model_tags
    config = forms.check(forms.build_raw(root, sources, values))
    expected = config_from_dict(raw | {"out": "."})
    assert resolve(config, examples) == resolve(expected, examples)
    with pytest.raises(SabunError, match="is not the name of a chosen model file"):
        forms.build_raw(root, dataclasses.replace(sources, model_tags="nobody: red hair"), values)


def test_watching_reads_the_trainers_progress_bar():
    log = (
        "training stepping_stone\n"
        "train:   0%|          | 0/3 [00:00<?, ?step/s]\rtrain:  33%|###       | 1/3 [00:00<00:00, loss=0.5000, lr=1e-3]"
        "\rtrain:  67%|######    | 2/3 [00:01<00:00, loss=0.2500, lr=1e-3]\n"
        "character: up to date, skipped\n"
        "training character\n"
        "train:  50%|#####     | 1/2 [00:00<00:00, loss=0.1250, lr=1e-3]\n"
    )
    points, last = runs.losses(log.split("\n"))
    assert runs.log_lines(log)[1].startswith("train:  67%")  # as a terminal shows it
    assert points == [("stepping_stone", 1, 0.5), ("stepping_stone", 2, 0.25), ("character", 1, 0.125)]
    assert last == (1, 2)


# --- the browser ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`sabun ui` as a user starts it, in a subprocess, on a free local port."""

    def __init__(self, root: Path, cwd: Path, log: Path, args: tuple[str, ...] = ()):
        self.root, self.cwd, self.log, self.args = root, cwd, log, args
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sabun", "ui", "--root", str(self.root), "--port", str(port), *self.args],
                cwd=self.cwd,
                env=sabun_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"sabun ui did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: the server ends as on Ctrl-C, and kills a run in progress
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def status(self, path: Path, cookie: str = "") -> int:
        url = self.url + "gradio_api/file=" + urllib.parse.quote(str(path))
        request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_pipe_session):
    pytest.importorskip("gradio")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM} (Debian's `chromium` package; .ci/run installs it)")
    base = tmp_path_factory.mktemp("ui")
    root, outside, cwd = base / "root", base / "outside", base / "cwd"
    for folder in (root, outside, cwd):
        folder.mkdir()
    save_lora(random_lora(tiny_pipe_session, rank=4), root / "mine.safetensors")
    (root / "broken.safetensors").write_bytes(b"not a safetensors file")
    save_lora(random_lora(tiny_pipe_session, rank=2, seed=1), outside / "theirs.safetensors")
    (root / "escape").symlink_to(outside)
    (cwd / "secret.txt").write_text("the server's working folder, outside the root")
    server = Server(root, cwd, base / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 900}
        )
        context.set_default_timeout(30_000)
        context.external = []  # every request that was not for the local server (refused)

        def local_only(route):
            url = route.request.url
            if url.startswith(("http://127.0.0.1", "data:", "blob:")):
                route.continue_()
            else:
                context.external.append(url)
                route.abort()

        context.route("**/*", local_only)
        yield context
        context.close()


@pytest.fixture
def page(browser, ui):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(ui.url)
    page.wait_for_selector("#start-run")
    yield page
    page.close()
    assert browser.external == [], "the page fetched from outside the server"
    assert errors == []


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def choose(page, elem_id: str, text: str) -> None:
    """Type a value into a dropdown that takes values of one's own (a path)."""
    box = page.locator(f"#{elem_id} input").first
    box.fill(text)
    box.press("Enter")
    box.blur()


def open_section(page, *elem_ids: str) -> None:
    for elem_id in elem_ids:
        section = page.locator(f"#{elem_id}")
        if not section.locator(
            "> div[data-testid=accordion-content], div[data-testid=accordion-content]"
        ).first.is_visible():
            section.locator("button.label-wrap").first.click()


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def output(page, elem_id: str):
    return page.locator(f"#{elem_id}")


def tiny_run_form(page, name: str, steps: int = 2, samples_every: str = "") -> None:
    """The character run of the tests: the toy model, one stepping-stone preset, two training steps, one seed."""
    tab(page, "Character run")
    for preset in ("black_twintails", "blue_short", "green_medium", "white_ponytail"):
        page.locator("#src-presets").get_by_label(preset, exact=True).uncheck()
    for table in ("stepping_stone-train", "character-train"):
        open_section(page, f"acc-{table}", f"acc-{table}-training")
        fill(page, f"cfg-{table}-training-max_steps", str(steps))
    open_section(page, "acc-stepping_stone-train-sampling")
    fill(page, "cfg-stepping_stone-train-sampling-every_n_steps", samples_every)
    open_section(page, "acc-evaluation")
    fill(page, "cfg-evaluation-seeds", "1")
    fill(page, "cfg-evaluation-sample_steps", "2")
    fill(page, "cfg-evaluation-weights", "1.0")
    fill(page, "run-name", name)


def run_state(page, name: str, state: str, timeout: int = RUN_TIMEOUT_MS) -> None:
    select_run(page, name)
    expect(output(page, "run-state")).to_contain_text(f"run {name}: {state}", timeout=timeout)


def select_run(page, name: str) -> None:
    box = page.locator("#run-select input").first
    if box.input_value() != name:
        box.click()
        page.locator("ul[role=listbox] li", has_text=name).first.click()


def stage_rows(page) -> dict[str, str]:
    """The stage table: {stage: state}."""
    rows = page.locator("#stage-table [role=row]")
    cells = [rows.nth(i).inner_text().split("\n") for i in range(rows.count())]
    return {row[0].strip(): row[-1].strip() for row in cells[1:] if len(row) >= 2}


def screenshot(page, name: str, tmp: Path, top: str = "") -> None:
    """A small PNG of the page from element `top` down (palette colours, scaled to 900 px wide), for
    docs/ when SABUN_UI_SCREENSHOTS names the folder."""
    from PIL import Image

    path = tmp / f"ui_{name}.png"
    page.set_viewport_size({"width": 1200, "height": 1400})
    if top:
        page.locator(top).first.evaluate("element => element.scrollIntoView()")
    else:
        page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1200, "height": 900})
    image = Image.open(path).convert("RGB")
    image = image.resize((900, image.height * 900 // image.width), Image.LANCZOS)
    image.quantize(colors=64).save(path, optimize=True)
    if SCREENSHOTS:
        shutil.copy(path, Path(SCREENSHOTS) / path.name)


def tensors_sha256(path: Path) -> str:
    """The hash of a LoRA's tensors that sabun writes into its metadata."""
    return load_lora(path).metadata["sabun_tensors_sha256"]


def test_a_bad_value_and_a_path_outside_the_root_are_shown_on_the_page(page):
    open_section(page, "acc-evaluation")
    fill(page, "cfg-evaluation-seeds", "0")
    page.click("#check-config")
    expect(output(page, "character-message")).to_contain_text("error: evaluation.seeds: must be >= 1, got 0")
    fill(page, "cfg-evaluation-seeds", "16")
    page.locator("#src-target-kind").get_by_label("folder of renders").check()
    choose(page, "src-target-folder", "../outside")
    page.click("#check-config")
    expect(output(page, "character-message")).to_contain_text(".. is not allowed")
    choose(page, "src-target-folder", "escape")
    page.click("#check-config")
    expect(output(page, "character-message")).to_contain_text("leads outside the root through a symlink")
    page.click("#start-run")
    expect(output(page, "character-message")).to_contain_text("error: character.folder: escape:")


def test_lora_tools_show_their_output_and_their_errors(page, ui, tmp_path):
    tab(page, "LoRA tools")
    choose(page, "info-lora", "mine.safetensors")
    choose(page, "info-model", "tiny")
    page.click("#info-run")
    expect(output(page, "info-status")).to_contain_text("model tiny: fits", timeout=60_000)
    expect(output(page, "info-output")).to_contain_text("unet mid_block")
    screenshot(page, "lora", tmp_path)
    for path, reason in [
        ("broken.safetensors", "error: "),
        (str(ui.root.parent / "outside" / "theirs.safetensors"), "is outside the root"),
        ("escape/theirs.safetensors", "leads outside the root through a symlink"),
        ("missing.safetensors", "no such file"),
    ]:
        choose(page, "info-lora", path)
        page.click("#info-run")
        expect(output(page, "info-status")).to_contain_text(reason)
    # resize writes inside the root, and refuses to overwrite as the CLI does
    page.get_by_role("tab", name="resize").click()
    choose(page, "resize-lora", "mine.safetensors")
    fill(page, "resize-out", "small.safetensors")
    fill(page, "resize-rank", "2")
    page.click("#resize-run")
    expect(output(page, "resize-status")).to_contain_text("wrote small.safetensors", timeout=60_000)
    assert (ui.root / "small.safetensors").is_file()
    page.click("#resize-run")
    expect(output(page, "resize-status")).to_contain_text("error: ")
    expect(output(page, "resize-status")).to_contain_text("--overwrite")
    page.get_by_role("tab", name="merge").click()
    fill(page, "merge-loras", "mine.safetensors:heavy")
    fill(page, "merge-out", "merged.safetensors")
    page.click("#merge-run")
    expect(output(page, "merge-status")).to_contain_text("is not a number")
    # Gradio serves files from the root only: not the server's working folder, not through a symlink
    assert ui.status(ui.root / "mine.safetensors") == 200
    assert ui.status(ui.cwd / "secret.txt") == 403
    assert ui.status(ui.root / "escape" / "theirs.safetensors") == 403


def test_a_character_run_from_the_form_to_its_report_then_after_a_restart(page, ui, browser, tmp_path):
    tiny_run_form(page, "first")
    page.click("#check-config")
    expect(output(page, "config-toml")).to_contain_text("max_steps = 2")
    expect(page.locator("#download-config")).to_be_visible()
    screenshot(page, "character", tmp_path, "#tab-character")
    page.click("#start-run")
    expect(page.get_by_role("tab", name="Runs")).to_have_attribute("aria-selected", "true")
    expect(output(page, "run-state")).to_contain_text("run first: running", timeout=30_000)
    page.goto("about:blank")  # the tab closes: the run goes on in the server
    time.sleep(3)
    page.goto(ui.url)
    page.wait_for_selector("#start-run")
    tab(page, "Runs")
    run_state(page, "first", "done")
    stages = stage_rows(page)
    assert stages and set(stages.values()) == {"done"}, stages
    assert "LoRA: stepping_stone" in stages and "evaluation on the plain model: evaluation" in stages
    expect(output(page, "run-log")).to_be_visible()
    run = ui.root / "runs" / "ui" / "first"
    for name in ("config.toml", "log.txt", "metrics.json", "report.html", "samples.png", "character.resolved.toml"):
        assert (run / name).is_file(), name

    # the results: the metrics with intervals, report.html, the LoRA at a weight, the file
    tab(page, "Results")
    expect(output(page, "metrics")).to_contain_text("character LoRA x1", timeout=30_000)
    expect(output(page, "metrics")).to_contain_text("[95 % interval]")
    expect(page.locator("#report iframe")).to_be_visible()
    expect(page.locator("#download-lora")).to_be_visible()
    page.click("#generate")
    expect(output(page, "generate-message")).to_contain_text("weight 1 on the plain model", timeout=60_000)
    expect(page.locator("#image-lora img")).to_be_visible()
    screenshot(page, "results", tmp_path, "#results-title")

    # the same config from the command line gives the same LoRA
    cli_out = tmp_path / "cli"
    subprocess.run(
        [sys.executable, "-m", "sabun", "character", str(run / "config.toml"), "--out", str(cli_out)],
        check=True,
        capture_output=True,
        env=sabun_env(),
        timeout=600,
    )
    for name in ("stepping_stone", "character"):  # the same weights (the files' metadata holds training times)
        lora = Path("loras") / name / f"{name}.safetensors"
        assert tensors_sha256(cli_out / lora) == tensors_sha256(run / lora)

    # the renders and their captions; an edited caption goes into the run's config
    tab(page, "Character run")
    page.locator("#dataset-select input").click()
    page.locator("ul[role=listbox] li", has_text="character").first.click()
    page.locator("#dataset-gallery").get_by_role("button", name="Thumbnail 1 of").click()
    expect(page.locator("#caption-message")).to_contain_text("selected:")
    fill(page, "caption-edit", "portrait, white background, edited")
    page.click("#save-caption")
    expect(output(page, "caption-message")).to_contain_text("run it again to train on the edited captions")
    edited = run / "sources" / "character"
    assert any("edited" in p.read_text() for p in edited.glob("*.txt"))
    assert f'folder = "{edited}"' in (run / "config.toml").read_text()

    # restarted, the server lists the past run from its folder
    ui.stop()
    ui.start()
    page.goto(ui.url)
    page.wait_for_selector("#start-run")
    tab(page, "Runs")
    expect(output(page, "runs-table")).to_contain_text("first")
    run_state(page, "first", "done", timeout=30_000)
    tab(page, "Results")
    expect(output(page, "metrics")).to_contain_text("character LoRA x1", timeout=30_000)
    tab(page, "Character run")
    page.click("#load-config")
    expect(output(page, "character-message")).to_contain_text("loaded the config of run first")
    open_section(page, "acc-evaluation")
    assert page.locator("#cfg-evaluation-seeds textarea, #cfg-evaluation-seeds input").first.input_value() == "1"


def test_runs_queue_one_at_a_time_cancel_and_resume(page, ui, tmp_path):
    tiny_run_form(page, "long", steps=100_000, samples_every="3")
    page.click("#start-run")
    select_run(page, "long")
    # the sample grids as the trainer writes them, the progress within the LoRA, its loss
    long_run = ui.root / "runs" / "ui" / "long"
    deadline = time.time() + RUN_TIMEOUT_MS / 1000
    while not any(name == "stepping_stone-step000003" for _, name in runs.samples(long_run)):
        assert time.time() < deadline, "the trainer wrote no sample grid at step 3"
        time.sleep(0.5)
    # the gallery shows the grids (its captions are drawn only when an image is opened)
    expect(page.locator("#sample-gallery img").first).to_be_visible(timeout=60_000)
    assert stage_rows(page)["LoRA: stepping_stone"] == "running"
    expect(output(page, "run-progress")).to_contain_text("running: LoRA: stepping_stone, step")
    screenshot(page, "runs", tmp_path, "#run-state")
    tiny_run_form(page, "quick")
    page.click("#start-run")
    expect(output(page, "character-message")).to_contain_text("run quick queued")
    run_state(page, "quick", "queued", timeout=10_000)
    select_run(page, "long")
    page.click("#cancel-run")
    run_state(page, "long", "cancelled", timeout=30_000)
    stages = stage_rows(page)
    assert stages["LoRA: stepping_stone"] == "cancelled" and stages["data set: character"] == "done", stages
    assert not (long_run / "loras" / "stepping_stone.stage.json").exists()  # a killed stage leaves no marker
    run_state(page, "quick", "done")
    page.click("#rerun")
    run_state(page, "quick", "running", timeout=30_000)
    run_state(page, "quick", "done")
    stages = stage_rows(page)
    skipped = {name: state for name, state in stages.items() if not name.startswith("evaluation")}
    assert set(skipped.values()) == {"skipped (unchanged)"}, stages
    info = json.loads((ui.root / "runs" / "ui" / "quick" / "run.json").read_text())
    assert [a["state"] for a in info["attempts"]] == ["done", "done"]


def test_a_login_guards_the_page_when_a_password_is_given(browser, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "login.txt").write_text("me:secret\n")  # inside the root, yet never served
    (root / "notes.txt").write_text("a file of the root")
    server = Server(root, tmp_path, tmp_path / "server.log", ("--auth-file", str(root / "login.txt")))
    server.start()
    try:
        assert server.status(root / "notes.txt") == 401  # nothing without the login
        page = browser.new_page()
        page.goto(server.url)
        page.get_by_label("username").fill("me")
        page.get_by_label("password").fill("wrong")
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
        page.get_by_label("username").fill("me")
        page.get_by_label("password").fill("secret")
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#start-run")
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.cookies(server.url))
        assert server.status(root / "notes.txt", cookie) == 200
        assert server.status(root / "login.txt", cookie) == 403
        page.close()
    finally:
        server.stop()
    assert browser.external == []
