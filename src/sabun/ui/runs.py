"""The web app's runs: a queue that runs `sabun character` one run at a time, and what a run's folder says.

Each run is a folder ROOT/runs/ui/NAME holding its `config.toml`, `run.json` (its state and
attempts), `log.txt` (everything the command printed) and the pipeline's own outputs (data/, loras/,
metrics.json, report.html, samples.png, character.resolved.toml). A run is the CLI itself,
`python -m sabun character config.toml` in that folder, in a subprocess owned by the server: it
goes on when the browser tab closes, and the same config gives the same files from the command
line. Cancelling kills the subprocess (a killed stage leaves no marker, so a re-run redoes it and
skips every finished one). Restarting the server lists the runs from their folders; a run the
previous server left queued or running is shown as stopped.

Watching reads only what the pipeline writes: the stage markers (NAME.stage.json) and the stages'
temporary folders under data/ and loras/, the log's lines ("NAME: up to date, skipped",
"training NAME", the trainer's progress bar with its loss), and the sample grids.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from sabun.config import to_dict
from sabun.errors import SabunError
from sabun.io import atomic_output, process_alive
from sabun.pipelines.character import CharacterConfig, load_character_config, stage_names
from sabun.ui.safety import IMAGE_SUFFIXES, Root

RUNS_FOLDER = ("runs", "ui")
ACTIVE = ("queued", "running")
ATTEMPT_MARK = "=== sabun ui: attempt "  # the log line that starts each attempt
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
TQDM_STEP = re.compile(r"train:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)(?:.*?loss=([-+0-9.eE]+|nan|inf))?")
TRAINING = re.compile(r"^training (\S+)$")
SKIPPED = re.compile(r"^(\S+): up to date, skipped$")
MAX_LOG_LINES = 80


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")


def log_lines(text: str) -> list[str]:
    """The log as a terminal shows it: of each line redrawn with carriage returns (a progress bar), the last drawing."""
    return [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r") for line in text.split("\n")]


@dataclass
class Stage:
    name: str  # the stage's name as the pipeline logs it
    folder: str  # where its output and marker are: data, loras or . (the run folder)
    state: str = "waiting"  # waiting, running, done, skipped (unchanged), failed, cancelled, stopped
    kind: str = ""  # data set, LoRA, merged model, evaluation

    @property
    def label(self) -> str:
        return f"{self.kind}: {self.name}" if self.kind else self.name


@dataclass
class Watch:
    """What a run's folder says now."""

    name: str
    state: str
    stages: list[Stage] = field(default_factory=list)
    progress: float = 0.0  # 0..1
    progress_text: str = ""
    losses: list[tuple[str, int, float]] = field(default_factory=list)  # (LoRA, step, loss)
    samples: list[tuple[str, str]] = field(default_factory=list)  # (image, caption)
    log: str = ""
    error: str = ""  # the run's last `error: ...` line
    started: str = ""
    finished: str = ""


