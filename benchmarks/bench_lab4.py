"""CPU cost of the Lab4 CVAE: compile time, seconds per training step and per generated
video, and the FLOP rate those imply next to the machine's fp32 peak.

Why: training on a laptop CPU is this project's main use, so the numbers that decide what
a user can afford (minutes per epoch, seconds per 630-frame test video) and how far the
XLA CPU code is from the hardware limit are measured here rather than guessed.

    python benchmarks/bench_lab4.py                      # both presets, 3 repeats
    python benchmarks/bench_lab4.py --presets cpu --repeats 5 --json cpu.json

Inputs are random frames/poses in [0, 1] with the preset's freshly initialised weights;
speed does not depend on the data. Timings on a shared machine are indicative only: the
load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from cvae_jax.config import preset  # noqa: E402
from cvae_jax.train_step import Schedule, init_state, make_generate, make_train_step  # noqa: E402

# Reference FLOP counts (torch FlopCounter, 2 FLOP per MAC, batch 1, 32x64, reference dims
# 128/32/12/192), from the Lab4 reference notes: one training time step runs two frame
# encodes and every module; one generated frame runs the frame and pose encoders, the
# fusion and the generator. `conv_flops` reproduces them from the conv shapes (so the same
# method also counts the CPU preset); the script checks that it does.
REF_TRAIN_FLOP_PER_SAMPLE_STEP = 7.25e9  # forward only; backward ~2x forward
REF_GEN_FLOP_PER_FRAME = 6.43e9
REF_DIMS = dict(F_dim=128, L_dim=32, N_dim=12, D_out_dim=192, frame_H=32, frame_W=64)
MODULES = ("frame_encoder", "pose_encoder", "posterior", "fusion", "generator")


def detect_peak() -> tuple[float, str]:
    """fp32 peak from /proc/cpuinfo: cores x nominal clock x FLOP/cycle, where FLOP/cycle
    is 2 FMA pipes x vector width x 2 (64 with AVX-512, 32 with AVX2+FMA). An estimate:
    some CPUs have one AVX-512 FMA pipe, and turbo clocks run above the nominal one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)]
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split()) if "flags" in info else set()
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    if not mhz:
        return 2 * 2.6 * 32, "no /proc/cpuinfo: assumed 2 cores x 2.6 GHz x 32 FLOP/cycle"
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 16
    ghz = max(mhz) / 1e3
    desc = (f"{cores} x {model.group(1) if model else 'CPU'} at {ghz:.2f} GHz x {per_cycle} fp32 "
            f"FLOP/cycle ({'AVX-512' if per_cycle == 64 else 'AVX2' if per_cycle == 32 else 'SSE'}, 2 FMA pipes)")
    return cores * ghz * per_cycle, desc


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend/version implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _rollout_loops(compiled) -> list[str]:
    """While loops other than the RNG's: XLA's cost analysis counts a loop body once,
    whatever the trip count, so a rollout left as a loop is undercounted."""
    try:
        names = re.findall(r"while\(.*?op_name=\"([^\"]*)\"", compiled.as_text())
    except Exception:
        return []
    return [n for n in names if not any(r in n for r in ("threefry", "_normal", "_uniform", "random"))]


def conv_flops(cfg) -> dict[str, float]:
    """Forward FLOPs per module for one 1-sample frame, counted as torch's FlopCounter does:
    2 per multiply-add of every convolution (all are stride 1 at full resolution)."""
    from cvae_jax.train_step import build_model
    model = nnx.eval_shape(lambda: build_model(cfg, jax.random.key(0)))
    out = {}
    for name in MODULES:
        flat = jax.tree_util.tree_flatten_with_path(nnx.state(getattr(model, name), nnx.Param))[0]
        out[name] = float(sum(2 * np.prod(leaf.shape) * cfg.frame_H * cfg.frame_W
                              for path, leaf in flat if "kernel" in jax.tree_util.keystr(path)))
    return out


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - t


def _is_reference_dims(cfg) -> bool:
    return all(getattr(cfg, k) == v for k, v in REF_DIMS.items())


