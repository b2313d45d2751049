"""Helpers of the benchmarks: machine facts, the fp32 peak, alternating timing, FLOP
counts, XLA's memory plan and compare.py's table.

Why a separate file: compare.py keeps only what decides the workloads (models, shapes,
which call is timed); everything here is framework- and model-agnostic.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import re
import statistics
import time
from typing import Any, Callable

# The figure the benchmark issue quotes for the project's target laptop: 2 Zen 4 cores at
# 2.6 GHz x 32 fp32 FLOP/cycle (Zen 4 runs AVX-512 on 256-bit units: 2 FMA pipes x 8 x 2).
NOMINAL_PEAK_GFLOPS = 2 * 2.6 * 32
NOMINAL_PEAK_DESC = "2 Zen 4 cores x 2.6 GHz x 32 fp32 FLOP/cycle (the issue's target machine)"


def cpu_info() -> dict[str, Any]:
    """Model name, usable cores, nominal clock and ISA flags from /proc/cpuinfo."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = re.search(r"^flags\s*:(.*)$", text, re.M)
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
    return {"model": model.group(1).strip() if model else platform.processor() or platform.machine(),
            "cores": cores, "ghz": max(mhz) / 1e3 if mhz else None,
            "flags": set(flags.group(1).split()) if flags else set()}


def detect_peak(info: dict[str, Any]) -> tuple[float | None, str]:
    """This machine's fp32 peak: cores x clock x FLOP/cycle, where FLOP/cycle = 2 FMA pipes x
    vector lanes x 2 (64 with Intel AVX-512, 32 with AVX2+FMA or AMD's AVX-512). An estimate: some CPUs have one
    AVX-512 FMA pipe, turbo runs above the listed clock, and a VM's vCPUs may be hyperthread
    siblings sharing one core's pipes."""
    if info["ghz"] is None:
        return None, "no clock in /proc/cpuinfo"
    flags, amd = info["flags"], "AMD" in info["model"].upper()
    if "avx512f" in flags and not amd:
        per_cycle, isa = 64, "AVX-512"
    elif "avx512f" in flags:  # Zen 4 (and mobile Zen 5) run AVX-512 on 256-bit FMA units
        per_cycle, isa = 32, "AVX-512 on 256-bit units"
    else:
        per_cycle, isa = (32, "AVX2+FMA") if {"avx2", "fma"} <= flags else (16, "SSE/AVX")
    vm = ", a VM (vCPUs may share cores)" if "hypervisor" in flags else ""
    return (info["cores"] * info["ghz"] * per_cycle,
            f"{info['cores']} cores x {info['ghz']:.2f} GHz x {per_cycle} FLOP/cycle ({isa}, "
            f"2 FMA pipes assumed{vm})")


def is_nominal_machine(info: dict[str, Any]) -> bool:
    """Whether this is the issue's machine: 2 AMD cores with AVX-512 (Zen 4)."""
    return "AMD" in info["model"].upper() and "avx512f" in info["flags"] and info["cores"] == 2


def versions() -> dict[str, str]:
    """Library versions; torch's only where it is installed (ab.py runs without it)."""
    import flax
    import jax
    import jaxlib
    found = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
             "flax": flax.__version__}
    try:
        import torch
    except ImportError:
        return found
    return dict(found, torch=torch.__version__)


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    return median([timed(fn) for _ in range(repeats)])


def plan_bytes(compiled: Any) -> int | None:
    """XLA's buffer plan of a compiled program: arguments + outputs + temporaries, less
    what donation lets outputs share with arguments; None where the backend has none."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def alternate(jax_fn: Callable[[], Any], torch_fn: Callable[[], Any], repeats: int,
              warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per call of each, run J, T, J, T, ... so that load drift on a shared machine
    hits both frameworks alike. Both callables must return only once the work is done
    (block_until_ready / a host value)."""
    for _ in range(warmup):
        jax_fn()
        torch_fn()
    jax_s, torch_s = [], []
    for _ in range(repeats):
        jax_s.append(timed(jax_fn))
        torch_s.append(timed(torch_fn))
    return jax_s, torch_s


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def torch_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call as torch's FlopCounterMode counts them (2 per multiply-add of the
    matmuls and convolutions, forward and backward; elementwise ops are free)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def xla_flops(compiled: Any) -> float | None:
    """XLA's own count (cost_analysis) of a compiled program. Not used for the rates: it
    counts a while-loop body once whatever its trip count, and it cannot know which branch
    of a conditional (the teacher-forced fast path or the general step) runs."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend/version implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    """One line per workload: times, ratio, counted GFLOP, rates and % of this machine's peak."""
    head = (f"{'workload':<30} {'JAX s':>9} {'PyTorch s':>9} {'JAX/PT':>7} {'GFLOP':>8} "
            f"{'JAX GF/s':>9} {'PT GF/s':>8} {'JAX %pk':>7} {'PT %pk':>6} {'JAX compile s':>13}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<30} {r['jax_s']:>9.4f} {r['torch_s']:>9.4f} {r['ratio']:>7.2f} "
            f"{r['flop'] / 1e9:>8.2f} {r['jax_gflops']:>9.1f} {r['torch_gflops']:>8.1f} "
            f"{_f(r['jax_pct_peak'], '.1f'):>7} {_f(r['torch_pct_peak'], '.1f'):>6} "
            f"{_f(r['jax_compile_s'], '.1f'):>13}")
    return "\n".join(lines)
