"""The character run's form, generated from the config dataclasses, and the config it stands for.

Each setting of `sabun.pipelines.character.CharacterConfig` and its sections becomes one field: its
dotted key, its type, its default (the dataclass's) and its one-line doc (`sabun.config.field_docs`).
The `train` tables of the two LoRAs become the trainer's own sections (`sabun.train.config.TrainConfig`
less what the pipeline sets), blank unless given, as in a TOML file. What the user types is read as
`--set KEY=VALUE` reads it (`sabun.config.parse_value`), only what differs from the default enters
the table, and the table is checked by `config_from_dict`, exactly as the TOML loader checks a file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sabun import __version__
from sabun.avatar.raster import STYLES as RENDER_STYLES
from sabun.config import ConfigError, field_docs, parse_value, to_toml
from sabun.errors import SabunError
from sabun.pipelines.character import CharacterConfig, config_from_dict
from sabun.pipelines.data import CAPTION_POLICIES
from sabun.pipelines.recipe import PIPELINE_KEYS, toy_recipe
from sabun.train.config import TrainConfig
from sabun.ui.safety import Root

# Keys the form's source pickers set (the model, the characters' images, the output folder) rather
# than a generated field; `model.base_weights` is the pipeline's own (the stepping-stone).
SOURCE_KEYS = (
    "out",
    "model.path",
    "model.base_weights",
    "stepping_stone.presets",
    "stepping_stone.folders",
    "stepping_stone.models",
    "character.preset",
    "character.folder",
    "character.model",
    "character.tags",
)
TRAIN_TABLES = ("stepping_stone.train", "character.train")  # free-form `sabun train` tables of the two LoRAs
CHOICES = {"caption_policy": CAPTION_POLICIES, "style": RENDER_STYLES, "prediction_type": ("epsilon", "v_prediction")}
# Fields naming a file or folder, checked to lie inside the root: (kind, whether it must exist).
# `evaluation.character` and `.identity` are paths only when they end in .toml (else a name, or tags).
PATH_FIELDS = {
    "evaluation.tagger": ("folder", True),
    "evaluation.tag_map": ("file", True),
    "evaluation.protocol_prompts": ("file", True),
    "evaluation.character": ("toml", True),
    "evaluation.identity": ("toml", True),
    "data.cache_dir": ("folder", False),
}


@dataclass(frozen=True)
class FormField:
    """One setting of the form."""

    key: str  # dotted config key: `evaluation.seeds`, `character.train.network.rank`
    type: Any  # the field's annotation
    default: Any  # shown as the field's value; None in a train table: unset, the trainer's default applies
    doc: str  # the field's one-line doc
    section: str  # the table it belongs to: "", "evaluation", "character.train.network"
    placeholder: str = ""  # train tables: what applies when the field is left blank

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    @property
    def in_train_table(self) -> bool:
        return self.key.startswith(tuple(f"{t}." for t in TRAIN_TABLES))

    @property
    def kind(self) -> str:
        """How the field is shown: `bool` (a checkbox), `choice`, `lines` (a list of text, one per
        line), `list` (numbers, comma-separated) or `text`."""
        base = plain_type(self.type)
        if base is bool and not self.in_train_table:
            return "bool"
        if self.name in CHOICES and not self.in_train_table:
            return "choice"
        if typing.get_origin(base) is list:
            return "lines" if typing.get_args(base)[0] is str else "list"
        return "text"

    @property
    def choices(self) -> tuple[str, ...]:
        return CHOICES.get(self.name, ())

    @property
    def elem_id(self) -> str:
        return "cfg-" + self.key.replace(".", "-")

    @property
    def label(self) -> str:
        return self.key


def plain_type(tp: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def section_fields(cls: type, prefix: str, defaults: Any = None) -> list[FormField]:
    """The fields of dataclass `cls` (its nested sections, recursively), with `defaults` (an
    instance) overriding the class defaults (CharacterConfig's `model` defaults to the toy)."""
    hints, docs, out = typing.get_type_hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else default_of(f)
        if key in SOURCE_KEYS:
            continue
        if key in TRAIN_TABLES:
            out += train_fields(key)
        elif dataclasses.is_dataclass(plain_type(tp)):
            out += section_fields(plain_type(tp), key, default)
        else:
            out.append(FormField(key, tp, default, docs.get(f.name, ""), prefix))
    return out


def train_fields(table: str) -> list[FormField]:
    """A LoRA's `train` table: every section of `sabun train`'s config but those the pipeline sets,
    blank by default; the placeholder says what applies (the toy recipe on the toy model)."""
    recipe = toy_recipe(character=table.startswith("character"))
    hints, out = typing.get_type_hints(TrainConfig), []
    for section in dataclasses.fields(TrainConfig):
        if section.name in PIPELINE_KEYS:
            continue
        cls = hints[section.name]
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            default = shown(default_of(f)) or "unset"
            toy = recipe.get(section.name, {}).get(f.name)
            toy = shown(toy) if toy is not None else default
            placeholder = default if toy == default else f"{toy} on the toy model, else {default}"
            key = f"{table}.{section.name}.{f.name}"
            field_type = typing.get_type_hints(cls)[f.name]
            out.append(FormField(key, field_type, None, docs.get(f.name, ""), f"{table}.{section.name}", placeholder))
    return out


def character_fields() -> list[FormField]:
    """Every generated field of the character run's form, in the config's order (the sections'
    defaults are CharacterConfig's: its `model` is the toy)."""
    hints, docs, out = typing.get_type_hints(CharacterConfig), field_docs(CharacterConfig), []
    for f in dataclasses.fields(CharacterConfig):
        tp = hints[f.name]
        if f.name in SOURCE_KEYS:
            continue
        if dataclasses.is_dataclass(tp):
            defaults = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            out += section_fields(tp, f.name, defaults)
        else:
            out.append(FormField(f.name, tp, default_of(f), docs.get(f.name, ""), ""))
    return out


def shown(value: Any) -> str:
    """A value as the form shows it: text bare, numbers and booleans as TOML writes them, lists of
    numbers comma-separated, lists of text one per line, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value) and value:
            return "\n".join(value)
        return ", ".join(shown(v) for v in value)
    if isinstance(value, dict):
        return ""
    return str(value)


def initial(field: FormField) -> Any:
    """The value a field starts with: its default (a checkbox: True / False; a train table field: blank)."""
    if field.kind == "bool":
        return bool(field.default)
    return shown(field.default)


def read(field: FormField, value: Any) -> tuple[bool, Any]:
    """(given, value) for what the user left in a field: not given when blank or the default as
    shown; else the value read as `--set KEY=VALUE` reads it (`convert` checks it later)."""
    if field.kind == "bool":
        return (bool(value) != bool(field.default)), bool(value)
    text = "" if value is None else str(value).strip()
    if not text or (not field.in_train_table and text == shown(field.default).strip()):
        return False, None
    base = plain_type(field.type)
    if field.kind == "lines":
        return True, [line.strip() for line in text.splitlines() if line.strip()]
    if field.kind == "list" and not text.startswith("["):
        text = f"[{text}]"
    if base is Any or base is dict:
        return True, parse_value(Any, text)
    return True, parse_value(field.type, text)


def put(table: dict, key: str, value: Any) -> None:
    """Set the dotted `key` in a nested table."""
    *parents, last = key.split(".")
    node = table
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def get(table: dict, key: str) -> Any:
    node: Any = table
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def checked_path(root: Root, field: FormField, value: Any) -> Any:
    """A path field's value made the real path inside the root (refused outside it)."""
    spec = PATH_FIELDS.get(field.key) or PATH_FIELDS.get(field.key.split(".", 2)[-1])
    if spec is None or not isinstance(value, str):
        return value
    kind, exists = spec
    if kind == "toml":
        return str(root.path(value, field.key, "file")) if value.endswith(".toml") else value
    return str(root.path(value, field.key, kind, exists=exists))


# --- the sources: model, stepping-stone characters, the character --------------------------------


@dataclass
class Sources:
    """What the pickers above the settings hold."""

    model: str = "toy"
    presets: list[str] = dataclasses.field(default_factory=list)
    folders: list[str] = dataclasses.field(default_factory=list)
    models: list[str] = dataclasses.field(default_factory=list)
    model_tags: str = ""  # `NAME: tags` lines for the models (NAME: the file's stem); default: NAME.toml beside each
    target: str = "preset"  # preset, folder or model
    target_preset: str | None = "target"
    target_folder: str | None = None
    target_model: str | None = None
    target_tags: str | None = None


def source_table(root: Root, sources: Sources) -> dict:
    """The config's model and character sources, every path checked to lie inside the root."""
    stone: dict = {
        "presets": [p for p in sources.presets if p],
        "folders": [str(root.path(f, "stepping_stone.folders", "folder")) for f in sources.folders if f],
        "models": [],
    }
    tags = tag_lines(sources.model_tags)
    for i, model in enumerate(m for m in sources.models if m):
        path = root.path(model, f"stepping_stone.models[{i}].path", "file")
        stone["models"].append({"path": str(path)} | ({"tags": tags.pop(path.stem)} if path.stem in tags else {}))
    if tags:
        name = next(iter(tags))
        raise SabunError(
            f"tags of the 3D models: {name}: is not the name of a chosen model file (NAME: tags, NAME its file's stem)"
        )
    target: dict = {}
    if sources.target == "preset":
        target["preset"] = (sources.target_preset or "").strip() or None
    elif sources.target == "folder":
        target["folder"] = str(root.path(sources.target_folder, "character.folder", "folder"))
    elif sources.target == "model":
        target["model"] = str(root.path(sources.target_model, "character.model", "file"))
        if (sources.target_tags or "").strip():
            target["tags"] = sources.target_tags.strip()
    else:
        raise SabunError(f"character: {sources.target!r}: choose a toy preset, a folder or a 3D model file")
    target = {k: v for k, v in target.items() if v is not None}
    return {
        "out": ".",
        "model": {"path": root.model(sources.model, "model.path")},
        "stepping_stone": stone,
        "character": target,
    }


def tag_lines(text: str) -> dict[str, str]:
    """`NAME: tags` lines -> {NAME: tags}."""
    out = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        name, sep, tags = line.partition(":")
        if not sep or not name.strip():
            raise SabunError(
                f"tags of the 3D models: {line.strip()!r}: write NAME: tags, e.g. alice: red hair, long hair"
            )
        out[name.strip()] = tags.strip()
    return out


def build_raw(root: Root, sources: Sources, values: dict[str, Any], fields: list[FormField] | None = None) -> dict:
    """The config table of the form: the sources, then every field that differs from its default."""
    raw = source_table(root, sources)
    for field in fields or character_fields():
        given, value = read(field, values.get(field.key))
        if given:
            put(raw, field.key, checked_path(root, field, value))
    return raw


def check(raw: dict) -> CharacterConfig:
    """The config as `sabun character` would read it from a TOML file (a ConfigError names the key)."""
    return config_from_dict(raw)


def config_text(config: CharacterConfig) -> str:
    """The TOML a run is started with (every default written out)."""
    return (
        f"# sabun character config, written by `sabun ui` (sabun {__version__}); run it with `sabun character FILE`\n"
        + to_toml(config)
    )


def form_values(raw: dict, fields: list[FormField] | None = None) -> tuple[Sources, dict[str, Any]]:
    """A config table (a run's config.toml) back into the form's sources and field values."""
    stone, target = raw.get("stepping_stone", {}), raw.get("character", {})
    kind = "folder" if target.get("folder") else "model" if target.get("model") else "preset"
    sources = Sources(
        model=get(raw, "model.path") or "toy",
        presets=list(stone.get("presets") or []),
        folders=list(stone.get("folders") or []),
        models=[m["path"] if isinstance(m, dict) else str(m) for m in stone.get("models") or []],
        model_tags="\n".join(
            f"{Path(m['path']).stem}: {m['tags']}"
            for m in stone.get("models") or []
            if isinstance(m, dict) and m.get("tags")
        ),
        target=kind,
        target_preset=target.get("preset"),
        target_folder=target.get("folder"),
        target_model=target.get("model"),
        target_tags=target.get("tags"),
    )
    values = {}
    for field in fields or character_fields():
        value = get(raw, field.key)
        values[field.key] = (
            (bool(value) if value is not None else bool(field.default))
            if field.kind == "bool"
            else (shown(value) if value is not None else initial(field))
        )
    return sources, values


def error_text(e: Exception) -> str:
    """A config error as the CLI prints it."""
    if isinstance(e, ConfigError):
        return f"error: {e.path}: {e.message}"
    return f"error: {e}"
