"""cvae-jax against itself: the training step under config variants, alternating in one process.

Why: this machine's speed drifts by tens of percent between hours and days (PyTorch's
CPU-preset Lab4 step measured 1.9 s one day and 3.2 s another), so two figures taken at
different times cannot show a 5 % change. Here every variant is compiled first and then
called in turn (A, B, C, A, B, C, ...), so drift hits all of them alike; each is reported
with its ratio to the first variant, its XLA buffer plan and its compile time.

A variant is comma-separated `field=value` pairs of `cvae_jax.config.Config` (the flag
names of train.py, without dashes) or of XLA's compiler options (names starting `xla_`,
added to the training step's own for this variant's compile); "" is the preset unchanged.

    python benchmarks/ab.py --variant "" --variant batched_wgrad=false
    python benchmarks/ab.py --preset cpu --tfr 0 --variant scan_unroll=16 --variant scan_unroll=4,remat=true
    python benchmarks/ab.py --model svg --preset cpu --variant "" --variant conv_impl=xla
    python benchmarks/ab.py --variant "" --variant xla_backend_optimization_level=1
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _timing as tm  # noqa: E402
from cvae_jax.config import FLAGS, Config, field_of, preset  # noqa: E402
from cvae_jax.train_step import Schedule, init_state, make_train_step  # noqa: E402

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_variant(text: str) -> dict[str, Any]:
    """'batched_wgrad=false,scan_unroll=4' -> {'batched_wgrad': False, 'scan_unroll': 4}, each
    value converted to the type of the field's default; an XLA option keeps its text (XLA
    parses it, and names the option when it cannot)."""
    defaults = {flag: field_of(flag).default for flag in FLAGS}
    changes: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"--variant {text!r}: expected field=value, got {pair!r}")
        if name.startswith("xla_"):
            changes[name] = raw
            continue
        if name not in defaults:
            raise ValueError(f"--variant {text!r}: Config has no field {name!r}")
        default = defaults[name]
        if isinstance(default, bool):
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError(f"--variant {text!r}: {name} takes true or false, got {raw!r}")
            changes[name] = raw.lower() in _TRUE
        elif isinstance(default, (int, float)):
            try:
                changes[name] = type(default)(raw)
            except ValueError:
                raise ValueError(f"--variant {text!r}: {name} takes {type(default).__name__} values, "
                                 f"got {raw!r}") from None
        elif default is None or isinstance(default, str):
            changes[name] = None if raw == "None" else raw
        else:
            raise ValueError(f"--variant {text!r}: {name} ({type(default).__name__}) cannot be set here")
    return changes


def base_config(model: str, name: str, batch: int | None, clip: int | None) -> Config:
    """compare.py's workload: Lab4 at batch 2, 16-frame clips of 32x64; SVG at batch 12."""
    cfg = preset(name, model=model).replace(tf_mode="batch")  # tfr 1: teacher-forced, 0: free-running
    if model == "lab4":
        return cfg.replace(batch_size=batch or 2, train_vi_len=clip or 16, frame_H=32, frame_W=64)
    return cfg.replace(batch_size=batch or 12)


def _batch(cfg: Config) -> tuple[jax.Array, ...]:
    rng = np.random.default_rng(0)
    if cfg.model == "lab4":
        shape = (cfg.batch_size, cfg.train_vi_len, cfg.frame_H, cfg.frame_W, 3)
        return tuple(jnp.asarray(rng.uniform(size=shape), jnp.float32) for _ in range(2))
    t = cfg.n_past + cfg.n_future
    return (jnp.asarray(rng.uniform(size=(cfg.batch_size, t, 64, 64, 3)), jnp.float32),
            jnp.asarray(rng.uniform(size=(cfg.batch_size, t, 7)), jnp.float32))


