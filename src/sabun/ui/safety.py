"""What `sabun ui` may touch and how it is reached: every path inside `--root`, a password off localhost.

Every path a user types (a model, a folder of renders, a LoRA, an output) goes through `Root.path`:
it is resolved (symlinks followed) and refused unless it lies inside the root; `..` is refused as
written. The same root is the only folder Gradio may serve files from (`allowed_paths`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from sabun.errors import SabunError
from sabun.models.load import BUILTIN

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MODEL_SUFFIXES = (".vrm", ".glb", ".gltf")
SKIPPED_FOLDERS = ("__pycache__", "node_modules")
MAX_LISTED = 400  # entries of a file list offered in a picker
MAX_DEPTH = 6  # folders deep below the root that the pickers look


class Root:
    """The one folder the web app reads and writes in (and below)."""

    def __init__(self, path: str | os.PathLike):
        given = Path(path)
        if not given.is_dir():
            raise SabunError(f"--root {path}: {'is a file' if given.exists() else 'no such folder'}; give a folder")
        self.folder = Path(os.path.realpath(given))

    def __str__(self) -> str:
        return str(self.folder)

    def contains(self, path: str | os.PathLike) -> bool:
        """Whether `path`, with every symlink followed, lies inside the root."""
        real = Path(os.path.realpath(path))
        return real == self.folder or real.is_relative_to(self.folder)

    def path(self, text: str | os.PathLike | None, what: str = "path", kind: str = "any", exists: bool = True) -> Path:
        """The real path of `text` (relative paths are taken from the root), checked to be inside
        the root; `kind`: "file", "folder" or "any"; `exists=False` for an output (its folder must exist).
        A SabunError names what was typed and what to do."""
        text = "" if text is None else str(text).strip()
        if not text:
            raise SabunError(f"{what}: is empty; give a path inside the root {self.folder}")
        if "\0" in text:
            raise SabunError(f"{what}: {text!r} holds a NUL byte; remove it")
        given = Path(text)
        if ".." in given.parts:
            raise SabunError(f"{what}: {text}: `..` is not allowed; give a path inside the root {self.folder}")
        full = given if given.is_absolute() else self.folder / given
        real = Path(os.path.realpath(full))
        if not (real == self.folder or real.is_relative_to(self.folder)):
            inside = Path(os.path.normpath(full)).is_relative_to(self.folder)
            how = "leads outside the root through a symlink" if inside else "is outside the root"
            raise SabunError(
                f"{what}: {text}: {how} {self.folder}; sabun ui reads and writes only inside --root, so choose a path inside it"
            )
        if exists and not real.exists():
            raise SabunError(f"{what}: {text}: no such {'folder' if kind == 'folder' else 'file'} in {self.folder}")
        if exists and kind == "file" and not real.is_file():
            raise SabunError(f"{what}: {text}: is a folder; give a file")
        if exists and kind == "folder" and not real.is_dir():
            raise SabunError(f"{what}: {text}: is a file; give a folder")
        if not exists and not real.parent.is_dir():
            raise SabunError(f"{what}: {text}: the folder {real.parent} does not exist; create it first")
        return real

    def model(self, text: str | None, what: str = "model") -> str:
        """A model spec: a builtin name (`toy`, `tiny`) as it is, else a checkpoint file or diffusers folder inside the root."""
        text = (text or "").strip()
        return text if text in BUILTIN else str(self.path(text, what))

    def relative(self, path: str | os.PathLike) -> str:
        """`path` as shown in the pickers: relative to the root when inside it."""
        real = Path(os.path.realpath(path))
        return str(real.relative_to(self.folder)) if self.contains(real) else str(path)

    # --- what the pickers offer ----------------------------------------------------------------

    def walk(self):
        """(folder, subfolders, files) under the root, symlinks not followed, hidden folders skipped, to MAX_DEPTH."""
        for folder, subfolders, files in os.walk(self.folder, followlinks=False):
            depth = len(Path(folder).relative_to(self.folder).parts)
            subfolders[:] = sorted(
                d for d in subfolders if not d.startswith(".") and d not in SKIPPED_FOLDERS and depth < MAX_DEPTH
            )
            yield Path(folder), subfolders, sorted(files)

    def files(self, suffixes: tuple[str, ...]) -> list[str]:
        """Files under the root with one of `suffixes`, relative to it (symlinks out of the root left out)."""
        found = []
        for folder, _, files in self.walk():
            for name in files:
                path = folder / name
                if name.lower().endswith(suffixes) and not name.startswith(".") and self.contains(path):
                    found.append(self.relative(path))
                    if len(found) >= MAX_LISTED:
                        return found
        return found

    def image_folders(self) -> list[str]:
        """Folders under the root holding images with .txt captions (data sets of renders)."""
        found = []
        for folder, _, files in self.walk():
            names = set(files)
            if any(n.lower().endswith(IMAGE_SUFFIXES) and f"{n.rsplit('.', 1)[0]}.txt" in names for n in files):
                if folder != self.folder and self.contains(folder):
                    found.append(self.relative(folder))
                    if len(found) >= MAX_LISTED:
                        break
        return found

    def checkpoints(self) -> list[str]:
        """Single-file checkpoints (.safetensors that are no LoRA) and diffusers folders (model_index.json) under the root."""
        diffusers = [self.relative(folder) for folder, _, files in self.walk() if "model_index.json" in files]
        return diffusers + [f for f in self.files((".safetensors",)) if is_lora(self.folder / f) is False]

    def loras(self) -> list[str]:
        """LoRA files (.safetensors with kohya `lora_` keys) under the root."""
        return [f for f in self.files((".safetensors",)) if is_lora(self.folder / f) is not False]


def is_lora(path: Path) -> bool | None:
    """Whether a .safetensors file holds kohya LoRA keys, read from its header alone by safetensors
    (None: unreadable)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return any(key.startswith("lora_") for key in file.keys())
    except (OSError, SafetensorError, ValueError):
        return None


# --- binding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeOptions:
    """How `sabun ui` serves: checked before the server starts."""

    host: str
    port: int
    root: Root
    auth: tuple[str, str] | None = None
    auth_file: Path | None = None  # never served, even inside the root


def is_local(host: str) -> bool:
    """A host name or address that only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise SabunError(f"{where}: expected USER:PASS (a user name, a colon, a password)")
    return user, password


def serve_options(
    host: str, port: int, root: str | os.PathLike, auth: str | None = None, auth_file: str | os.PathLike | None = None
) -> ServeOptions:
    """Check `sabun ui`'s options: a host beyond this machine needs `--auth` or `--auth-file`."""
    if not 1 <= port <= 65535:
        raise SabunError(f"--port {port}: give a port from 1 to 65535 (7860 is Gradio's usual one)")
    if auth is not None and auth_file is not None:
        raise SabunError("--auth and --auth-file: give one of them, not both")
    credentials, file = None, None
    if auth is not None:
        credentials = parse_auth(auth, "--auth")
    elif auth_file is not None:
        file = Path(auth_file)
        if not file.is_file():
            raise SabunError(f"--auth-file {auth_file}: no such file; write USER:PASS on its first line")
        lines = file.read_text(encoding="utf-8").splitlines()
        credentials = parse_auth(lines[0] if lines else "", f"--auth-file {auth_file}")
        file = Path(os.path.realpath(file))
    if not is_local(host) and credentials is None:
        raise SabunError(
            f"--host {host}: serving beyond this machine needs a password; give --auth USER:PASS or --auth-file FILE "
            "(or keep the default --host 127.0.0.1)"
        )
    return ServeOptions(host=host, port=port, root=Root(root), auth=credentials, auth_file=file)