def bench_preset(name: str, args) -> dict:
    cfg = preset(name).replace(frame_H=32, frame_W=64, batch_size=args.batch, train_vi_len=args.train_frames)
    h, w, b, t = cfg.frame_H, cfg.frame_W, cfg.batch_size, cfg.train_vi_len
    r = np.random.default_rng(0)
    res = {"preset": name, "dims": {k: getattr(cfg, k) for k in ("F_dim", "L_dim", "N_dim", "D_out_dim")},
           "batch": b, "clip_frames": t, "frame_hw": [h, w], "gen_frames": args.frames,
           "scan_unroll": cfg.scan_unroll, "remat": cfg.remat}
    log = lambda s: print(f"[{name}] {s}", file=sys.stderr, flush=True)  # noqa: E731

    (graphdef, state), res["init_s"] = _timed(lambda: init_state(cfg, jax.random.key(0)))
    res["params"] = int(sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
    log(f"initialised {res['params']:,} params in {res['init_s']:.1f} s")
    per_module = conv_flops(cfg)
    f = per_module
    train_fwd = 2 * f["frame_encoder"] + f["pose_encoder"] + f["posterior"] + f["fusion"] + f["generator"]
    gen_frame = f["frame_encoder"] + f["pose_encoder"] + f["fusion"] + f["generator"]
    res["conv_flop_per_module"] = per_module
    res["ref_train_flop_per_sample_step_fwd"], res["ref_gen_flop_per_frame"] = train_fwd, gen_frame
    if _is_reference_dims(cfg):  # the counting method must reproduce the reference notes
        assert abs(train_fwd - REF_TRAIN_FLOP_PER_SAMPLE_STEP) < 0.01e9, train_fwd
        assert abs(gen_frame - REF_GEN_FLOP_PER_FRAME) < 0.01e9, gen_frame

    # ---- training step
    frames = jnp.asarray(r.uniform(size=(b, t, h, w, 3)), jnp.float32)
    poses = jnp.asarray(r.uniform(size=(b, t, h, w, 3)), jnp.float32)
    sched = Schedule(jnp.float32(1e-4), jnp.float32(0.5), jnp.float32(0.5))
    keys = (jax.random.key(1), jax.random.key(2))
    step = make_train_step(graphdef, cfg)
    t0 = time.perf_counter()
    compiled = step.lower(state, frames, poses, sched, *keys).compile()
    res["train_compile_s"] = time.perf_counter() - t0
    (state, _), first = _timed(lambda: compiled(state, frames, poses, sched, *keys))
    res["train_first_call_s"] = res["train_compile_s"] + first
    log(f"train step compiled in {res['train_compile_s']:.1f} s")
    times = []
    for i in range(args.warmup + args.repeats):
        (state, m), dt = _timed(lambda: compiled(state, frames, poses, sched, *keys))
        if i >= args.warmup:
            times.append(dt)
    assert np.isfinite(float(m["loss"])), "non-finite loss in the benchmark step"
    res["train_step_s"] = statistics.median(times)
    res["train_step_all_s"] = times
    log(f"train step {res['train_step_s']:.3f} s (median of {len(times)})")

    flop = {"reference": train_fwd * 3 * b * (t - 1)}  # forward + backward ~ 3 x forward
    if not args.no_xla_flops:
        xla = _flops(compiled)
        if xla is not None:
            flop["xla_cost_analysis"] = xla
            res["train_rollout_loops"] = _rollout_loops(compiled)
    res["train_flop"] = flop

    # ---- generation (batch 1)
    gen = make_generate(graphdef, cfg)
    first_frame = jnp.asarray(r.uniform(size=(1, h, w, 3)), jnp.float32)
    gen_poses = jnp.asarray(r.uniform(size=(1, args.frames, h, w, 3)), jnp.float32)
    t0 = time.perf_counter()
    gen_c = gen.lower(state.params, state.batch_stats, first_frame, gen_poses, keys[0]).compile()
    res["gen_compile_s"] = time.perf_counter() - t0
    out, first = _timed(lambda: gen_c(state.params, state.batch_stats, first_frame, gen_poses, keys[0]))
    res["gen_first_call_s"] = res["gen_compile_s"] + first
    log(f"generation compiled in {res['gen_compile_s']:.1f} s")
    times = []
    for i in range(args.gen_warmup + args.gen_repeats):
        out, dt = _timed(lambda: gen_c(state.params, state.batch_stats, first_frame, gen_poses, keys[0]))
        if i >= args.gen_warmup:
            times.append(dt)
    res["gen_video_s"] = statistics.median(times) if times else first
    res["gen_video_all_s"] = times or [first]
    res["gen_frame_ms"] = 1e3 * res["gen_video_s"] / (args.frames - 1)
    log(f"generation {res['gen_video_s']:.2f} s per {args.frames}-frame video")

    flop = {"reference": gen_frame * (args.frames - 1)}
    if not args.no_xla_flops:
        # generation is a loop over frames, which cost analysis counts once: count one step
        def one_step(params, batch_stats, prev, pose, z):
            model = nnx.merge(graphdef, params, batch_stats)
            pose_feat, _ = model.encode_pose(pose, use_running_average=cfg.bn_mode == "running")
            return model.decode(model.encode_frame(prev), pose_feat, z)

        z = jnp.zeros((1, h, w, cfg.N_dim), jnp.float32)
        step_c = jax.jit(one_step).lower(state.params, state.batch_stats, first_frame, first_frame, z).compile()
        per_frame = _flops(step_c)
        if per_frame is not None:
            flop["xla_cost_analysis"] = per_frame * (args.frames - 1)
    res["gen_flop"] = flop

    for kind, secs in (("train", res["train_step_s"]), ("gen", res["gen_video_s"])):
        res[f"{kind}_gflops"] = {src: f / secs / 1e9 for src, f in res[f"{kind}_flop"].items()}
    return res


def matmul_roof(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a large fp32 matmul under XLA: what this CPU delivers in practice."""
    a = jnp.asarray(np.random.default_rng(0).uniform(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = min(_timed(lambda: f(a))[1] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _fmt_flops(d: dict, key: str, scale=1e9) -> str:
    v = d.get(key)
    return "-" if v is None else f"{v / scale:,.1f}"


def print_table(results: list[dict], peak: float, peak_source: str, roof: float) -> None:
    print()
    print(f"Lab4 CVAE on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} ({jax.default_backend()}), load average {os.getloadavg()[0]:.2f}")
    print(f"training step: batch {results[0]['batch']}, {results[0]['clip_frames']}-frame clip, "
          f"{results[0]['frame_hw'][0]}x{results[0]['frame_hw'][1]}; generation: batch 1, "
          f"{results[0]['gen_frames']} frames")
    print(f"peak fp32: {peak:.0f} GFLOP/s = {peak_source}; measured 2048x2048 matmul: {roof:.0f} GFLOP/s")
    print("GFLOP columns: ref = convolution multiply-adds x 2 as in "
          "the Lab4 reference notes (7.25 GFLOP per sample-step forward x 3 for training, 6.43 per "
          "generated frame at reference dims), xla = XLA cost_analysis (all ops)\n")
    head = (f"{'preset':<6} {'params':>10} {'init s':>7} | {'train compile s':>15} {'s/step':>8} "
            f"{'GFLOP ref':>9} {'GFLOP xla':>9} {'GFLOP/s ref':>11} {'GFLOP/s xla':>11} | "
            f"{'gen compile s':>13} {'s/video':>8} {'ms/frame':>8} {'GFLOP/s ref':>11} {'GFLOP/s xla':>11}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['preset']:<6} {r['params']:>10,} {r['init_s']:>7.1f} | {r['train_compile_s']:>15.1f} "
              f"{r['train_step_s']:>8.3f} {_fmt_flops(r['train_flop'], 'reference'):>9} "
              f"{_fmt_flops(r['train_flop'], 'xla_cost_analysis'):>9} "
              f"{_fmt_flops(r['train_gflops'], 'reference', 1):>11} "
              f"{_fmt_flops(r['train_gflops'], 'xla_cost_analysis', 1):>11} | "
              f"{r['gen_compile_s']:>13.1f} {r['gen_video_s']:>8.2f} {r['gen_frame_ms']:>8.1f} "
              f"{_fmt_flops(r['gen_gflops'], 'reference', 1):>11} "
              f"{_fmt_flops(r['gen_gflops'], 'xla_cost_analysis', 1):>11}")
    for r in results:
        for kind in ("train", "gen"):
            g = r[f"{kind}_gflops"]
            best = g.get("reference", g.get("xla_cost_analysis"))
            if best is not None:
                print(f"{r['preset']} {kind}: {100 * best / peak:.1f} % of peak, "
                      f"{100 * best / roof:.1f} % of the matmul rate")
        if r.get("train_rollout_loops"):
            print(f"{r['preset']}: the training step keeps its rollout loop (scan_unroll < clip length), "
                  "so its XLA FLOP count covers one loop iteration only")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["lab4", "cpu"], choices=["lab4", "cpu"])
    p.add_argument("--repeats", type=int, default=3, help="timed training steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps after the first call")
    p.add_argument("--gen_repeats", type=int, default=None, help="timed generations (default: --repeats)")
    p.add_argument("--gen_warmup", type=int, default=0,
                   help="untimed generations after the first call (a 630-frame video is long "
                        "enough to be its own warm-up)")
    p.add_argument("--frames", type=int, default=630, help="frames per generated video (incl. the given one)")
    p.add_argument("--train_frames", type=int, default=16, help="frames per training clip")
    p.add_argument("--batch", type=int, default=2, help="training batch size")
    p.add_argument("--peak_gflops", type=float, default=None,
                   help="machine fp32 peak for the %% column (default: estimated from /proc/cpuinfo)")
    p.add_argument("--no_xla_flops", action="store_true", help="skip XLA cost analysis")
    p.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.gen_repeats is None:
        args.gen_repeats = args.repeats
    if args.frames < 2 or args.train_frames < 2:
        p.error("--frames and --train_frames must be at least 2")
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        print("warning: JAX_COMPILATION_CACHE_DIR is set; compile times may be cache hits",
              file=sys.stderr)

    if args.peak_gflops is None:
        args.peak_gflops, peak_source = detect_peak()
    else:
        peak_source = "--peak_gflops"
    results = [bench_preset(name, args) for name in args.presets]
    roof = matmul_roof()
    print_table(results, args.peak_gflops, peak_source, roof)
    if args.json:
        meta = {"jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(),
                "load_average": os.getloadavg(), "peak_gflops": args.peak_gflops,
                "peak_source": peak_source, "matmul_gflops": roof,
                "repeats": args.repeats, "warmup": args.warmup, "gen_repeats": args.gen_repeats}
        pathlib.Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
