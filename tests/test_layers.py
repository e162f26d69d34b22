"""The source tree's shape: layers that import only downwards, no import loop, short pipeline
functions, and imports at module top (docs/design.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "sabun"

# Each top-level module or package of sabun and its layer; a module imports only from its own layer
# or lower ones. 0: shared plumbing; 1: the Stable Diffusion core (models, LoRA, data, training,
# sampling); 2: the worlds images come from (toy world, 3D models, captions); 3: measurement;
# 4: pipelines of several stages; 5: the command line.
LAYERS = {
    "__init__": 0,
    "errors": 0,
    "io": 0,
    "config": 0,
    "models": 1,
    "lora": 1,
    "data": 1,
    "train": 1,
    "generate": 1,
    "toyworld": 2,
    "avatar": 2,
    "captions": 2,
    "evaluate": 3,
    "captions_tagger": 3,
    "pipelines": 4,
    "cli": 5,
    "ui": 5,
    "__main__": 5,
}

# Imports kept inside functions, each for a stated reason: optional or heavy dependencies that
# only some commands use (an OpenGL context, the ONNX runtime, TensorBoard, torch in `sabun.io`,
# which `sabun render model` uses without torch), and one import that depends on the installed
# transformers version.
LOCAL_IMPORTS_ALLOWED = {
    ("avatar/raster.py", "moderngl"),
    ("evaluate/tagger.py", "onnxruntime"),
    ("train/trainer.py", "torch.utils.tensorboard"),
    ("io.py", "torch"),
    ("io.py", "safetensors"),
    ("io.py", "safetensors.torch"),
    ("models/single_file.py", "transformers.initialization"),
}
MAX_PIPELINE_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    return {
        ".".join(("sabun", *p.relative_to(SOURCE).with_suffix("").parts)).removesuffix(".__init__"): p
        for p in sorted(SOURCE.rglob("*.py"))
    }


def imports(path: Path, known: set[str]) -> set[str]:
    """The sabun modules `path` imports anywhere in it (`from pkg import module` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sabun"):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= submodules or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sabun")}
    return found & known


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)  # a KeyError names a new top-level module that needs a layer above


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in sorted(targets) if layer(b) > layer(a)]
    assert upward == []


def test_there_is_no_import_loop():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    loops = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            # a package importing its own submodules (sabun/train/__init__.py) is not a loop
            if target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                loops.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert loops == []


def test_the_checker_sees_a_loop_and_an_upward_import(tmp_path):
    """The two checks above can fail: a made-up module pair that loops, and one that imports upwards."""
    (tmp_path / "a.py").write_text("from sabun.lora import b\n")
    (tmp_path / "b.py").write_text("import sabun.lora.a\nfrom sabun.pipelines.demo import run_demo\n")
    known = {"sabun.lora.a", "sabun.lora.b", "sabun.pipelines.demo"}
    assert imports(tmp_path / "a.py", known) == {"sabun.lora.b"}
    assert imports(tmp_path / "b.py", known) == {"sabun.lora.a", "sabun.pipelines.demo"}
    assert layer("sabun.pipelines.demo") > layer("sabun.lora.b")


def test_imports_are_at_module_top_unless_a_reason_is_listed():
    local = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        if relative == "cli.py":  # the CLI imports each command's library on use: `sabun --help` stays fast
            continue
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for name in names:
                    if (relative, name) not in LOCAL_IMPORTS_ALLOWED:
                        local.append(f"{relative}:{node.lineno} {name}")
    assert local == []


@pytest.mark.parametrize("path", sorted((SOURCE / "pipelines").glob("*.py")), ids=lambda p: p.name)
def test_pipeline_functions_are_short(path):
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_PIPELINE_FUNCTION_LINES
    ]
    assert long == []
