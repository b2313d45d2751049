"""Report figures: training curves and per-frame PSNR and SSIM.

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg canvas, so
nothing touches pyplot's global figure registry or needs a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _column(records: Sequence[dict], key: str) -> np.ndarray:
    """One record field as floats; missing or None entries become NaN (not plotted)."""
    values = [r.get(key) for r in records]
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _plot_finite(ax, x: np.ndarray, y: np.ndarray, **kwargs):
    """Plot only the finite points; short series get markers so one epoch is still visible."""
    keep = np.isfinite(x) & np.isfinite(y)
    style = {"marker": "o", "markersize": 3 if keep.sum() < 50 else 0, **kwargs}
    return ax.plot(x[keep], y[keep], **style)


def _log_axis(ax, *values: np.ndarray) -> None:
    """A log y axis when every finite value is positive (curves spanning decades)."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values])
    if finite.size and finite.min() > 0:
        ax.set_yscale("log")


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_training(records: list[dict], path) -> Path:
    """Training curves from per-epoch records (epoch, loss, mse, kl, beta, tfr, lr, val_psnr).

    Panels: loss (and its MSE part) with the teacher-forcing ratio on a twin axis; KL beta
    with the learning rate on a twin log axis; validation PSNR for the epochs that have it.
    """
    epoch = _column(records, "epoch")
    fig = Figure(figsize=(7, 9), layout="constrained")
    ax_loss, ax_beta, ax_psnr = fig.subplots(3, 1, sharex=True)

    loss, mse = _column(records, "loss"), _column(records, "mse")
    lines = _plot_finite(ax_loss, epoch, loss, label="loss", color="C0")
    lines += _plot_finite(ax_loss, epoch, mse, label="mse", color="C0", linestyle=":")
    _log_axis(ax_loss, loss, mse)  # epoch 0's KL would flatten every later epoch
    ax_loss.set_ylabel("training loss")
    ax_tfr = ax_loss.twinx()
    lines += _plot_finite(ax_tfr, epoch, _column(records, "tfr"), label="teacher forcing", color="C1")
    ax_tfr.set_ylabel("teacher-forcing ratio")
    ax_tfr.set_ylim(-0.05, 1.05)
    ax_loss.legend(lines, [line.get_label() for line in lines], loc="upper right")

    lines = _plot_finite(ax_beta, epoch, _column(records, "beta"), label="KL beta", color="C2")
    ax_beta.set_ylabel("KL beta")
    lr = _column(records, "lr")
    if np.any(np.isfinite(lr) & (lr > 0)):
        ax_lr = ax_beta.twinx()
        lines += _plot_finite(ax_lr, epoch, np.where(lr > 0, lr, np.nan), label="learning rate", color="C4")
        ax_lr.set_yscale("log")
        ax_lr.set_ylabel("learning rate")
    ax_beta.legend(lines, [line.get_label() for line in lines], loc="lower right")

    val_psnr = _column(records, "val_psnr")
    _plot_finite(ax_psnr, epoch, val_psnr, color="C3")
    ax_psnr.set_ylabel("validation PSNR (dB)")
    ax_psnr.set_xlabel("epoch")
    if not np.any(np.isfinite(val_psnr)):
        ax_psnr.text(0.5, 0.5, "no validation yet", transform=ax_psnr.transAxes, ha="center")
    return _save(fig, path)


def _finite_mean(x: np.ndarray) -> float:
    """Mean over finite entries: a perfectly copied frame (PSNR inf) would swamp it."""
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else math.nan


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Per-frame mean over videos, ignoring non-finite entries (NaN where none is finite)."""
    finite = np.isfinite(x)
    counts = finite.sum(axis=0)
    sums = np.where(finite, x, 0.0).sum(axis=0)
    return np.divide(sums, counts, out=np.full(x.shape[1], np.nan), where=counts > 0)


def plot_psnr_per_frame(
    psnr: np.ndarray,
    path,
    title: str,
    baseline: np.ndarray | None = None,
    first_frame_index: int = 1,
) -> Path:
    """Per-frame PSNR, (videos, frames) or (frames,); the legend carries each mean.

    With several videos each is drawn faintly and their per-frame mean boldly. A
    `baseline` of the same layout (e.g. copy-the-first-frame) is drawn dashed. Means
    skip non-finite entries. x is the frame index, starting at `first_frame_index`
    (1 when frame 0 is the given conditioning frame).
    """
    return _plot_per_frame(psnr, path, title, "PSNR (dB)", "{:.2f} dB", baseline, first_frame_index)


def _plot_per_frame(values, path, title: str, ylabel: str, mean_format: str,
                    baseline=None, first_frame_index: int = 1) -> Path:
    """The per-frame figure of any metric (`plot_psnr_per_frame`, `plot_ssim_per_frame`)."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    frames = first_frame_index + np.arange(values.shape[1])
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    if values.shape[0] > 1:
        for video in values:
            _plot_finite(ax, frames, video, color="C0", alpha=0.25, linewidth=0.7)
    _plot_finite(ax, frames, _nanmean_rows(values), color="C0",
                 label=f"model (mean {mean_format.format(_finite_mean(values))})")
    if baseline is not None:
        baseline = np.atleast_2d(np.asarray(baseline, dtype=np.float64))
        base_frames = first_frame_index + np.arange(baseline.shape[1])
        label = f"baseline (mean {mean_format.format(_finite_mean(baseline))})"
        _plot_finite(ax, base_frames, _nanmean_rows(baseline), color="C7", linestyle="--", label=label)
    ax.set_xlabel("frame")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_curves(curves: dict, path, title: str, ylabel: str, first_frame_index: int = 1) -> Path:
    """Named per-frame curves (each (frames,)) on one axis, e.g. best-of-N vs mean SSIM."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    for i, (label, y) in enumerate(curves.items()):
        y = np.asarray(y, dtype=np.float64)
        _plot_finite(ax, first_frame_index + np.arange(len(y)), y, color=f"C{i}",
                     label=f"{label} (mean {_finite_mean(y):.3f})")
    ax.set_xlabel("frame")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_ssim_per_frame(ssim: np.ndarray, path, title: str, first_frame_index: int = 1) -> Path:
    """Per-frame SSIM, (videos, frames) or (frames,), drawn as `plot_psnr_per_frame` draws PSNR."""
    return _plot_per_frame(ssim, path, title, "SSIM", "{:.4f}", None, first_frame_index)


def plot_runs(runs: dict[str, list[dict]], x: str, panels: Sequence[tuple[str, str]], path, title: str) -> Path:
    """Several runs' records overlaid, one panel per (record key, axis label), each run one
    colour named once in the figure's legend; `x` is the record key on the x axis. Panels
    whose values span decades (loss, KL, learning rate) get a log axis."""
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(11, 2.8 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (key, label) in zip(axes, panels):
        values = []
        for i, (name, records) in enumerate(runs.items()):
            y = _column(records, key)
            values.append(y)
            _plot_finite(ax, _column(records, x), y, color=f"C{i % 10}", label=name)
        if key in ("loss", "kl", "lr"):
            _log_axis(ax, *values)
        ax.set_ylabel(label)
        ax.set_xlabel(x)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not any(np.isfinite(v).any() for v in values):
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(runs), 3), fontsize="small")
    return _save(fig, path)
