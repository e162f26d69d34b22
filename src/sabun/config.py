"""Typed configs from TOML: dataclass sections, `--set` overrides, checks that name the field.

Every config of sabun (`sabun train`, `sabun character`, `sabun copy-machine`) is a dataclass whose
fields carry a one-line comment; a TOML file maps onto it table by table. Unknown keys, wrong types
and out-of-range values are errors that name the file and the field
(`config.toml: network.rank: must be >= 1, got 0`), with the closest known key when one is near.
`field_docs` reads the fields' comments, for the generated config reference (docs/training.md).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import os
import textwrap
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import tomli_w

from sabun.errors import SabunError
from sabun.io import read_text


class ConfigError(SabunError):
    """A bad config value; `path` is the dotted field name (`network.rank`, `datasets[0].path`)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def check(ok: bool, name: str, message: str) -> None:
    """Raise a ConfigError for field `name` unless `ok` (used by the sections' `__post_init__`)."""
    if not ok:
        raise ConfigError(name, message)


def one_of(value: str, name: str, choices: tuple[str, ...]) -> None:
    check(value in choices, name, f"must be one of {', '.join(choices)}; got {value!r}")


def _show(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def number(
    value: float | None,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    below: bool = False,
    hint: str = "",
) -> None:
    """Check a number field (None passes: an unset optional field): finite, and within `low` .. `high`
    (inclusive, or exclusive with `above` / `below`). Every numeric field of every section goes
    through this, so `inf` and `nan` never get past `x > 0`-style checks."""
    if value is None:
        return
    hint = f"; {hint}" if hint else ""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value}{hint}")
    ok_low = low is None or (value > low if above else value >= low)
    ok_high = high is None or (value < high if below else value <= high)
    if ok_low and ok_high:
        return
    if low is not None and high is not None:
        span = f"in {'(' if above else '['}{_show(low)}, {_show(high)}{')' if below else ']'}"
    elif low is not None:
        span = f"{'>' if above else '>='} {_show(low)}"
    else:
        span = f"{'<' if below else '<='} {_show(high)}"
    raise ConfigError(name, f"must be {span}, got {_show(value)}{hint}")


def path_text(value: str | None, name: str) -> None:
    """A path from a config: no NUL byte (no file system takes one)."""
    check(value is None or "\0" not in value, name, f"holds a NUL byte ({value!r}); remove it")


# --- reading: dict -> dataclasses ---------------------------------------------------------------


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a TOML table, checking keys and types; errors name the field."""
    if not isinstance(data, dict):
        raise ConfigError(path or cls.__name__, f"must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            raise ConfigError(where, f"unknown field; {hint}known: {', '.join(names)}")
        kwargs[key] = convert(hints[key], value, where)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{path}.{missing[0]}" if path else missing[0], "is required")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # raised by this section's __post_init__, which knows only its own names
        if not path:
            raise
        raise ConfigError(f"{path}.{e.path}", e.message) from None


def convert(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` (int, float, str, bool, dict, list[X], X | None, dataclass)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return convert(options[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(where, f"must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:  # tuple[X, ...]: a TOML list, held as a tuple (frozen configs)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"must be a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is dict:  # a free-form table, checked by its owner
        if not isinstance(value, dict):
            raise ConfigError(where, f"must be a table, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"must be a number, got {value!r}")
        if not math.isfinite(value):  # TOML has nan and inf; no setting of any section means either
            raise ConfigError(where, f"must be a finite number, got {value}")
        return float(value)
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(where, f"must be a path, got {value!r}")
        return Path(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")


# --- --set overrides ----------------------------------------------------------------------------


def field_type(path: list[str], where: str, root: type) -> Any:
    """The annotation of the field at `path` (e.g. ['datasets', '0', 'repeats'] -> int | None) in
    the config dataclass `root`."""
    tp: Any = root
    for i, part in enumerate(path):
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
            origin = typing.get_origin(tp)
        if origin is list:
            if not part.isdigit():
                raise ConfigError(where, f"`{part}` must be a list index (e.g. datasets.0.path)")
            (tp,) = typing.get_args(tp)
        elif dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                close = difflib.get_close_matches(part, list(hints), n=1)
                hint = f"did you mean `{close[0]}`? " if close else ""
                raise ConfigError(".".join(path[: i + 1]), f"unknown field; {hint}known: {', '.join(hints)}")
            tp = hints[part]
        elif tp is dict:  # a free-form table (checked by its owner): any key, a TOML value
            return Any
        else:
            raise ConfigError(where, f"`{'.'.join(path[:i])}` is not a table")
    return tp


def parse_value(tp: Any, text: str) -> Any:
    """A `--set` value, read as a TOML value (`8`, `1e-4`, `true`, `[1, 2]`, `"text"`).

    A string field also takes bare text as written (`--set optimizer.type=sgd`); a quoted one
    (`--set optimizer.type="sgd"`, as a shell passes `'...="sgd"'`) is the TOML string, without its quotes.
    """
    options = (
        [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType)
        else [tp]
    )
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare text: a string field's value, or left for `convert` to reject with the field's name
    if options == [str] and not isinstance(value, str):
        return text  # `--set output.name=123` or `=true`: a string field means the text
    return value


def apply_override(raw: dict, assignment: str, root: type) -> None:
    """Apply one `key.path=value` to the raw config table of the config dataclass `root`, in place."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SabunError(f"--set {assignment}: expected KEY=VALUE, e.g. --set network.rank=8")
    parts = key.split(".")
    value = parse_value(field_type(parts, key, root), text.strip())
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            index = int(part)
            if index >= len(node):
                raise ConfigError(".".join(parts[: i + 1]), f"there are only {len(node)} entries")
            node = node[index]
        else:
            node = node.setdefault(part, [] if typing.get_origin(field_type(parts[: i + 1], key, root)) is list else {})
    last = parts[-1]
    if isinstance(node, list):
        index = int(last)
        if index >= len(node):
            raise ConfigError(key, f"there are only {len(node)} entries")
        node[index] = value
    else:
        node[last] = value


