"""Compare runs: `python -m cvae_jax.report RUN [RUN ...] --out DIR` (`cvae-jax-report`).

Reads nothing but the run folders (config.json, metrics.jsonl, steps.jsonl,
val_psnr_per_frame.csv) and writes into DIR:
- curves_step.png: training loss, MSE, KL, beta, teacher-forcing ratio, learning rate,
  gradient norm (steps.jsonl) and validation PSNR against the global step;
- curves_epoch.png: the same per epoch (metrics.jsonl), with validation SSIM and the
  course score where the runs recorded them;
- val_psnr_per_frame.png: each run's last validation, PSNR per frame (mean over videos);
- summary.csv and summary.md: final and best validation PSNR, SSIM and course score,
  steps, training time and the config fields that differ.
Each run is named by the config fields that differ between the runs given
(`kl_anneal_type=Monotonic, tfr=0.5`), by its folder where the configs are the same.
Runs of different models are refused: their scores are not comparable.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import pathlib
import sys

import numpy as np

from cvae_jax import checkpointing, media, plots, run_logs
from cvae_jax.config import Config, shown
from cvae_jax.errors import ConfigError, RunFolderError

# Fields that name or place a run rather than change what it computes.
IDENTITY_FIELDS = ("run_name", "save_root", "cache_dir")
STEP_PANELS = (("loss", "training loss"), ("mse", "MSE"), ("kl", "KL"), ("beta", "KL beta"),
               ("tfr", "teacher-forcing ratio"), ("lr", "learning rate"), ("grad_norm", "gradient norm"),
               ("val_psnr", "validation PSNR (dB)"))
EPOCH_EXTRA_PANELS = (("val_ssim", "validation SSIM"), ("val_course_score", "validation course score (dB)"))
PER_FRAME_FILE = "val_psnr_per_frame.csv"


@dataclasses.dataclass
class Run:
    path: pathlib.Path
    config: Config
    epochs: list[dict]                  # metrics.jsonl
    steps: list[dict]                   # steps.jsonl (empty for runs made before it existed)
    per_frame: dict[int, float] | None  # frame -> mean PSNR of the last validation
    name: str = ""


def _jsonl(path: pathlib.Path) -> list[dict]:
    try:
        return run_logs.read_jsonl(path)
    except ValueError as e:
        raise RunFolderError(f"{e} (a damaged run folder?)") from None


def _per_frame(path: pathlib.Path) -> dict[int, float] | None:
    """Frame -> PSNR averaged over the validation videos, from training's per-frame CSV."""
    if not path.is_file():
        return None
    by_frame: dict[int, list[float]] = {}
    with path.open(newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                by_frame.setdefault(int(row["frame"]), []).append(float(row["psnr"]))
            except (KeyError, TypeError, ValueError):
                raise RunFolderError(f"{path}, line {n}: not a video,frame,psnr row (a damaged run folder?)") from None
    means = {}
    for frame, values in sorted(by_frame.items()):
        finite = [v for v in values if math.isfinite(v)]
        means[frame] = float(np.mean(finite)) if finite else math.nan
    return means


def load_run(path) -> Run:
    """A run folder's config and records; one clear error for a folder that is not a run or
    has not recorded anything yet."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path}: no such run folder")
    cfg = checkpointing.load_config(path)
    epochs, steps = _jsonl(path / run_logs.EPOCHS_FILE), _jsonl(path / run_logs.STEPS_FILE)
    if not epochs and not steps:
        raise RunFolderError(f"{path} has no training records yet ({run_logs.EPOCHS_FILE} and "
                             f"{run_logs.STEPS_FILE} are missing or empty): an incomplete run")
    return Run(path, cfg, epochs, steps, _per_frame(path / PER_FRAME_FILE))


def differing_fields(configs: list[Config]) -> list[str]:
    """Flags whose values differ between the configs, in flag order, ignoring the run's name
    and place (`IDENTITY_FIELDS`)."""
    flats = [c.flat() for c in configs]
    return [f for f in flats[0] if f not in IDENTITY_FIELDS and len({repr(fl.get(f)) for fl in flats}) > 1]


def name_runs(runs: list[Run]) -> list[str]:
    """Each run's legend name: its values of the differing fields; its folder name when the
    configs are the same (the whole path when folder names repeat too), and its folder
    added where the differing fields alone do not tell runs apart."""
    fields = differing_fields([r.config for r in runs])
    folders = [r.path.name for r in runs]
    if len(set(folders)) < len(folders):
        folders = [str(r.path) for r in runs]
    if not fields:
        return folders
    names = [", ".join(f"{f}={shown(r.config.flat()[f])}" for f in fields) for r in runs]
    return [f"{n} ({folder})" if names.count(n) > 1 else n for n, folder in zip(names, folders)]


def _check_comparable(runs: list[Run]) -> None:
    seen: dict[pathlib.Path, pathlib.Path] = {}
    for r in runs:
        key = r.path.resolve()
        if key in seen:
            raise ConfigError(f"{r.path} is given twice (as {seen[key]} before)")
        seen[key] = r.path
    models = {r.config.model for r in runs}
    if len(models) > 1:
        shown = ", ".join(f"{r.path} is {r.config.model}" for r in runs)
        raise ConfigError(f"cannot compare runs of different models ({shown}): their scores follow "
                          "different protocols; report each model's runs separately")


def _step_records(run: Run) -> list[dict]:
    """Step lines with each validation placed at its epoch's last step; a run made before
    steps.jsonl existed falls back to its epoch means, placed the same way."""
    lines = run.steps or [dict(r, step=r["steps"]) for r in run.epochs if "steps" in r]
    vals = [{"step": r["steps"], "val_psnr": r["val_psnr"]}
            for r in run.epochs if r.get("val_psnr") is not None and "steps" in r]
    lines = [{k: v for k, v in r.items() if k != "val_psnr"} for r in lines]
    return sorted(lines + vals, key=lambda r: r["step"])


def training_seconds(run: Run) -> float:
    """Wall time of the kept training: records carry seconds since their process started,
    so a drop marks a continued run; each process's last value is added."""
    points = sorted([(r["step"], r["seconds"]) for r in run.steps if "seconds" in r]
                    + [(r["steps"], r["seconds"]) for r in run.epochs if "seconds" in r and "steps" in r])
    total, last = 0.0, 0.0
    for _, seconds in points:
        if seconds < last:
            total += last
        last = seconds
    return total + last


def _last(records: list[dict], key: str):
    values = [r[key] for r in records if r.get(key) is not None]
    return values[-1] if values else None


def summary_rows(runs: list[Run]) -> tuple[list[str], list[list]]:
    """(header, one row per run) of summary.csv."""
    fields = differing_fields([r.config for r in runs])
    header = ["run", "folder", "model", "epochs", "steps", "training_seconds", "final_val_psnr",
              "best_val_psnr", "best_epoch", "final_val_ssim", "final_course_score", *fields]
    rows = []
    for r in runs:
        vals = [e for e in r.epochs if e.get("val_psnr") is not None]
        best = max(vals, key=lambda e: e["val_psnr"]) if vals else {}
        steps = max([e["steps"] for e in r.epochs if "steps" in e] + [s["step"] for s in r.steps] + [0])
        done = max([e["epoch"] + 1 for e in r.epochs] + [0])
        flat = r.config.flat()
        rows.append([r.name, str(r.path), r.config.model, f"{done}/{r.config.num_epoch}", steps,
                     round(training_seconds(r), 1), _last(vals, "val_psnr"), best.get("val_psnr"),
                     best.get("epoch"), _last(r.epochs, "val_ssim"), _last(r.epochs, "val_course_score"),
                     *(shown(flat[f]) for f in fields)])
    return header, rows


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _summary_csv(header, rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_cell(v) for v in row] for row in rows])
    return buf.getvalue()


