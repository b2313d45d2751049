"""Lab4 evaluation over N z samples per video (`evaluate.py --num_samples N`): best of N
(each video's sample with the highest mean PSNR) and mean of N, checked against samples
generated one key at a time and scored with NumPy; SSIM per frame in the CSV; N = 1 as
before; the flag combinations that are refused.

The model is a toy Lab4CVAE with random weights (conftest.random_model) at 16x32, large
enough for SSIM's 11-pixel window, on two random videos: no training, no dataset.
"""

from __future__ import annotations

import csv
import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import TINY_DIMS, random_model
from cvae_jax import lab4_evaluation, metrics
from cvae_jax.config import preset
from cvae_jax.evaluation import EvalOptions
from cvae_jax.lab4_evaluation import Lab4Model
from test_submission import no_rollout, run_main, run_v1  # noqa: F401 (run_v1: a fixture)

H, W, T = 16, 32, 6
VIDEOS = 2


@pytest.fixture(scope="module")
def model() -> Lab4Model:
    cfg = preset("lab4").replace(frame_H=H, frame_W=W, **TINY_DIMS, output_sigmoid=True, val_vi_len=T,
                                 scan_unroll=1).validated()
    graphdef, params, batch_stats = nnx.split(random_model(output_sigmoid=True), nnx.Param, nnx.BatchStat)
    return Lab4Model(cfg, graphdef, params, batch_stats, {}, "toy")


@pytest.fixture(scope="module")
def videos(model):
    """[(name, first frame, poses, truth)] as `lab4_evaluation._sequences` returns them; the
    truth is one of the model's own samples (another key), so that z decides the scores:
    a random model's samples differ little, and from random frames all alike."""
    rng = np.random.default_rng(0)
    out = []
    for v in range(VIDEOS):
        first = rng.uniform(0, 1, (H, W, 3)).astype(np.float32)
        poses = rng.uniform(0.8, 1, (T, H, W, 3)).astype(np.float32)
        out.append((str(v), first, poses, model.generate(first, poses, jax.random.key(100 + v))))
    return out


def evaluate(model, videos, monkeypatch, tmp_path, **options):
    monkeypatch.setattr(lab4_evaluation, "_sequences", lambda cfg, split, log: videos)
    lines = []
    res = lab4_evaluation.evaluate(model, model.config, EvalOptions(**options), tmp_path, lines.append)
    return res, "\n".join(lines)


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=np.float64)


def one_by_one(model, videos, n, seed=0):
    """Each sample generated alone with its key (video v: key(seed) folded with v; sample 0
    that key, sample s > 0 that key folded with s), scored with NumPy: (psnr, frames)
    of shape (videos, n, T-1) and (videos, n, T, H, W, 3)."""
    psnr, frames = np.zeros((VIDEOS, n, T - 1)), []
    for v, (_, first, poses, truth) in enumerate(videos):
        video_key = jax.random.fold_in(jax.random.key(seed), v)
        keys = [video_key] + [jax.random.fold_in(video_key, s) for s in range(1, n)]
        frames.append([model.generate(first, poses, k) for k in keys])
        for s, f in enumerate(frames[-1]):
            mse = np.mean((f[1:].astype(np.float64) - truth[1:]) ** 2, axis=(1, 2, 3))
            psnr[v, s] = 10 * np.log10(1 / mse)
    return psnr, np.array(frames)


def test_best_of_n_is_the_best_sample_by_mean_psnr_and_mean_of_n_their_mean(model, videos, monkeypatch,
                                                                            tmp_path):
    n = 3
    monkeypatch.setattr(lab4_evaluation, "SAMPLES_PER_PROGRAM", 2)  # chunks of 2: the last one padded
    npz = tmp_path / "pred.npz"
    res, log = evaluate(model, videos, monkeypatch, tmp_path, num_samples=n, save_frames=str(npz))
    psnr, frames = one_by_one(model, videos, n)
    np.testing.assert_allclose(res["psnr"], psnr, rtol=1e-4)  # every sample is its own key's
    assert len({round(x, 3) for x in psnr.mean(-1).ravel()}) == VIDEOS * n  # the samples differ
    best = psnr.mean(-1).argmax(1)
    np.testing.assert_array_equal(res["best_sample"], best)
    s = res["summary"]
    assert s["best_psnr"] == pytest.approx(psnr.mean(-1).max(1).mean(), rel=1e-5)
    assert s["mean_psnr"] == pytest.approx(psnr.mean(), rel=1e-5)
    assert s["best_psnr"] > s["mean_psnr"] > psnr.mean(-1).min(1).mean()
    assert res["mean_psnr"] == s["best_psnr"] and res["course_score"] == s["best_course_score"]
    # the best sample's other figures are that sample's, not each metric's own maximum
    chosen = frames[np.arange(VIDEOS), best]  # (videos, T, H, W, 3)
    truth = np.stack([v[3] for v in videos])
    assert s["best_ssim"] == pytest.approx(float(np.mean(metrics.ssim(chosen[:, 1:], truth[:, 1:]))), rel=1e-4)
    assert s["best_course_score"] == pytest.approx(metrics.course_score(chosen, truth), rel=1e-4)
    np.testing.assert_allclose(np.load(npz)["pred"], chosen, atol=1e-5)  # the best samples are saved
    header, rows = read_csv(tmp_path / "psnr_per_frame.csv")
    assert header == ["video", "frame", "best_psnr", "best_ssim", "mean_psnr", "mean_ssim"]
    assert len(rows) == VIDEOS * (T - 1) and list(rows[:T - 1, 1]) == list(range(1, T))
    np.testing.assert_allclose(rows[:, 2].reshape(VIDEOS, T - 1), psnr[np.arange(VIDEOS), best], rtol=1e-4)
    np.testing.assert_allclose(rows[:, 4].reshape(VIDEOS, T - 1), psnr.mean(1), rtol=1e-4)
    assert np.all(np.abs(rows[:, [3, 5]]) <= 1)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_sample"] == best.tolist() and summary["num_samples"] == n
    np.testing.assert_allclose(summary["sample_psnr"], psnr.mean(-1), rtol=1e-4)
    assert summary["selection"].startswith(f"best of 3: for each video, the sample with the highest mean PSNR "
                                           f"over frames 1..{T - 1}; every best-of-3 figure is that sample's")
    assert f"; {summary['selection']};" in summary["protocol"]
    assert f"protocol: {summary['protocol']}" in log
    assert f"  best of 3: PSNR {s['best_psnr']:.3f} dB | SSIM {s['best_ssim']:.4f} | course score" in log
    assert (tmp_path / "ssim_per_frame.png").is_file() and (tmp_path / "psnr_per_frame.png").is_file()


