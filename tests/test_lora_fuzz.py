"""The LoRA reader on corrupt files: `load_lora` returns a valid LoRA or raises a SabunError, nothing else.

The generator, the validity check and the worker that loads each file in its own process (so a hang
or a crash fails the case instead of the run) live in benchmarks/fuzz_lora.py, which runs the same
cases at scale: `python benchmarks/fuzz_lora.py --cases 10000 --seed 0`. A failing case here is
`test_fuzz[KIND-SEED]`; `python benchmarks/fuzz_lora.py --case KIND:SEED --keep DIR` writes it out.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors_bytes

from sabun.lora.file import load_lora
from sabun.lora.weights import LoRA, LoRAWeight


def _load_fuzz_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_lora.py"
    if "fuzz_lora" in sys.modules:
        return sys.modules["fuzz_lora"]
    spec = importlib.util.spec_from_file_location("fuzz_lora", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_lora"] = module  # before exec: its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz_module()
is_valid = fuzz.is_valid  # the reader's contract on what it returns (see fuzz_lora.check_lora)

CASES_PER_KIND = 20  # x 16 kinds = 320 cases; the benchmark's --seed 0 runs these same cases first
LOAD_TIMEOUT = 10.0  # seconds; a tiny file loads in milliseconds, so only a hang gets near this
READER = os.environ.get(
    "FUZZ_LORA_READER", "load_lora"
)  # or a .py file with another load_lora, to check these tests on it


@pytest.fixture(scope="module")
def worker():
    w = fuzz.Worker(timeout=LOAD_TIMEOUT, loader=READER)
    w.start()
    yield w
    w.close()


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_lora")


# --- the harness itself ------------------------------------------------------------------------


def test_base_files_load_as_written(tmp_path):
    """The unmutated files are valid, the reader reads them as written, and the generator's own codec agrees."""
    originals = {name: (lora, dtype) for name, lora, dtype, _ in fuzz._base_loras()}
    for base in fuzz.bases():
        path = tmp_path / f"{base.name}.safetensors"
        path.write_bytes(base.data)
        lora = load_lora(path)
        assert fuzz.check_lora(lora) == [], base.name
        assert fuzz.summary(lora) == fuzz.expected_summary(base.data), base.name
        metadata, entries = fuzz.read(base.data)
        assert {k: v for k, v in load_safetensors_bytes(fuzz.pack(entries, metadata)).items()}.keys() == entries.keys()
        original, dtype = originals[base.name.removesuffix("_no_alpha")]
        assert set(lora.weights) == set(original.weights)
        for name, w in original.weights.items():
            got = lora.weights[name]
            assert torch.equal(got.down, w.down.to(dtype)) and torch.equal(got.up, w.up.to(dtype)), (base.name, name)
            assert got.alpha == (got.rank if base.name.endswith("no_alpha") else w.alpha), (base.name, name)


def _weight(down=None, up=None, alpha=1.0, after=None):
    """A 2-D layer (down 2 x 4, up 3 x 2), then the attributes in `after` set (to build what LoRAWeight itself refuses)."""
    w = LoRAWeight(
        torch.full((2, 4), 0.1) if down is None else down, torch.full((3, 2), 0.1) if up is None else up, alpha
    )
    for k, v in (after or {}).items():
        setattr(w, k, v)
    return w


INVALID = {
    "nan_down": lambda: LoRA({"l": _weight(down=torch.tensor([[math.nan, 0.0, 0.0, 0.0]] * 2))}),
    "inf_up": lambda: LoRA({"l": _weight(up=torch.full((3, 2), math.inf))}),
    "alpha_nan": lambda: LoRA({"l": _weight(alpha=math.nan)}),
    "alpha_inf": lambda: LoRA({"l": _weight(alpha=math.inf)}),
    "alpha_negative": lambda: LoRA({"l": _weight(alpha=-1.0)}),
    "alpha_zero": lambda: LoRA({"l": _weight(alpha=0.0)}),
    "alpha_minus_zero": lambda: LoRA({"l": _weight(alpha=-0.0)}),
    "alpha_tensor": lambda: LoRA({"l": _weight(alpha=torch.ones(4))}),
    "alpha_bool": lambda: LoRA({"l": _weight(alpha=True)}),
    "alpha_string": lambda: LoRA({"l": _weight(alpha="1")}),
    "down_3d": lambda: LoRA({"l": _weight(down=torch.full((2, 4, 1), 0.1))}),
    "down_0d": lambda: LoRA({"l": _weight(after={"down": torch.tensor(0.1)})}),
    "down_1d": lambda: LoRA({"l": _weight(down=torch.full((2,), 0.1))}),
    "int32_down": lambda: LoRA({"l": _weight(down=torch.ones(2, 4, dtype=torch.int32))}),
    "bool_up": lambda: LoRA({"l": _weight(up=torch.ones(3, 2, dtype=torch.bool))}),
    "complex_down": lambda: LoRA({"l": _weight(down=torch.ones(2, 4, dtype=torch.complex64))}),
    "rank_0": lambda: LoRA({"l": _weight(down=torch.ones(0, 4), up=torch.ones(3, 0))}),
    "zero_in": lambda: LoRA({"l": _weight(down=torch.ones(2, 0))}),
    "rank_mismatch": lambda: LoRA({"l": _weight(after={"up": torch.full((3, 3), 0.1)})}),
    "up_4d_down_2d": lambda: LoRA({"l": _weight(up=torch.full((3, 2, 1, 1), 0.1))}),
    "up_kernel_3x3": lambda: LoRA({"l": _weight(down=torch.full((2, 4, 3, 3), 0.1), up=torch.full((3, 2, 3, 3), 0.1))}),
    "weights_x1e30": lambda: LoRA({"l": _weight(down=torch.full((2, 4), 1e29), up=torch.full((3, 2), 1e29))}),
    "not_a_tensor": lambda: LoRA({"l": _weight(after={"down": [[0.1] * 4] * 2})}),
    "not_a_weight": lambda: LoRA({"l": (torch.ones(2, 4), torch.ones(3, 2), 1.0)}),
    "no_layers": lambda: LoRA({}),
    "metadata_not_strings": lambda: LoRA({"l": _weight()}, {"ss_network_dim": 4}),
    "not_a_lora": lambda: {"l": _weight()},
}


