"""Lab4 evaluation and inference: whole-video rollouts scored per frame, and `Lab4Model`.

Protocol: each video is generated from its first frame and all its poses, z ~ N(0, I)
per step (or its mean), and every generated frame 1..T-1 is scored with PSNR (data range
1, per frame over all pixels) against the ground truth, and by the course's Kaggle formula
(`metrics.course_score`: integer frames, data range 255, frames 1..600), so the validation
number predicts the leaderboard's. The test split of the reference layout (first frame +
poses, no ground truth) is generated, not scored: GIFs (side-by-side panels, and the
course Tester's `pred_seq{i}.gif`) and, with `--submission`, the course's Kaggle CSV
(`submission`). A non-finite generated frame
stops the evaluation before anything is written (`Lab4Model._why_non_finite` says how the
video's poses differ from the training poses).
"""

from __future__ import annotations

import jax
import numpy as np

from cvae_jax import media, metrics, plots, submission
from cvae_jax.data import dance_folder
from cvae_jax.data.cache import cache_root
from cvae_jax.data.dance import dataset_root
from cvae_jax.errors import ConfigError, DatasetError
from cvae_jax.inference import Restored, feature_shift, trained_input_mean, value_range
from cvae_jax.models import lab4
from cvae_jax.train_step import make_model_fn


def _generate_fn(cfg):
    return lambda model, inputs, key: lab4.generate(model, *inputs, key, bn_mode=cfg.bn_mode, z_mode=cfg.z_mode)


def make_generate(graphdef, cfg):
    """Jitted `generate(params, batch_stats, (first_frame, poses), key)` -> all frames."""
    return make_model_fn(graphdef, cfg, _generate_fn(cfg))


class Lab4Model(Restored):
    """A restored Lab4 run: `frames = m.generate(first_frame, poses, key)`."""

    def generate(self, first_frame, poses, key=None, z_mode: str | None = None,
                 check: bool = True) -> np.ndarray:
        """first_frame (H, W, 3) or (B, H, W, 3) and poses (T, H, W, 3) or (B, T, H, W, 3),
        floats in [0, 1] at the model's frame size, poses drawn as in the training data (a
        skeleton on a white canvas: README, "Pose images"). Returns frames shaped like the
        poses, with the first frame at index 0. A non-finite frame raises
        `NonFiniteOutputError` naming the video and frame and the likely cause (check=False:
        return the frames as they are)."""
        first_frame, poses = np.asarray(first_frame, np.float32), np.asarray(poses, np.float32)
        single = poses.ndim == 4
        if single:
            first_frame, poses = first_frame[None], poses[None]
        h, w = self.config.frame_H, self.config.frame_W
        if poses.shape[2:] != (h, w, 3) or first_frame.shape != (poses.shape[0], h, w, 3):
            raise ValueError(f"expected first_frame ({h}, {w}, 3) and poses (T, {h}, {w}, 3) "
                             f"(optionally batched), got {first_frame.shape} and {poses.shape}")
        cfg = self.config.replace(z_mode=z_mode or self.config.z_mode)
        run = self.compiled(_generate_fn(cfg), cfg, cache_key="generate")
        out = run((first_frame, poses), jax.random.key(0) if key is None else key)
        if check:
            names = ["generate: the video"] if single else [f"generate: video {i} of the batch"
                                                             for i in range(len(out))]
            self.check_finite(out, names, (first_frame, poses))
        return out[0] if single else out

    def _why_non_finite(self, first_frame, poses) -> str:
        """How one video's poses differ from the training poses: their mean pixel value
        against the training poses' (read from the pose encoder's BatchNorm running mean,
        `inference.trained_input_mean`) and how far their pose features lie from that
        running mean (`inference.feature_shift`). Features far off grow through the
        decoder's gated blocks, which square them, until they overflow."""
        broken = self._broken_inputs_or_params(first_frame, poses)
        if broken:
            return broken
        enc = self.params["pose_encoder"]
        stats = self.batch_stats["pose_encoder"]["bn"]
        kernel, bias = np.asarray(enc["conv"]["kernel"][...]), np.asarray(enc["conv"]["bias"][...])
        running_mean, running_var = np.asarray(stats["mean"][...]), np.asarray(stats["var"][...])
        shift = float(np.abs(feature_shift(poses, kernel, bias, running_mean, running_var, POSE_PAD,
                                           "reflect")).max())
        given, trained = float(np.mean(poses)), trained_input_mean(kernel, bias, running_mean, running_var)
        sds = f"{shift:.1f}" if shift < 10 else f"{shift:.0f}"
        facts = (f"their mean pixel value is {given:.3f}, "
                 + (f"where the poses it was trained on average about {trained:.3f} (read from the pose "
                    f"encoder's BatchNorm running mean), and their pose features lie {sds} standard "
                    "deviations from that running mean" if trained is not None else
                    f"and their pose features lie {sds} standard deviations from the pose encoder's "
                    "BatchNorm running mean")
                 + " (the channel furthest off)")
        if np.min(poses) < -0.01 or np.max(poses) > 1.01:
            return (f"Likely cause: the poses are not floats in [0, 1] (they span {value_range(poses)}): "
                    f"{facts}. Scale them to [0, 1] (uint8 images: divide by 255).")
        far = shift > FAR_SD
        if (trained - given > CANVAS_GAP) if trained is not None else (far and given < 0.5):
            return (f"Likely cause: the poses differ from those the model was trained on: {facts}. A "
                    "black canvas where the training poses were drawn on white? Draw poses as in the "
                    "training data (a skeleton on a white canvas; README, \"Pose images\"); a skeleton "
                    "on black converts with `poses = poses + 1 - poses.max(-1, keepdims=True)`.")
        if far or (trained is not None and given - trained > CANVAS_GAP):
            return (f"Likely cause: the poses differ from those the model was trained on: {facts}. "
                    "Draw poses as in the training data (README, \"Pose images\").")
        return (f"The poses look like the training poses ({facts}) and the checkpoint is finite; "
                f"the first frame spans {value_range(first_frame)} (expected [0, 1]). The model "
                "diverges on these inputs by itself.")


