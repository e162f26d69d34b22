"""The Gradio layout of `sabun ui`, and `serve`.

Four tabs over the library: a character run (its form generated from the config dataclasses, the
config as TOML, the data sets' renders and captions), watching runs (stages, progress, loss, samples,
log, cancel and re-run), results (metrics, report.html, the LoRA at a weight on the plain model, the
LoRA file) and the LoRA tools. Every handler calls `forms`, `runs` or `tools`; every path typed is
checked by `safety.Root`, and Gradio serves files from the root only. Nothing is fetched from the
internet: analytics off, system fonts, no share link.
"""

from __future__ import annotations

import html
import os
import re
import signal
import tempfile
import threading
import urllib.parse
import uuid
from pathlib import Path

import gradio as gr
import pandas as pd

from sabun.errors import SabunError
from sabun.pipelines.character import preflight, resolve
from sabun.toyworld.character import STEPPING_STONE_PRESETS, preset_names
from sabun.ui import tools
from sabun.ui.forms import (
    TRAIN_TABLES,
    FormField,
    Sources,
    build_raw,
    character_fields,
    check,
    config_text,
    error_text,
    form_values,
    initial,
)
from sabun.ui.runs import Runs
from sabun.ui.safety import MODEL_SUFFIXES, ServeOptions

# System fonts only: Gradio's default theme loads its fonts from Google Fonts.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "SFMono-Regular", "monospace"]
)
CSS = """
.sabun-metrics { border-collapse: collapse; margin: 0.5em 0; }
.sabun-metrics td, .sabun-metrics th { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: right; }
.sabun-metrics td:first-child, .sabun-metrics th:first-child { text-align: left; }
.sabun-metrics caption { font-weight: bold; text-align: left; padding-bottom: 0.3em; }
.sabun-note { color: #57606a; font-size: 0.9em; }
.sabun-error { color: #cf222e; font-weight: bold; }
#report iframe { width: 100%; height: 720px; border: 1px solid #d0d7de; }
"""
BUILTIN_MODELS = ["toy", "tiny"]
OUTCOMES = ("wrote ", "merged ", "model ", "overall ")  # the lines of a tool's output that say what it did
TARGET_KINDS = {"toy preset": "preset", "folder of renders": "folder", "3D model file": "model"}
SECTION_TITLES = {
    "model": "Model ([model])",
    "stepping_stone": "Stepping-stone LoRA ([stepping_stone])",
    "stepping_stone.train": "Stepping-stone LoRA training ([stepping_stone.train]; blank: the default shown)",
    "character": "Character LoRA ([character])",
    "character.train": "Character LoRA training ([character.train]; blank: the default shown)",
    "render": "Rendering of 3D model files ([render])",
    "evaluation": "Evaluation on the plain model ([evaluation])",
    "": "Other settings",
}
DRAFTS = Path(tempfile.gettempdir()) / "sabun-ui-drafts"  # the config offered for download (generated text only)


def message(text: str) -> str:
    """A line for the page: errors in red, as the CLI's `error: ...`."""
    if text.startswith("error:"):
        return f"<span class='sabun-error'>{html.escape(text)}</span>"
    return text


def outcome(text: str) -> tuple[str, str]:
    """(the outcome line for the page, the whole output): an error, else the lines that say what was done."""
    if text.startswith("error:"):
        return message(text), text
    said = [line for line in text.splitlines() if line.startswith(OUTCOMES) or re.fullmatch(r"\d+ layers", line)]
    return "\n\n".join(f"`{line}`" for line in said), text


def section_of(field: FormField) -> str:
    """The accordion a field sits in: its table, a train table's trainer section within it."""
    for table in TRAIN_TABLES:
        if field.key.startswith(table + "."):
            return table
    return field.key.split(".")[0] if "." in field.key else ""


def field_component(field: FormField):
    common = {"label": field.label, "info": field.doc or None, "elem_id": field.elem_id}
    if field.kind == "bool":
        return gr.Checkbox(value=initial(field), **common)
    if field.kind == "choice":
        choices = ([""] if field.default is None else []) + list(field.choices)
        return gr.Dropdown(choices=choices, value=initial(field), **common)
    lines = 3 if field.kind == "lines" else 1
    return gr.Textbox(value=initial(field), placeholder=field.placeholder or None, lines=lines, max_lines=8, **common)


