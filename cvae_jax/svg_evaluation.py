"""SVG evaluation and inference: predicted frames only, PSNR and SSIM per frame, best of
N samples; and `SVGModel`, the notebook object of a restored SVG run.

Protocol (printed with every number): n_past ground-truth context frames, n_future
predicted frames scored against the truth; for every sequence N samples of z are drawn
from the prior, the sample with the highest mean SSIM over the predicted frames is the
"best" (SVG's selection), and the mean over all N samples is reported next to it. Both
metric definitions are reported and labelled:
- image: PSNR from the MSE over all pixels and channels of a frame (`metrics.psnr`);
  SSIM mean over the map of all channels;
- channel: SVG's `finn_eval_seq`, each metric per channel image then averaged over the
  3 channels (PSNR is then higher than the image definition; SSIM NaN -> -1).
A non-finite predicted frame stops the evaluation before anything is written.
"""

from __future__ import annotations

import csv
import pathlib

import jax
import numpy as np

from cvae_jax import media, metrics, plots
from cvae_jax.data.pushing import PushingData
from cvae_jax.inference import Restored, feature_shift, value_range
from cvae_jax.models import svg
from cvae_jax.models.vgg64 import IMAGE_SIZE

METRICS = ("psnr_image", "psnr_channel", "ssim_image", "ssim_channel")
GIF_SEQUENCES = 8


def _scores(pred, truth) -> dict[str, np.ndarray]:
    """(B, F, ...) pairs -> {metric: (B, F)}."""
    return {"psnr_image": np.asarray(metrics.psnr(pred, truth)),
            "psnr_channel": np.asarray(metrics.psnr_per_channel(pred, truth)),
            "ssim_image": np.asarray(metrics.ssim(pred, truth)),
            "ssim_channel": np.asarray(metrics.ssim_svg(pred, truth))}


class SVGModel(Restored):
    """A restored SVG run: `future = m.predict(context, cond, key, n_future=10)`."""

    def predict(self, context, cond, key=None, n_future: int | None = None,
                z_mode: str | None = None, check: bool = True) -> np.ndarray:
        """context (n_past, 64, 64, 3) and cond (>= n_past + n_future, 7), optionally
        batched, floats (frames in [0, 1]); returns the n_future predicted frames. A
        non-finite frame raises `NonFiniteOutputError` naming the sequence and frame and
        the likely cause (check=False: return the frames as they are)."""
        cfg = self.config
        context, cond = np.asarray(context, np.float32), np.asarray(cond, np.float32)
        single = context.ndim == 4
        if single:
            context, cond = context[None], cond[None]
        n_future = n_future or cfg.n_future
        frame = (IMAGE_SIZE, IMAGE_SIZE, 3)
        if (context.ndim != 5 or context.shape[1:] != (cfg.n_past, *frame) or cond.ndim != 3
                or cond.shape[0] != context.shape[0] or cond.shape[2] != svg.COND_DIM
                or cond.shape[1] < cfg.n_past + n_future):
            raise ValueError(f"expected context ({cfg.n_past}, {', '.join(map(str, frame))}) and cond "
                             f"(>= {cfg.n_past + n_future}, {svg.COND_DIM}) (optionally batched), got "
                             f"{context.shape} and {cond.shape}")
        mode = z_mode or cfg.z_mode
        run = self.compiled(lambda m, batch, k: svg.predict_batch(m, batch, k, cfg, n_future=n_future, z_mode=mode),
                            cache_key=("predict", n_future, mode))
        out = run((context, cond), jax.random.key(0) if key is None else key)
        if check:
            names = ["predict: the sequence"] if single else [f"predict: sequence {i} of the batch"
                                                               for i in range(len(out))]
            self.check_finite(out, names, (context, cond), first_index=cfg.n_past, what="predicted frames")
        return out[0] if single else out

    def _why_non_finite(self, context, cond) -> str:
        """How one sequence's inputs differ from the training data: the context frames' value
        range, and how far their features in the encoder's first layer lie from its
        BatchNorm running mean (`inference.feature_shift`)."""
        broken = self._broken_inputs_or_params(context, cond)
        if broken:
            return broken
        layer = self.params["encoder"]["c1"][0]
        stats = self.batch_stats["encoder"]["c1"][0]["bn"]
        shift = float(np.abs(feature_shift(context, layer["conv"]["kernel"][...], layer["conv"]["bias"][...],
                                           stats["mean"][...], stats["var"][...], 1)).max())
        facts = (f"the context frames span {value_range(context)} (mean {float(np.mean(context)):.3f}) and "
                 f"their features in the encoder's first layer lie {shift:.1f} standard deviations from its "
                 f"BatchNorm running mean (the channel furthest off); cond spans {value_range(cond)}")
        if np.min(context) < -0.01 or np.max(context) > 1.01:
            return (f"Likely cause: the context frames are not floats in [0, 1]: {facts}. Scale them "
                    "to [0, 1] (uint8 images: divide by 255).")
        return (f"Inputs compared with the training data: {facts}. Context or cond unlike the "
                "training sequences' can drive the model out of range.")


