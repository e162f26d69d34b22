"""The commands' options against the dataclasses they fill: one default and one help text per
setting, every field documented, and every field reachable from the command line (a flag, a
`--set FIELD=VALUE`, or a key of the command's TOML config)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import typer

from sabun.avatar.commands import RenderModelConfig
from sabun.cli import app
from sabun.config import apply_override, field_docs
from sabun.evaluate.toy_evaluator import EvaluatorConfig
from sabun.pipelines.character import CharacterConfig
from sabun.pipelines.copy_machine import CopyMachineConfig
from sabun.pipelines.demo import DemoConfig
from sabun.toyworld.commands import RenderToyConfig
from sabun.toyworld.pretrain import PretrainConfig
from sabun.train.config import TrainConfig

# command -> (the dataclass its options fill, option names that are another field's, options that are no field)
FLAG_COMMANDS = {
    "demo": (DemoConfig, {"character": "characters"}, {"out", "overrides"}),
    "toyworld pretrain": (PretrainConfig, {}, {"out", "overrides"}),
    "toyworld train-evaluator": (EvaluatorConfig, {}, {"out", "vae", "overrides", "overwrite"}),
    "render toy": (RenderToyConfig, {}, set()),
    "render model": (RenderModelConfig, {}, {"list_only", "sheet"}),
}
CONFIG_COMMANDS = {"train": TrainConfig, "character": CharacterConfig, "copy-machine": CopyMachineConfig}


def command(path: str):
    node = typer.main.get_command(app)
    for part in path.split():
        node = node.commands[part]
    return node


def same_text(a: str, b: str) -> bool:
    def norm(text: str) -> str:
        text = " ".join(text.split()).rstrip(".")
        return text[:1].lower() + text[1:]

    return norm(a) == norm(b)


def default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def sections(cls: type, prefix: str = ""):
    """(dotted name, dataclass) of `cls` and of every section dataclass inside it."""
    yield prefix or cls.__name__, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        for arg in args:
            inner = typing.get_args(arg)[0] if typing.get_origin(arg) is list else arg
            if dataclasses.is_dataclass(inner):
                yield from sections(inner, f"{prefix}.{f.name}" if prefix else f.name)


@pytest.mark.parametrize("path", FLAG_COMMANDS)
def test_each_option_has_the_fields_default_and_help(path):
    cls, renamed, not_fields = FLAG_COMMANDS[path]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    docs = field_docs(cls)
    wrong = []
    for option in command(path).params:
        if option.name in not_fields:
            continue
        name = renamed.get(option.name, option.name)
        assert name in fields, f"{path}: option {option.name} fills no field of {cls.__name__}"
        expected = default(fields[name])
        value = tuple(option.default) if isinstance(option.default, list) else option.default
        if option.name not in renamed and value is not None and value != expected:  # None: the dataclass's default
            wrong.append(f"--{option.name}: default {option.default!r}, {cls.__name__}.{name} = {expected!r}")
        if not same_text(option.help or "", docs[name]):
            wrong.append(f"--{option.name}: help {option.help!r}, {cls.__name__}.{name} doc {docs[name]!r}")
    assert wrong == []


@pytest.mark.parametrize("path", FLAG_COMMANDS)
def test_every_field_has_a_flag_or_a_set_key(path):
    cls, renamed, _ = FLAG_COMMANDS[path]
    params = command(path).params
    flagged = {renamed.get(p.name, p.name) for p in params}
    has_set = any("--set" in p.opts for p in params)
    for f in dataclasses.fields(cls):
        if f.name in flagged:
            continue
        assert has_set, f"{path}: {cls.__name__}.{f.name} has no flag and the command has no --set"
        raw: dict = {}
        apply_override(raw, f"{f.name}={default(f)!r}".replace("None", '""').replace("True", "true").replace("False", "false"), cls)  # fmt: skip
        assert f.name in raw


@pytest.mark.parametrize("cls", [c for c, _, _ in FLAG_COMMANDS.values()] + list(CONFIG_COMMANDS.values()), ids=lambda c: c.__name__)  # fmt: skip
def test_every_field_is_documented(cls):
    """A setting by its one-line doc; a section (a table) by its class docstring."""
    undocumented = []
    for name, section in sections(cls):
        if (section.__doc__ or "").startswith(f"{section.__name__}("):  # the docstring dataclass() makes up
            undocumented.append(f"{name} (class {section.__name__})")
        hints = typing.get_type_hints(section)
        for f, doc in field_docs(section).items():
            inner = [a for a in typing.get_args(hints[f]) if a is not type(None)] or [hints[f]]
            is_table = any(dataclasses.is_dataclass(typing.get_args(a)[0] if typing.get_origin(a) is list else a) for a in inner)  # fmt: skip
            if not doc and not is_table:
                undocumented.append(f"{name}.{f}")
    assert undocumented == []


@pytest.mark.parametrize("path", CONFIG_COMMANDS)
def test_config_commands_take_a_config_and_set(path):
    options = {opt for p in command(path).params for opt in p.opts}
    assert "--set" in options


def test_the_text_check_can_fail():
    assert same_text("Optimiser steps of each LoRA.", "optimiser steps of each LoRA")
    assert not same_text("Optimiser steps.", "optimiser steps of each LoRA")