class App:
    """The page's parts and their handlers (one instance per server)."""

    def __init__(self, options: ServeOptions, runs: Runs, generator: tools.Generator):
        self.options, self.root, self.runs, self.generator = options, options.root, runs, generator
        self.fields = character_fields()

    # --- lists for the pickers ------------------------------------------------------------------

    def model_choices(self) -> list[str]:
        return BUILTIN_MODELS + self.root.checkpoints()

    def lora_choices(self) -> list[str]:
        return self.root.loras()

    def folder_choices(self) -> list[str]:
        return self.root.image_folders()

    def vrm_choices(self) -> list[str]:
        return self.root.files(MODEL_SUFFIXES)

    def run_choices(self) -> list[str]:
        return self.runs.names()

    # --- layout ---------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="sabun", analytics_enabled=False) as demo:
            gr.Markdown(
                f"## sabun: the stepping-stone method\nroot: `{self.root}` (every file read or written is inside it) · "
                f"runs: `{self.root.relative(self.runs.folder) if self.runs.folder.exists() else 'runs/ui'}` · one run at a time"
            )
            with gr.Row():
                names = self.run_choices()
                self.run_select = gr.Dropdown(
                    choices=names, value=names[0] if names else None, label="run", elem_id="run-select", scale=3
                )
                self.refresh = gr.Button("Refresh file and run lists", elem_id="refresh", scale=1)
            self.timer = gr.Timer(1.5)
            with gr.Tabs(elem_id="main-tabs") as self.tabs:
                with gr.Tab("Character run", id="character", elem_id="tab-character"):
                    self.character_tab()
                with gr.Tab("Runs", id="watch", elem_id="tab-watch"):
                    self.watch_tab()
                with gr.Tab("Results", id="results", elem_id="tab-results"):
                    self.results_tab()
                with gr.Tab("LoRA tools", id="lora", elem_id="tab-lora"):
                    self.lora_tab()
            self.wire()
            demo.load(self.on_load, None, [*self.picker_outputs, self.run_select])
        return demo

    def on_load(self):
        """A page opened later sees the files and runs of now, the newest run selected."""
        names = self.run_choices()
        return self.refresh_lists()[:-1] + [gr.Dropdown(choices=names, value=names[0] if names else None)]

    def character_tab(self) -> None:
        gr.Markdown(
            "Choose the model and the characters, adjust any setting, check the config, start the run. "
            "A run is `sabun character config.toml` in its folder: the same config gives the same files from the command line."
        )
        with gr.Row():
            self.model = gr.Dropdown(
                choices=self.model_choices(),
                value="toy",
                allow_custom_value=True,
                label="model: toy, or a checkpoint / diffusers folder inside the root",
                elem_id="src-model",
            )
            self.run_name = gr.Textbox(label="run name (blank: date and time)", elem_id="run-name")
        with gr.Group():
            gr.Markdown("**Stepping-stone characters** (the other characters, in the 3D look)")
            self.presets = gr.CheckboxGroup(
                choices=[p for p in preset_names() if p != "target"] + ["target"],
                value=list(STEPPING_STONE_PRESETS),
                label="toy presets (rendered by sabun; toy model)",
                elem_id="src-presets",
            )
            self.folders = gr.Dropdown(
                choices=self.folder_choices(),
                multiselect=True,
                allow_custom_value=True,
                label="folders of captioned renders (one per character)",
                elem_id="src-folders",
            )
            self.vrms = gr.Dropdown(
                choices=self.vrm_choices(),
                multiselect=True,
                allow_custom_value=True,
                label="VRM / glTF files",
                elem_id="src-models",
            )
            self.model_tags = gr.Textbox(
                lines=2,
                label="their tags: one `NAME: tags` line per model (NAME: the file's stem); default: NAME.toml beside each",
                elem_id="src-model-tags",
            )
        with gr.Group():
            gr.Markdown("**The character** the LoRA draws")
            self.target_kind = gr.Radio(
                choices=list(TARGET_KINDS), value="toy preset", label="from", elem_id="src-target-kind"
            )
            with gr.Row():
                self.target_preset = gr.Dropdown(
                    choices=preset_names(), value="target", label="toy preset", elem_id="src-target-preset"
                )
                self.target_folder = gr.Dropdown(
                    choices=self.folder_choices(),
                    allow_custom_value=True,
                    label="folder of its captioned renders",
                    elem_id="src-target-folder",
                )
                self.target_model = gr.Dropdown(
                    choices=self.vrm_choices(),
                    allow_custom_value=True,
                    label="its VRM / glTF file",
                    elem_id="src-target-model",
                )
                self.target_tags = gr.Textbox(label="its tags (with a model file; optional)", elem_id="src-target-tags")
        gr.Markdown("### Settings\nEach field is a key of the TOML config, with its default and its check.")
        self.components = {}
        for section, title in SECTION_TITLES.items():
            fields = [f for f in self.fields if section_of(f) == section]
            if not fields:
                continue
            with gr.Accordion(title, open=False, elem_id="acc-" + (section.replace(".", "-") or "run")):
                if section in TRAIN_TABLES:
                    for sub in dict.fromkeys(f.section for f in fields):
                        with gr.Accordion(sub.rsplit(".", 1)[-1], open=False, elem_id="acc-" + sub.replace(".", "-")):
                            for f in fields:
                                if f.section == sub:
                                    self.components[f.key] = field_component(f)
                else:
                    for f in fields:
                        self.components[f.key] = field_component(f)
        with gr.Row():
            self.check_button = gr.Button("Check config", elem_id="check-config")
            self.start_button = gr.Button("Start run", variant="primary", elem_id="start-run")
            self.load_button = gr.Button("Load the selected run's config", elem_id="load-config")
        self.character_message = gr.Markdown(elem_id="character-message")
        with gr.Row():
            self.toml = gr.Code(
                language=None, label="the config the run will use (TOML)", interactive=False, elem_id="config-toml"
            )
        self.download_config = gr.DownloadButton("Download config.toml", visible=False, elem_id="download-config")
        with gr.Accordion("Data sets of the selected run: renders and captions", open=True, elem_id="acc-datasets"):
            self.dataset = gr.Dropdown(
                choices=[], label="data set (after the data stages ran)", elem_id="dataset-select"
            )
            self.gallery = gr.Gallery(
                columns=8,
                height=300,
                allow_preview=False,
                fit_columns=False,
                label="renders",
                elem_id="dataset-gallery",
            )
            self.selected_image = gr.State(None)
            with gr.Row():
                self.caption = gr.Textbox(label="caption of the selected image", elem_id="caption-edit", scale=4)
                self.save_caption = gr.Button("Save caption", elem_id="save-caption", scale=1)
            self.caption_message = gr.Markdown(elem_id="caption-message")

    def watch_tab(self) -> None:
        self.runs_table = gr.Dataframe(
            headers=["run", "state", "created", "finished"],
            value=self.runs.table() or None,
            interactive=False,
            label="runs (click one to select it)",
            elem_id="runs-table",
        )
        self.run_state = gr.Markdown(elem_id="run-state")
        self.run_progress = gr.HTML(elem_id="run-progress")
        with gr.Row():
            self.cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel-run")
            self.rerun_button = gr.Button("Run again (finished stages are skipped)", elem_id="rerun")
        self.run_action = gr.Markdown(elem_id="run-action")
        self.stage_table = gr.Dataframe(
            headers=["stage", "state"], interactive=False, label="stages", elem_id="stage-table"
        )
        self.run_error = gr.Markdown(elem_id="run-error")
        self.loss_plot = gr.LinePlot(
            x="step", y="loss", color="LoRA", label="training loss (the trainer's progress bar)", elem_id="loss-plot"
        )
        self.samples = gr.Gallery(
            columns=4,
            fit_columns=False,
            height=260,
            allow_preview=True,  # a click shows a grid large
            object_fit="contain",
            label="sample grids",
            elem_id="sample-gallery",
        )
        self.run_log = gr.Textbox(
            lines=16, max_lines=16, autoscroll=True, interactive=False, label="log (latest attempt)", elem_id="run-log"
        )
        self.signature = gr.State({})
        self.results_key = gr.Textbox(visible=False)

    def results_tab(self) -> None:
        self.results_title = gr.Markdown(elem_id="results-title")
        self.metrics = gr.HTML(elem_id="metrics")
        self.download_lora = gr.DownloadButton("Download the character LoRA", visible=False, elem_id="download-lora")
        gr.Markdown("### The character LoRA on the plain model, at a weight")
        with gr.Row():
            self.weight = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label="LoRA weight", elem_id="weight", scale=3)
            self.prompt = gr.Textbox(value="1girl", label="prompt", elem_id="prompt", scale=3)
            self.seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed", scale=1)
            self.steps = gr.Number(value=20, precision=0, label="steps", elem_id="steps", scale=1)
            self.guidance = gr.Number(value=5.0, label="guidance", elem_id="guidance", scale=1)
        self.generate_button = gr.Button("Generate", elem_id="generate")
        self.generate_message = gr.Markdown(elem_id="generate-message")
        with gr.Row():
            self.image_plain = gr.Image(
                label="plain model (weight 0)", interactive=False, elem_id="image-plain", height=280
            )
            self.image_lora = gr.Image(
                label="with the LoRA at the weight", interactive=False, elem_id="image-lora", height=280
            )
        self.report = gr.HTML(elem_id="report")

    def lora_tab(self) -> None:
        loras, models = self.lora_choices(), self.model_choices()
        self.lora_pickers, self.model_pickers = [], []

        def lora_picker(label, elem_id):
            picker = gr.Dropdown(choices=loras, allow_custom_value=True, label=label, elem_id=elem_id)
            self.lora_pickers.append(picker)
            return picker

        def model_picker(label, elem_id, value=None, blank=False):
            picker = gr.Dropdown(
                choices=([""] if blank else []) + models,
                value=value,
                allow_custom_value=True,
                label=label,
                elem_id=elem_id,
            )
            self.model_pickers.append((picker, blank))
            return picker

        def output(elem_id):
            """The tool's outcome (`wrote ...`, `error: ...`) above what the CLI prints in full."""
            status = gr.Markdown(elem_id=elem_id.replace("-output", "-status"))
            text = gr.Code(language=None, interactive=False, label="output (as the CLI prints it)", elem_id=elem_id)
            return [status, text]

        prediction = lambda elem_id: gr.Dropdown(  # noqa: E731
            choices=["", "epsilon", "v_prediction"],
            value="",
            label="prediction type (blank: detected)",
            elem_id=elem_id,
        )
        gr.Markdown("The same functions as `sabun lora ...` and `sabun merge`; paths inside the root.")
        with gr.Tabs():
            with gr.Tab("info", id="lora-info"):
                lora = lora_picker("LoRA file", "info-lora")
                model = model_picker("check the fit to this model (optional)", "info-model", value="", blank=True)
                button = gr.Button("Show", elem_id="info-run")
                out = output("info-output")
                button.click(
                    lambda a, b: outcome(tools.guarded(lambda: tools.info(self.root, a, b))), [lora, model], out
                )
            with gr.Tab("merge", id="lora-merge"):
                model = model_picker("model", "merge-model", value="tiny")
                specs = gr.Textbox(lines=3, label="LoRAs, one PATH[:WEIGHT] per line", elem_id="merge-loras")
                out_path = gr.Textbox(
                    label="--out: NAME.safetensors (one file) or a folder (diffusers)", elem_id="merge-out"
                )
                with gr.Row():
                    overwrite = gr.Checkbox(label="--overwrite", elem_id="merge-overwrite")
                    force = gr.Checkbox(label="--force (weights beyond +-10)", elem_id="merge-force")
                    kind = prediction("merge-prediction")
                button = gr.Button("Merge", elem_id="merge-run")
                out = output("merge-output")
                button.click(
                    lambda *a: outcome(tools.guarded(lambda: tools.merge(self.root, *a))),
                    [model, specs, out_path, overwrite, force, kind],
                    out,
                )
            with gr.Tab("combine", id="lora-combine"):
                specs = gr.Textbox(lines=3, label="LoRAs, one PATH[:WEIGHT] per line", elem_id="combine-loras")
                out_path = gr.Textbox(label="--out (.safetensors)", elem_id="combine-out")
                with gr.Row():
                    rank = gr.Number(label="--rank (blank: exact)", precision=0, elem_id="combine-rank")
                    conv_rank = gr.Number(label="--conv-rank", precision=0, elem_id="combine-conv-rank")
                    energy = gr.Number(label="--energy (0: unset)", value=0, elem_id="combine-energy")
                with gr.Row():
                    concat = gr.Checkbox(label="--concat", elem_id="combine-concat")
                    overwrite = gr.Checkbox(label="--overwrite", elem_id="combine-overwrite")
                    force = gr.Checkbox(label="--force", elem_id="combine-force")
                button = gr.Button("Combine", elem_id="combine-run")
                out = output("combine-output")
                button.click(
                    lambda *a: outcome(tools.guarded(lambda: tools.combine(self.root, *a))),
                    [specs, out_path, rank, conv_rank, energy, concat, overwrite, force],
                    out,
                )
            with gr.Tab("resize", id="lora-resize"):
                lora = lora_picker("LoRA file", "resize-lora")
                out_path = gr.Textbox(label="--out (.safetensors)", elem_id="resize-out")
                with gr.Row():
                    rank = gr.Number(label="--rank", precision=0, elem_id="resize-rank")
                    energy = gr.Number(label="--energy (0: unset)", value=0, elem_id="resize-energy")
                    overwrite = gr.Checkbox(label="--overwrite", elem_id="resize-overwrite")
                button = gr.Button("Resize", elem_id="resize-run")
                out = output("resize-output")
                button.click(
                    lambda *a: outcome(tools.guarded(lambda: tools.resize(self.root, *a))),
                    [lora, out_path, rank, energy, overwrite],
                    out,
                )
            with gr.Tab("extract", id="lora-extract"):
                with gr.Row():
                    original = model_picker("--original", "extract-original")
                    tuned = model_picker("--tuned", "extract-tuned")
                with gr.Row():
                    rank = gr.Number(label="--rank", precision=0, value=8, elem_id="extract-rank")
                    conv_rank = gr.Number(
                        label="--conv-rank (blank: left out)", precision=0, elem_id="extract-conv-rank"
                    )
                    method = gr.Radio(["full", "randomized"], value="full", label="--method", elem_id="extract-method")
                out_path = gr.Textbox(label="--out (.safetensors)", elem_id="extract-out")
                with gr.Row():
                    unet_only = gr.Checkbox(label="--unet-only", elem_id="extract-unet-only")
                    overwrite = gr.Checkbox(label="--overwrite", elem_id="extract-overwrite")
                    kind = prediction("extract-prediction")
                button = gr.Button("Extract", elem_id="extract-run")
                out = output("extract-output")
                button.click(
                    lambda *a: outcome(tools.guarded(lambda: tools.extract(self.root, *a))),
                    [original, tuned, rank, out_path, conv_rank, unet_only, method, overwrite, kind],
                    out,
                )

    # --- the character form ---------------------------------------------------------------------

    @property
    def source_inputs(self) -> list:
        """The pickers above the settings, in the order `form_config` reads them."""
        return [
            self.model,
            self.presets,
            self.folders,
            self.vrms,
            self.model_tags,
            self.target_kind,
            self.target_preset,
            self.target_folder,
            self.target_model,
            self.target_tags,
        ]

    @property
    def form_inputs(self) -> list:
        return self.source_inputs + [self.components[f.key] for f in self.fields]

    def form_config(self, values: tuple):
        count = len(self.source_inputs)
        model, presets, folders, vrms, model_tags, kind, preset, folder, vrm, tags = values[:count]
        sources = Sources(
            model=model or "",
            presets=list(presets or []),
            folders=list(folders or []),
            models=list(vrms or []),
            model_tags=model_tags or "",
            target=TARGET_KINDS.get(kind, kind),
            target_preset=preset,
            target_folder=folder,
            target_model=vrm,
            target_tags=tags,
        )
        values = dict(zip([f.key for f in self.fields], values[count:]))
        config = check(build_raw(self.root, sources, values, self.fields))
        preflight(resolve(config, self.root.folder))  # the run's own checks of its inputs, before it is queued
        return config

    def check_config(self, *values):
        try:
            config = self.form_config(values)
        except SabunError as e:
            return message(error_text(e)), gr.skip(), gr.DownloadButton(visible=False)
        text = config_text(config)
        draft = DRAFTS / uuid.uuid4().hex / "character.toml"
        draft.parent.mkdir(parents=True, exist_ok=True)
        draft.write_text(text, encoding="utf-8")
        return (
            "config checked: start the run, or download it for `sabun character`",
            text,
            gr.DownloadButton(value=str(draft), visible=True),
        )

    def start_run(self, name: str, *values):
        try:
            config = self.form_config(values)
            hint = Path(config.character.preset or config.character.folder or config.character.model or "").stem
            name = self.runs.create(config_text(config), (name or "").strip() or self.runs.new_name(hint))
        except SabunError as e:
            return message(error_text(e)), gr.skip(), gr.skip(), gr.skip()
        queued = len(self.runs.queue()) > 1
        note = f"run {name} queued (one run at a time)" if queued else f"run {name} started"
        return (
            f"{note}: folder `{self.root.relative(self.runs.path(name))}`",
            config_text(config),
            gr.Dropdown(choices=self.run_choices(), value=name),
            gr.Tabs(selected="watch"),
        )

    def load_config(self, name: str | None):
        if not name:
            return [gr.skip()] * len(self.form_inputs) + ["error: no run selected"]
        try:
            sources, values = form_values(self.runs.raw_config(name), self.fields)
        except (OSError, ValueError, SabunError) as e:
            return [gr.skip()] * len(self.form_inputs) + [message(f"error: {name}: {e}")]
        shown = self.root.relative
        kind = {v: k for k, v in TARGET_KINDS.items()}[sources.target]
        head = [
            gr.Dropdown(value=shown(sources.model) if sources.model not in BUILTIN_MODELS else sources.model),
            [p for p in sources.presets if p in preset_names()],  # a character .toml: not in the picker
            gr.Dropdown(value=[shown(f) for f in sources.folders]),
            gr.Dropdown(value=[shown(m) for m in sources.models]),
            sources.model_tags,
            kind,
            sources.target_preset if sources.target_preset in preset_names() else "target",
            gr.Dropdown(value=shown(sources.target_folder) if sources.target_folder else None),
            gr.Dropdown(value=shown(sources.target_model) if sources.target_model else None),
            sources.target_tags or "",
        ]
        return head + [values[f.key] for f in self.fields] + [f"loaded the config of run {name}"]

    # --- data sets and captions -----------------------------------------------------------------

    def datasets(self, name: str | None):
        sets = self.runs.data_sets(name) if name else []
        return gr.Dropdown(choices=sets, value=sets[-1] if sets else None)

    def dataset_images(self, name: str | None, stage: str | None):
        images = self.runs.images(name, stage) if name and stage else []
        return images, None, "", ""

    def pick_image(self, name: str | None, stage: str | None, evt: gr.SelectData):
        images = self.runs.images(name, stage) if name and stage else []
        if evt.index is None or evt.index >= len(images):
            return None, "", ""
        path, caption = images[evt.index]
        return path, caption, f"selected: `{Path(path).name}`"

    def save(self, name: str | None, stage: str | None, image: str | None, caption: str):
        if not (name and stage and image):
            return gr.skip(), gr.skip(), "error: select an image of a data set first"
        try:
            note = self.runs.edit_caption(name, stage, image, caption)
        except SabunError as e:
            return gr.skip(), gr.skip(), message(f"error: {e}")
        images = self.runs.images(name, stage)
        same = next((p for p, _ in images if Path(p).name == Path(image).name), None)
        return images, same, note

    # --- watching -------------------------------------------------------------------------------

    def watch(self, name: str | None, signature: dict):
        """Every part of the Runs tab, each sent only when it changed (the page redraws nothing else)."""
        table = self.runs.table()
        parts: dict = {"table": table, "choices": [row[0] for row in table]}
        if name and (self.runs.folder / name / "config.toml").is_file():
            w = self.runs.watch(name)
            bar = (
                f"<progress value='{w.progress:.3f}' max='1' style='width:100%'></progress><div>{w.progress_text}</div>"
            )
            when = f" · started {w.started}" + (f" · finished {w.finished}" if w.finished else "") if w.started else ""
            parts |= {
                "state": f"**run {name}: {w.state}**{when}",
                "progress": bar,
                "stages": [[s.label, s.state] for s in w.stages],
                "error": message(w.error) if w.error else "",
                "losses": [list(p) for p in w.losses],
                "samples": w.samples,
                "log": w.log,
                "results": f"{name}:{w.state}:{w.finished}",
            }
        else:
            parts |= {"state": "no run selected", "progress": "", "stages": [], "error": "", "losses": []}
            parts |= {"samples": [], "log": "", "results": ""}
        new = {key: repr(value) for key, value in parts.items()}
        send = lambda key, value: value if signature.get(key) != new[key] else gr.skip()  # noqa: E731
        names, steps, values = zip(*parts["losses"]) if parts["losses"] else ((), (), ())
        losses = pd.DataFrame(  # typed even when empty: the plot's axes are numbers
            {
                "LoRA": pd.Series(names, dtype="object"),
                "step": pd.Series(steps, dtype="int64"),
                "loss": pd.Series(values, dtype="float64"),
            }
        )
        return (
            send("table", table or None),
            send("choices", gr.Dropdown(choices=parts["choices"])),
            send("state", parts["state"]),
            send("progress", parts["progress"]),
            send("stages", parts["stages"] or None),
            send("error", parts["error"]),
            send("losses", losses),
            send("samples", parts["samples"]),
            send("log", parts["log"]),
            send("results", parts["results"]),
            new,
        )

    @property
    def watch_outputs(self) -> list:
        return [
            self.runs_table,
            self.run_select,
            self.run_state,
            self.run_progress,
            self.stage_table,
            self.run_error,
            self.loss_plot,
            self.samples,
            self.run_log,
            self.results_key,
            self.signature,
        ]

    def cancel(self, name: str | None) -> str:
        return self.runs.cancel(name) if name else "error: no run selected"

    def rerun(self, name: str | None) -> str:
        if not name:
            return "error: no run selected"
        try:
            self.runs.start(name)
        except SabunError as e:
            return message(f"error: {e}")
        return f"run {name} queued again: finished stages are skipped"

    def select_row(self, evt: gr.SelectData):
        row = evt.row_value if hasattr(evt, "row_value") else None
        return gr.Dropdown(value=row[0]) if row else gr.skip()

    # --- results --------------------------------------------------------------------------------

    def results(self, name: str | None):
        if not name:
            return "no run selected", "", "", gr.DownloadButton(visible=False)
        run = self.runs.path(name)
        metrics = run / "metrics.json"
        state = self.runs.info(name)["state"]
        if not metrics.is_file():
            return f"**run {name}: {state}**: no results yet", "", "", gr.DownloadButton(visible=False)
        report = tools.read_report(metrics)
        page = ""
        if (run / "report.html").is_file():
            url = "/gradio_api/file=" + urllib.parse.quote(str(run / "report.html"))
            page = (
                f"<p><a href='{url}' target='_blank'>open report.html in a new tab</a></p><iframe src='{url}'></iframe>"
            )
        lora = Path(report.get("loras", {}).get("character", run / "loras" / "character" / "character.safetensors"))
        download = gr.DownloadButton(
            label=f"Download the character LoRA ({lora.name})",
            value=str(lora) if lora.is_file() and self.root.contains(lora) else None,
            visible=lora.is_file() and self.root.contains(lora),
        )
        title = f"**run {name}: {state}** · `{self.root.relative(metrics)}`"
        return title, tools.metrics_html(report), page, download

    def generate(self, name: str | None, weight, prompt, seed, steps, guidance):
        def draw():
            if not name:
                raise SabunError("no run selected")
            config, error = self.runs.config(name)
            if config is None:
                raise SabunError(error)
            lora = self.runs.path(name) / "loras" / "character" / "character.safetensors"
            if not lora.is_file():
                raise SabunError(f"run {name}: has no character LoRA yet; wait for its character LoRA stage")
            model = config.model
            images = self.generator.images(
                model.path, lora, weight, prompt or "", seed or 0, steps or 20, guidance or 0.0,
                model.allow_pickle, model.prediction_type,
            )  # fmt: skip
            drawn.extend(images)
            return f"{prompt} · seed {int(seed or 0)} · weight {float(weight):g} on the plain model ({model.path})"

        drawn: list = []
        text = tools.guarded(draw)
        if not drawn:
            return gr.skip(), gr.skip(), message(text)
        return drawn[0], drawn[1], text

    # --- wiring ---------------------------------------------------------------------------------

    def refresh_lists(self):
        models, loras, folders, vrms = (
            self.model_choices(),
            self.lora_choices(),
            self.folder_choices(),
            self.vrm_choices(),
        )
        updates = [gr.Dropdown(choices=models), gr.Dropdown(choices=folders), gr.Dropdown(choices=vrms)]
        updates += [gr.Dropdown(choices=folders), gr.Dropdown(choices=vrms)]
        updates += [gr.Dropdown(choices=loras) for _ in self.lora_pickers]
        updates += [gr.Dropdown(choices=([""] if blank else []) + models) for _, blank in self.model_pickers]
        return updates + [gr.Dropdown(choices=self.run_choices())]

    @property
    def picker_outputs(self) -> list:
        pickers = [self.model, self.folders, self.vrms, self.target_folder, self.target_model]
        return pickers + self.lora_pickers + [p for p, _ in self.model_pickers]

    def wire(self) -> None:
        inputs = self.form_inputs
        self.check_button.click(self.check_config, inputs, [self.character_message, self.toml, self.download_config])
        self.start_button.click(
            self.start_run,
            [self.run_name, *inputs],
            [self.character_message, self.toml, self.run_select, self.tabs],
        )
        self.load_button.click(self.load_config, [self.run_select], [*inputs, self.character_message])
        self.refresh.click(self.refresh_lists, None, [*self.picker_outputs, self.run_select])
        # the selected run: the Runs tab, its data sets, its results
        fresh = lambda name: self.watch(name, {})  # noqa: E731
        self.run_select.change(fresh, [self.run_select], self.watch_outputs, show_progress="hidden")
        self.run_select.change(self.datasets, [self.run_select], [self.dataset], show_progress="hidden")
        self.timer.tick(self.watch, [self.run_select, self.signature], self.watch_outputs, show_progress="hidden")
        self.results_key.change(
            self.results, [self.run_select], [self.results_title, self.metrics, self.report, self.download_lora]
        )
        self.results_key.change(self.datasets, [self.run_select], [self.dataset], show_progress="hidden")
        self.runs_table.select(self.select_row, None, [self.run_select])
        self.cancel_button.click(self.cancel, [self.run_select], [self.run_action])
        self.rerun_button.click(self.rerun, [self.run_select], [self.run_action])
        self.dataset.change(
            self.dataset_images,
            [self.run_select, self.dataset],
            [self.gallery, self.selected_image, self.caption, self.caption_message],
        )
        self.gallery.select(
            self.pick_image, [self.run_select, self.dataset], [self.selected_image, self.caption, self.caption_message]
        )
        self.save_caption.click(
            self.save,
            [self.run_select, self.dataset, self.selected_image, self.caption],
            [self.gallery, self.selected_image, self.caption_message],
        )
        generate_inputs = [self.run_select, self.weight, self.prompt, self.seed, self.steps, self.guidance]
        generate_outputs = [self.image_plain, self.image_lora, self.generate_message]
        self.generate_button.click(self.generate, generate_inputs, generate_outputs)
        self.weight.release(self.generate, generate_inputs, generate_outputs)


# --- serving --------------------------------------------------------------------------------------


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the server as Ctrl-C does: Gradio closes, the run queue stops


def serve(options: ServeOptions) -> None:
    """Build the page and serve it until interrupted; a run in progress is killed when the server ends
    (restarting lists it as stopped; running it again resumes)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost", "::1"]))
    runs = Runs(options.root)
    app = App(options, runs, tools.Generator())
    demo = app.build()
    demo.queue(default_concurrency_limit=4)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
    blocked = [str(options.auth_file)] if options.auth_file else None
    print(f"sabun ui: serving {options.root} on http://{options.host}:{options.port} (Ctrl-C to stop)", flush=True)
    try:
        demo.launch(
            server_name=options.host,
            server_port=options.port,
            share=False,
            auth=options.auth,
            allowed_paths=[str(options.root.folder)],
            blocked_paths=blocked,
            ssr_mode=False,
            mcp_server=False,
            enable_monitoring=False,
            pwa=False,
            inbrowser=False,
            show_error=True,
            quiet=True,  # its own lines would suggest share=True; this prints where it serves
            footer_links=["settings"],
            theme=THEME,
            css=CSS,
        )
    finally:
        runs.close()
