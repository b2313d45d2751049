"""Evaluate a run: prior rollouts of every sequence of a split, metrics per frame, GIFs.

SVG runs are scored by `svg_evaluation` (predicted frames only, best of N). Lab4
protocol: each video is generated from its first frame and all its poses, z ~ N(0, I)
per step (or its mean), and every generated frame 1..T-1 is scored with PSNR (data range
1, per frame over all pixels) against the ground truth. The test split of the reference
layout (first frame + poses, no ground truth) is generated but not scored.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from cvae_jax import media, metrics, plots
from cvae_jax.checkpointing import load_checkpoint
from cvae_jax.data import dance_folder
from cvae_jax.data.dance import cache_root, dataset_root
from cvae_jax.errors import ConfigError
from cvae_jax.svg_evaluation import evaluate_svg


def _sequences(cfg, split: str, log):
    """[(name, first frame, poses, frames or None)] at the model's frame size."""
    root = dataset_root(cfg, log)
    hw = (cfg.frame_H, cfg.frame_W)
    cache = cache_root(cfg) / "dance"
    if split == "test":
        return [(f"test{name}", first.astype(np.float32) / 255, poses.astype(np.float32) / 255, None)
                for first, poses, name in dance_folder.load_test(root, hw, cache)]
    frames, poses, _ = dance_folder.load_split(root, "val", hw, cache)
    videos, video_poses = dance_folder.val_videos(frames, poses, cfg.val_vi_len, source=str(root / "val"))
    return [(f"val{i}", v[0], p, v) for i, (v, p) in enumerate(zip(videos, video_poses))]


def evaluate(run, DR=None, split="val", num_samples=None, z_mode=None, which="best",
             save_frames=None, out=None, seed=0, log=print, data=None, data_dir=None,
             n_future=None) -> dict:
    """Returns {"mean_psnr", "out", ...}: lab4 adds "psnr" (videos, samples, frames) or None;
    svg adds per-sample "scores" and the "best"/"mean" per-frame metrics and a "summary".

    DR / data / data_dir override where the run's data came from; n_future (svg) the
    prediction horizon (28 for the paper protocol). num_samples: default 1 for lab4,
    5 for svg (best of 5)."""
    model = load_checkpoint(run, which=which)
    svg = model.config.model == "svg"
    num_samples = num_samples if num_samples is not None else (5 if svg else 1)
    if num_samples < 1:
        raise ConfigError(f"--num_samples must be at least 1, got {num_samples}")
    changes = {k: v for k, v in (("DR", None if DR is None else str(DR)), ("data", data),
                                 ("data_dir", data_dir), ("n_future", n_future)) if v is not None}
    if changes.get("data") == "tfds":
        changes["DR"] = None  # the run's folder root, if any, does not apply to TFDS
    if "n_future" in changes and not svg:
        raise ConfigError("--n_future applies to svg runs; lab4 generates whole videos")
    cfg = model.config.replace(**changes).validated()
    out = pathlib.Path(out) if out else pathlib.Path(run) / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    mode = z_mode or cfg.z_mode
    if svg:
        cfg = cfg.replace(val_sequences=None)  # training may validate on a subset; score them all
        return evaluate_svg(model, cfg, split, num_samples, mode, out, seed, save_frames, log)
    base = jax.random.key(seed)
    scores, ssims, firsts = [], [], []
    for v, (name, first, poses, truth) in enumerate(_sequences(cfg, split, log)):
        samples = [model.generate(first, poses, jax.random.fold_in(base, v * num_samples + s), mode)
                   for s in range(num_samples)]
        firsts.append(samples[0])
        panels = [samples[0]] + ([truth] if truth is not None else []) + [poses]
        media.write_gif(media.side_by_side(*panels), out / f"{name}.gif")
        if truth is not None:
            scores.append(np.stack([np.asarray(metrics.psnr(s[1:], truth[1:])) for s in samples]))
            ssims.append(np.stack([np.asarray(metrics.ssim(s[1:], truth[1:])) for s in samples]))
    if save_frames:
        np.savez_compressed(save_frames, pred=np.stack(firsts).astype(np.float32))
    layout = "prediction | ground truth | pose" if scores else "prediction | pose"
    result = {"out": out, "psnr": None, "mean_psnr": None}
    if scores:
        psnr = np.stack(scores)  # (videos, samples, frames)
        result.update(psnr=psnr, mean_psnr=float(np.mean(psnr)), mean_ssim=float(np.mean(ssims)))
        per_frame = psnr.reshape(-1, psnr.shape[-1])
        media.write_psnr_csv(out / "psnr_per_frame.csv", per_frame)
        plots.plot_psnr_per_frame(per_frame, out / "psnr_per_frame.png",
                                  f"{split} PSNR per frame ({mode} z)")
        log(f"mean PSNR {result['mean_psnr']:.3f} dB | protocol: {psnr.shape[0]} video(s) x "
            f"{num_samples} sample(s), frames 1..{psnr.shape[-1]} of each scored (frame 0 given), "
            f"PSNR per frame over all pixels, data range 1.0, z {'~ N(0, I) per step' if mode == 'sample' else '= 0 (prior mean)'}, "
            f"{which} checkpoint; mean SSIM {result['mean_ssim']:.4f} (Gaussian window 11, sigma 1.5)")
        log(f"wrote {out / 'psnr_per_frame.csv'} (rows: video*samples+sample), {out / 'psnr_per_frame.png'}")
    else:
        log(f"generated {len(firsts)} test sequence(s) (not scored: the test split has no ground truth)")
    log(f"GIFs ({layout}) in {out}" + (f"; frames saved to {save_frames}" if save_frames else ""))
    return result
