"""The benchmarks' own measuring tools measure what they say.

`benchmarks/cpu_peak.c` gives step_floor.py the clock and the FMAs per cycle that every peak and
efficiency in docs/benchmarks.md rests on; a clock loop that a core can shortcut (newer Intel cores
fold chains of immediate adds and read 20 "GHz") silently breaks all of them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SOURCE = BENCHMARKS / "cpu_peak.c"
sys.path.insert(0, str(BENCHMARKS))
import step_floor  # noqa: E402  (beside cpu_peak.c: the flags it reads, the arguments it passes)


@pytest.fixture(scope="module")
def cpu_peak(tmp_path_factory) -> Path:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler: step_floor.py reports no theoretical peak without one either")
    binary = tmp_path_factory.mktemp("cpu-peak") / "cpu_peak"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def test_the_measured_clock_and_fma_rate_are_those_of_a_real_core(cpu_peak):
    extra = step_floor.cpu_peak_arguments(step_floor.cpu_flags())
    out = subprocess.run([str(cpu_peak), "0.05", *extra], capture_output=True, text=True, check=True).stdout
    values = {key: float(value) for key, value in (line.split() for line in out.splitlines())}
    assert {"clock_ghz", "fma256_per_ns", "clock_ghz_after"} <= values.keys()
    for key in ("clock_ghz", "clock_ghz_after"):
        assert 0.5 < values[key] < 7.0, f"{key} {values[key]}: no x86 core runs at that clock"
    clock = max(values["clock_ghz"], values["clock_ghz_after"])  # a preempted window reads low, not high
    fmas_per_cycle = values["fma256_per_ns"] / clock
    assert 0.25 < fmas_per_cycle < 4.5, f"{fmas_per_cycle:.2f} 256-bit FMAs per cycle: not a real core's 1-4 units"
    # AMX: 16,384 flops a tile product, one per 16 cycles at best (the bound leaves room for a noisy clock window)
    if "amx" in extra and "tdpbf16ps_per_ns" in values:
        per_cycle = values["tdpbf16ps_per_ns"] / clock
        assert 0.005 < per_cycle < 1 / 8, f"{per_cycle:.3f} tile products per cycle"
