"""Train variants of one command side by side and tabulate their validation PSNR.

    python benchmarks/levers.py --DR ROOT --base "--preset cpu" \
        --variant ref= --variant flip="--augment flip_shift" --seeds 1 2 --parallel 2 \
        --json benchmarks/results/levers.json

Each (variant, seed) is `train.py BASE VARIANT --seed S --DR ROOT` in its own process and
run folder; the table holds each run's final and best validation PSNR, the copy-first-frame
baseline, the epochs' training seconds and the process's wall time. `--holdout K` trains
on the train split's first K videos of --val_vi_len frames and validates on video K (the
real sample's seq 2 with K=2), through a folder of links built under --work.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cvae_jax.data.dance_folder import frame_sort_key  # noqa: E402


def holdout_root(root: pathlib.Path, k: int, video_len: int, work: pathlib.Path) -> pathlib.Path:
    """A dataset folder of links: train = the train split's videos 0..k-1, val = video k."""
    out = work / f"holdout{k}"
    imgs = sorted((root / "train" / "train_img").glob("*.png"), key=frame_sort_key)
    if len(imgs) < (k + 1) * video_len:
        sys.exit(f"--holdout {k}: {root}/train/train_img has {len(imgs)} frames, fewer than {(k + 1) * video_len}")
    for split, names in (("train", imgs[:k * video_len]), ("val", imgs[k * video_len:(k + 1) * video_len])):
        for kind, src_kind in (("img", "train_img"), ("label", "train_label")):
            folder = out / split / f"{split}_{kind}"
            folder.mkdir(parents=True, exist_ok=True)
            for p in names:
                link = folder / p.name
                if not link.exists():
                    link.symlink_to((root / "train" / src_kind / p.name).resolve())
    return out


def run_one(name: str, flags: list[str], seed: int, args, data_root: pathlib.Path) -> dict:
    run_name = f"{name}_s{seed}"
    cmd = [sys.executable, str(ROOT / "train.py"), *flags, "--seed", str(seed),
           *(["--DR", str(data_root)] if data_root else []),
           "--save_root", str(args.work / "runs"), "--run_name", run_name]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    row = {"variant": name, "seed": seed, "flags": " ".join(flags), "rc": proc.returncode, "wall_s": round(wall, 1)}
    log = (args.work / f"{run_name}.log")
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return row
    records = [json.loads(line) for line in (args.work / "runs" / run_name / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_psnr"] for r in records if "val_psnr" in r]
    first = (args.work / "runs" / run_name / "val_psnr_per_frame.csv")
    row.update(final_psnr=round(val[-1], 3), best_psnr=round(max(val), 3), epochs=len(records),
               steps=records[-1]["steps"], train_s=records[-1]["seconds"])  # both run totals
    for line in proc.stdout.splitlines():
        if line.startswith("final validation PSNR"):
            row["summary"] = line
    if first.exists():
        row["per_frame_csv"] = str(first)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--DR", type=pathlib.Path, default=None,
                    help="dataset root (Lab4 folder layout); unset: the built-in synthetic set")
    ap.add_argument("--base", default="", help="flags every variant shares")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=FLAGS",
                    help="a variant's name and its extra flags (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--holdout", type=int, default=None, metavar="K",
                    help="train on the train split's first K videos, validate on video K")
    ap.add_argument("--val_vi_len", type=int, default=630)
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time")
    ap.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/cvae_levers"))
    ap.add_argument("--json", type=pathlib.Path, default=None)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.holdout is not None and args.DR is None:
        ap.error("--holdout needs --DR")
    data_root = args.DR if args.holdout is None else holdout_root(args.DR, args.holdout, args.val_vi_len, args.work)
    jobs = []
    for spec in args.variant:
        name, _, extra = spec.partition("=")
        jobs += [(name, shlex.split(args.base) + shlex.split(extra), seed) for seed in args.seeds]
    rows = []
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures = {pool.submit(run_one, *job, args, data_root): job for job in jobs}
        for fut in concurrent.futures.as_completed(futures):
            row = fut.result()
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:  # after every run, so a cut-short sweep keeps what finished
                write_json(args, rows)
    print("\n| variant | seeds | final PSNR (mean) | best PSNR (mean) | train s | wall s |")
    print("|---|---|---|---|---|---|")
    for spec in args.variant:
        name = spec.partition("=")[0]
        mine = [r for r in rows if r["variant"] == name and "final_psnr" in r]
        if not mine:
            print(f"| {name} | failed | | | | |")
            continue
        f = [r["final_psnr"] for r in mine]
        print(f"| {name} | {len(mine)} | {np.mean(f):.2f} ({', '.join(f'{x:.2f}' for x in f)}) | "
              f"{np.mean([r['best_psnr'] for r in mine]):.2f} | {np.mean([r['train_s'] for r in mine]):.0f} | "
              f"{np.mean([r['wall_s'] for r in mine]):.0f} |")
    return 0


def write_json(args, rows: list[dict]) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps({"argv": sys.argv, "DR": str(args.DR), "holdout": args.holdout,
                               "base": args.base, "rows": rows}, indent=1))
    tmp.replace(args.json)


if __name__ == "__main__":
    raise SystemExit(main())