def read_config(
    path: str | os.PathLike,
    cls: type,
    overrides: list[str] | tuple[str, ...] = (),
    example: str = "",
    build: Any = None,
) -> Any:
    """Read the TOML file `path` as dataclass `cls` (`build(raw)` when given), after the `--set`
    overrides; every error names the file (and `example`, a config to start from, if it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise SabunError(f"{path}: no such config file" + (f"; see {example}" if example else ""))
    try:
        raw = tomllib.loads(read_text(path, "config file"))  # a byte-order mark (Windows Notepad) is dropped
    except tomllib.TOMLDecodeError as e:
        raise SabunError(f"{path}: is not valid TOML ({e})") from None
    try:
        for assignment in overrides:
            apply_override(raw, assignment, root=cls)
        return build(raw) if build else from_dict(cls, raw)
    except ConfigError as e:
        raise SabunError(f"{path}: {e}") from None


def local_path(p: str | None, root: Path) -> str | None:
    """A path from a config file, made absolute against the file's folder `root`."""
    return p if p is None or Path(p).is_absolute() else str((root / p).resolve())


def settings(cls: type, flags: dict, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Dataclass `cls` from a command's flags (`{field: value}`) and its `--set FIELD=VALUE`
    overrides (which reach every field, flagged or not), checked as a config file is; a bad value
    is a SabunError naming the flag or the `--set` key."""
    raw = {
        name: list(value) if isinstance(value, tuple) else value for name, value in flags.items() if value is not None
    }
    for assignment in overrides:
        try:
            apply_override(raw, assignment, root=cls)
        except ConfigError as e:
            raise SabunError(f"--set {e}") from None
    return from_dict(cls, raw)  # a ConfigError (a SabunError) names the field, or the flag where it has one


# --- writing ------------------------------------------------------------------------------------


def to_dict(config: Any) -> dict:
    """The config as a TOML-ready table (None values, which TOML cannot hold, are left out)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(dataclasses.asdict(config))


def to_toml(config: Any) -> str:
    """A config dataclass as TOML text (what `read_config` reads back)."""
    return tomli_w.dumps(to_dict(config))


def field_docs(cls: type) -> dict[str, str]:
    """Each field's one-line doc in dataclass `cls`: the comment after it (`rank: int = 16  # rank of
    ...`) or the string on the line below it; inherited fields included, "" where there is none."""
    return dict(_field_docs(cls))


@functools.cache  # a class's source does not change while it runs: read and parsed once
def _field_docs(cls: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        source = textwrap.dedent(inspect.getsource(klass))
        lines = source.splitlines()
        body = ast.parse(source).body[0].body
        for node, after in zip(body, [*body[1:], None]):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            comment = text.rsplit("  # ", 1)[1].strip() if "  # " in text else ""
            if comment.startswith("fmt:"):
                comment = ""
            if not comment and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                comment = " ".join(str(after.value.value).split())
            docs[node.target.id] = comment or docs.get(node.target.id, "")
    return docs