def _summary_md(header, rows, runs: list[Run], figures: list[str]) -> str:
    fields = differing_fields([r.config for r in runs])
    lines = [f"# Comparison of {len(runs)} {runs[0].config.model} run(s)", "",
             ("Runs are named by the config fields that differ: " + ", ".join(f"`{f}`" for f in fields) + "."
              if fields else "The runs' configs are the same; runs are named by folder."), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v, 3).replace("|", "\\|") for v in row) + " |" for row in rows]
    lines += ["", "PSNR in dB on the validation split as training scored it (z from the prior); the course "
              "score is the Kaggle formula (`metrics.course_score`) where the model has one; training seconds "
              "add up the wall time of every process that trained the run.", "",
              "Figures: " + ", ".join(f"[{f}]({f})" for f in figures), ""]
    return "\n".join(lines)


def report(run_dirs, out, log=print) -> list[pathlib.Path]:
    """Write the comparison of `run_dirs` into `out`; returns the files written."""
    runs = [load_run(p) for p in run_dirs]
    _check_comparable(runs)
    for run, name in zip(runs, name_runs(runs)):
        run.name = name
    out = pathlib.Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot make the folder: {e.strerror or e}") from None
    named = {r.name: r for r in runs}
    written = [plots.plot_runs({n: _step_records(r) for n, r in named.items()}, "step", STEP_PANELS,
                               out / "curves_step.png", "training and validation by step")]
    extra = tuple(p for p in EPOCH_EXTRA_PANELS if any(_last(r.epochs, p[0]) is not None for r in runs))
    written.append(plots.plot_runs({n: r.epochs for n, r in named.items()}, "epoch", STEP_PANELS + extra,
                                   out / "curves_epoch.png", "training (epoch means) and validation by epoch"))
    with_frames = {n: r.per_frame for n, r in named.items() if r.per_frame}
    if with_frames:
        first = min(min(f) for f in with_frames.values())
        last = max(max(f) for f in with_frames.values())
        curves = {n: [f.get(i, math.nan) for i in range(first, last + 1)] for n, f in with_frames.items()}
        written.append(plots.plot_curves(curves, out / "val_psnr_per_frame.png",
                                         "last validation: PSNR per frame (mean over videos)", "PSNR (dB)",
                                         first_frame_index=first))
    missing = [r.path for r in runs if not r.per_frame]
    if missing:
        log(f"no {PER_FRAME_FILE} (not validated yet) in: {', '.join(map(str, missing))}")
    header, rows = summary_rows(runs)
    media.write_bytes_atomic(out / "summary.csv", _summary_csv(header, rows).encode())
    media.write_bytes_atomic(out / "summary.md", _summary_md(header, rows, runs, [p.name for p in written]).encode())
    return written + [out / "summary.csv", out / "summary.md"]


def main(argv=None, prog: str = "cvae-jax-report") -> None:
    """The command; returns nothing, so a console script's sys.exit(main()) exits 0."""
    from cvae_jax.cli import input_errors_as_usage
    parser = argparse.ArgumentParser(prog=prog, description="Compare training runs of one model: overlaid "
                                     "curves by step and epoch, per-frame validation PSNR, summary.csv/.md.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders made by train.py")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the figures and summaries "
                        "(made if missing; files of the same names are replaced)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with input_errors_as_usage(parser.prog):
        written = report(args.runs, args.out)
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main(prog="python -m cvae_jax.report")