class Runs:
    """The run folders under ROOT/runs/ui and the queue that runs them, one at a time."""

    def __init__(self, root: Root, command: list[str] | None = None):
        self.root = root
        self.folder = root.folder.joinpath(*RUNS_FOLDER)
        self.command = command or [sys.executable, "-m", "sabun", "character"]
        self._cond = threading.Condition()
        self._queue: list[str] = []
        self._current: tuple[str, subprocess.Popen] | None = None
        self._cancelled: set[str] = set()
        self._closing = False
        self._configs: dict[str, tuple[float, CharacterConfig | None, str]] = {}
        self._mark_stopped()
        self._thread = threading.Thread(target=self._work, name="sabun-ui-runs", daemon=True)
        self._thread.start()

    # --- the run folders ------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        if not NAME_PATTERN.match(name or ""):
            raise SabunError(
                f"run name {name!r}: use letters, digits, `-`, `_` and `.` (up to 80, not starting with `.` or `-`)"
            )
        return self.folder / name

    def names(self) -> list[str]:
        """Every run, newest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if p.is_dir() and (p / "config.toml").is_file()]
        found.sort(key=lambda p: (read_json(p / "run.json").get("created", ""), p.name), reverse=True)
        return [p.name for p in found]

    def info(self, name: str) -> dict:
        run = self.path(name)
        data = read_json(run / "run.json")
        return {"name": name, "state": "new", "created": "", "attempts": []} | data

    def _save(self, name: str, data: dict) -> None:
        write_json(self.path(name) / "run.json", data)

    def table(self) -> list[list[str]]:
        """One row per run: name, state, created, last finished."""
        rows = []
        for name in self.names():
            info = self.info(name)
            last = info["attempts"][-1] if info["attempts"] else {}
            rows.append([name, info["state"], info.get("created", ""), last.get("finished", "")])
        return rows

    def new_name(self, hint: str = "") -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", hint).strip("._-")[:40]
        base = time.strftime("%Y%m%d-%H%M%S") + (f"-{stem}" if stem else "")
        name, i = base, 1
        while (self.folder / name).exists():
            i += 1
            name = f"{base}-{i}"
        return name

    def create(self, config_toml: str, name: str = "") -> str:
        """A new run folder with its config, queued."""
        name = name.strip() or self.new_name()
        run = self.path(name)
        if run.exists():
            raise SabunError(
                f"run name {name}: a run of that name exists ({run}); choose another name, or open it under Runs"
            )
        run.mkdir(parents=True)
        (run / "config.toml").write_text(config_toml, encoding="utf-8")
        self._save(name, {"name": name, "state": "new", "created": now(), "attempts": []})
        self.start(name)
        return name

    def config(self, name: str) -> tuple[CharacterConfig | None, str]:
        """The run's config as `sabun character` reads it (remembered while the file is unchanged), or the error."""
        path = self.path(name) / "config.toml"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None, f"{path}: no such config"
        cached = self._configs.get(name)
        if cached and cached[0] == mtime:
            return cached[1], cached[2]
        try:
            config, error = load_character_config(path), ""
        except SabunError as e:
            config, error = None, str(e)
        self._configs[name] = (mtime, config, error)
        return config, error

    def raw_config(self, name: str) -> dict:
        return tomllib.loads((self.path(name) / "config.toml").read_text(encoding="utf-8"))

    # --- the queue ------------------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Queue the run (a re-run resumes: finished stages are skipped)."""
        with self._cond:
            info = self.info(name)
            if info["state"] in ACTIVE:
                raise SabunError(f"run {name}: is {info['state']} already")
            info["state"] = "queued"
            info["queued"] = now()
            self._save(name, info)
            self._cancelled.discard(name)
            self._queue.append(name)
            self._cond.notify_all()

    def cancel(self, name: str) -> str:
        """End a running run (kill its process) or take a queued one off the queue."""
        with self._cond:
            info = self.info(name)
            if name in self._queue:
                self._queue.remove(name)
                info["state"] = "cancelled"
                self._save(name, info)
                return f"run {name}: taken off the queue"
            if self._current and self._current[0] == name:
                self._cancelled.add(name)
                kill(self._current[1])
                return f"run {name}: cancelled; run it again to resume (finished stages are skipped)"
        return f"run {name}: is {info['state']}, not running or queued"

    def queue(self) -> list[str]:
        with self._cond:
            return ([self._current[0]] if self._current else []) + list(self._queue)

    def busy(self) -> bool:
        with self._cond:
            return self._current is not None or bool(self._queue)

    def close(self) -> None:
        """Stop the queue and kill a running run (the server is ending); it is shown as stopped."""
        with self._cond:
            self._closing = True
            current = self._current
            self._cond.notify_all()
        if current:
            kill(current[1])
            current[1].wait(timeout=30)
        self._thread.join(timeout=30)
        self._mark_stopped()

    def _mark_stopped(self) -> None:
        """Runs a previous server left queued or running: stopped (their processes are gone)."""
        for name in self.names():
            info = self.info(name)
            if info["state"] not in ACTIVE:
                continue
            pid = info["attempts"][-1].get("pid") if info["attempts"] else None
            if info["state"] == "running" and pid and process_alive(pid) and not self._closing:
                continue  # still running under another server: left alone
            info["state"] = "stopped"
            if info["attempts"] and not info["attempts"][-1].get("finished"):
                info["attempts"][-1] |= {"finished": now(), "state": "stopped"}
            self._save(name, info)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                name = self._queue.pop(0)
                try:
                    process = self._launch(name)
                except (OSError, SabunError) as e:
                    safely(self._finish, name, None, f"could not start: {e}")
                    continue
                self._current = (name, process)
            code = process.wait()
            with self._cond:
                self._current = None
                state = "cancelled" if name in self._cancelled else "stopped" if self._closing else None
                safely(self._finish, name, code, state)

    def _launch(self, name: str) -> subprocess.Popen:
        run = self.path(name)
        info = self.info(name)
        attempt = {"started": now(), "started_at": time.time()}
        with open(run / "log.txt", "a", encoding="utf-8") as log:
            log.write(f"{ATTEMPT_MARK}{len(info['attempts']) + 1} started {attempt['started']} ===\n")
            log.flush()
            env = os.environ | {"PYTHONUNBUFFERED": "1", "COLUMNS": "120", "NO_COLOR": "1"}
            process = subprocess.Popen(
                [*self.command, "config.toml"],
                cwd=run,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: cancel ends it and everything it started
            )
        info["attempts"].append(attempt | {"pid": process.pid})
        info["state"] = "running"
        self._save(name, info)
        return process

    def _finish(self, name: str, code: int | None, state: str | None) -> None:
        info = self.info(name)
        final = state if state in ("cancelled", "stopped") else "done" if code == 0 else "failed"
        if info["attempts"]:
            info["attempts"][-1] |= {"finished": now(), "returncode": code, "state": final}
        info["state"] = final
        self._save(name, info)
        with open(self.path(name) / "log.txt", "a", encoding="utf-8") as log:
            note = f" ({state})" if state and state not in ("cancelled", "stopped") else ""
            log.write(f"=== sabun ui: {final}{note} {now()} ===\n")

    # --- watching -------------------------------------------------------------------------------

    def attempt_log(self, name: str) -> str:
        """The log of the run's latest attempt."""
        path = self.path(name) / "log.txt"
        try:
            with open(path, encoding="utf-8", errors="replace", newline="") as file:  # carriage returns kept
                text = file.read()
        except OSError:
            return ""
        start = text.rfind(ATTEMPT_MARK)
        return text[start:] if start >= 0 else text

    def watch(self, name: str) -> Watch:
        info = self.info(name)
        run = self.path(name)
        attempt = info["attempts"][-1] if info["attempts"] else {}
        started_at = attempt.get("started_at", float("inf"))
        text = self.attempt_log(name)
        lines = log_lines(text)
        config, error = self.config(name)
        watch = Watch(name, info["state"], started=attempt.get("started", ""), finished=attempt.get("finished", ""))
        watch.stages = stage_states(
            run, expected_stages(config) if config else [], lines, started_at, info["state"], attempt.get("pid")
        )
        watch.losses, step = losses(text.split("\n"))
        watch.progress, watch.progress_text = progress(watch.stages, step)
        watch.samples = samples(run)
        watch.log = "\n".join(line for line in lines if line.strip())[-20000:]
        watch.log = "\n".join(watch.log.splitlines()[-MAX_LOG_LINES:])
        errors = [line for line in lines if line.startswith("error: ")]
        watch.error = errors[-1] if errors else (error if config is None else "")
        return watch

    # --- the data sets and their captions -------------------------------------------------------

    def data_sets(self, name: str) -> list[str]:
        """The run's data stages that have images (after its data stages ran)."""
        config, _ = self.config(name)
        if config is None:
            return []
        return [
            stage.name
            for stage in expected_stages(config)
            if stage.folder == "data" and self.data_folder(name, stage.name)
        ]

    def data_folder(self, name: str, stage: str) -> Path | None:
        """Where a data set's images are: its edited copy (RUN/sources/NAME) when the config takes it, else the stage's output."""
        config, _ = self.config(name)
        if config is None or stage not in [s.name for s in expected_stages(config) if s.folder == "data"]:
            return None
        run = self.path(name)
        edited = run / "sources" / stem_of(stage)
        if str(edited) in {*config.stepping_stone.folders, config.character.folder or ""}:
            return edited
        built = run / "data" / stage
        return built if built.is_dir() else None

    def images(self, name: str, stage: str) -> list[tuple[str, str]]:
        """(image, caption) of every image of a data set."""
        folder = self.data_folder(name, stage)
        if folder is None:
            return []
        out = []
        for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            caption = image.with_suffix(".txt")
            out.append((str(image), caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""))
        return out

    def edit_caption(self, name: str, stage: str, image: str, text: str) -> str:
        """Change one caption of a data set. The run's config is the whole truth of a run, so the
        data set is copied once to RUN/sources/NAME (images and captions, without sabun's render
        metadata, so its captions are taken as they are), the config takes that folder in place of
        the source, and the caption is written there: running the run again redoes that data set and
        every LoRA after it, and `sabun character config.toml` gives the same files."""
        if self.info(name)["state"] in ACTIVE:
            raise SabunError(f"run {name}: is {self.info(name)['state']}; edit its captions when it has ended")
        config, error = self.config(name)
        if config is None:
            raise SabunError(error)
        run = self.path(name)
        folder = self.data_folder(name, stage)
        if folder is None:
            raise SabunError(f"data set {stage}: has no images yet; run the run first")
        picture = Path(image)
        if not (picture.parent == folder and picture.is_file()):
            raise SabunError(f"{image}: is not an image of the data set {stage}")
        policy = config.character.caption_policy if stage == "character" else config.stepping_stone.caption_policy
        if policy == "none":
            raise SabunError(
                f"data set {stage}: its caption policy is `none` (every caption empty); change the policy to edit captions"
            )
        edited = run / "sources" / stem_of(stage)
        message = f"caption of {picture.name} saved in {self.root.relative(edited)}"
        if folder != edited:
            copy_images(folder, edited)
            self._take_folder(name, stage, config, edited)
            message += (
                f"; the run's config now takes {stage} from that folder: run it again to train on the edited captions"
            )
        (edited / picture.with_suffix(".txt").name).write_text(text.strip() + "\n", encoding="utf-8")
        return message

    def _take_folder(self, name: str, stage: str, config: CharacterConfig, folder: Path) -> None:
        """The run's config.toml with the source of data stage `stage` replaced by `folder`."""
        raw = self.raw_config(name)
        if stage == "character":
            target = raw.setdefault("character", {})
            if target.get("preset") and not raw.get("evaluation", {}).get("character"):
                raw.setdefault("evaluation", {})["character"] = target["preset"]  # the toy evaluator still knows who
            for key in ("preset", "model", "folder"):
                target.pop(key, None)
            target["folder"] = str(folder)
        else:  # the stage names follow the sources in order: presets, folders, models
            stone, sources = raw.setdefault("stepping_stone", {}), config.stepping_stone
            presets, folders, models = list(sources.presets), list(sources.folders), list(sources.models)
            i = stage_names(config).index(stage)
            if i < len(presets):
                del presets[i]
            elif i < len(presets) + len(folders):
                del folders[i - len(presets)]
            else:
                del models[i - len(presets) - len(folders)]
            stone |= {"presets": presets, "folders": [*folders, str(folder)], "models": [to_dict(m) for m in models]}
        header = "# sabun character config (a caption edited in `sabun ui`); run it with `sabun character FILE`\n"
        (self.path(name) / "config.toml").write_text(header + tomli_w.dumps(raw), encoding="utf-8")


