"""cvae-jax against PyTorch on one accelerator: Lab4 training throughput by batch size,
precision and --remat, batched 630-frame generation, SVG training and prediction, whether
bf16 trains as fp32 does, and a profile of the largest step, in one process run.

Why: on a GPU the question is not one step's latency but how far batching and bfloat16
carry throughput, and what that costs in memory. Each workload copies the cvae-jax
weights into the PyTorch reference (benchmarks/torch_ref, on the same device) and times
the two alternately, as compare.py does on CPU.

* peak (--also): an n x n bf16 matmul in each framework, the practical ceiling of the chip here.
* train: one Lab4 training step at the reference dims (16-frame clips, 32x64) for each
  --batches; teacher-forced and free-running (the same compiled program, as in training).
  Batches from --remat_from on train with --remat, batches up to --plain_up_to without it
  (both where they overlap). PyTorch runs the reference trainer's per-frame loop; with bf16
  under `torch.autocast(bfloat16)`, the usual PyTorch mixed precision. PyTorch does not
  know --remat: it runs once per (batch, precision), with the --remat row when there is one.
* generate: --gen_batch videos of --gen_frames frames at once (and one video alone).
* svg (--also): one SVG training step per --svg_batches (the `bair` preset, SVG-FP, at batch 12; the
  `svg_lp` preset, learned prior, at its batch 100, where PyTorch runs SVG-FP at the same
  dims: the baseline has no learned prior), and a prediction of --svg_future frames after
  2 context frames for --svg_predict_batch sequences (`bair`).
* curve (--also): --curve_steps training steps of the `cpu` preset on its synthetic dance data, fp32
  and bf16 from the same initial weights, batches and keys: bf16 must train like fp32.
* profile: one teacher-forced step of the largest bf16 batch traced with jax.profiler into
  --profile_dir when it reaches less than --profile_below_pct of the bf16 peak; the
  trace's kernels are summarised by time in the JSON.

GPU compiles take minutes each (the reference-dims training step at batch 128: 135 s on an
H200, all alone). By default each workload is set up, compiled and timed before the next
one is set up, so a run cut short by --budget_s keeps every figure it measured and
nothing runs beside a timing. --compile_workers N compiles every program first, N at a
time on a thread pool (XLA releases the GIL), then times them (after --compile_wait_s at
most; rows timed while compiles still ran say how many). On the H200 that was slower, not
faster: XLA's GPU compiler already spreads one compile (its autotuning) over the host's
cores, and 14 programs compiled at once had none finished after 9 minutes, while the main
thread's lowering crawled.

Reported: seconds per call (median), steps/s, predicted frames/s (batch x (frames - 1) per
call), achieved TFLOP/s (torch FlopCounterMode's count of the reference algorithm, 2 per
multiply-add of convolutions and matmuls, used for both sides) and its share of the bf16
dense peak (--peak_tflops), peak memory: XLA's buffer plan of the compiled program
(`memory_analysis`: arguments + outputs + temporaries - donated) and PyTorch's
`max_memory_allocated` over the workload. JAX compile time apart. Both frameworks run
float32 convolutions in their default GPU mode (TF32 tensor cores).

    python benchmarks/gpu.py --json gpu.json                 # training and generation
    python benchmarks/gpu.py --also all --profile_dir prof --json gpu.json   # everything
    python benchmarks/gpu.py --batches 32 --precisions bf16 --conv_impls xla custom
    python benchmarks/gpu.py --quick                         # smoke test, tiny dims, any backend

Figures are written to --json after the compiles and after every workload, so a run
stopped by --budget_s (no new workload starts after it) or killed keeps what it measured.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import gc
import glob
import gzip
import importlib.metadata
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the device with PyTorch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import _timing as tm  # noqa: E402
from benchmarks.compare import JAX_WIDTHS, QUICK, _jax_trainer, _nchw, _uniform  # noqa: E402
from benchmarks.torch_ref import lab4 as tlab4  # noqa: E402
from benchmarks.torch_ref import svg as tsvg  # noqa: E402
from cvae_jax import models  # noqa: E402
from cvae_jax import schedules  # noqa: E402
from cvae_jax.config import preset  # noqa: E402
from cvae_jax.lab4_evaluation import make_generate  # noqa: E402
from cvae_jax.train_step import (Schedule, init_state, make_predict,  # noqa: E402
                                 make_train_step)

# Dense bf16 matrix rate of an H100/H200 SXM by NVIDIA's datasheet (989.4 TFLOP/s); the
# `peak` workload measures what a large matmul gets in practice.
BF16_PEAK_TFLOPS = 989.0


@dataclasses.dataclass(frozen=True)
class Run:
    hw: tuple[int, int] = (32, 64)
    clip: int = 16
    dims: tuple = ()  # Lab4 Config overrides, as (name, value) pairs
    svg_dims: tuple = ()
    peak_n: int = 8192
    curve_dims: tuple = ()


QUICK_RUN = Run(QUICK["lab4_hw"], QUICK["lab4_clip"], QUICK["lab4_dims"], QUICK["svg_dims"], 256,
                (("frame_H", 8), ("frame_W", 16), ("train_vi_len", 3), ("val_vi_len", 40),
                 ("synthetic_train_videos", 1), ("F_dim", 8), ("L_dim", 8), ("N_dim", 4),
                 ("D_out_dim", 16)))


@dataclasses.dataclass
class Job:
    """A workload: programs lowered in the main thread, compiled on the pool, then
    `measure([compile results])` -> rows, timed alone."""
    label: str
    lowered: list
    measure: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    futures: list = dataclasses.field(default_factory=list)


class Compiler:
    """Compiles lowered programs on a thread pool and records each one's wall time, start
    (seconds after the pool started) and how many compiles were running when it started."""

    def __init__(self, workers: int):
        self.pool = cf.ThreadPoolExecutor(max(1, workers))
        self.lock = threading.Lock()
        self.running = 0
        self.t0 = time.perf_counter()

    def submit(self, label: str, lowered) -> cf.Future:
        return self.pool.submit(self._compile, label, lowered)

    def _compile(self, label: str, lowered) -> dict[str, Any]:
        with self.lock:
            self.running += 1
            at_once = self.running
        t = time.perf_counter()
        try:
            compiled = lowered.compile()
        finally:
            with self.lock:
                self.running -= 1
        s = time.perf_counter() - t
        print(f"  compiled {label} in {s:.1f} s ({at_once} compiling when it started)", file=sys.stderr, flush=True)
        return dict(compiled=compiled, compile_s=s, compile_start_s=t - self.t0, compiles_at_start=at_once)


def _compile_info(res: dict[str, Any]) -> dict[str, Any]:
    return dict(jax_compile_s=res["compile_s"], jax_compile_start_s=res["compile_start_s"],
                jax_compiles_at_start=res["compiles_at_start"], jax_plan_bytes=tm.plan_bytes(res["compiled"]),
                jax_plan=_plan_detail(res["compiled"]))


def _plan_detail(compiled) -> dict[str, int] | None:
    """memory_analysis()'s parts: what the plan total is made of."""
    try:
        m = compiled.memory_analysis()
        return {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias",
                                                                    "generated_code")}
    except Exception:  # not every backend reports it
        return None


