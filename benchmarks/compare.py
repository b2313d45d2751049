"""cvae-jax against the PyTorch eager baselines (benchmarks/torch_ref), in one process.

Why: "JAX is N x faster" means something only when both sides run the same network on the
same machine under the same load. So each workload builds the cvae-jax model, copies its
weights into the PyTorch reference model (`load_jax_params`, which also proves the two are
the same network), and times the two alternately (J, T, J, T, ...) so that load drift on
a shared machine hits both; every figure is printed with its ratio JAX/PyTorch.

Workloads (random inputs in [0, 1]; speed does not depend on them):
* lab4, presets `lab4` (reference dims) and `cpu`: one training step (batch 2, 16-frame
  clip, 32x64) teacher-forced and free-running; one 630-frame generation (batch 1).
* svg, presets `bair` (reference dims) and `cpu`: one training step (--svg_batch,
  n_past + n_future = 12 frames of 64x64, teacher-forced: the PyTorch SVG trainer always
  teacher-forces); one prediction of --svg_future frames after 2 context frames (batch 1).
* a 2048x2048 fp32 matmul: what each framework gets from this CPU at best.

JAX compile time (`.lower(...).compile()`) is reported apart; the steady-state times
exclude it. FLOPs are counted once per workload by torch's FlopCounterMode on the PyTorch
side (2 per multiply-add of matmuls and convolutions; training = forward + backward of one
step, generation = the whole rollout), and both rates use that one count: achieved GFLOP/s
of the same algorithm. The count is the reference's algorithm: it encodes two frames per
training time step (x_{t-1} and x_t), whereas cvae-jax's teacher-forced step encodes each
frame once, so JAX's teacher-forced rate is "reference-equivalent" work per second.
Lab4 generation: PyTorch keeps the template's train-mode BatchNorm (per-step batch
statistics), cvae-jax uses running averages; the FLOPs are the same.

    python benchmarks/compare.py                                   # everything, 3 repeats
    python benchmarks/compare.py --models lab4 --presets cpu --repeats 5 --json cpu.json
    python benchmarks/compare.py --quick --json /tmp/quick.json    # smoke test, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
import traceback
from typing import Any, Callable, Iterator

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# XLA's Eigen intra-op thread pool slows PyTorch in the same process 4-15x once JAX has run
# anything (measured: a reference Lab4 step 4.1 s alone, 15-63 s after a JAX call); without
# it both run at their standalone speed (the JAX Lab4 step is no slower: 5.2 s against 5.4 s).
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import _timing as tm  # noqa: E402
from benchmarks.torch_ref import lab4 as tlab4  # noqa: E402
from benchmarks.torch_ref import svg as tsvg  # noqa: E402
from cvae_jax.config import Config, preset  # noqa: E402
from cvae_jax.lab4_evaluation import make_generate  # noqa: E402
from cvae_jax.train_step import Schedule, init_state, make_predict, make_train_step  # noqa: E402

PRESETS = {"lab4": ("lab4", "cpu"), "svg": ("bair", "cpu")}
JAX_WIDTHS = dict(frame_widths=(16, 32, 64), pose_hidden=16)  # cvae-jax fixes these


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Workload shapes; `--quick` shrinks every one of them, dims included."""
    lab4_hw: tuple[int, int] = (32, 64)
    lab4_batch: int = 2
    lab4_clip: int = 16
    gen_frames: int = 630
    svg_batch: int = 12
    svg_future: int = 28
    matmul_n: int = 2048
    lab4_dims: tuple = ()  # Config overrides, as (name, value) pairs
    svg_dims: tuple = ()


