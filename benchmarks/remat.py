"""Peak memory and step time of a Lab4 training step against clip length, with and
without `--remat` (each scanned step rematerialised in the backward pass).

Why: the 630-frame videos tempt users into long training clips, and without
rematerialisation the backward pass keeps every step's activations. Peak memory is XLA's
buffer plan for the compiled step (`memory_analysis()`: arguments + outputs + temporaries,
exact and independent of machine load); a configuration whose plan exceeds 80% of the
available RAM is compiled but not run. `--remat` implies a rolled loop (see
cvae_jax/rollout.py), so it also trades the unrolled loop's speed for memory.

    python benchmarks/remat.py                           # lab4 dims, clips 16 64 256
    python benchmarks/remat.py --preset cpu --clips 16 64 --tfr 1 --json remat.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _timing as tm  # noqa: E402
from cvae_jax.config import preset  # noqa: E402
from cvae_jax.train_step import Schedule, init_state, make_train_step  # noqa: E402


def available_bytes() -> int:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 2**63


def measure(name: str, clip: int, remat: bool, tfr: float, repeats: int, run: bool = True) -> dict:
    cfg = preset(name).replace(batch_size=2, train_vi_len=clip, frame_H=32, frame_W=64,
                               remat=remat, tf_mode="batch")
    r = np.random.default_rng(0)
    batch = tuple(jnp.asarray(r.uniform(size=(2, clip, 32, 64, 3)), jnp.float32) for _ in range(2))
    graphdef, state = init_state(cfg, jax.random.key(0))
    sched = Schedule(jnp.float32(1e-4), jnp.float32(0.5), jnp.float32(tfr))
    keys = (jax.random.key(1), jax.random.key(2))
    t0 = time.perf_counter()
    compiled = make_train_step(graphdef, cfg, donate=False).lower(state, batch, sched, *keys).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    peak = tm.plan_bytes(compiled)
    times = []
    if not run or peak > 0.8 * available_bytes():
        repeats = 0  # would swap or be killed, or asked for the plan only
    else:
        jax.block_until_ready(compiled(state, batch, sched, *keys))
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, batch, sched, *keys))
        times.append(time.perf_counter() - t0)
    return {"preset": name, "clip": clip, "remat": remat, "tfr": tfr, "compile_s": round(compile_s, 1),
            "step_s": round(min(times), 3) if times else None, "peak_mib": round(peak / 2**20, 1),
            "temp_mib": round(mem.temp_size_in_bytes / 2**20, 1),
            "rss_mib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="lab4", help="lab4 preset (default: the reference dims)")
    p.add_argument("--clips", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--tfr", type=float, default=0.0,
                   help="1: teacher-forced steps (the fast path), 0: free-running (default)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--time_up_to", type=int, default=10**9,
                   help="longer clips are compiled for their memory plan but not run")
    p.add_argument("--remat", nargs="+", choices=["off", "on"], default=["off", "on"],
                   help="which rows to measure (default both)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    print(f"{'clip':>5} {'remat':>6} {'peak MiB':>9} {'temp MiB':>9} {'step s':>7} {'compile s':>9}")
    for clip in args.clips:
        for remat in [mode == "on" for mode in args.remat]:
            row = measure(args.preset, clip, remat, args.tfr, args.repeats, run=clip <= args.time_up_to)
            rows.append(row)
            print(f"{clip:5d} {str(remat):>6} {row['peak_mib']:9.1f} {row['temp_mib']:9.1f} "
                  f"{row['step_s'] if row['step_s'] is not None else 'not run':>7} {row['compile_s']:9.1f}",
                  flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
