"""SVG end to end at toy sizes: the data pipeline on the processed-folder layout, the
command lines (train.py --model svg, evaluate.py), bit-exact resume, `load_checkpoint`,
and the TFDS source behind `--data tfds`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from cvae_jax import checkpointing, metrics
from cvae_jax.cli import config_from_args, train_parser
from cvae_jax.config import preset
from cvae_jax.data import pushing
from cvae_jax.data.bair_folder import write_sequence
from cvae_jax.svg_evaluation import SVGModel
from cvae_jax.train_step import make_predict
from cvae_jax.training import train_and_evaluate
from test_training import QUIET, leaves, restored, subprocess_env

TINY = ["--model", "svg", "--vgg_width", "4", "--g_dim", "8", "--z_dim", "3", "--rnn_size", "8",
        "--batch_size", "2", "--n_past", "2", "--n_future", "3", "--n_eval", "8",
        "--scan_unroll", "1"]
# Every training run here uses these, so one compiled training step serves them all (the
# command-line run, last in this file, loads it from the session's cache): the learned
# prior, teacher forcing drawn per batch, a KL ramp per step.
TRAIN = ["--prior", "learned", "--tfr", "0.5", "--tf_mode", "batch", "--kl_anneal_type", "Monotonic",
         "--kl_anneal_per", "step"]


def _sequence(rng, t=8):
    frames = rng.integers(0, 256, (t, 64, 64, 3), dtype=np.uint8)
    return frames, rng.normal(size=(t, 4)).astype(np.float32), rng.normal(size=(t, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def bair_root(tmp_path_factory):
    """The course's processed layout: 5 train, 3 validate, 1 test sequences of 8 frames."""
    root = tmp_path_factory.mktemp("bair")
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("validate", 3), ("test", 1)):
        for k in range(n):
            write_sequence(root / split / f"traj_0_to_{n - 1}" / str(k), *_sequence(rng))
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("svg_runs")


def parse(*argv):
    return config_from_args(train_parser().parse_args(list(argv)))


def run_flags(bair_root, workdir, *extra) -> list[str]:
    return [*TINY, "--data", "folder", "--DR", str(bair_root), "--save_root", str(workdir),
            "--epoch_size", "2", "--val_every", "1", *TRAIN, *extra]


def tiny_cfg(bair_root, workdir, *extra):
    return parse(*run_flags(bair_root, workdir, *extra))


def test_svg_flags_use_the_course_names():
    cfg = parse("--preset", "bair", "--n_past", "3", "--n_future", "7", "--tfr_start_decay_epoch", "4",
                "--tfr_decay_step", "0.05", "--tfr_lower_bound", "0.2", "--kl_anneal_cyclical",
                "--epoch_size", "9", "--last_frame_skip", "--z_dim", "32", "--posterior_rnn_layers", "2")
    assert (cfg.model, cfg.n_past, cfg.n_future, cfg.tfr_sde, cfg.tfr_d_step, cfg.tfr_floor) == ("svg", 3, 7, 4, 0.05, 0.2)
    assert (cfg.kl_anneal_type, cfg.steps_per_epoch, cfg.last_frame_skip, cfg.z_dim) == ("Cyclical", 9, True, 32)
    assert parse("--preset", "bair", "--no-kl_anneal_cyclical").kl_anneal_type == "Monotonic"
    bair = preset("bair")  # the course defaults
    assert (bair.lr, bair.beta1, bair.batch_size, bair.n_past, bair.n_future, bair.z_dim, bair.g_dim,
            bair.rnn_size, bair.grad_clip) == (0.002, 0.9, 12, 2, 10, 64, 128, 256, 0.0)
    assert parse("--model", "svg") == preset("cpu", "svg")
    with pytest.raises(ValueError, match="--n_eval"):
        parse("--model", "svg", "--n_future", "29")
    with pytest.raises(ValueError, match="--DR"):
        parse("--model", "svg", "--data", "folder")