# A smoke run's figures mean nothing and compiling is most of its time, so --quick also
# compiles one gradient program per training step (no teacher-forced fast path), with a
# rolled loop (the scan body once in the program).
QUICK = dict(lab4_hw=(8, 16), lab4_clip=3, gen_frames=4, svg_batch=2, svg_future=2, matmul_n=256,
             lab4_dims=(("F_dim", 8), ("L_dim", 8), ("N_dim", 4), ("D_out_dim", 16), ("tf_fast_path", False),
                        ("scan_unroll", 1)),
             svg_dims=(("vgg_width", 4), ("g_dim", 16), ("z_dim", 4), ("rnn_size", 16), ("n_future", 1),
                       ("tf_fast_path", False), ("scan_unroll", 1)))


@dataclasses.dataclass
class Workload:
    name: str
    info: dict[str, Any]          # model, preset, kind, shapes
    jax_fn: Callable[[], Any]     # returns once the work is done
    torch_fn: Callable[[], Any]
    flop: float                   # torch FlopCounterMode count of one call
    jax_compile_s: float | None
    xla_flop: float | None = None


def _nchw(a: np.ndarray) -> torch.Tensor:
    """(..., H, W, C) -> (..., C, H, W), contiguous."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3)))


def _compile(jitted, *args) -> tuple[Any, float]:
    t = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t


def _uniform(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(size=shape).astype(np.float32)


def _jax_trainer(compiled, state, batch, sched: Schedule, keys) -> tuple[Callable[[], Any], list]:
    """A no-argument training step that carries the state forward, as training does."""
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], batch, sched, *keys)
        return jax.block_until_ready((holder[0], metrics))[1]
    return run, holder


def lab4_workloads(name: str, s: Sizes) -> Iterator[Workload]:
    (h, w), b, t = s.lab4_hw, s.lab4_batch, s.lab4_clip
    # the scene copy off: the PyTorch template it is timed against has none
    cfg: Config = preset(name, model="lab4").replace(
        tf_mode="batch", batch_size=b, train_vi_len=t, frame_H=h, frame_W=w, copy_scene=False,
        scene_fill=False, scene_alpha=False, **dict(s.lab4_dims))
    graphdef, state = init_state(cfg, jax.random.key(0))
    tmodel = tlab4.build(cfg.F_dim, cfg.L_dim, cfg.N_dim, cfg.D_out_dim, cfg.output_sigmoid, **JAX_WIDTHS)
    tlab4.load_jax_params(tmodel, state.params)
    opt = tlab4.make_optimizer(tmodel, cfg.lr)
    rng = np.random.default_rng(0)
    frames, poses = _uniform(rng, b, t, h, w, 3), _uniform(rng, b, t, h, w, 3)
    jbatch, tframes, tposes = (jnp.asarray(frames), jnp.asarray(poses)), _nchw(frames), _nchw(poses)
    keys = (jax.random.key(1), jax.random.key(2))
    sched = {tfr: Schedule(jnp.float32(cfg.lr), jnp.float32(1.0), jnp.float32(tfr)) for tfr in (1.0, 0.0)}
    compiled, compile_s = _compile(make_train_step(graphdef, cfg, donate=False), state, jbatch, sched[1.0], *keys)
    # One count serves both: free-running runs the same ops, fed predictions instead of frames.
    flop = tm.torch_flops(lambda: tlab4.train_step(tmodel, opt, tframes, tposes, True, 1.0,
                                                   max_norm=cfg.grad_clip))
    info = dict(model="lab4", preset=name, batch=b, clip_frames=t, frame_hw=[h, w],
                precision=getattr(cfg, "precision", "fp32"),
                dims={k: getattr(cfg, k) for k in ("F_dim", "L_dim", "N_dim", "D_out_dim")})
    for tfr, label in ((1.0, "TF"), (0.0, "free")):
        run, holder = _jax_trainer(compiled, state, jbatch, sched[tfr], keys)
        m = run()  # the teacher-forcing metric proves which branch of the step ran
        assert float(m["teacher"]) == tfr and np.isfinite(float(m["loss"])), (tfr, m)
        yield Workload(f"lab4/{name} train {label}", dict(info, kind=f"train_{label.lower()}"), run,
                       lambda teacher=(tfr == 1.0): tlab4.train_step(tmodel, opt, tframes, tposes, teacher,
                                                                    1.0, max_norm=cfg.grad_clip),
                       flop, compile_s if tfr == 1.0 else None, tm.xla_flops(compiled))
        state = holder[0]

    n = s.gen_frames
    first, gposes = _uniform(rng, 1, h, w, 3), _uniform(rng, 1, n, h, w, 3)
    jargs = (state.params, state.batch_stats, (jnp.asarray(first), jnp.asarray(gposes)), keys[0])
    gen_c, gen_compile_s = _compile(make_generate(graphdef, cfg), *jargs)
    tfirst, tgposes = _nchw(first), _nchw(gposes)
    assert gen_c(*jargs).shape == (1, n, h, w, 3)
    yield Workload(f"lab4/{name} generate {n}f", dict(info, kind="generate", batch=1, frames=n),
                   lambda: jax.block_until_ready(gen_c(*jargs)),
                   lambda: tlab4.generate(tmodel, tfirst, tgposes),
                   tm.torch_flops(lambda: tlab4.generate(tmodel, tfirst, tgposes)), gen_compile_s)


def svg_workloads(name: str, s: Sizes) -> Iterator[Workload]:
    cfg: Config = preset(name, model="svg").replace(tf_mode="batch", batch_size=s.svg_batch,
                                                   **dict(s.svg_dims))
    b, t, n_past = s.svg_batch, cfg.n_past + cfg.n_future, cfg.n_past
    graphdef, state = init_state(cfg, jax.random.key(0))
    tmodel = tsvg.build(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.vgg_width, cfg.predictor_rnn_layers,
                        cfg.posterior_rnn_layers)
    tsvg.load_jax_params(tmodel, state.params)
    opt = tsvg.make_optimizer(tmodel, cfg.lr, cfg.beta1)
    skips = dict(last_frame_skip=cfg.last_frame_skip, skip_compat=cfg.skip_compat)
    rng = np.random.default_rng(0)
    frames, cond = _uniform(rng, b, t, 64, 64, 3), _uniform(rng, b, t, 7)
    jbatch, tframes, tcond = (jnp.asarray(frames), jnp.asarray(cond)), _nchw(frames), torch.from_numpy(cond)
    keys = (jax.random.key(1), jax.random.key(2))
    sched = Schedule(jnp.float32(cfg.lr), jnp.float32(1.0), jnp.float32(1.0))
    compiled, compile_s = _compile(make_train_step(graphdef, cfg, donate=False), state, jbatch, sched, *keys)
    train_torch = lambda: tsvg.train_step(tmodel, opt, tframes, tcond, n_past, 1.0, **skips)  # noqa: E731
    info = dict(model="svg", preset=name, batch=b, clip_frames=t, n_past=n_past,
                precision=getattr(cfg, "precision", "fp32"),
                dims={k: getattr(cfg, k) for k in ("g_dim", "z_dim", "rnn_size", "vgg_width")})
    run, holder = _jax_trainer(compiled, state, jbatch, sched, keys)
    m = run()
    assert float(m["teacher"]) == 1.0 and np.isfinite(float(m["loss"])), m
    yield Workload(f"svg/{name} train TF", dict(info, kind="train_tf"), run, train_torch,
                   tm.torch_flops(train_torch), compile_s, tm.xla_flops(compiled))

    n, state = s.svg_future, holder[0]
    ctx, pcond = _uniform(rng, 1, n_past, 64, 64, 3), _uniform(rng, 1, n_past + n, 7)
    jargs = (state.params, state.batch_stats, (jnp.asarray(ctx), jnp.asarray(pcond)), keys[0])
    pred_c, pred_compile_s = _compile(make_predict(graphdef, cfg, n_future=n), *jargs)
    assert pred_c(*jargs).shape == (1, n, 64, 64, 3)
    tctx, tpcond = _nchw(ctx), torch.from_numpy(pcond)
    predict_torch = lambda: tsvg.predict(tmodel, tctx, tpcond, n, **skips)  # noqa: E731
    yield Workload(f"svg/{name} predict {n_past}+{n}f", dict(info, kind="predict", batch=1, n_future=n),
                   lambda: jax.block_until_ready(pred_c(*jargs)), predict_torch,
                   tm.torch_flops(predict_torch), pred_compile_s)


def matmul_workload(s: Sizes) -> Iterator[Workload]:
    n = s.matmul_n
    a = _uniform(np.random.default_rng(0), n, n)
    ja, ta = jnp.asarray(a), torch.from_numpy(a)
    mm = jax.jit(lambda x: x @ x)
    mm_c, compile_s = _compile(mm, ja)
    yield Workload(f"fp32 matmul {n}x{n}", dict(model="-", preset="-", kind="matmul", n=n),
                   lambda: jax.block_until_ready(mm_c(ja)), lambda: ta @ ta,
                   tm.torch_flops(lambda: ta @ ta), compile_s)


def measure(w: Workload, repeats: int, warmup: int, peak: float | None) -> dict[str, Any]:
    jax_all, torch_all = tm.alternate(w.jax_fn, w.torch_fn, repeats, warmup)
    j, t = tm.median(jax_all), tm.median(torch_all)
    pct = (lambda g: None if peak is None else 100 * g / peak)
    row = dict(name=w.name, **w.info, jax_s=j, torch_s=t, ratio=j / t, jax_all_s=jax_all,
               torch_all_s=torch_all, flop=w.flop, jax_gflops=w.flop / j / 1e9,
               torch_gflops=w.flop / t / 1e9, jax_compile_s=w.jax_compile_s, xla_flop=w.xla_flop)
    row.update(jax_pct_peak=pct(row["jax_gflops"]), torch_pct_peak=pct(row["torch_gflops"]))
    return row


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["lab4", "svg"], choices=list(PRESETS))
    p.add_argument("--presets", nargs="+", default=None,
                   help="preset names (lab4: lab4 cpu; svg: bair cpu), each run for every model "
                        "that has it (default: all; --quick: cpu)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per framework (median; default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per framework first (default 1)")
    p.add_argument("--torch_threads", type=int, default=None,
                   help="torch.set_num_threads (default: all cores; --quick: 1)")
    p.add_argument("--gen_frames", type=int, default=None, help="frames per lab4 video, the given one included (630)")
    p.add_argument("--svg_batch", type=int, default=None, help="svg training batch (12)")
    p.add_argument("--svg_future", type=int, default=None, help="svg frames predicted after 2 context frames (28)")
    p.add_argument("--json", metavar="OUT.json", help="also write every figure as JSON")
    p.add_argument("--quick", action="store_true", help="tiny dims and shapes, meaningless figures: a smoke test")
    a = p.parse_args(argv)
    unknown = set(a.presets or ()) - {x for m in a.models for x in PRESETS[m]}
    if unknown:
        p.error(f"--presets {sorted(unknown)}: not a preset of --models {a.models}")
    # each preset once: lab4 and svg both have "cpu", and a preset runs for every model that has it
    a.presets = list(dict.fromkeys(a.presets or (["cpu"] if a.quick else [x for m in a.models for x in PRESETS[m]])))
    a.repeats = a.repeats if a.repeats is not None else 2 if a.quick else 3
    a.warmup = a.warmup if a.warmup is not None else 1
    a.torch_threads = a.torch_threads or (1 if a.quick else None)
    if a.repeats < 1 or a.warmup < 0 or (a.gen_frames is not None and a.gen_frames < 2):
        p.error("--repeats must be >= 1, --warmup >= 0, --gen_frames >= 2")
    size = dict(QUICK) if a.quick else {}
    size.update({k: v for k in ("gen_frames", "svg_batch", "svg_future") if (v := getattr(a, k)) is not None})
    a.sizes = Sizes(**size)
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _parse(argv)
    info = tm.cpu_info()
    torch.set_num_threads(a.torch_threads or info["cores"])
    peak, peak_desc = tm.detect_peak(info)
    nominal_here = tm.is_nominal_machine(info)
    meta = dict(date=tm.now(), cpu=info["model"], cores=info["cores"], versions=tm.versions(),
                torch_threads=torch.get_num_threads(), jax_backend=jax.default_backend(),
                load_before=os.getloadavg(), peak_gflops=peak, peak_source=peak_desc,
                nominal_peak_gflops=tm.NOMINAL_PEAK_GFLOPS, nominal_peak_source=tm.NOMINAL_PEAK_DESC,
                nominal_is_this_machine=nominal_here, repeats=a.repeats, warmup=a.warmup, quick=a.quick,
                sizes=dataclasses.asdict(a.sizes),
                compilation_cache=os.environ.get("JAX_COMPILATION_CACHE_DIR"))
    if meta["torch_threads"] >= info["cores"] and meta["load_before"][0] > 0.5:
        print(f"warning: load average {meta['load_before'][0]:.1f} with PyTorch on every core: its OpenMP "
              "threads busy-wait for descheduled peers, which can inflate its times many-fold; "
              "see --torch_threads", file=sys.stderr)
    if meta["compilation_cache"]:
        print("warning: JAX_COMPILATION_CACHE_DIR is set: compile times may be cache hits", file=sys.stderr)
    pct_peak = peak if peak is not None else tm.NOMINAL_PEAK_GFLOPS
    groups: list[tuple[str, Callable[[], Iterator[Workload]]]] = [
        (f"{m}/{p}", (lambda m=m, p=p: (lab4_workloads if m == "lab4" else svg_workloads)(p, a.sizes)))
        for m in a.models for p in a.presets if p in PRESETS[m]]
    groups.append(("matmul", lambda: matmul_workload(a.sizes)))
    rows, errors = [], {}
    for label, make in groups:
        try:
            for w in make():
                print(f"[{w.name}] compiled in {w.jax_compile_s or 0:.1f} s; timing", file=sys.stderr, flush=True)
                rows.append(measure(w, a.repeats, a.warmup, pct_peak))
                r = rows[-1]
                print(f"[{w.name}] JAX {r['jax_s']:.4f} s, PyTorch {r['torch_s']:.4f} s", file=sys.stderr, flush=True)
        except Exception as e:  # keep the other workloads' figures; fail at the end
            traceback.print_exc()
            errors[label] = f"{type(e).__name__}: {e}"
    meta["load_after"] = os.getloadavg()

    v = meta["versions"]
    print(f"\ncvae-jax vs PyTorch eager, {meta['date']}")
    print(f"CPU: {info['model']}, {info['cores']} cores; jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, "
          f"torch {v['torch']} ({meta['torch_threads']} threads); XLA uses all cores")
    print(f"peak fp32, this machine (detected): {_g(peak)} GFLOP/s = {peak_desc}")
    print(f"peak fp32, the issue's nominal: {tm.NOMINAL_PEAK_GFLOPS:.0f} GFLOP/s = {tm.NOMINAL_PEAK_DESC}: "
          f"{'this machine' if nominal_here else 'NOT this machine'}; %pk below is of "
          f"{'the detected' if peak is not None else 'the nominal'} peak")
    print(f"median of {a.repeats} alternating calls (J, T, J, T, ...) after {a.warmup} warm-up each; "
          "GFLOP = torch FlopCounterMode count of the reference algorithm, used for both rates; "
          "train free runs train TF's compiled program\n")
    print(tm.table(rows))
    print(f"\nload average before {_load(meta['load_before'])}, after {_load(meta['load_after'])}")
    for label, err in errors.items():
        print(f"FAILED {label}: {err}")
    result = {"meta": meta, "workloads": rows, "errors": errors}
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.json}")
    return result


def _g(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f}"


def _load(avg: tuple[float, ...]) -> str:
    return " ".join(f"{x:.2f}" for x in avg)


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