POSE_PAD = 3       # the pose encoder's reflection padding before its 7x7 conv
CANVAS_GAP = 0.25  # mean pixel values this far apart: a different canvas
FAR_SD = 6.0       # a video's mean pose features this many running SDs off: not the training poses


def _sequences(cfg, split: str, log):
    """[(name, first frame, poses, frames or None)] at the model's frame size."""
    root = dataset_root(cfg, log)
    hw = (cfg.frame_H, cfg.frame_W)
    cache = cache_root(cfg) / "dance"
    if split == "test":
        return [(name, media.to_unit_float(first), media.to_unit_float(poses), None)
                for first, poses, name in dance_folder.load_test(root, hw, cache)]
    frames, poses, _ = dance_folder.load_split(root, "val", hw, cache)
    videos, video_poses = dance_folder.val_videos(frames, poses, cfg.val_vi_len, source=str(root / "val"))
    return [(str(i), v[0], p, v) for i, (v, p) in enumerate(zip(videos, video_poses))]


def check_options(cfg, opts) -> None:
    """Before anything is loaded or written: a submission is of the test split, to a
    path that can be written now."""
    if opts.submission is None:
        return
    if opts.split != "test":
        raise ConfigError(f"--submission writes the test split's predictions (the course's Kaggle file); "
                          f"give --split test, not --split {opts.split}")
    submission.check_writable(opts.submission)


def _same_length(seqs) -> int:
    """Frames per test video; a submission's rows need the same number in every one."""
    lengths = {name: len(poses) for name, _, poses, _ in seqs}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {n}" for name, n in lengths.items())
        raise DatasetError(f"test sequences differ in their number of poses ({shown}); a submission "
                           f"has the same number of frames (one per pose) for every sequence")
    return next(iter(lengths.values()))