def test_one_sample_is_the_evaluation_before_best_of_n(model, videos, monkeypatch, tmp_path):
    res, log = evaluate(model, videos, monkeypatch, tmp_path, num_samples=1)
    psnr, _ = one_by_one(model, videos, 1)
    np.testing.assert_allclose(res["psnr"], psnr, rtol=1e-4)  # sample 0: the video's key, as before
    assert res["mean_psnr"] == pytest.approx(psnr.mean(), rel=1e-5)
    header, rows = read_csv(tmp_path / "psnr_per_frame.csv")
    assert header == ["video", "frame", "psnr", "ssim"]
    np.testing.assert_allclose(rows[:, 2], psnr.ravel(), rtol=1e-4)
    assert np.all((rows[:, 3] >= -1) & (rows[:, 3] <= 1)) and rows[:, 3].std() > 0
    assert log.startswith(f"mean PSNR {res['mean_psnr']:.3f} dB | protocol: 2 val video(s) x 1 sample(s), "
                          f"frames 1..{T - 1} of each scored (frame 0 given)")
    assert f"mean SSIM {res['mean_ssim']:.4f} (Gaussian window 11, sigma 1.5)" in log


def test_samples_equal_generate_with_each_key(model, videos):
    _, first, poses, _ = videos[0]
    keys = lab4_evaluation.sample_keys(jax.random.key(3), 2)
    out = model.samples(first, poses, keys)
    assert out.shape == (2, T, H, W, 3)
    np.testing.assert_array_equal(model.samples(first, poses, list(keys)), out)
    for s in range(2):
        np.testing.assert_allclose(out[s], model.generate(first, poses, keys[s]), atol=1e-5)
    with pytest.raises(ValueError, match=r"expected first_frame \(16, 32, 3\) .* \(one video\)"):
        model.samples(first[None], poses[None], keys)


@pytest.mark.parametrize("argv,message", [
    (["--z_mode", "mean", "--num_samples", "3"],
     "--num_samples 3 with --z_mode mean: z is the prior's mean, so all 3 samples would be the same video; "
     "give --z_mode sample to draw 3, or --num_samples 1"),
    (["--split", "test", "--num_samples", "2"],
     "--num_samples 2 with --split test: the test split has no ground truth to choose the best of N by, and one "
     "sample per video is generated; give --num_samples 1 (the default)"),
    (["--num_samples", "0"], "--num_samples must be at least 1, got 0"),
])
def test_pointless_sample_counts_are_refused_in_one_line(run_v1, tmp_path, capsys, monkeypatch, argv, message):
    no_rollout(monkeypatch)
    code, err = run_main(["--run", str(run_v1), "--out", str(tmp_path / "eval"), *argv], capsys)
    assert code == 2 and err == f"cvae-jax-evaluate: error: {message}\n"
    assert not (tmp_path / "eval").exists()


def test_a_run_that_generates_with_the_mean_is_refused_more_samples():
    from cvae_jax.errors import ConfigError
    from cvae_jax.evaluation import _num_samples
    with pytest.raises(ConfigError, match=r"^--num_samples 2 with z_mode mean \(the run's; --z_mode not given\)"):
        _num_samples(2, None, "mean", 1)
    assert _num_samples(None, None, "mean", 5) == 1  # svg's default of 5 would be 5 equal samples
    assert _num_samples(None, "sample", "mean", 5) == 5 and _num_samples(4, None, "sample", 1) == 4