def safely(action, *args) -> None:
    """Record a run's end; a failure to (a full disk) is printed, and the queue goes on."""
    try:
        action(*args)
    except Exception:
        traceback.print_exc()


def stem_of(stage: str) -> str:
    return stage.removeprefix("stepping_stone_")


def copy_images(source: Path, out: Path) -> None:
    """A data set's images and captions, without sabun's render metadata (NAME.json)."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and (path.suffix.lower() in IMAGE_SUFFIXES or path.suffix == ".txt"):
            shutil.copy2(path, out / path.name)


def kill(process: subprocess.Popen) -> None:
    """End a run's process and everything it started (its own process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def expected_stages(config: CharacterConfig) -> list[Stage]:
    """The stages of a character run in the order the pipeline runs them."""
    data = [Stage(n, "data", kind="data set") for n in stage_names(config)] + [
        Stage("character", "data", kind="data set")
    ]
    loras = [Stage("stepping_stone", "loras", kind="LoRA")]
    if config.save_merged:
        loras.append(Stage("merged.safetensors", ".", kind="merged model"))
    loras.append(Stage("character", "loras", kind="LoRA"))
    return data + loras + [Stage("evaluation", ".", kind="evaluation on the plain model")]


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def stage_states(run: Path, stages: list[Stage], lines: list[str], started_at: float, state: str, pid) -> list[Stage]:
    """Each stage's state from its marker, its temporary folder and the log of the latest attempt."""
    skipped = [m.group(1) for m in map(SKIPPED.match, lines) if m]
    trained = {m.group(1) for m in map(TRAINING.match, lines) if m}
    sampling = any(line.startswith("sampling at weight") for line in lines)
    active = state == "running"
    unresolved_seen = False
    for stage in stages:
        folder = run if stage.folder == "." else run / stage.folder
        if stage.name == "evaluation":
            finished = mtime(run / "metrics.json") >= started_at
            started = sampling
        else:
            marker = folder / f"{stage.name}.stage.json"
            finished = mtime(marker) >= started_at
            if not finished and marker.is_file() and stage.name in skipped:
                skipped.remove(stage.name)
                stage.state = "skipped (unchanged)"
                continue
            building = pid is not None and any(folder.glob(f".{stage.name}.tmp-{pid}-*"))
            started = building or (stage.folder == "loras" and stage.name in trained)
        if finished:
            stage.state = "done"
        elif active:
            stage.state = "running" if started and not unresolved_seen else "waiting"
            unresolved_seen = True
        elif state in ("failed", "cancelled", "stopped") and not unresolved_seen:
            stage.state = state
            unresolved_seen = True
        else:
            stage.state = "waiting" if state == "queued" else "not run"
            unresolved_seen = True
    return stages


