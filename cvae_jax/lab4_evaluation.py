"""Lab4 evaluation and inference: whole-video rollouts scored per frame, and `Lab4Model`.

Protocol (printed with every number, and written to summary.json): each video is
generated from its first frame and all its poses, z ~ N(0, I) per step (or its mean), and
every generated frame 1..T-1 is scored with PSNR (data range 1, per frame over all pixels)
and SSIM (`metrics.ssim`, where the frames fit its window) against the ground truth, and by
the course's Kaggle formula (`metrics.course_score`: integer frames, data range 255, frames
1..600), so the validation number predicts the leaderboard's. With N z samples per video
(`--num_samples`, generated together: `Lab4Model.samples`), each video's sample with the
highest mean PSNR is the best of N (every figure of best of N is that sample's), and the
mean over the N samples is reported next to it, as SVG's evaluation does (it ranks by SSIM).
The test split of the reference layout (first frame + poses, no ground truth) is generated,
not scored: GIFs (side-by-side panels, and the course Tester's `pred_seq{i}.gif`) and, with
`--submission`, the course's Kaggle CSV (`submission`). A non-finite generated frame
stops the evaluation before anything is written (`Lab4Model._why_non_finite` says how the
video's poses differ from the training poses).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
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


def _samples_fn(cfg):
    """One video, one sample per key: `generate` vmapped over the keys, so the N samples are
    one program and each step's pose features (which no key changes) are computed once."""
    generate = _generate_fn(cfg)

    def samples(model, inputs, keys):
        first, poses = inputs
        return jax.vmap(lambda key: generate(model, (first[None], poses[None]), key)[0])(keys)
    return samples


def sample_keys(video_key, n: int):
    """The z keys of a video's n samples: sample 0 draws with `video_key` itself (the N = 1
    evaluation's draw, so best of N is never below it), sample s > 0 with fold_in(video_key, s)."""
    return jnp.stack([video_key] + [jax.random.fold_in(video_key, s) for s in range(1, n)])


class Lab4Model(Restored):
    """A restored Lab4 run: `frames = m.generate(first_frame, poses, key)`; N samples of one
    video: `m.samples(first_frame, poses, keys)`."""

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
        self._check_shapes(first_frame, poses, "(optionally batched)", (first_frame.shape, poses.shape))
        cfg = self.config.replace(z_mode=z_mode or self.config.z_mode)
        run = self.compiled(_generate_fn(cfg), cfg, cache_key="generate")
        out = run((first_frame, poses), jax.random.key(0) if key is None else key)
        if check:
            names = ["generate: the video"] if single else [f"generate: video {i} of the batch"
                                                             for i in range(len(out))]
            self.check_finite(out, names, (first_frame, poses))
        return out[0] if single else out

    def samples(self, first_frame, poses, keys, z_mode: str | None = None, check: bool = True) -> np.ndarray:
        """N samples of one video, one per z key: first_frame (H, W, 3) and poses (T, H, W, 3)
        as for `generate`, keys (N,) (`sample_keys`, or a list) -> (N, T, H, W, 3). Sample s is
        `generate(first_frame, poses, keys[s])` up to float rounding, computed for all N in
        one program. A non-finite frame raises `NonFiniteOutputError` naming the sample
        (check=False: return the frames as they are)."""
        first_frame, poses = np.asarray(first_frame, np.float32), np.asarray(poses, np.float32)
        self._check_shapes(first_frame[None], poses[None], "(one video)", (first_frame.shape, poses.shape))
        keys = jnp.stack(list(keys)) if isinstance(keys, (list, tuple)) else keys
        cfg = self.config.replace(z_mode=z_mode or self.config.z_mode)
        run = self.compiled(_samples_fn(cfg), cfg, cache_key="samples")
        out = run((first_frame, poses), keys)
        if check:
            self.check_finite(out, [f"samples: sample {s}" for s in range(len(out))],
                              _repeated(first_frame, poses, len(out)))
        return out

    def _check_shapes(self, first_frame, poses, batching: str, given) -> None:
        """first_frame (B, H, W, 3) and poses (B, T, H, W, 3) at the run's frame size, or a
        ValueError showing the shapes as `given`."""
        h, w = self.config.frame_H, self.config.frame_W
        if poses.ndim != 5 or poses.shape[2:] != (h, w, 3) or first_frame.shape != (poses.shape[0], h, w, 3):
            raise ValueError(f"expected first_frame ({h}, {w}, 3) and poses (T, {h}, {w}, 3) "
                             f"{batching}, got {given[0]} and {given[1]}")

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
    """Before anything is loaded or written: N > 1 samples need ground truth to choose the
    best of N by; a submission is of the test split, to a path that can be written now."""
    if opts.split == "test" and opts.num_samples > 1:
        raise ConfigError(f"--num_samples {opts.num_samples} with --split test: the test split has no ground "
                          f"truth to choose the best of N by, and one sample per video is generated; give "
                          f"--num_samples 1 (the default)")
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