@pytest.mark.parametrize("name", INVALID)
def test_is_valid_rejects_what_the_contract_forbids(name):
    assert not is_valid(INVALID[name]())


def test_is_valid_accepts_valid_loras():
    conv = LoRAWeight(torch.full((2, 4, 3, 3), 0.01), torch.full((5, 2, 1, 1), 0.01), 1.0)
    assert is_valid(LoRA({"l": _weight(), "c": conv}, {"ss_network_dim": "2"}))
    assert is_valid(
        LoRA(
            {
                "l": _weight(
                    down=torch.zeros(2, 4, dtype=torch.float16), up=torch.zeros(3, 2, dtype=torch.bfloat16), alpha=4
                )
            }
        )
    )
    assert is_valid(LoRA({"l": _weight(alpha=1e-45)}))


def test_the_worker_reports_hangs_crashes_and_other_exceptions(tmp_path):
    """A reader that loops in place, aborts the process, raises KeyError, allocates 8 GiB or returns NaN is caught."""
    w = fuzz.Worker(timeout=3.0, loader="selftest")
    try:
        outcomes = {}
        for stem in ("hang", "crash", "raise", "oom", "invalid"):
            path = tmp_path / f"x-{stem}.safetensors"
            path.write_bytes(fuzz.bases()[0].data)
            outcomes[stem] = w.load(path)["outcome"]
        path = tmp_path / "plain.safetensors"
        path.write_bytes(fuzz.bases()[0].data)
        outcomes["plain"] = w.load(path)["outcome"]
    finally:
        w.close()
    assert outcomes == {
        "hang": "hang",
        "crash": "crash",
        "raise": "other",
        "oom": "other",
        "invalid": "invalid",
        "plain": "valid",
    }


CASES_DIGEST = """
import hashlib, importlib.util, sys
spec = importlib.util.spec_from_file_location("fuzz_lora", sys.argv[1])
fuzz = importlib.util.module_from_spec(spec)
sys.modules["fuzz_lora"] = fuzz
spec.loader.exec_module(fuzz)
h = hashlib.sha256()
for kind in fuzz.KINDS:
    for seed in range(5):
        h.update(fuzz.make_case(kind, seed).data)
print(h.hexdigest())
"""


def test_cases_are_reproducible_and_reach_the_reader():
    """(kind, seed) gives the same bytes in another process; structured kinds mostly make well-formed safetensors files."""
    h = hashlib.sha256()
    for kind in fuzz.KINDS:
        for seed in range(5):
            h.update(fuzz.make_case(kind, seed).data)
    other = subprocess.run(
        [sys.executable, "-c", CASES_DIGEST, fuzz.__file__], capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == h.hexdigest()
    for kind in ("dtype", "shape", "keys", "family", "alpha", "values", "rank", "combo"):
        readable = 0
        for seed in range(CASES_PER_KIND):
            try:
                load_safetensors_bytes(fuzz.make_case(kind, seed).data)
                readable += 1
            except Exception:  # noqa: BLE001 -- a malformed file, which safetensors itself refuses
                pass
        assert readable >= CASES_PER_KIND // 3, (kind, readable)


# --- the reader --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "seed"), [pytest.param(k, s, id=f"{k}-{s}") for k in fuzz.KINDS for s in range(CASES_PER_KIND)]
)
def test_fuzz(kind, seed, worker, case_dir):
    result = fuzz.run_case(worker, fuzz.make_case(kind, seed), case_dir)
    assert result.ok, result.report()


@pytest.mark.parametrize("name", fuzz.EXPLICIT)
def test_explicit_corruptions_are_refused_naming_the_file(name, worker, tmp_path):
    data = fuzz.EXPLICIT[name]()
    load_safetensors_bytes(data)  # a well-formed safetensors file: only the reader's own checks can refuse it
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(data)
    reply = worker.load(path)
    assert reply["outcome"] == "error", f"{name}: {reply['outcome']}: {reply.get('detail')}"
    assert str(path) in reply["detail"], reply["detail"]