def measure(base: Config, variants: dict[str, dict[str, Any]], tfrs: list[float],
            repeats: int) -> list[dict[str, Any]]:
    """One row per (tfr, variant): the seconds of every call, median, min, ratio to the first."""
    keys = (jax.random.key(1), jax.random.key(2))
    steps = {}
    for v, changes in variants.items():
        options = {k: x for k, x in changes.items() if k.startswith("xla_")}
        cfg = base.replace(**{k: x for k, x in changes.items() if k not in options}).validated()
        graphdef, state = init_state(cfg, jax.random.key(0))
        batch = _batch(cfg)
        sched = Schedule(jnp.float32(cfg.lr), jnp.float32(1.0), jnp.float32(1.0))
        start = time.perf_counter()
        lowered = make_train_step(graphdef, cfg, donate=False).lower(state, batch, sched, *keys)
        compiled = lowered.compile(options or None)
        t = time.perf_counter() - start
        steps[v] = (compiled, state, batch, t)
        print(f"compiled {v or '(preset)'} in {t:.1f} s", flush=True)
    rows = []
    for tfr in tfrs:
        sched = Schedule(jnp.float32(base.lr), jnp.float32(1.0), jnp.float32(tfr))
        calls = {v: (lambda c=c, s=s, b=b: jax.block_until_ready(c(s, b, sched, *keys)))
                 for v, (c, s, b, _) in steps.items()}
        for call in calls.values():
            call()  # warm-up
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(repeats):
            for v in variants:
                times[v].append(tm.timed(calls[v]))
        first = tm.median(times[next(iter(variants))])
        for v in variants:
            compiled, _, _, compile_s = steps[v]
            rows.append(dict(variant=v, tfr=tfr, median_s=tm.median(times[v]), min_s=min(times[v]),
                             ratio=tm.median(times[v]) / first, all_s=times[v],
                             plan_bytes=tm.plan_bytes(compiled), compile_s=compile_s))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'tfr':>4} {'variant':<40} {'median s':>9} {'min s':>7} {'ratio':>6} {'plan GiB':>9} {'compile s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        plan = "-" if r["plan_bytes"] is None else f"{r['plan_bytes'] / 2**30:.2f}"
        lines.append(f"{r['tfr']:>4} {r['variant'] or '(preset)':<40} {r['median_s']:>9.3f} "
                     f"{r['min_s']:>7.3f} {r['ratio']:>6.3f} {plan:>9} {r['compile_s']:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["lab4", "svg"], default="lab4")
    p.add_argument("--preset", default=None, help="default: lab4 (Lab4's reference dims) or bair")
    p.add_argument("--variant", action="append", required=True,
                   help="field=value[,field=value...] of Config; repeat it, the first is the baseline")
    p.add_argument("--tfr", type=float, nargs="+", default=[1.0, 0.0],
                   help="teacher-forcing ratios (1: teacher-forced step, 0: free-running)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=None, help="default: 2 (lab4), 12 (svg)")
    p.add_argument("--clip", type=int, default=None, help="lab4 clip length (default 16)")
    p.add_argument("--json", type=pathlib.Path, default=None)
    a = p.parse_args(argv)
    if len(set(a.variant)) != len(a.variant):
        p.error(f"--variant values must differ, got {a.variant}")
    try:
        variants = {v: parse_variant(v) for v in a.variant}
    except ValueError as e:
        p.error(str(e))
    base = base_config(a.model, a.preset or {"lab4": "lab4", "svg": "bair"}[a.model], a.batch, a.clip)
    rows = measure(base, variants, a.tfr, a.repeats)
    info = tm.cpu_info()
    meta = dict(date=tm.now(), cpu={k: info[k] for k in ("model", "cores", "ghz")}, versions=tm.versions(),
                model=a.model, preset=a.preset, repeats=a.repeats, backend=jax.default_backend())
    print(f"{meta['date']}, {meta['cpu'].get('model')}, jax {meta['versions'].get('jax')}, "
          f"{a.repeats} alternating calls each")
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