SAMPLES_PER_PROGRAM = 16  # samples generated at once at most: a 630-frame 32x64 sample is 15 MB


def _repeated(first_frame, poses, n: int):
    """One video's inputs as a batch of n (for `check_finite`'s account of each sample)."""
    return np.broadcast_to(first_frame, (n, *first_frame.shape)), np.broadcast_to(poses, (n, *poses.shape))


def _chunks(n: int) -> list[range]:
    """Sample ranges of one size, at most SAMPLES_PER_PROGRAM, covering 0..n-1; the last one
    may run past n-1 (its extra samples are generated and dropped) so that every chunk is
    one compiled program."""
    count = -(-n // SAMPLES_PER_PROGRAM)
    size = -(-n // count)
    return [range(start, start + size) for start in range(0, n, size)]


def _score_video(model, cfg, opts, name, first, poses, truth, video_key, with_ssim: bool):
    """One video's N samples, generated and checked, and scored where there is a truth ->
    (scores {metric: (N, frames)} or None, the sample kept: the best by mean PSNR, or the
    unscored sample). Only the best sample so far is held, not all N."""
    n, mode = opts.num_samples, opts.z_mode or cfg.z_mode
    keys = sample_keys(video_key, n)
    scores, kept = {"psnr": [], "ssim": [], "course_score": []}, None
    for chunk in _chunks(n):
        chunk_keys = keys[np.minimum(np.asarray(chunk), n - 1)]  # a short last chunk repeats the last key
        frames = model.samples(first, poses, chunk_keys, mode, check=False)[:n - chunk.start]
        model.check_finite(frames, [f"{opts.split} video {name}" + (f" (sample {chunk.start + s})" if n > 1 else "")
                                    for s in range(len(frames))], _repeated(first, poses, len(frames)))
        if truth is None:
            return None, frames[0]
        scores["psnr"].append(np.asarray(metrics.psnr(frames[:, 1:], truth[1:])))
        scores["course_score"].append(metrics.course_psnr(frames, np.broadcast_to(truth, frames.shape)))
        if with_ssim:  # one sample at a time: SSIM's moments of a whole chunk would be 5 x its frames
            scores["ssim"].append(np.stack([np.asarray(metrics.ssim(f[1:], truth[1:])) for f in frames]))
        best = int(metrics.best_of_n({"psnr": np.concatenate(scores["psnr"])[None]}, by="psnr")[0][0])
        if best >= chunk.start:  # the best so far is in this chunk
            kept = frames[best - chunk.start]
    return {m: np.concatenate(v) for m, v in scores.items() if v}, kept


def evaluate(model: Lab4Model, cfg, opts, out, log=print) -> dict:
    """Returns {"out", "psnr" and "ssim" (videos, samples, frames) or None, "best_sample"
    (videos,), "mean_psnr", "mean_ssim", "course_score" (the Kaggle formula on val,
    `metrics.course_score`): the best-of-N figures, today's at N = 1, "summary" (best_* and
    mean_* of each), "protocol" (what was scored and chosen), "submission" (its path, when
    written)}. Also written: summary.json (the same figures and protocol, and "sample_psnr":
    each sample's mean PSNR, videos x samples, the spread best of N chose from)."""
    n = opts.num_samples
    base = jax.random.key(opts.seed)
    with_ssim = min(cfg.frame_H, cfg.frame_W) >= metrics.SSIMParams().win_size  # its window must fit in a frame
    seqs = _sequences(cfg, opts.split, log)  # a bad layout fails here, before any rollout
    test = opts.split == "test"
    if opts.submission:
        _same_length(seqs)  # before any rollout
    per_video, kept = [], []
    for v, (name, first, poses, truth) in enumerate(seqs):  # every video checked before anything is written
        scores, frames = _score_video(model, cfg, opts, name, first, poses, truth, jax.random.fold_in(base, v),
                                      with_ssim)
        per_video.append(scores)
        kept.append(frames)
    for v, ((name, first, poses, truth), frames) in enumerate(zip(seqs, kept)):
        panels = [frames] + ([truth] if truth is not None else []) + [poses]
        media.write_gif(media.side_by_side(*panels), out / f"{opts.split}{name}.gif")
        if test:  # the course Tester's GIF: the prediction alone, native size, 20 ms a frame
            media.write_gif(frames, out / f"pred_seq{v}.gif", duration_ms=20, scale=1)
    if opts.save_frames:
        np.savez_compressed(opts.save_frames, pred=np.stack(kept).astype(np.float32))
    scored = per_video[0] is not None
    layout = "prediction | ground truth | pose" if scored else "prediction | pose"
    result = {"out": out, "psnr": None, "ssim": None, "mean_psnr": None, "mean_ssim": None, "course_score": None}
    if scored:
        result.update(_report(per_video, cfg, opts, out, with_ssim, log))
    else:
        log(f"generated {len(kept)} test sequence(s) (not scored: the test split has no ground truth)")
    if opts.submission:
        videos = np.stack(kept)
        try:
            result["submission"] = submission.write_submission(opts.submission, videos, [s[0] for s in seqs])
        except OSError as err:
            raise ConfigError(f"--submission {opts.submission}: cannot write the submission there: "
                              f"{err.strerror or err}") from None
        v_count, t, h, w, c = videos.shape
        course = "" if (t, h, w) == (630, 32, 64) else "; the course's Kaggle expects 630 frames of 32x64 per video"
        log(f"wrote the submission {opts.submission}: {v_count * t} rows ({v_count} test videos in numeric folder "
            f"order x {t} frames, frame 0 the given one) x {c * h * w} columns "
            f"((C, H, W) = ({c}, {h}, {w})), values rint(255 clip(x, 0, 1)){course}")
    gifs = f"GIFs ({layout}{f', best of {n}' if scored and n > 1 else ''}) in {out}" + (
        "; pred_seq<i>.gif: the course Tester's, prediction only, i = the video's position in numeric folder order"
        if test else "")
    log(gifs + (f"; {'best samples' if scored and n > 1 else 'frames'} saved to {opts.save_frames}"
                if opts.save_frames else ""))
    return result


def _report(per_video, cfg, opts, out, with_ssim: bool, log) -> dict:
    """Best of N and mean of N from every video's per-sample scores: printed with their
    protocol, written (per-frame CSV and plots, summary.json), returned."""
    mode, n = opts.z_mode or cfg.z_mode, opts.num_samples
    scores = {m: np.stack([s[m] for s in per_video]) for m in per_video[0]}  # {m: (videos, samples, frames)}
    best_sample, best, mean = metrics.best_of_n(scores, by="psnr")
    summary = {f"{kind}_{m}": float(np.mean(d[m])) for kind, d in (("best", best), ("mean", mean)) for m in scores}
    videos, frames = scores["psnr"].shape[0], scores["psnr"].shape[-1]
    params = metrics.SSIMParams()
    last = min(metrics.COURSE_LAST_FRAME, frames)
    z = "~ N(0, I) per step" if mode == "sample" else "= 0 (prior mean)"
    ssim_text = (f"SSIM Gaussian window {params.win_size}, sigma {params.sigma}" if with_ssim else
                 f"SSIM not computed: {cfg.frame_H}x{cfg.frame_W} frames are smaller than its "
                 f"{params.win_size}-pixel window")
    course_text = (f"the Kaggle leaderboard's formula (demo.py): PSNR per frame on the integer frames "
                   f"rint(255 clip(x, 0, 1)), data range 255, frames 1..{last} of each video")
    selection = (f"best of {n}: for each video, the sample with the highest mean PSNR over frames 1..{frames}; "
                 f"every best-of-{n} figure is that sample's; mean of {n}: each per-frame figure averaged over "
                 f"the {n} samples" if n > 1 else "one sample per video: nothing chosen")
    core = (f"{videos} {opts.split} video(s) x {n} sample(s), frames 1..{frames} of each scored (frame 0 given), "
            f"PSNR per frame over all pixels, data range 1.0, z {z}, {opts.which} checkpoint, seed {opts.seed}")
    protocol = f"{core}; {selection}; {ssim_text}; course score: {course_text}"
    columns = {"psnr": best["psnr"], **({"ssim": best["ssim"]} if with_ssim else {})}
    if n > 1:
        columns = {f"{kind}_{m}": d[m] for kind, d in (("best", best), ("mean", mean)) for m in columns}
    csv_path, json_path = out / "psnr_per_frame.csv", out / "summary.json"
    media.write_per_frame_csv(csv_path, columns)
    of_n = f", best of {n} by mean PSNR" if n > 1 else ""
    figures = [plots.plot_psnr_per_frame(best["psnr"], out / "psnr_per_frame.png",
                                         f"{opts.split} PSNR per frame ({mode} z{of_n})")]
    if with_ssim:
        figures.append(plots.plot_ssim_per_frame(best["ssim"], out / "ssim_per_frame.png",
                                                 f"{opts.split} SSIM per frame ({mode} z{of_n})"))
    json_path.write_text(json.dumps({"protocol": protocol, "selection": selection, "num_samples": n, "z_mode": mode,
                                     "videos": videos, "scored_frames": [1, frames],
                                     "best_sample": best_sample.tolist(), **summary,
                                     "sample_psnr": np.mean(scores["psnr"], axis=-1).tolist()}, indent=1) + "\n")
    if n == 1:  # the one sample's figures, in the lines printed before N could be more
        if with_ssim:
            ssim_text = (f"mean SSIM {summary['best_ssim']:.4f} (Gaussian window {params.win_size}, "
                         f"sigma {params.sigma})")
        log(f"mean PSNR {summary['best_psnr']:.3f} dB | protocol: {core}; {ssim_text}")
        log(f"course score {summary['best_course_score']:.3f} dB | {course_text}, mean over frames and videos")
    else:
        log(f"protocol: {protocol}")
        for kind in ("best", "mean"):
            log(f"  {kind} of {n}: PSNR {summary[f'{kind}_psnr']:.3f} dB"
                + (f" | SSIM {summary[f'{kind}_ssim']:.4f}" if with_ssim else "")
                + f" | course score {summary[f'{kind}_course_score']:.3f} dB")
    log(f"wrote {csv_path} (rows: video, frame; columns: {', '.join(columns)}), "
        + ", ".join(map(str, figures)) + f", {json_path}")
    return {"psnr": scores["psnr"], "ssim": scores.get("ssim"), "best_sample": best_sample,
            "mean_psnr": summary["best_psnr"], "mean_ssim": summary.get("best_ssim"),
            "course_score": summary["best_course_score"], "summary": summary, "protocol": protocol}