def evaluate(model: SVGModel, cfg, opts, out: pathlib.Path, log=print) -> dict:
    """Score every sequence of the split (training may have validated on a subset)."""
    cfg = cfg.replace(val_sequences=None)
    split = {"val": "validate"}.get(opts.split, opts.split)
    num_samples, z_mode, seed, save_frames = opts.num_samples, opts.z_mode or cfg.z_mode, opts.seed, opts.save_frames
    data = PushingData(cfg, log, splits=(split,))
    n_future, n_past = cfg.n_future, cfg.n_past
    base = jax.random.key(seed)
    per_sample = {m: [] for m in METRICS}  # chunks of (B, N, F)
    gifs, saved = [], []
    for c, ((frames, cond), truth) in enumerate(data.val_batches()):
        b = len(truth)
        chunk = {m: [] for m in METRICS}
        samples = []
        for s in range(num_samples):
            key = jax.random.fold_in(jax.random.fold_in(base, c), s)
            pred = model.predict(frames[:, :n_past], cond, key, n_future=n_future, z_mode=z_mode,
                                 check=False)[:b]
            names = [f"{split} sequence {c * len(frames) + i}" + (f" (sample {s})" if num_samples > 1 else "")
                     for i in range(b)]  # checked before anything is written or scored
            model.check_finite(pred, names, (frames[:b, :n_past], cond[:b]), first_index=n_past,
                               what="predicted frames")
            for m, v in _scores(pred, truth).items():
                chunk[m].append(v)
            if len(gifs) < GIF_SEQUENCES or save_frames:
                samples.append(pred)
        chunk = {m: np.stack(v, axis=1) for m, v in chunk.items()}
        for m in METRICS:
            per_sample[m].append(chunk[m])
        if samples:
            best = metrics.best_of_n(chunk, by="ssim_channel")[0]
            stacked = np.stack(samples, axis=1)  # (B, N, F, ...)
            best_pred = stacked[np.arange(b), best]
            if save_frames:
                saved.append(best_pred)
            rand = np.random.default_rng([seed, c]).integers(0, num_samples, b)
            for i in range(b):
                if len(gifs) < GIF_SEQUENCES:
                    gifs.append((data.val_frames[c * len(frames) + i], best_pred[i], stacked[i, rand[i]]))
    scores = {m: np.concatenate(v) for m, v in per_sample.items()}  # (V, N, F)
    best_idx, best, mean = metrics.best_of_n(scores, by="ssim_channel")  # (V,), {m: (V, F)}
    baseline = data.baseline_psnr()
    _write_csv(out / "metrics_per_frame.csv", best, mean, baseline, n_past)
    plots.plot_psnr_per_frame(best["psnr_image"], out / "psnr_per_frame.png",
                              f"{split}: PSNR per predicted frame (image definition, best of {num_samples})",
                              baseline=baseline, first_frame_index=n_past)
    plots.plot_curves({f"best of {num_samples}": best["ssim_channel"].mean(0),
                       f"mean of {num_samples}": mean["ssim_channel"].mean(0)},
                      out / "ssim_per_frame.png", f"{split}: SSIM per predicted frame (channel definition)",
                      "SSIM", first_frame_index=n_past)
    for i, (truth, b_pred, r_pred) in enumerate(gifs):
        ctx = truth[:n_past]
        panels = [truth[:n_past + n_future], np.concatenate([ctx, b_pred]), np.concatenate([ctx, r_pred])]
        media.write_gif(media.side_by_side(*panels), out / f"{split}{i}.gif", duration_ms=150)
    if save_frames:
        np.savez_compressed(save_frames, pred=np.concatenate(saved).astype(np.float32))
    summary = {f"{kind}_{m}": float(np.mean(d[m])) for kind, d in (("best", best), ("mean", mean))
               for m in METRICS}
    summary["baseline_psnr_image"] = float(np.mean(baseline))
    log(f"protocol: {len(best_idx)} {split} sequence(s), {n_past} context -> {n_future} predicted frames "
        f"(frames {n_past}..{n_past + n_future - 1} scored), {num_samples} sample(s) per sequence with z "
        f"{'from' if z_mode == 'sample' else '= the mean of'} the {cfg.prior} prior, best sample by mean SSIM, "
        f"data range 1.0")
    for kind in ("best", "mean"):
        label = f"best of {num_samples}" if kind == "best" else f"mean of {num_samples}"
        log(f"  {label:>12}: PSNR {summary[f'{kind}_psnr_image']:.3f} dB (image) / "
            f"{summary[f'{kind}_psnr_channel']:.3f} dB (per-channel, SVG) | SSIM "
            f"{summary[f'{kind}_ssim_image']:.4f} (image) / {summary[f'{kind}_ssim_channel']:.4f} (per-channel, SVG)")
    log(f"  baseline (repeat the last context frame): PSNR {summary['baseline_psnr_image']:.3f} dB (image)")
    log(f"wrote {out / 'metrics_per_frame.csv'}, {out / 'psnr_per_frame.png'}, {out / 'ssim_per_frame.png'}, "
        f"{len(gifs)} GIF(s) (ground truth | best | random sample)"
        + (f"; best samples saved to {save_frames}" if save_frames else ""))
    return {"out": out, "scores": scores, "best": best, "mean": mean, "summary": summary,
            "mean_psnr": summary["best_psnr_image"]}


def _write_csv(path: pathlib.Path, best, mean, baseline, n_past: int) -> None:
    """One row per predicted frame: means over sequences of every metric, best and mean."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [f"{kind}_{m}" for kind in ("best", "mean") for m in METRICS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame"] + cols + ["baseline_psnr_image"])
        for j in range(baseline.shape[1]):
            row = [float(np.mean((best if c.startswith("best") else mean)[c.split("_", 1)[1]][:, j]))
                   for c in cols]
            w.writerow([n_past + j] + [repr(x) for x in row] + [repr(float(np.mean(baseline[:, j])))])
