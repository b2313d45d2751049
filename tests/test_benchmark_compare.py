"""benchmarks/compare.py runs end to end (`--quick`) and its JSON holds every workload with
consistent figures; the peak estimate reads /proc/cpuinfo-style facts honestly.

The smoke run is a subprocess, so PyTorch's thread setting and XLA's flags stay out of the
test process. XLA's backend optimisation is lowered for it: the figures of a --quick run
mean nothing, and compile time dominates it. Level 1, not 0: at level 0 jaxlib 0.10.2's
CPU backend computes NaN gradients for the SVG encoder (forward correct; level 1 and the
default are finite), so the smoke run would time NaN arithmetic after its first step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import _timing
from conftest import ROOT

QUICK_WORKLOADS = {"lab4/cpu train TF", "lab4/cpu train free", "lab4/cpu generate 4f",
                   "svg/cpu train TF", "svg/cpu predict 2+2f", "fp32 matmul 256x256"}


@pytest.mark.torch
def test_compare_quick(tmp_path):
    out = tmp_path / "compare.json"
    proc = subprocess.run([sys.executable, "benchmarks/compare.py", "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)  # the suite's XLA flags
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == {}
    rows = {r["name"]: r for r in result["workloads"]}
    assert set(rows) == QUICK_WORKLOADS
    for name, r in rows.items():
        assert r["jax_s"] > 0 and r["torch_s"] > 0 and r["flop"] > 0, name
        assert r["ratio"] == pytest.approx(r["jax_s"] / r["torch_s"]), name
        assert r["jax_gflops"] == pytest.approx(r["flop"] / r["jax_s"] / 1e9), name
        assert len(r["jax_all_s"]) == len(r["torch_all_s"]) == result["meta"]["repeats"], name
    assert rows["fp32 matmul 256x256"]["flop"] == 2 * 256**3
    # the two lab4 training rows share one count and one compiled program
    assert rows["lab4/cpu train TF"]["flop"] == rows["lab4/cpu train free"]["flop"]
    assert rows["lab4/cpu train TF"]["jax_compile_s"] > 0
    meta = result["meta"]
    for key in ("date", "cpu", "cores", "versions", "load_before", "load_after", "nominal_peak_gflops"):
        assert key in meta, key
    assert {"jax", "jaxlib", "torch"} <= set(meta["versions"])
    for name in QUICK_WORKLOADS:
        assert name in proc.stdout


@pytest.mark.torch
def test_each_preset_runs_once_per_model():
    from benchmarks import compare
    assert compare._parse([]).presets == ["lab4", "cpu", "bair"]
    assert compare._parse(["--presets", "cpu", "cpu"]).presets == ["cpu"]
    assert compare._parse(["--models", "svg"]).presets == ["bair", "cpu"]


def test_peak_estimate():
    avx512 = {"model": "Intel(R) Xeon(R) Processor", "cores": 2, "ghz": 2.7,
              "flags": {"avx2", "fma", "avx512f", "hypervisor"}}
    peak, desc = _timing.detect_peak(avx512)
    assert peak == pytest.approx(2 * 2.7 * 64) and "AVX-512" in desc and "VM" in desc
    assert not _timing.is_nominal_machine(avx512)
    zen4 = {"model": "AMD Ryzen 7 7840U", "cores": 2, "ghz": 2.6, "flags": {"avx2", "fma", "avx512f"}}
    assert _timing.is_nominal_machine(zen4)
    assert _timing.detect_peak(zen4)[0] == pytest.approx(_timing.NOMINAL_PEAK_GFLOPS)
    assert _timing.detect_peak({**zen4, "flags": {"avx2", "fma"}})[0] == pytest.approx(_timing.NOMINAL_PEAK_GFLOPS)
    assert _timing.detect_peak({**zen4, "ghz": None})[0] is None


@pytest.mark.torch
def test_gpu_benchmark_generation_quick(tmp_path):
    """benchmarks/gpu.py (run on any backend with --quick): the batched and the single
    generation rows, each with both frameworks, per-sequence seconds and consistent rates."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--quick", "--skip", "train", "--precisions",
                           "fp32", "--gen_batch", "3", "--repeats", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == {} and result["skipped"] == []
    rows = {r["batch"]: r for r in result["workloads"]}
    assert set(rows) == {3, 1}
    for batch, r in rows.items():
        frames = r["frames"]
        assert r["jax_s"] > 0 and r["torch_s"] > 0 and r["flop"] > 0
        assert r["jax_s_per_sequence"] == pytest.approx(r["jax_s"] / batch)
        assert r["jax_frames_per_s"] == pytest.approx(batch * (frames - 1) / r["jax_s"])
        assert r["torch_tflops"] == pytest.approx(r["flop"] / r["torch_s"] / 1e12)
    assert rows[3]["flop"] == pytest.approx(3 * rows[1]["flop"])  # the count scales with the batch
    assert "generate 4f" in proc.stdout