def test_pushing_data_batches_and_baseline(bair_root, workdir):
    cfg = tiny_cfg(bair_root, workdir)
    data = pushing.PushingData(cfg, log=QUIET)
    batches = list(data.epoch_batches(0))
    assert len(batches) == data.steps_in_epoch(0) == 2
    frames, cond = batches[0]
    assert frames.shape == (2, 5, 64, 64, 3) and frames.dtype == np.float32 and cond.shape == (2, 5, 7)
    assert 0 <= frames.min() and frames.max() <= 1
    again = list(pushing.PushingData(cfg, log=QUIET).epoch_batches(0))
    np.testing.assert_array_equal(again[1][0], batches[1][0])  # replayable: keyed by (seed, epoch)
    (vf, vc), truth = data.val_batches()[0]
    assert vf.shape == (3, 8, 64, 64, 3) and truth.shape == (3, 3, 64, 64, 3)
    np.testing.assert_array_equal(truth, vf[:, 2:5])
    last = np.broadcast_to(vf[:, 1:2], truth.shape)
    np.testing.assert_allclose(data.baseline_psnr(), metrics.psnr(last, truth), rtol=1e-6)


def test_val_chunks_are_padded_to_one_shape(bair_root, workdir, monkeypatch):
    monkeypatch.setattr(pushing, "VAL_CHUNK", 2)
    data = pushing.PushingData(tiny_cfg(bair_root, workdir), log=QUIET)
    chunks = data.val_batches()
    assert [c[0][0].shape[0] for c in chunks] == [2, 2] and [len(c[1]) for c in chunks] == [2, 1]


def test_synthetic_source_follows_the_config(monkeypatch, bair_root, tmp_path):
    seen = {}

    def fake_ensure(cache_root, spec):
        seen["spec"] = spec
        return bair_root

    monkeypatch.setattr(pushing, "ensure_synthetic", fake_ensure)
    cfg = parse(*TINY, "--synthetic_seed", "3", "--synthetic_sequences", "7", "--cache_dir", str(tmp_path))
    src = pushing.sources(cfg, log=QUIET)
    assert (seen["spec"].seed, seen["spec"].train_sequences) == (3, 7)
    assert len(src["train"]) == 5 and len(src["validate"]) == 3


@pytest.fixture(scope="module")
def one_epoch_run(bair_root, workdir):
    """A run folder after one epoch (two steps), for the tests that need a trained model."""
    return train_and_evaluate(tiny_cfg(bair_root, workdir, "--run_name", "sel", "--num_epoch", "1"), log=QUIET)


def test_prediction_uses_running_stats_and_is_per_sequence(one_epoch_run):
    """Training moved every BatchNorm's running variance off its initial 1 (some means stay
    0 by symmetry: with batch 2 BatchNorm1d makes the two samples' features exact
    opposites); prediction uses those running averages, so a sequence's prediction does
    not depend on which others share its batch."""
    state, _ = restored(one_epoch_run)
    variances = [np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(state.batch_stats)
                 if "var" in jax.tree_util.keystr(p)]
    assert len(variances) == 11 + 10 + 1
    assert all(not np.allclose(v, 1.0) for v in variances)
    cfg = checkpointing.load_config(one_epoch_run)
    predict = make_predict(checkpointing.abstract_state(cfg)[0], cfg, z_mode="mean")
    rng = np.random.default_rng(0)
    frames, cond = rng.random((3, 5, 64, 64, 3), dtype=np.float32), rng.random((3, 5, 7), dtype=np.float32)
    together = np.asarray(predict(state.params, state.batch_stats, (frames, cond), jax.random.key(0)))
    alone = np.asarray(predict(state.params, state.batch_stats, (frames[1:2], cond[1:2]), jax.random.key(0)))
    np.testing.assert_allclose(together[1], alone[0], atol=1e-5)


def test_best_of_n_selection(one_epoch_run, workdir, monkeypatch):
    """Best = the sample with the highest mean SSIM, per sequence; mean = over samples."""
    from cvae_jax.evaluation import evaluate
    predict = SVGModel.predict

    def noisy(self, context, cond, key=None, **kw):
        """A toy model's samples differ below float resolution; make them differ visibly."""
        out = predict(self, context, cond, key, **kw)
        return np.clip(out + 0.05 * np.asarray(jax.random.normal(key, out.shape)), 0, 1)

    monkeypatch.setattr(SVGModel, "predict", noisy)
    res = evaluate(one_epoch_run, num_samples=4, log=QUIET, out=workdir / "sel_eval")
    s = res["scores"]  # (sequences, samples, frames)
    assert s["ssim_channel"].shape == (3, 4, 3)
    best = np.argmax(s["ssim_channel"].mean(-1), axis=1)
    np.testing.assert_allclose(res["best"]["psnr_image"], s["psnr_image"][np.arange(3), best])
    np.testing.assert_allclose(res["mean"]["ssim_image"], s["ssim_image"].mean(1), rtol=1e-6)
    assert np.all(res["best"]["ssim_channel"].mean(-1) > res["mean"]["ssim_channel"].mean(-1))
    assert not np.allclose(s["psnr_image"][:, 0], s["psnr_image"][:, 1])  # samples differ