# --------------------------------------------------------------------------- FLOP counts

_FLOPS: dict[tuple, float] = {}


def _count(key: tuple, fn: Callable[[], Any]) -> float:
    """torch FlopCounterMode's count of `fn`, once per key."""
    if key not in _FLOPS:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False):  # a count needs no tuned kernels
            _FLOPS[key] = tm.torch_flops(fn)
    return _FLOPS[key]


# Where the counted models run: the benchmark's GPU (a few milliseconds of arithmetic), else
# the meta device (shapes only, no arithmetic; same count as on CPU). On the H200's host a
# reference-dims training setup took 20-30 s when it counted on the meta device, 4 s with
# the count already made.
_COUNT_DEVICE = "cuda" if torch.cuda.is_available() else "meta"


def _blank(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, device=_COUNT_DEVICE) if _COUNT_DEVICE != "meta" else torch.empty(*shape, device="meta")


def lab4_train_flop(cfg, t: int, h: int, w: int) -> float:
    """One reference training step (forward + backward of the clip loss) at batch 1;
    convolutions scale with the batch. Adam and clipping are elementwise: not counted."""
    def fn():
        m = _torch_model(cfg).to(_COUNT_DEVICE)
        tlab4.clip_loss(m, _blank(1, t, 3, h, w), _blank(1, t, 3, h, w), True, 1.0).backward()
    return _count(("lab4 train", _dims(cfg), t, h, w), fn)


def lab4_gen_flop(cfg, h: int, w: int) -> float:
    """One generated frame at batch 1."""
    return _count(("lab4 gen", _dims(cfg), h, w), lambda: tlab4.generate(
        _torch_model(cfg).to(_COUNT_DEVICE), _blank(1, 3, h, w), _blank(1, 2, 3, h, w)))


def _svg_torch(cfg):
    return tsvg.build(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.vgg_width, cfg.predictor_rnn_layers,
                      cfg.posterior_rnn_layers)


def svg_train_flop(cfg, t: int) -> float:
    """SVG-FP's training step at batch 2 (BatchNorm1d needs 2), halved: per sequence."""
    def fn():
        tsvg.clip_loss(_svg_torch(cfg).to(_COUNT_DEVICE), _blank(2, t, 3, 64, 64), _blank(2, t, 7), cfg.n_past,
                       1.0, **_svg_skips(cfg)).backward()
    return _count(("svg train", _svg_dims(cfg), t), fn) / 2


def svg_predict_flop(cfg, n: int) -> float:
    return _count(("svg predict", _svg_dims(cfg), n), lambda: tsvg.predict(
        _svg_torch(cfg).to(_COUNT_DEVICE), _blank(2, cfg.n_past, 3, 64, 64), _blank(2, cfg.n_past + n, 7), n,
        **_svg_skips(cfg))) / 2


def _dims(cfg) -> tuple:
    return (cfg.F_dim, cfg.L_dim, cfg.N_dim, cfg.D_out_dim, cfg.output_sigmoid)


def _svg_dims(cfg) -> tuple:
    return (cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.vgg_width, cfg.predictor_rnn_layers,
            cfg.posterior_rnn_layers, cfg.n_past, cfg.last_frame_skip, cfg.skip_compat)


def _svg_skips(cfg) -> dict[str, bool]:
    return dict(last_frame_skip=cfg.last_frame_skip, skip_compat=cfg.skip_compat)


# --------------------------------------------------------------------------- the PyTorch side


def _torch_model(cfg, params=None):
    """The PyTorch reference of `cfg`'s dims, with cvae-jax's weights when given."""
    model = tlab4.build(cfg.F_dim, cfg.L_dim, cfg.N_dim, cfg.D_out_dim, cfg.output_sigmoid, **JAX_WIDTHS)
    return model if params is None else tlab4.load_jax_params(model, params)