def evaluate(model: Lab4Model, cfg, opts, out, log=print) -> dict:
    """Returns {"out", "psnr" (videos, samples, frames) or None, "mean_psnr", "mean_ssim",
    "course_score" (the Kaggle formula on val, `metrics.course_score`), "submission" (its
    path, when written)}."""
    mode, n = opts.z_mode or cfg.z_mode, opts.num_samples
    base = jax.random.key(opts.seed)
    window = metrics.SSIMParams().win_size
    with_ssim = min(cfg.frame_H, cfg.frame_W) >= window  # SSIM's window must fit in the frame
    seqs = _sequences(cfg, opts.split, log)  # a bad layout fails here, before any rollout
    test = opts.split == "test"
    if opts.submission:
        _same_length(seqs)  # before any rollout
    generated = []
    for v, (name, first, poses, truth) in enumerate(seqs):
        samples = [model.generate(first, poses, jax.random.fold_in(base, v * n + s), mode, check=False)
                   for s in range(n)]
        for s, sample in enumerate(samples):  # before anything is written or scored
            model.check_finite(sample[None], [f"{opts.split} video {name}" + (f" (sample {s})" if n > 1 else "")],
                               (first[None], poses[None]))
        generated.append(samples)
    scores, ssims, courses, firsts = [], [], [], []
    for v, ((name, first, poses, truth), samples) in enumerate(zip(seqs, generated)):
        firsts.append(samples[0])
        panels = [samples[0]] + ([truth] if truth is not None else []) + [poses]
        media.write_gif(media.side_by_side(*panels), out / f"{opts.split}{name}.gif")
        if test:  # the course Tester's GIF: the prediction alone, native size, 20 ms a frame
            media.write_gif(samples[0], out / f"pred_seq{v}.gif", duration_ms=20, scale=1)
        if truth is not None:
            scores.append(np.stack([np.asarray(metrics.psnr(s[1:], truth[1:])) for s in samples]))
            courses.append([metrics.course_psnr(s, truth) for s in samples])
            if with_ssim:
                ssims.append(np.stack([np.asarray(metrics.ssim(s[1:], truth[1:])) for s in samples]))
    if opts.save_frames:
        np.savez_compressed(opts.save_frames, pred=np.stack(firsts).astype(np.float32))
    layout = "prediction | ground truth | pose" if scores else "prediction | pose"
    result = {"out": out, "psnr": None, "mean_psnr": None, "course_score": None}
    if scores:
        psnr = np.stack(scores)  # (videos, samples, frames)
        result.update(psnr=psnr, mean_psnr=float(np.mean(psnr)), course_score=float(np.mean(courses)),
                      mean_ssim=float(np.mean(ssims)) if with_ssim else None)
        ssim_text = (f"mean SSIM {result['mean_ssim']:.4f} (Gaussian window {window}, sigma {metrics.SSIMParams().sigma})" if with_ssim else
                     f"SSIM not computed: {cfg.frame_H}x{cfg.frame_W} frames are smaller than its {window}-pixel window")
        per_frame = psnr.reshape(-1, psnr.shape[-1])
        media.write_psnr_csv(out / "psnr_per_frame.csv", per_frame)
        plots.plot_psnr_per_frame(per_frame, out / "psnr_per_frame.png", f"{opts.split} PSNR per frame ({mode} z)")
        log(f"mean PSNR {result['mean_psnr']:.3f} dB | protocol: {psnr.shape[0]} video(s) x "
            f"{n} sample(s), frames 1..{psnr.shape[-1]} of each scored (frame 0 given), "
            f"PSNR per frame over all pixels, data range 1.0, z {'~ N(0, I) per step' if mode == 'sample' else '= 0 (prior mean)'}, "
            f"{opts.which} checkpoint; {ssim_text}")
        last = min(metrics.COURSE_LAST_FRAME, psnr.shape[-1])
        log(f"course score {result['course_score']:.3f} dB | the Kaggle leaderboard's formula (demo.py): "
            f"PSNR per frame on the integer frames rint(255 clip(x, 0, 1)), data range 255, frames 1..{last} "
            f"of each video, mean over frames, videos and samples")
        log(f"wrote {out / 'psnr_per_frame.csv'} (rows: video*samples+sample), {out / 'psnr_per_frame.png'}")
    else:
        log(f"generated {len(firsts)} test sequence(s) (not scored: the test split has no ground truth)")
    if opts.submission:
        videos = np.stack(firsts)
        try:
            result["submission"] = submission.write_submission(opts.submission, videos, [s[0] for s in seqs])
        except OSError as err:
            raise ConfigError(f"--submission {opts.submission}: cannot write the submission there: "
                              f"{err.strerror or err}") from None
        v_count, t, h, w, c = videos.shape
        course = "" if (t, h, w) == (630, 32, 64) else "; the course's Kaggle expects 630 frames of 32x64 per video"
        log(f"wrote the submission {opts.submission}: {v_count * t} rows ({v_count} test videos in numeric folder "
            f"order x {t} frames, frame 0 the given one{', first z sample' if n > 1 else ''}) x {c * h * w} columns "
            f"((C, H, W) = ({c}, {h}, {w})), values rint(255 clip(x, 0, 1)){course}")
    gifs = f"GIFs ({layout}) in {out}" + ("; pred_seq<i>.gif: the course Tester's, prediction only, "
                                          "i = the video's position in numeric folder order" if test else "")
    log(gifs + (f"; frames saved to {opts.save_frames}" if opts.save_frames else ""))
    return result
