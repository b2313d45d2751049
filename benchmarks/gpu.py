"""cvae-jax against PyTorch on one accelerator: Lab4 training throughput by batch size and
precision, and batched 630-frame generation, in one process run.

Why: on a GPU the question is not one step's latency but how far batching and bfloat16
carry throughput, and what that costs in memory. Each workload copies the cvae-jax
weights into the PyTorch reference (benchmarks/torch_ref, on the same device) and times
the two alternately, as compare.py does on CPU.

* train: one training step at the reference dims (16-frame clips, 32x64) for each
  --batches; teacher-forced and free-running (the same compiled program, as in training).
  PyTorch runs the reference trainer's per-frame loop; with bf16 it runs under
  `torch.autocast(bfloat16)`, the usual PyTorch mixed precision.
* generate: --gen_batch videos of --gen_frames frames at once, and one video alone.

Reported: seconds per call (median), steps/s, predicted frames/s (batch x (frames - 1) per
call), achieved TFLOP/s (torch FlopCounterMode's count of the reference algorithm, 2 per
multiply-add of convolutions and matmuls, used for both sides), peak memory: XLA's buffer
plan of the compiled program (`memory_analysis`: arguments + outputs + temporaries -
donated) and PyTorch's `max_memory_allocated` over the workload. JAX compile time apart.
Both frameworks run float32 convolutions in their default GPU mode (TF32 tensor cores).

    python benchmarks/gpu.py --json gpu.json                 # everything
    python benchmarks/gpu.py --batches 32 --precisions bf16 --conv_impls xla custom
    python benchmarks/gpu.py --quick                         # smoke test, tiny dims, any backend

Figures are written to --json after every workload, so a run stopped by --budget_s (no new
workload starts after it) or killed keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import pathlib
import sys
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
from benchmarks.compare import JAX_WIDTHS, QUICK, _compile, _jax_trainer, _nchw, _uniform  # noqa: E402
from benchmarks.torch_ref import lab4 as tlab4  # noqa: E402
from cvae_jax.config import preset  # noqa: E402
from cvae_jax.lab4_evaluation import make_generate  # noqa: E402
from cvae_jax.train_step import Schedule, init_state, make_train_step  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Run:
    hw: tuple[int, int] = (32, 64)
    clip: int = 16
    dims: tuple = ()  # Config overrides, as (name, value) pairs


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

    def model(self, cfg, params):
        return _torch_model(cfg, params).to(self.device)


def _timed_pair(jfn, tfn, repeats: int, torch_side: TorchSide | None) -> dict[str, Any]:
    """JAX then PyTorch, alternately, after one warm-up call each."""
    jfn()
    row: dict[str, Any] = {}
    if torch_side is None:
        row["jax_s"] = tm.median_time(jfn, repeats)
        return row
    torch_side.reset_peak()
    try:
        tfn()
    except torch.OutOfMemoryError as e:  # the reference's per-frame graph outgrows the device first
        torch_side.reset_peak()
        return dict(jax_s=tm.median_time(jfn, repeats), torch_error=f"out of memory: {str(e).splitlines()[0]}")
    jax_all, torch_all = tm.alternate(jfn, tfn, repeats, warmup=0)
    row.update(jax_s=tm.median(jax_all), torch_s=tm.median(torch_all), torch_peak_bytes=torch_side.peak())
    row["ratio"] = row["jax_s"] / row["torch_s"]
    return row


def _lab4_cfg(run: Run, **changes):
    return preset("lab4", model="lab4").replace(frame_H=run.hw[0], frame_W=run.hw[1], **dict(run.dims), **changes)


def _compile_logged(jitted, *args):
    compiled, seconds = _compile(jitted, *args)
    print(f"  compiled in {seconds:.1f} s", file=sys.stderr, flush=True)
    return compiled, seconds


def train_rows(batch: int, precision: str, conv_impl: str, run: Run, repeats: int,
               torch_device: str | None, remat: bool, scan_unroll: int | None) -> list[dict[str, Any]]:
    (h, w), t = run.hw, run.clip
    cfg = _lab4_cfg(run, tf_mode="batch", batch_size=batch, train_vi_len=t, precision=precision,
                    conv_impl=conv_impl, remat=remat)
    cfg = cfg.replace(scan_unroll=scan_unroll) if scan_unroll else cfg
    graphdef, state = init_state(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    frames, poses = _uniform(rng, batch, t, h, w, 3), _uniform(rng, batch, t, h, w, 3)
    jbatch, keys = (jnp.asarray(frames), jnp.asarray(poses)), (jax.random.key(1), jax.random.key(2))
    sched = {tfr: Schedule(jnp.float32(cfg.lr), jnp.float32(1.0), jnp.float32(tfr)) for tfr in (1.0, 0.0)}
    compiled, compile_s = _compile_logged(make_train_step(graphdef, cfg, donate=False), state, jbatch, sched[1.0], *keys)
    side = TorchSide(torch_device, precision) if torch_device else None
    if side:
        tmodel = side.model(cfg, state.params)
        opt = tlab4.make_optimizer(tmodel, cfg.lr)
        tframes, tposes = side.tensor(frames), side.tensor(poses)
    # the reference algorithm's count, on a CPU copy at batch 1 (convolutions scale with the batch)
    cmodel = _torch_model(cfg)
    flop = batch * tm.torch_flops(lambda: tlab4.train_step(
        cmodel, tlab4.make_optimizer(cmodel), _nchw(frames[:1]), _nchw(poses[:1]), True, 1.0))
    rows = []
    for tfr, label in ((1.0, "TF"), (0.0, "free")):
        jrun, holder = _jax_trainer(compiled, state, jbatch, sched[tfr], keys)
        m = jrun()
        assert float(m["teacher"]) == tfr and np.isfinite(float(m["loss"])), (tfr, m)
        tfn = side.call(lambda teacher=(tfr == 1.0): tlab4.train_step(
            tmodel, opt, tframes, tposes, teacher, 1.0, max_norm=cfg.grad_clip)) if side else None
        row = dict(workload=f"train {label}" + (" remat" if remat else ""), batch=batch, precision=precision,
                   conv_impl=conv_impl, remat=remat, scan_unroll=1 if remat else cfg.scan_unroll,  # see rollout
                   frames=t, flop=flop, jax_compile_s=compile_s if tfr == 1.0 else None,
                   jax_plan_bytes=tm.plan_bytes(compiled), **_timed_pair(jrun, tfn, repeats, side))
        rows.append(_rates(row, batch * (t - 1)))
        state = holder[0]
    return rows


def generate_rows(batch: int, precision: str, conv_impl: str, run: Run, frames: int, repeats: int,
                  torch_device: str | None) -> list[dict[str, Any]]:
    h, w = run.hw
    cfg = _lab4_cfg(run, precision=precision, conv_impl=conv_impl)
    graphdef, state = init_state(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    first, poses = _uniform(rng, batch, h, w, 3), _uniform(rng, batch, frames, h, w, 3)
    args = (state.params, state.batch_stats, (jnp.asarray(first), jnp.asarray(poses)), jax.random.key(1))
    compiled, compile_s = _compile_logged(make_generate(graphdef, cfg), *args)
    jfn = lambda: jax.block_until_ready(compiled(*args))  # noqa: E731
    assert np.isfinite(np.asarray(jfn())).all()
    side = TorchSide(torch_device, precision) if torch_device else None
    tfn = None
    if side:
        tmodel = side.model(cfg, state.params)
        tfirst, tposes = side.tensor(first), side.tensor(poses)
        tfn = side.call(lambda: tlab4.generate(tmodel, tfirst, tposes))
    cmodel = _torch_model(cfg)
    flop = batch * tm.torch_flops(lambda: tlab4.generate(cmodel, _nchw(first[:1]), _nchw(poses[:1, :2]))) * (frames - 1)
    row = dict(workload=f"generate {frames}f", batch=batch, precision=precision, conv_impl=conv_impl, frames=frames,
               flop=flop, jax_compile_s=compile_s, jax_plan_bytes=tm.plan_bytes(compiled),
               **_timed_pair(jfn, tfn, repeats, side))
    row["jax_s_per_sequence"] = row["jax_s"] / batch
    if "torch_s" in row:
        row["torch_s_per_sequence"] = row["torch_s"] / batch
    return [_rates(row, batch * (frames - 1))]


def _rates(row: dict[str, Any], predicted_frames: int) -> dict[str, Any]:
    for side in ("jax", "torch"):
        if f"{side}_s" in row:
            s = row[f"{side}_s"]
            row.update({f"{side}_calls_per_s": 1 / s, f"{side}_frames_per_s": predicted_frames / s,
                        f"{side}_tflops": row["flop"] / s / 1e12})
    return row


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'workload':<16} {'batch':>5} {'prec':>4} {'conv':>6} {'JAX s':>8} {'PT s':>8} {'JAX/PT':>6} "
            f"{'JAX call/s':>10} {'JAX fr/s':>9} {'PT fr/s':>8} {'JAX TF/s':>8} {'PT TF/s':>7} "
            f"{'JAX MiB':>7} {'PT MiB':>7} {'compile s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        pt = "torch_s" in r
        lines.append(
            f"{r['workload']:<16} {r['batch']:>5} {r['precision']:>4} {r['conv_impl']:>6} {r['jax_s']:>8.4f} "
            f"{r['torch_s'] if pt else float('nan'):>8.4f} {r.get('ratio', float('nan')):>6.2f} "
            f"{r['jax_calls_per_s']:>10.2f} {r['jax_frames_per_s']:>9.0f} "
            f"{r['torch_frames_per_s'] if pt else float('nan'):>8.0f} {r['jax_tflops']:>8.2f} "
            f"{r['torch_tflops'] if pt else float('nan'):>7.2f} {_mib(r['jax_plan_bytes']):>7} "
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
    p.add_argument("--remat_from", type=int, default=None,
                   help="train batches from this size with --remat (default: never)")
    p.add_argument("--scan_unroll", type=int, default=None, help="--scan_unroll of the training step (default: 16)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per framework (median)")
    p.add_argument("--no_torch", action="store_true", help="time cvae-jax alone")
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "generate"])
    p.add_argument("--budget_s", type=float, default=None, help="start no workload after this many seconds")
    p.add_argument("--json", metavar="OUT.json")
    p.add_argument("--quick", action="store_true", help="tiny dims, meaningless figures: a smoke test")
    a = p.parse_args(argv)
    a.batches = a.batches or ([2] if a.quick else [2, 32, 128])
    a.gen_batch = a.gen_batch or (2 if a.quick else 64)
    a.gen_frames = a.gen_frames or (QUICK["gen_frames"] if a.quick else 630)
    a.run = Run(QUICK["lab4_hw"], QUICK["lab4_clip"], QUICK["lab4_dims"]) if a.quick else Run()
    if min(a.batches) < 1 or a.gen_batch < 1 or a.gen_frames < 2 or a.repeats < 1:
        p.error("--batches and --gen_batch must be >= 1, --gen_frames >= 2, --repeats >= 1")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _parse(argv)
    start = time.perf_counter()
    dev = jax.devices()[0]
    torch_device = None if a.no_torch else ("cuda" if torch.cuda.is_available() else "cpu")
    if torch_device == "cuda":
        torch.backends.cudnn.benchmark = True  # PyTorch's usual setting for fixed shapes
    meta = dict(date=tm.now(), jax_device=str(getattr(dev, "device_kind", dev.platform)),
                jax_backend=jax.default_backend(), versions=tm.versions(), torch_device=torch_device,
                torch_device_name=torch.cuda.get_device_name(0) if torch_device == "cuda" else None,
                repeats=a.repeats, quick=a.quick, argv=sys.argv[1:])
    plan: list[tuple[str, Callable[[], list]]] = []
    for prec in a.precisions:
        for i, impl in enumerate(a.conv_impls):
            dev_t = torch_device if i == 0 else None
            if "train" not in a.skip:
                plan += [(f"train b{b} {prec} {impl}",
                          lambda b=b, prec=prec, impl=impl, dev_t=dev_t:
                          train_rows(b, prec, impl, a.run, a.repeats, dev_t,
                                     a.remat_from is not None and b >= a.remat_from, a.scan_unroll))
                         for b in a.batches]
            if "generate" not in a.skip:
                plan += [(f"generate b{b} {prec} {impl}",
                          lambda b=b, prec=prec, impl=impl, dev_t=dev_t:
                          generate_rows(b, prec, impl, a.run, a.gen_frames, a.repeats, dev_t))
                         for b in dict.fromkeys((a.gen_batch, 1))]
    rows, errors, skipped = [], {}, []
    for label, make in plan:
        if a.budget_s is not None and time.perf_counter() - start > a.budget_s:
            skipped.append(label)
            continue
        try:
            print(f"[{label}] ...", file=sys.stderr, flush=True)
            rows += make()
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        except Exception as e:  # keep the other workloads' figures; fail at the end
            traceback.print_exc()
            errors[label] = f"{type(e).__name__}: {e}"
        if torch_device == "cuda":  # hand PyTorch's cached blocks back before the next workload
            gc.collect()
            torch.cuda.empty_cache()
        meta["jax_process_peak_bytes"] = (dev.memory_stats() or {}).get("peak_bytes_in_use")
        if a.json:
            pathlib.Path(a.json).write_text(json.dumps(
                {"meta": meta, "workloads": rows, "errors": errors, "skipped": skipped}, indent=2) + "\n")

    v = meta["versions"]
    print(f"\ncvae-jax vs PyTorch on {meta['jax_device']} ({meta['jax_backend']}), {meta['date']}")
    print(f"jax {v['jax']}, flax {v['flax']}, torch {v['torch']} on {torch_device or '-'}; "
          f"median of {a.repeats} alternating calls after one warm-up each")
    print("fr/s: predicted frames per second; TF/s: TFLOP/s of the reference algorithm's count; "
          "JAX MiB: XLA's buffer plan; PT MiB: max_memory_allocated\n")
    print(table(rows))
    for r in rows:
        if "torch_error" in r:
            print(f"PyTorch {r['workload']} batch {r['batch']} {r['precision']}: {r['torch_error']}")
    for label in skipped:
        print(f"SKIPPED (budget) {label}")
    for label, err in errors.items():
        print(f"FAILED {label}: {err}")
    return {"meta": meta, "workloads": rows, "errors": errors, "skipped": skipped}


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