class TorchSide:
    """The PyTorch reference on the benchmark's device: synchronised calls, peak memory."""

    def __init__(self, device: str, precision: str):
        self.device, self.cuda = torch.device(device), device.startswith("cuda")
        self.bf16 = precision == "bf16"

    def ctx(self):
        return torch.autocast(self.device.type, torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def call(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run():
            with self.ctx():
                out = fn()
            if self.cuda:
                torch.cuda.synchronize()
            return out
        return run

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        return int(torch.cuda.max_memory_allocated()) if self.cuda else None

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        return _nchw(a).to(self.device)


def _timed_pair(jfn, tfn, repeats: int, torch_side: TorchSide | None) -> dict[str, Any]:
    """JAX then PyTorch, alternately, after one warm-up call each."""
    jfn()
    row: dict[str, Any] = {}
    if torch_side is None or tfn is None:
        row["jax_s"] = tm.median_time(jfn, repeats)
        return row
    torch_side.reset_peak()
    try:
        tfn()
    except torch.OutOfMemoryError as e:  # the reference's per-frame graph outgrows the device first
        msg = str(e).splitlines()[0]
        del e
        gc.collect()
        torch_side.reset_peak()
        return dict(jax_s=tm.median_time(jfn, repeats), torch_error=f"out of memory: {msg}")
    jax_all, torch_all = tm.alternate(jfn, tfn, repeats, warmup=0)
    row.update(jax_s=tm.median(jax_all), torch_s=tm.median(torch_all), torch_peak_bytes=torch_side.peak(),
               jax_all_s=jax_all, torch_all_s=torch_all)
    row["ratio"] = row["jax_s"] / row["torch_s"]
    return row


def _rates(row: dict[str, Any], predicted_frames: int) -> dict[str, Any]:
    for side in ("jax", "torch"):
        if f"{side}_s" in row:
            s = row[f"{side}_s"]
            row.update({f"{side}_calls_per_s": 1 / s, f"{side}_frames_per_s": predicted_frames / s,
                        f"{side}_tflops": row["flop"] / s / 1e12,
                        f"{side}_pct_bf16_peak": 100 * row["flop"] / s / 1e12 / BF16_PEAK_TFLOPS})
    return row


# --------------------------------------------------------------------------- workloads


def _lab4_cfg(run: Run, **changes):
    return preset("lab4", model="lab4").replace(frame_H=run.hw[0], frame_W=run.hw[1], **dict(run.dims), **changes)


def peak_job(n: int, repeats: int, torch_device: str | None) -> Job:
    """An n x n bf16 matmul, random operands: the ceiling the other rates are read against."""
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(_uniform(rng, n, n), jnp.bfloat16) for _ in range(2))
    lowered = jax.jit(lambda x, y: x @ y).lower(a, b)

    def block_s(fn, sync, calls=10):
        fn()
        sync()
        t = time.perf_counter()
        for _ in range(calls):
            out = fn()
        sync(out)
        return (time.perf_counter() - t) / calls

    def measure(res):
        compiled = res[0]["compiled"]
        flop = 2.0 * n ** 3
        jax_s = tm.median([block_s(lambda: compiled(a, b), lambda o=None: jax.block_until_ready(o))
                           for _ in range(repeats)])
        row = dict(workload=f"bf16 matmul {n}", n=n, flop=flop, jax_s=jax_s, jax_tflops=flop / jax_s / 1e12)
        if torch_device:
            ta, tb = (torch.rand(n, n, device=torch_device, dtype=torch.bfloat16) for _ in range(2))
            sync = (lambda o=None: torch.cuda.synchronize()) if torch_device == "cuda" else (lambda o=None: None)
            row["torch_s"] = tm.median([block_s(lambda: ta @ tb, sync) for _ in range(repeats)])
            row["torch_tflops"] = flop / row["torch_s"] / 1e12
        return [row]
    return Job(f"peak bf16 matmul {n}", [lowered], measure)


def lab4_train_job(batch: int, precision: str, conv_impl: str, run: Run, repeats: int,
                   torch_device: str | None, remat: bool, scan_unroll: int | None,
                   profile: Callable[[Callable[[], Any], dict], dict] | None = None,
                   torch_see: str | None = None) -> Job:
    (h, w), t = run.hw, run.clip
    cfg = _lab4_cfg(run, tf_mode="batch", batch_size=batch, train_vi_len=t, precision=precision,
                    conv_impl=conv_impl, remat=remat)
    cfg = cfg.replace(scan_unroll=scan_unroll) if scan_unroll else cfg
    graphdef, state = init_state(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    frames, poses = _uniform(rng, batch, t, h, w, 3), _uniform(rng, batch, t, h, w, 3)
    jbatch, keys = (jnp.asarray(frames), jnp.asarray(poses)), (jax.random.key(1), jax.random.key(2))
    sched = {tfr: Schedule(jnp.float32(cfg.lr), jnp.float32(1.0), jnp.float32(tfr)) for tfr in (1.0, 0.0)}
    lowered = make_train_step(graphdef, cfg, donate=False).lower(state, jbatch, sched[1.0], *keys)
    flop = batch * lab4_train_flop(cfg, t, h, w)

    def measure(res):
        nonlocal state
        compiled = res[0]["compiled"]
        side = TorchSide(torch_device, precision) if torch_device else None
        if side:
            tmodel = _torch_model(cfg, state.params).to(side.device)
            opt = tlab4.make_optimizer(tmodel, cfg.lr)
            tframes, tposes = side.tensor(frames), side.tensor(poses)
        rows = []
        for tfr, label in ((1.0, "TF"), (0.0, "free")):
            jrun, holder = _jax_trainer(compiled, state, jbatch, sched[tfr], keys)
            m = jrun()
            assert float(m["teacher"]) == tfr and np.isfinite(float(m["loss"])), (tfr, m)
            tfn = side.call(lambda teacher=(tfr == 1.0): tlab4.train_step(
                tmodel, opt, tframes, tposes, teacher, 1.0, max_norm=cfg.grad_clip)) if side else None
            row = dict(workload=f"train {label}" + (" remat" if remat else ""), model="lab4", batch=batch,
                       precision=precision, conv_impl=conv_impl, remat=remat,
                       scan_unroll=1 if remat else cfg.scan_unroll,  # see rollout.scan_steps
                       frames=t, flop=flop, xla_flop=tm.xla_flops(compiled),
                       **(_compile_info(res[0]) if tfr == 1.0 else {"jax_compile_s": None,
                                                                    "jax_plan_bytes": tm.plan_bytes(compiled)}),
                       **_timed_pair(jrun, tfn, repeats, side))
            if torch_see and not side:
                row["torch_see"] = torch_see
            rows.append(_rates(row, batch * (t - 1)))
            state = holder[0]
            if tfr == 1.0 and profile is not None:  # traced later, by profile_job: a trace that fails costs no figures
                _PROFILES.append((profile, _jax_trainer(compiled, state, jbatch, sched[1.0], keys)[0], row))
        return rows
    return Job(f"train b{batch} {precision} {conv_impl}" + (" remat" if remat else ""), [lowered], measure)


def generate_job(batch: int, precision: str, conv_impl: str, run: Run, frames: int, repeats: int,
                 torch_device: str | None) -> Job:
    h, w = run.hw
    cfg = _lab4_cfg(run, precision=precision, conv_impl=conv_impl)
    graphdef, state = init_state(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    first, poses = _uniform(rng, batch, h, w, 3), _uniform(rng, batch, frames, h, w, 3)
    args = (state.params, state.batch_stats, (jnp.asarray(first), jnp.asarray(poses)), jax.random.key(1))
    lowered = make_generate(graphdef, cfg).lower(*args)
    flop = batch * lab4_gen_flop(cfg, h, w) * (frames - 1)

    def measure(res):
        compiled = res[0]["compiled"]
        jfn = lambda: jax.block_until_ready(compiled(*args))  # noqa: E731
        assert np.isfinite(np.asarray(jfn())).all()
        side = TorchSide(torch_device, precision) if torch_device else None
        tfn = None
        if side:
            tmodel = _torch_model(cfg, state.params).to(side.device)
            tfirst, tposes = side.tensor(first), side.tensor(poses)
            tfn = side.call(lambda: tlab4.generate(tmodel, tfirst, tposes))
        row = dict(workload=f"generate {frames}f", model="lab4", batch=batch, precision=precision,
                   conv_impl=conv_impl, frames=frames, flop=flop, **_compile_info(res[0]),
                   **_timed_pair(jfn, tfn, repeats, side))
        row["jax_s_per_sequence"] = row["jax_s"] / batch
        if "torch_s" in row:
            row["torch_s_per_sequence"] = row["torch_s"] / batch
        return [_rates(row, batch * (frames - 1))]
    return Job(f"generate b{batch} {precision} {conv_impl}", [lowered], measure)


def svg_train_job(preset_name: str, batch: int, conv_impl: str, run: Run, repeats: int,
                  torch_device: str | None) -> Job:
    """SVG's teacher-forced training step (the PyTorch SVG trainer always teacher-forces).
    With the learned prior (svg_lp) PyTorch runs SVG-FP at the same dims from its own
    initialisation: the JAX side then does a prior LSTM's work more."""
    cfg = preset(preset_name, model="svg").replace(tf_mode="batch", batch_size=batch, conv_impl=conv_impl,
                                                  **dict(run.svg_dims))
    t = cfg.n_past + cfg.n_future
    graphdef, state = init_state(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    frames, cond = _uniform(rng, batch, t, 64, 64, 3), _uniform(rng, batch, t, 7)
    jbatch, keys = (jnp.asarray(frames), jnp.asarray(cond)), (jax.random.key(1), jax.random.key(2))
    sched = Schedule(jnp.float32(cfg.lr), jnp.float32(1.0), jnp.float32(1.0))
    lowered = make_train_step(graphdef, cfg, donate=False).lower(state, jbatch, sched, *keys)
    flop = batch * svg_train_flop(cfg, t)

    def measure(res):
        compiled = res[0]["compiled"]
        side = TorchSide(torch_device, "fp32") if torch_device else None
        tfn = None
        if side:
            tmodel = _svg_torch(cfg)
            if cfg.prior == "fixed":
                tsvg.load_jax_params(tmodel, state.params)
            tmodel = tmodel.to(side.device)
            opt = tsvg.make_optimizer(tmodel, cfg.lr, cfg.beta1)
            tframes, tcond = side.tensor(frames), torch.from_numpy(cond).to(side.device)
            tfn = side.call(lambda: tsvg.train_step(tmodel, opt, tframes, tcond, cfg.n_past, 1.0,
                                                    **_svg_skips(cfg)))
        jrun, _ = _jax_trainer(compiled, state, jbatch, sched, keys)
        m = jrun()
        assert float(m["teacher"]) == 1.0 and np.isfinite(float(m["loss"])), m
        row = dict(workload="svg train TF", model="svg", preset=preset_name, prior=cfg.prior, batch=batch,
                   precision=cfg.precision, conv_impl=conv_impl, frames=t, flop=flop,
                   xla_flop=tm.xla_flops(compiled), **_compile_info(res[0]),
                   **_timed_pair(jrun, tfn, repeats, side))
        if side and cfg.prior != "fixed":
            row["torch_note"] = "PyTorch runs SVG-FP (no learned prior) at the same dims, its own init"
        return [_rates(row, batch * (t - cfg.n_past))]
    return Job(f"svg train b{batch} {preset_name}", [lowered], measure)


def svg_predict_job(batch: int, n: int, conv_impl: str, run: Run, repeats: int, torch_device: str | None) -> Job:
    cfg = preset("bair", model="svg").replace(conv_impl=conv_impl, **dict(run.svg_dims))
    n_past = cfg.n_past
    graphdef, state = init_state(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    ctx, cond = _uniform(rng, batch, n_past, 64, 64, 3), _uniform(rng, batch, n_past + n, 7)
    args = (state.params, state.batch_stats, (jnp.asarray(ctx), jnp.asarray(cond)), jax.random.key(1))
    lowered = make_predict(graphdef, cfg, n_future=n).lower(*args)
    flop = batch * svg_predict_flop(cfg, n)

    def measure(res):
        compiled = res[0]["compiled"]
        jfn = lambda: jax.block_until_ready(compiled(*args))  # noqa: E731
        out = np.asarray(jfn())
        assert out.shape == (batch, n, 64, 64, 3) and np.isfinite(out).all()
        side = TorchSide(torch_device, "fp32") if torch_device else None
        tfn = None
        if side:
            tmodel = tsvg.load_jax_params(_svg_torch(cfg), state.params).to(side.device)
            tctx, tcond = side.tensor(ctx), torch.from_numpy(cond).to(side.device)
            tfn = side.call(lambda: tsvg.predict(tmodel, tctx, tcond, n, **_svg_skips(cfg)))
        row = dict(workload=f"svg predict {n_past}+{n}f", model="svg", preset="bair", batch=batch,
                   precision=cfg.precision, conv_impl=conv_impl, frames=n, flop=flop, **_compile_info(res[0]),
                   **_timed_pair(jfn, tfn, repeats, side))
        return [_rates(row, batch * n)]
    return Job(f"svg predict b{batch} {n}f", [lowered], measure)


def curve_job(steps: int, precisions: list[str], run: Run, cache_dir: str) -> Job:
    """`steps` training steps of the `cpu` preset for each precision: same initial
    weights, batches, schedules and keys, so the loss curves differ by precision alone.
    One gradient program per step (no teacher-forced fast path, rolled loop): same
    arithmetic, a quarter of the compile."""
    base = preset("cpu", model="lab4").replace(cache_dir=cache_dir, tf_fast_path=False, scan_unroll=1,
                                               **dict(run.curve_dims))
    data = models.family(base.model).load_data(base, log=lambda *_: None)
    per_epoch = data.steps_in_epoch(0)
    epochs = math.ceil(steps / per_epoch)
    batches = [b for e in range(epochs) for b in data.epoch_batches(e)][:steps]
    sched = [Schedule(*(jnp.float32(v) for v in (
        schedules.learning_rate(base.lr_schedule, base.lr, i // per_epoch, i, steps, base.lr_milestones,
                                base.lr_gamma),
        base.beta * schedules.kl_beta(base.kl_anneal_type, i // per_epoch, epochs, base.kl_anneal_cycle,
                                      base.kl_anneal_ratio),
        schedules.teacher_forcing_ratio(i // per_epoch, base.tfr, base.tfr_sde, base.tfr_d_step,
                                        base.tfr_floor)))) for i in range(steps)]
    root = jax.random.key(base.seed)
    keys = [(jax.random.fold_in(jax.random.fold_in(root, 1), i // per_epoch),
             jax.random.fold_in(jax.random.fold_in(root, 2), i)) for i in range(steps)]
    setups = []
    for p in precisions:
        cfg = base.replace(precision=p)
        graphdef, state = init_state(cfg, jax.random.key(0))
        example = tuple(jnp.asarray(x) for x in batches[0])
        setups.append((p, state, make_train_step(graphdef, cfg).lower(state, example, sched[0], *keys[0])))

    def measure(res):
        curves, out = {}, dict(workload="bf16 training curve", preset="cpu", steps=steps, steps_per_epoch=per_epoch,
                               dims={k: getattr(base, k) for k in ("F_dim", "L_dim", "N_dim", "D_out_dim", "frame_H",
                                                                   "frame_W", "train_vi_len", "batch_size")},
                               data="built-in synthetic dance", runs={})
        for (p, state, _), r in zip(setups, res):
            compiled = r["compiled"]
            state = jax.tree.map(jnp.copy, state)  # the step donates its state
            metrics = []
            t = time.perf_counter()
            for i in range(steps):
                state, m = compiled(state, tuple(jnp.asarray(x) for x in batches[i]), sched[i], *keys[i])
                metrics.append(m)
            metrics = jax.device_get(metrics)
            seconds = time.perf_counter() - t
            curves[p] = {k: [float(m[k]) for m in metrics] for k in ("loss", "mse", "kl", "teacher", "grad_norm")}
            out["runs"][p] = dict(seconds=seconds, s_per_step=seconds / steps, **_compile_info(r), **curves[p])
        if "fp32" in curves and "bf16" in curves:
            out["comparison"] = _compare_curves(curves["fp32"]["loss"], curves["bf16"]["loss"])
        return [out]
    return Job(f"curve {steps} steps " + "/".join(precisions), [s[2] for s in setups], measure)


def _compare_curves(ref: list[float], other: list[float], window: int = 20) -> dict[str, Any]:
    """Relative differences of `other`'s loss to `ref`'s: per step (noisy: the runs part
    after a few steps and each step sees one batch) and of the moving means over `window`
    steps (the curve a user reads)."""
    a, b = np.asarray(ref), np.asarray(other)
    w = max(1, min(window, len(a) // 2))
    sa, sb = (np.convolve(x, np.ones(w) / w, mode="valid") for x in (a, b))
    rel, srel = np.abs(b - a) / np.abs(a), np.abs(sb - sa) / np.abs(sa)
    return dict(finite=bool(np.isfinite(b).all()), first_step_rel=float(rel[0]), max_rel_per_step=float(rel.max()),
                median_rel_per_step=float(np.median(rel)), window=w, max_rel_moving_mean=float(srel.max()),
                final_fp32=float(a[-w:].mean()), final_bf16=float(b[-w:].mean()),
                final_rel=float(abs(b[-w:].mean() - a[-w:].mean()) / abs(a[-w:].mean())),
                first_fp32=float(a[0]), first_bf16=float(b[0]))


# --------------------------------------------------------------------------- profile

_PROFILES: list[tuple[Callable, Callable[[], Any], dict[str, Any]]] = []  # (profile, step, row) to trace


def profile_job() -> Job:
    """Traces the steps lab4_train_job queued, into their rows; placed after the workloads
    that matter most, so that a profiler failure costs only what follows it."""
    def measure(_):
        while _PROFILES:
            profile, step, row = _PROFILES.pop(0)
            row["profile"] = profile(step, row)
        return []
    return Job("profile", [], measure)



def make_profiler(out_dir: str, below_pct: float, top: int = 20):
    """A `profile(step, row)` for lab4_train_job: when the row's rate is under `below_pct`
    of the bf16 peak, trace one call of `step` (jax.profiler, Perfetto trace too), copy the
    trace files flat into `out_dir` and summarise the device's kernels by time."""
    def profile(step: Callable[[], Any], row: dict[str, Any]) -> dict[str, Any]:
        pct = row.get("jax_pct_bf16_peak", 100 * row["flop"] / row["jax_s"] / 1e12 / BF16_PEAK_TFLOPS)
        if pct >= below_pct:
            return dict(skipped=f"{pct:.1f} % of the bf16 peak, not under {below_pct} %")
        step()
        tmp = tempfile.mkdtemp(prefix="gpu_profile_")
        t = time.perf_counter()
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # Python's frames would swamp the kernels (and the file size)
        with jax.profiler.trace(tmp, create_perfetto_trace=True, profiler_options=options):
            step()
        trace_s = time.perf_counter() - t
        dest = pathlib.Path(out_dir)
        dest.mkdir(parents=True, exist_ok=True)
        tag = f"b{row['batch']}_{row['precision']}"
        copied = []
        found = glob.glob(f"{tmp}/**/*perfetto_trace.json.gz", recursive=True)
        if found:
            shutil.copy(found[0], dest / f"perfetto_{tag}.json.gz")
            copied.append(str(dest / f"perfetto_{tag}.json.gz"))
        found = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
        if found:  # for xprof / TensorBoard; gzipped to travel
            with open(found[0], "rb") as src, gzip.open(dest / f"{tag}.xplane.pb.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            copied.append(str(dest / f"{tag}.xplane.pb.gz"))
        perfetto = glob.glob(f"{tmp}/**/*perfetto_trace.json.gz", recursive=True)
        summary = summarise_trace(perfetto[0], top) if perfetto else {"error": "no perfetto trace written"}
        shutil.rmtree(tmp, ignore_errors=True)
        return dict(files=copied, trace_wall_s=trace_s, **summary)
    return profile


def _category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("memcpy", "memset")):
        return "memcpy/memset"
    if any(k in n for k in ("conv", "cudnn", "implicit", "wgrad", "dgrad", "fprop", "winograd", "fft")):
        return "convolution (cuDNN)"
    if any(k in n for k in ("gemm", "cutlass", "cublas", "nvjet", "sm90_xmma", "triton_gemm", "dot")):
        return "matmul (GEMM)"
    if any(k in n for k in ("reduce", "reduction")):
        return "reduction fusion"
    if "fusion" in n or "loop" in n or "input" in n or "transpose" in n or "copy" in n:
        return "elementwise/other fusion"
    return "other"


def summarise_trace(path: str, top: int = 20) -> dict[str, Any]:
    """Top kernels by total time from a Perfetto/Chrome trace: device streams when the
    trace has them (CUPTI), else the host's XLA threads (a CPU run)."""
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    device_pids = {p for p, n in procs.items() if "device:" in n.lower() and "gpu" in n.lower()}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if device_pids:
        kernels = [e for e in complete if e["pid"] in device_pids
                   and "stream" in threads.get((e["pid"], e.get("tid")), "").lower()]
        ops = [e for e in complete if e["pid"] in device_pids
               and threads.get((e["pid"], e.get("tid")), "").lower().startswith("xla ops")]
        source = "device streams (CUPTI)"
    else:
        kernels = [e for e in complete if threads.get((e["pid"], e.get("tid")), "") != "python"
                   and not e["name"].startswith("$")]
        ops, source = [], "host threads (no device events in the trace)"

    def top_by(evs):
        total = sum(e["dur"] for e in evs) or 1.0
        by = collections.defaultdict(lambda: [0.0, 0])
        for e in evs:
            by[e["name"]][0] += e["dur"]
            by[e["name"]][1] += 1
        best = sorted(by.items(), key=lambda kv: -kv[1][0])[:top]
        return total, [dict(name=k[:160], us=v[0], calls=v[1], share=v[0] / total) for k, v in best]

    total, top_kernels = top_by(kernels)
    cats = collections.defaultdict(float)
    for e in kernels:
        cats[_category(e["name"])] += e["dur"]
    span = (max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)) if kernels else 0.0
    out = dict(source=source, kernel_events=len(kernels), kernel_busy_us=total if kernels else 0.0,
               kernel_span_us=span, mean_kernel_us=(total / len(kernels)) if kernels else None,
               by_category={k: dict(us=v, share=v / total) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
               top_kernels=top_kernels)
    if ops:
        out["xla_ops_busy_us"], out["top_xla_ops"] = top_by(ops)
    return out


# --------------------------------------------------------------------------- driver


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'workload':<18} {'batch':>5} {'prec':>4} {'conv':>6} {'JAX s':>8} {'PT s':>8} {'JAX/PT':>6} "
            f"{'JAX call/s':>10} {'JAX fr/s':>9} {'PT fr/s':>8} {'JAX TF/s':>8} {'PT TF/s':>7} {'JAX %pk':>7} "
            f"{'JAX MiB':>7} {'PT MiB':>7} {'compile s':>9}")
    lines = [head, "-" * len(head)]
    nan = float("nan")
    for r in rows:
        pt = "torch_s" in r
        lines.append(
            f"{r['workload']:<18} {r['batch']:>5} {r['precision']:>4} {r['conv_impl']:>6} {r['jax_s']:>8.4f} "
            f"{r['torch_s'] if pt else nan:>8.4f} {r.get('ratio', nan):>6.2f} "
            f"{r['jax_calls_per_s']:>10.2f} {r['jax_frames_per_s']:>9.0f} "
            f"{r['torch_frames_per_s'] if pt else nan:>8.0f} {r['jax_tflops']:>8.2f} "
            f"{r['torch_tflops'] if pt else nan:>7.2f} {r['jax_pct_bf16_peak']:>7.2f} {_mib(r['jax_plan_bytes']):>7} "
            f"{_mib(r.get('torch_peak_bytes')):>7} {r['jax_compile_s'] or 0:>9.1f}")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", nargs="+", type=int, default=None, help="training batch sizes (2 32 128)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--conv_impls", nargs="+", default=["auto"], choices=["auto", "custom", "xla"],
                   help="cvae-jax --conv_impl values to time (PyTorch runs once, with the first)")
    p.add_argument("--gen_batch", type=int, default=None, help="videos generated at once (64)")
    p.add_argument("--gen_frames", type=int, default=None, help="frames per video, the given one included (630)")
    p.add_argument("--no_gen_single", action="store_true", help="skip the one-video generation")
    p.add_argument("--gen_repeats", type=int, default=None, help="timed generations per framework (--repeats)")
    p.add_argument("--remat_from", type=int, default=None,
                   help="train batches from this size with --remat (default: never)")
    p.add_argument("--plain_up_to", type=int, default=None,
                   help="also train batches up to this size without --remat (default: those under --remat_from)")
    p.add_argument("--scan_unroll", type=int, default=None, help="--scan_unroll of the training step (default: 16)")
    p.add_argument("--svg_batches", nargs="*", type=int, default=None,
                   help="SVG training batches (12 100): 100 and more use the svg_lp preset, others bair")
    p.add_argument("--svg_predict_batch", type=int, default=None, help="SVG sequences predicted at once (100)")
    p.add_argument("--svg_future", type=int, default=None, help="SVG frames predicted after 2 context frames (28)")
    p.add_argument("--curve_steps", type=int, default=None, help="steps of the bf16-vs-fp32 curve (200)")
    p.add_argument("--profile_dir", default=None, help="trace one step of the largest bf16 batch here")
    p.add_argument("--profile_below_pct", type=float, default=30.0,
                   help="profile only under this share of the bf16 peak (percent)")
    p.add_argument("--peak_tflops", type=float, default=BF16_PEAK_TFLOPS, help="bf16 dense peak for %% columns")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per framework (median)")
    p.add_argument("--no_torch", action="store_true", help="time cvae-jax alone")
    p.add_argument("--torch_max_batch", type=int, default=None,
                   help="Lab4 training batches above this run cvae-jax alone (PyTorch's per-frame graph "
                        "at batch 128 needs about 4 x its batch-32 memory: 230 GiB in fp32)")
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "generate"])
    p.add_argument("--also", nargs="*", default=[], choices=["peak", "svg", "curve", "all"],
                   help="workloads beyond training and generation (all: every one)")
    p.add_argument("--compile_workers", type=int, default=0,
                   help="programs compiled at once, on a pool, all before any timing (default 0: "
                        "serial, each compiled right before it is timed)")
    p.add_argument("--compile_wait_s", type=float, default=None,
                   help="start timing after this many seconds even if compiles still run")
    p.add_argument("--budget_s", type=float, default=None, help="start no workload after this many seconds")
    p.add_argument("--json", metavar="OUT.json")
    p.add_argument("--quick", action="store_true", help="tiny dims, meaningless figures: a smoke test")
    a = p.parse_args(argv)
    a.batches = a.batches or ([2] if a.quick else [2, 32, 128])
    a.gen_batch = a.gen_batch or (2 if a.quick else 64)
    a.gen_frames = a.gen_frames or (QUICK["gen_frames"] if a.quick else 630)
    a.gen_repeats = a.gen_repeats or a.repeats
    a.svg_batches = a.svg_batches if a.svg_batches is not None else ([2, 4] if a.quick else [12, 100])
    a.svg_predict_batch = a.svg_predict_batch or (2 if a.quick else 100)
    a.svg_future = a.svg_future or (QUICK["svg_future"] if a.quick else 28)
    a.curve_steps = a.curve_steps if a.curve_steps is not None else (6 if a.quick else 200)
    a.run = QUICK_RUN if a.quick else Run()
    a.also = {"peak", "svg", "curve"} if "all" in a.also else set(a.also)
    if min(a.batches) < 1 or a.gen_batch < 1 or a.gen_frames < 2 or a.repeats < 1 or a.curve_steps < 0:
        p.error("--batches and --gen_batch must be >= 1, --gen_frames >= 2, --repeats >= 1, --curve_steps >= 0")
    return a


def _remat_modes(b: int, a: argparse.Namespace) -> list[bool]:
    """Which --remat settings batch b trains with: plain below --remat_from (or up to
    --plain_up_to), rematerialised from --remat_from on."""
    remat = a.remat_from is not None and b >= a.remat_from
    plain = not remat or (a.plain_up_to is not None and b <= a.plain_up_to)
    return [m for m, on in ((True, remat), (False, plain)) if on]


def plan_jobs(a: argparse.Namespace, torch_device: str | None) -> list[tuple[str, Callable[[], Job]]]:
    """Setups in the order they are lowered, compiled and timed: the issue's first
    questions first (bf16 at the largest batch, bf16 training), PyTorch-heavy workloads
    before JAX-only ones (XLA's allocator keeps what it grew to, PyTorch needs the rest)."""
    run, plan, late = a.run, [], []
    if "peak" in a.also:
        plan.append(("peak", lambda: peak_job(run.peak_n, a.repeats, torch_device)))
    biggest_bf16 = max(a.batches) if "bf16" in a.precisions else None
    profile = make_profiler(a.profile_dir, a.profile_below_pct) if a.profile_dir else None
    train = []
    for b in sorted(a.batches, reverse=True):
        for prec in sorted(a.precisions, key=lambda x: x != "bf16"):
            for i, impl in enumerate(a.conv_impls):
                modes = _remat_modes(b, a)
                for remat in modes:
                    dup = not (i == 0 and remat == modes[0])  # PyTorch's figure is another row's
                    with_torch = not dup and (a.torch_max_batch is None or b <= a.torch_max_batch)
                    see = (f"train b{b} {prec} {a.conv_impls[0]}" + (" remat" if modes[0] else "")
                           if dup and (a.torch_max_batch is None or b <= a.torch_max_batch) else None)
                    prof = profile if (b == biggest_bf16 and prec == "bf16" and i == 0 and remat == modes[0]) else None
                    job = (f"train b{b} {prec} {impl}" + (" remat" if remat else ""),
                           lambda b=b, prec=prec, impl=impl, remat=remat, with_torch=with_torch, see=see, prof=prof:
                           lab4_train_job(b, prec, impl, run, a.repeats, torch_device if with_torch else None,
                                          remat, a.scan_unroll, prof, see))
                    (late if dup else train).append(job)
    first = [j for j in train if j[0].startswith(f"train b{max(a.batches)} ")]
    if "train" not in a.skip:
        plan += first
    if "curve" in a.also and a.curve_steps:
        cache = tempfile.mkdtemp(prefix="gpu_curve_data_")
        plan.append(("curve", lambda: curve_job(a.curve_steps, ["fp32", "bf16"], run, cache)))
    if "train" not in a.skip:
        plan += [j for j in train if j not in first]
    if "svg" in a.also:
        impl = a.conv_impls[0]
        plan += [(f"svg train b{b}", lambda b=b: svg_train_job("svg_lp" if b >= 100 else "bair", b, impl, run,
                                                               a.repeats, torch_device)) for b in a.svg_batches]
        if a.svg_predict_batch:
            plan.append(("svg predict", lambda: svg_predict_job(a.svg_predict_batch, a.svg_future, impl, run,
                                                                a.repeats, torch_device)))
    if profile is not None:
        plan.append(("profile", profile_job))
    if "generate" not in a.skip:
        for prec in sorted(a.precisions, key=lambda x: x != "bf16"):
            for i, impl in enumerate(a.conv_impls):
                dev_t = torch_device if i == 0 else None
                for b in dict.fromkeys((a.gen_batch,) if a.no_gen_single else (a.gen_batch, 1)):
                    plan.append((f"generate b{b} {prec} {impl}",
                                 lambda b=b, prec=prec, impl=impl, dev_t=dev_t:
                                 generate_job(b, prec, impl, run, a.gen_frames, a.gen_repeats, dev_t)))
    if "train" not in a.skip:
        plan += late
    return plan


def _device_meta() -> dict[str, Any]:
    """What the figures were read on: nvidia-smi's view, CUDA/cuDNN and plugin versions."""
    out: dict[str, Any] = {}
    try:
        out["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["nvidia_smi"] = None
    out["torch_cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    for name in ("jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "optax", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    out["xla_flags"] = os.environ.get("XLA_FLAGS")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global BF16_PEAK_TFLOPS
    a = _parse(argv)
    BF16_PEAK_TFLOPS = a.peak_tflops
    start = time.perf_counter()
    dev = jax.devices()[0]
    torch_device = None if a.no_torch else ("cuda" if torch.cuda.is_available() else "cpu")
    if torch_device == "cuda":
        torch.backends.cudnn.benchmark = True  # PyTorch's usual setting for fixed shapes
    meta = dict(date=tm.now(), jax_device=str(getattr(dev, "device_kind", dev.platform)),
                jax_backend=jax.default_backend(), versions=tm.versions(), device=_device_meta(),
                torch_device=torch_device,
                torch_device_name=torch.cuda.get_device_name(0) if torch_device == "cuda" else None,
                repeats=a.repeats, gen_repeats=a.gen_repeats, quick=a.quick, argv=sys.argv[1:],
                command=" ".join([pathlib.Path(sys.executable).name] + sys.argv),
                bf16_peak_tflops=BF16_PEAK_TFLOPS, compile_workers=a.compile_workers)
    out = {"meta": meta, "workloads": [], "peak": [], "bf16_training": [], "errors": {}, "skipped": [],
           "compiles": {}}
    rows, errors, skipped = out["workloads"], out["errors"], out["skipped"]

    def save():
        meta["elapsed_s"] = time.perf_counter() - start
        meta["jax_process_peak_bytes"] = (dev.memory_stats() or {}).get("peak_bytes_in_use")
        if a.json:
            pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(a.json).write_text(json.dumps(out, indent=2, default=str) + "\n")

    def record(job: Job, results: list[dict[str, Any]], running: int) -> None:
        """Time one workload and file its rows; a failure costs that workload only."""
        try:
            out["compiles"][job.label] = [{k: v for k, v in r.items() if k != "compiled"} for r in results]
            print(f"[{job.label}] timing" + (f" ({running} compiles still running)" if running else ""),
                  file=sys.stderr, flush=True)
            got = job.measure(results)
            for r in got:
                r["compiles_running"] = running
            if job.label.startswith("peak"):
                out["peak"] += got
                print(f"  bf16 matmul: JAX {got[0]['jax_tflops']:.0f}, PyTorch "
                      f"{got[0].get('torch_tflops', float('nan')):.0f} TFLOP/s", file=sys.stderr, flush=True)
            elif job.label.startswith("curve"):
                out["bf16_training"] += got
                print(f"  {json.dumps(got[0].get('comparison'))}", file=sys.stderr, flush=True)
            elif job.label != "profile":
                rows.extend(got)
                print("\n".join(table(got).splitlines()[2:]), file=sys.stderr, flush=True)
        except Exception as e:  # keep the other workloads' figures; fail at the end
            traceback.print_exc()
            errors[job.label] = f"{type(e).__name__}: {e}"
        job.futures = []
        gc.collect()
        if torch_device == "cuda":  # hand PyTorch's cached blocks back before the next workload
            torch.cuda.empty_cache()
        save()

    def over_budget(label: str) -> bool:
        if a.budget_s is not None and time.perf_counter() - start > a.budget_s:
            skipped.append(label)
            return True
        return False

    if a.compile_workers <= 0:  # serial: set up, compile, time, then the next; nothing runs beside a timing
        compiler = Compiler(1)
        for label, setup in plan_jobs(a, torch_device):
            if over_budget(label):
                continue
            try:
                t = time.perf_counter()
                job = setup()
                print(f"[{label}] lowered in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
                results = [compiler._compile(f"{job.label} [{i}]" if len(job.lowered) > 1 else job.label, low)
                           for i, low in enumerate(job.lowered)]
                job.lowered = []
            except Exception as e:
                traceback.print_exc()
                errors[label] = f"{type(e).__name__}: {e}"
                save()
                continue
            record(job, results, 0)
    else:
        # 1. lower every program (main thread), each handed to the compile pool at once
        compiler = Compiler(a.compile_workers)
        jobs: list[Job] = []
        for label, setup in plan_jobs(a, torch_device):
            try:
                t = time.perf_counter()
                job = setup()
                job.futures = [compiler.submit(f"{job.label} [{i}]" if len(job.lowered) > 1 else job.label, low)
                               for i, low in enumerate(job.lowered)]
                job.lowered = []
                jobs.append(job)
                print(f"[{label}] lowered in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
            except Exception as e:  # keep the other workloads
                traceback.print_exc()
                errors[label] = f"{type(e).__name__}: {e}"
        pending = [f for j in jobs for f in j.futures]
        wait = None if a.compile_wait_s is None else max(0.0, a.compile_wait_s - (time.perf_counter() - start))
        cf.wait(pending, timeout=wait)
        meta["lowered_and_compiled_s"] = time.perf_counter() - start
        meta["compiles_running_after_wait"] = sum(not f.done() for f in pending)
        print(f"compiles: {sum(f.done() for f in pending)}/{len(pending)} done after "
              f"{meta['lowered_and_compiled_s']:.0f} s", file=sys.stderr, flush=True)
        save()
        # 2. time the workloads one by one
        for job in jobs:
            if over_budget(job.label):
                continue
            try:
                results = [f.result() for f in job.futures]  # waits for a compile still running
            except Exception as e:
                traceback.print_exc()
                errors[job.label] = f"{type(e).__name__}: {e}"
                continue
            record(job, results, compiler.running)
    compiler.pool.shutdown(wait=False, cancel_futures=True)

    v = meta["versions"]
    print(f"\ncvae-jax vs PyTorch on {meta['jax_device']} ({meta['jax_backend']}), {meta['date']}")
    print(f"jax {v['jax']}, flax {v['flax']}, torch {v['torch']} on {torch_device or '-'}; "
          f"median of {a.repeats} alternating calls after one warm-up each")
    print("fr/s: predicted frames per second; TF/s: TFLOP/s of the reference algorithm's count; %pk: of "
          f"{BF16_PEAK_TFLOPS:.0f} TFLOP/s bf16 dense; JAX MiB: XLA's buffer plan; PT MiB: max_memory_allocated\n")
    for r in out["peak"]:
        print(f"bf16 matmul {r['n']}: JAX {r['jax_tflops']:.1f} TFLOP/s, PyTorch {r.get('torch_tflops', float('nan')):.1f}")
    print(table(rows))
    for c in out["bf16_training"]:
        cmp = c.get("comparison", {})
        print(f"{c['workload']}, {c['steps']} steps: final loss fp32 {cmp.get('final_fp32', float('nan')):.4f}, bf16 "
              f"{cmp.get('final_bf16', float('nan')):.4f}; max rel. difference of the {cmp.get('window')}-step means "
              f"{100 * cmp.get('max_rel_moving_mean', float('nan')):.2f} %, per step {100 * cmp.get('max_rel_per_step', float('nan')):.1f} %")
    for r in rows:
        if "torch_error" in r:
            print(f"PyTorch {r['workload']} batch {r['batch']} {r['precision']}: {r['torch_error']}")
        if isinstance(r.get("profile"), dict) and "top_kernels" in r["profile"]:
            pr = r["profile"]
            print(f"profile {r['workload']} b{r['batch']} {r['precision']} ({pr['source']}): {pr['kernel_events']} kernels, "
                  f"busy {pr['kernel_busy_us'] / 1e3:.1f} ms of a {pr['kernel_span_us'] / 1e3:.1f} ms span")
            for k, c in pr["by_category"].items():
                print(f"  {k:<26} {c['us'] / 1e3:9.2f} ms {100 * c['share']:5.1f} %")
            for k in pr["top_kernels"][:10]:
                print(f"  {k['us'] / 1e3:9.2f} ms {100 * k['share']:5.1f} % x{k['calls']:<5} {k['name'][:90]}")
    for label in skipped:
        print(f"SKIPPED (budget) {label}")
    for label, err in errors.items():
        print(f"FAILED {label}: {err}")
    save()
    return out


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