def test_resume_is_bit_exact_and_checkpoint_predicts(bair_root, workdir):
    extra = ("--num_epoch", "2")
    full = train_and_evaluate(tiny_cfg(bair_root, workdir, "--run_name", "full", *extra), log=QUIET)
    part = train_and_evaluate(tiny_cfg(bair_root, workdir, "--run_name", "part", *extra), num_epoch=1,
                              log=QUIET)
    train_and_evaluate(resume=str(part), num_epoch=2, log=QUIET)
    a, _ = restored(full)
    b, _ = restored(part)
    for x, y in zip(leaves(a), leaves(b)):
        np.testing.assert_array_equal(x, y)
    # validation also scores SSIM (64x64 frames fit its window); BAIR has no course score
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["val_ssim"] <= 1 and "val_course_score" not in r for r in records), records
    model = checkpointing.load_checkpoint(full, which="latest")
    rng = np.random.default_rng(0)
    ctx, cond = rng.random((2, 64, 64, 3), dtype=np.float32), rng.random((6, 7), dtype=np.float32)
    out = model.predict(ctx, cond, jax.random.key(1), n_future=4)
    assert out.shape == (4, 64, 64, 3)
    np.testing.assert_array_equal(out, model.predict(ctx, cond, jax.random.key(1), n_future=4))
    with pytest.raises(ValueError, match="cond"):
        model.predict(ctx, cond[:3], n_future=4)
    with pytest.raises(AttributeError, match=r"SVGModel \(a --model svg run.*no 'generate'; it offers .*'predict'"):
        model.generate(ctx[0], ctx)


@pytest.mark.tfds
def test_tfds_source_feeds_training_batches(workdir, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = parse(*TINY, "--data", "tfds", "--data_dir", str(tmp_path), "--camera", "image_main",
                "--epoch_size", "1", "--val_sequences", "2")
    with tfds.testing.mock_data(num_examples=4):
        data = pushing.PushingData(cfg, log=QUIET)
        frames, cond = next(iter(data.epoch_batches(0)))
    assert frames.shape == (2, 5, 64, 64, 3) and cond.shape == (2, 5, 7)
    assert data.val_frames.shape == (2, 8, 64, 64, 3)


@pytest.mark.tfds
def test_train_and_evaluate_on_tfds(one_epoch_run, tmp_path):
    """A run trained on the processed folder is evaluated on (mocked) TFDS data."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from cvae_jax.evaluation import evaluate
    with tfds.testing.mock_data(num_examples=3):
        res = evaluate(one_epoch_run, data="tfds", data_dir=str(tmp_path), num_samples=2, log=QUIET,
                       out=tmp_path / "eval")
    assert res["scores"]["psnr_image"].shape == (3, 2, 3)
    assert np.isfinite(res["summary"]["best_psnr_image"])


def test_train_and_evaluate_cli_end_to_end(bair_root, workdir):
    argv = run_flags(bair_root, workdir, "--run_name", "cli", "--num_epoch", "1")
    proc = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "vs repeat-last-context-frame baseline" in proc.stdout, proc.stdout
    run = workdir / "cli"
    for name in ("config.json", "metrics.jsonl", "training.png", "val_psnr_per_frame.png", "val_video0.gif"):
        assert (run / name).stat().st_size > 0, name
    out = workdir / "eval"
    proc = subprocess.run([sys.executable, "evaluate.py", "--run", str(run), "--num_samples", "3",
                           "--n_future", "6", "--out", str(out), "--save_frames", str(out / "best.npz")],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 context -> 6 predicted frames" in proc.stdout and "best of 3" in proc.stdout, proc.stdout
    assert "(per-channel, SVG)" in proc.stdout and "(image)" in proc.stdout
    rows = list(csv.DictReader(open(out / "metrics_per_frame.csv")))
    assert [int(r["frame"]) for r in rows] == [2, 3, 4, 5, 6, 7]
    for r in rows:
        # a mean of per-channel log-MSEs is never below the log of their mean (Jensen)
        assert float(r["best_psnr_channel"]) >= float(r["best_psnr_image"]) - 1e-4
    assert len(list(out.glob("validate*.gif"))) == 3
    assert np.load(out / "best.npz")["pred"].shape == (3, 6, 64, 64, 3)
    for name in ("psnr_per_frame.png", "ssim_per_frame.png"):
        assert (out / name).stat().st_size > 0