def losses(lines: list[str]) -> tuple[list[tuple[str, int, float]], tuple[int, int] | None]:
    """(LoRA, step, loss) from the trainer's progress bar in the raw log lines (each redrawing of the
    bar after a carriage return), and the last (step, steps) of the LoRA in training."""
    points: dict[tuple[str, int], float] = {}
    lora, last = "", None
    for line in lines:
        for segment in line.split("\r"):
            m = TRAINING.match(segment.strip())
            if m:
                lora, last = m.group(1), None
                continue
            m = TQDM_STEP.search(segment)
            if not m:
                continue
            last = (int(m.group(1)), int(m.group(2)))
            if m.group(3) and lora:
                points[(lora, int(m.group(1)))] = float(m.group(3))
    return [(name, step, loss) for (name, step), loss in points.items()], last


def progress(stages: list[Stage], step: tuple[int, int] | None) -> tuple[float, str]:
    if not stages:
        return 0.0, ""
    resolved = sum(s.state in ("done", "skipped (unchanged)") for s in stages)
    running = next((s for s in stages if s.state == "running"), None)
    fraction = resolved
    text = f"{resolved} of {len(stages)} stages finished"
    if running is not None:
        text += f"; running: {running.label}"
        if running.folder == "loras" and step and step[1]:
            fraction += step[0] / step[1]
            text += f", step {step[0]} of {step[1]}"
    return fraction / len(stages), text


def samples(run: Path) -> list[tuple[str, str]]:
    """The sample grids written so far, newest first: the trainer's (sampling.every_n_steps) and the run's samples.png."""
    found = list(run.glob("loras/*/samples/*.png")) + list(run.glob("loras/.*.tmp-*/*/samples/*.png"))
    if (run / "samples.png").is_file():
        found.append(run / "samples.png")
    found = sorted(found, key=mtime, reverse=True)[:12]
    return [(str(p), "samples.png: prompts x weights" if p.name == "samples.png" else p.stem) for p in found]
