"""Atomic, non-clobbering file output and safe reading of tensor files.

Every output sabun writes goes through `atomic_output`: it is written to a temporary sibling and
renamed into place only once complete, so an interrupted or failed command never leaves a partial
file, and an existing output is never replaced unless the caller asked for it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import shutil
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch takes ~2 s to import; `sabun render model` writes files here and never needs it
    import torch

from sabun.errors import SabunError, write_error

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def check_writable(path: Path, overwrite: bool, directory: bool | None = None) -> None:
    """Raise before any work is done if `path` exists and may not be replaced (or, when `directory`
    is given, is a file where a folder is to go or the other way round)."""
    path = Path(path)
    if any(ord(c) < 32 for c in str(path)):
        raise SabunError(f"{str(path)!r}: holds a control character (a newline, a tab); choose a name without one")
    if path.exists() and not overwrite:
        raise SabunError(f"{path}: already exists; choose another output path or pass --overwrite")
    if directory is True and path.exists() and not path.is_dir():
        raise SabunError(f"{path}: is a file, and the output is a folder; choose another name")
    if directory is False and path.is_dir():
        raise SabunError(f"{path}: is a folder, and the output is a file; choose another name")


STALE_AFTER_S = 3600  # a temporary of unknown owner this old is left over from a killed run


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temporaries(path: Path) -> None:
    """Remove `.NAME.tmp-PID-*` siblings of `path` left by a killed process (never a live one's)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit():
            if process_alive(int(pid)):
                continue
        elif time.time() - tmp.stat().st_mtime < STALE_AFTER_S:
            continue
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` when the block succeeds.

    The output gets the permissions the user's umask gives a new file or folder (0644 / 0755 under
    022), not the private ones of a temporary. Temporaries a killed run left beside `path` are
    removed. On failure the temporary is removed and an existing `path` is left as it was.

    Args:
        path: the final output (a file, or a folder if `directory`).
        overwrite: replace an existing output; otherwise an existing one is an error.
        directory: the output is a folder (e.g. a diffusers model).
    """
    path = Path(path)
    check_writable(path, overwrite, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    prefix = f".{path.name}.tmp-{os.getpid()}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        os.chmod(tmp, 0o777 & ~umask())
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)  # its mode is set once written, below
        os.close(fd)
        tmp = Path(name)
    try:
        try:
            yield tmp
        except OSError as e:  # a write that failed inside the block names the output, not its temporary
            if e.filename is None or ".tmp-" in str(e.filename):
                raise OSError(e.errno, e.strerror or str(e), str(path)) from None
            raise
        except Exception as e:
            if type(e).__name__ == "SafetensorError":  # safetensors reports a full disk as its own error type
                raise write_error(path, e) from None
            raise
        if directory:
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")  # not a temporary: never removed as stale
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old)
            else:
                tmp.rename(path)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~umask())  # writers that replace the file (safetensors) drop the mode set above
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a UTF-8 file (a caption, a config, a prompt file; a leading byte-order mark dropped); SabunError naming it otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SabunError(f"{path}: {what} cannot be read ({e.strerror or e}); check its permissions") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SabunError(f"{path}: {what} is UTF-16, not UTF-8; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SabunError(
            f"{path}: {what} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}; "
            "perhaps saved as Windows-1252 / Latin-1 or Shift-JIS); save it as UTF-8"
        ) from None


def read_toml(path: str | os.PathLike, what: str = "TOML file", hint: str = "") -> dict:
    """A UTF-8 TOML file as a table; a SabunError naming the file (and `hint`, what it should hold) otherwise."""
    try:
        return tomllib.loads(read_text(path, what))
    except tomllib.TOMLDecodeError as e:
        raise SabunError(
            f"{path}: is not a readable {what} ({e}){'; ' + hint if hint else '; fix the syntax'}"
        ) from None


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return `path` as a Path, or raise a SabunError if it does not exist or is not a file."""
    path = Path(path)
    if not path.exists():
        raise SabunError(f"{path}: no such {what}; check the path")
    if path.is_dir():
        raise SabunError(f"{path}: is a folder, expected a {what}")
    return path


def load_tensors(
    path: str | os.PathLike, allow_pickle: bool = False, what: str = "file"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a tensor file: safetensors always; pickle formats only when `allow_pickle`.

    Returns (tensors, metadata). Pickles are loaded with `weights_only=True` even when allowed, and
    carry no metadata.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    path = require_file(path, what)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise SabunError(
                f"{path}: is a pickle ({path.suffix}), which can run code when loaded; convert it to "
                ".safetensors, or pass --allow-pickle if you trust its source"
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (
            Exception
        ) as e:  # a failed pickle load can raise nearly anything; torch's message advises weights_only=False
            if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
                raise SabunError(
                    f"{path}: holds objects other than tensors, which only a full unpickle (that can run code) would load; "
                    "sabun never does that, even with --allow-pickle: convert the file to .safetensors with a tool you trust"
                ) from None
            raise SabunError(
                f"{path}: could not be read as a weights-only pickle ({type(e).__name__}); it may be truncated or corrupt"
            ) from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise SabunError(f"{path}: holds a {type(obj).__name__}, not a dictionary of tensors")
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise SabunError(
            f"{path}: is not a readable safetensors file ({e}); it may be truncated or corrupt: download or "
            "write it again"
        ) from None
    return tensors, metadata


def save_tensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a safetensors file atomically; refuse to replace an existing file unless `overwrite`."""
    from safetensors.torch import save_file

    path = Path(path)
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_output(path, overwrite=overwrite) as tmp:  # which maps safetensors' own write errors
        save_file(contiguous, str(tmp), metadata=metadata)
    return path
