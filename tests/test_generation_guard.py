"""Generation never hands back NaN silently (issue 27): `Lab4Model.generate`,
`SVGModel.predict` and evaluate.py stop at the first non-finite frame with one message
that names the video and frame and says how the inputs differ from the training data.

The failure users hit: poses drawn on a black canvas (OpenPose's default) where the
training poses were drawn on white. The pose encoder's BatchNorm then scales a black
canvas's features far from its running mean, and the decoder's gated blocks square them
until they overflow. Reproduced here on a run trained at toy dims (tests/fixtures/run_v1), whose
pose statistics are first brought to where a longer run's converge (see
`converge_pose_statistics`): after the toy run's six updates they still hold half their
initial values, and a black canvas is then only ~1 standard deviation off and stays finite.

No guard inside the model. Clamping the normalised pose features would be the cheap one,
but no bound is safe for every dataset: features of a black canvas lie ~160 running
standard deviations off here and those of the training and validation poses at most ~5,
yet a channel that responds only to a fraction p of the pixels (a thin limb) lies up to
~sqrt(1/p) deviations off in distribution (p = 0.25 %: 20), so any bound tight enough to
stop the overflow could change results on a real dataset; and frames generated from such
poses would be finite but meaningless. The error says what to fix (README, "Pose images").
"""

from __future__ import annotations

import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from conftest import ROOT
from cvae_jax import checkpointing, cli, inference, load_checkpoint
from cvae_jax.data.dance import dataset_root, load_dance
from cvae_jax.errors import InputError, NonFiniteOutputError

QUIET = lambda line: None  # noqa: E731


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("guard")


@pytest.fixture(scope="module")
def run(workdir):
    """A real tiny Lab4 run, trained by an earlier release (tests/fixtures/run_v1): nothing to train here."""
    return pathlib.Path(shutil.copytree(ROOT / "tests" / "fixtures" / "run_v1", workdir / "run"))


@pytest.fixture(scope="module")
def data(run):
    return load_dance(checkpointing.load_config(run), log=QUIET)


def converge_pose_statistics(model, train_poses, updates: int = 200) -> None:
    """Fold the training poses' BatchNorm moments into the pose encoder's running averages
    `updates` times, as a longer run would (momentum 0.1: 0.9^200 ~ 7e-10 of the start
    left). The toy run's two steps of three time steps leave 0.9^6 = 53 % of the initial
    values (mean 0, variance 1) where the training poses' features have variance ~1e-4."""
    net = nnx.merge(model._graphdef, model.params, model.batch_stats)
    _, (mean, var) = net.pose_encoder(jnp.asarray(train_poses)[None], use_running_average=False)
    repeat = lambda x: jnp.repeat(x.reshape(1, -1), updates, axis=0)  # noqa: E731
    bn = net.pose_encoder.bn
    run_mean, run_var = bn.updated_running_stats(repeat(mean), repeat(var), count=int(np.prod(train_poses.shape[:3])))
    stats = model.batch_stats["pose_encoder"]["bn"]
    stats["mean"][...], stats["var"][...] = run_mean, run_var


@pytest.fixture(scope="module")
def model(run, data):
    """The run restored, with converged pose statistics."""
    m = load_checkpoint(run, which="latest")
    converge_pose_statistics(m, data.train_poses.astype(np.float32) / 255)
    return m


def on_black(white):
    """An OpenPose-style rendering of the same skeleton on a black canvas: its colours have
    a zero channel, so the canvas is what every channel shares."""
    return white - white.min(-1, keepdims=True)


def first_non_finite(frames) -> int:
    return int(np.argmax(~np.isfinite(frames.reshape(len(frames), -1)).all(-1)))


def test_black_poses_stop_at_the_first_non_finite_frame_naming_video_and_cause(model, data):
    truth, poses = data.val_frames[0], data.val_poses[0]
    first, black = np.stack([truth[0]] * 2), np.stack([poses, np.zeros_like(poses)])
    raw = model.generate(first, black, jax.random.key(0), check=False)
    assert np.isfinite(raw[0]).all() and not np.isfinite(raw[1]).all()  # the NaN, reproduced
    t = first_non_finite(raw[1])
    with pytest.raises(NonFiniteOutputError) as err:
        model.generate(first, black, jax.random.key(0))
    message = str(err.value)
    assert message.startswith(f"generate: video 1 of the batch: frame {t} is the first non-finite frame (NaN; ")
    assert "\n" not in message
    # the cause: the poses' mean pixel value against the training poses', read from the BatchNorm
    mean = float(re.search(r"trained on average about ([\d.]+)", message).group(1))
    assert mean == pytest.approx(np.mean(data.train_poses / 255), abs=0.01)
    assert "their mean pixel value is 0.000" in message
    assert float(re.search(r"lie (\d+) standard deviations", message).group(1)) > 50
    assert "black canvas where the training poses were drawn on white" in message
    assert isinstance(err.value, InputError) and isinstance(err.value, ValueError)
    assert isinstance(err.value, FloatingPointError)


def test_in_distribution_output_is_unchanged_and_the_readme_conversion_works(model, data):
    truth, poses = data.val_frames[0], data.val_poses[0]
    out = model.generate(truth[0], poses, jax.random.key(0))
    np.testing.assert_array_equal(out, model.generate(truth[0], poses, jax.random.key(0), check=False))
    assert np.isfinite(out).all()
    dark = on_black(poses)
    with pytest.raises(ValueError, match=r"^generate: the video: frame \d+ .*black canvas"):
        model.generate(truth[0], dark, jax.random.key(0))
    converted = dark + 1 - dark.max(-1, keepdims=True)  # the README's snippet
    assert np.isfinite(model.generate(truth[0], converted, jax.random.key(0))).all()


def test_uint8_range_poses_are_named_as_the_cause(model, data):
    truth, poses = data.val_frames[0], data.val_poses[0]
    with pytest.raises(NonFiniteOutputError, match=r"poses are not floats in \[0, 1\] \(they span \[.*, 255\]\)"):
        model.generate(truth[0], poses * 255, jax.random.key(0))


def test_evaluating_black_poses_is_a_one_line_usage_error(run, model, workdir, capsys, keep_cache_config):
    # the run with its converged statistics, as a run folder
    cfg = checkpointing.load_config(run)
    last, _ = checkpointing.managers(run, cfg.keep_last)
    state, meta = checkpointing.restore(last, checkpointing.abstract_state(cfg)[1])
    folder = workdir / "converged"
    checkpointing.save_config(folder, cfg)
    manager, _ = checkpointing.managers(folder, cfg.keep_last)
    checkpointing.save(manager, int(state.step), state._replace(batch_stats=model.batch_stats), meta)
    manager.wait_until_finished()
    # its validation video with the poses on a black canvas
    root = workdir / "black_poses"
    shutil.copytree(dataset_root(cfg, QUIET) / "val", root / "val")
    for path in (root / "val" / "val_label").glob("*.png"):
        Image.new("RGB", Image.open(path).size).save(path)
    out = workdir / "eval"
    with pytest.raises(SystemExit) as exit_:
        cli.evaluate_main(["--run", str(folder), "--DR", str(root), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert re.match(r"cvae-jax-evaluate: error: val video 0: frame \d+ is the first non-finite frame \(NaN; ", err)
    assert "their mean pixel value is 0.000" in err and "drawn on white" in err
    assert not list(out.glob("*.gif")) and not (out / "psnr_per_frame.csv").exists()  # nothing written


# --------------------------------------------------------------------------- the shared check


def test_check_finite_names_video_and_frame_and_passes_finite_frames():
    frames = np.zeros((3, 5, 2, 2, 3), np.float32)
    assert inference.check_finite(frames, ["a", "b", "c"]) is not None
    frames[2, 1, 0, 0, 0] = np.nan       # a later video: not the first reported
    frames[1, 3:, 1, 1, 2] = np.inf
    with pytest.raises(NonFiniteOutputError) as err:
        inference.check_finite(frames, ["a", "b", "c"], first_index=2, what="predicted frames",
                               explain=lambda v: f"why {v}")
    assert str(err.value) == ("b: frame 5 is the first non-finite frame (infinite; 2 of its 5 predicted "
                              "frames are non-finite). why 1")
    with pytest.raises(ValueError, match="2 names for 3 videos"):
        inference.check_finite(frames, ["a", "b"])


def test_feature_shift_equals_the_conv_and_batchnorm_it_describes(rng):
    images = rng.random((4, 6, 9, 3), dtype=np.float32)
    kernel, bias = rng.normal(size=(7, 7, 3, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    mean, var = rng.normal(size=5), rng.uniform(0.5, 2, 5)
    padded = jnp.pad(images, [(0, 0), (3, 3), (3, 3), (0, 0)], mode="reflect")
    out = jax.lax.conv_general_dilated(padded, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    want = (np.asarray(out + bias).mean((0, 1, 2)) - mean) / np.sqrt(var + 1e-5)
    got = inference.feature_shift(images, kernel, bias, mean, var, 3, "reflect")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_trained_input_mean_needs_converged_statistics(rng):
    kernel, bias = rng.normal(size=(7, 7, 3, 16)), rng.normal(size=16)
    converged = bias + 0.9 * kernel.sum((0, 1, 2))  # training images of mean pixel value 0.9
    assert inference.trained_input_mean(kernel, bias, converged, np.full(16, 1e-3)) == pytest.approx(0.9)
    # after six updates: half the initial variance left, the running mean a fraction of the data's
    assert inference.trained_input_mean(kernel, bias, 0.47 * converged, np.full(16, 0.53)) is None


# --------------------------------------------------------------------------- SVG, without compiling it


@pytest.fixture
def svg_model():
    from conftest import random_module
    from test_svg_model import tiny_cfg

    from cvae_jax.models import svg
    from cvae_jax.svg_evaluation import SVGModel
    cfg = tiny_cfg()
    graphdef, params, batch_stats = nnx.split(random_module(lambda: svg.build(cfg, jax.random.key(0))),
                                              nnx.Param, nnx.BatchStat)
    m = SVGModel(cfg, graphdef, params, batch_stats, {}, "<test>")

    def compiled(fn, cfg=None, cache_key=None):  # the model's output: sequence 1 NaN from frame 1 on
        n_future = cache_key[1]  # predict's key: ("predict", n_future, z_mode)

        def run(inputs, key):
            out = np.full((len(inputs[0]), n_future, 64, 64, 3), 0.5, np.float32)
            out[1:, 1:] = np.nan
            return out
        return run

    m.compiled = compiled
    return m


def test_svg_predict_names_sequence_frame_and_out_of_range_context(svg_model, rng):
    context, cond = rng.random((2, 2, 64, 64, 3), dtype=np.float32), rng.random((2, 5, 7), dtype=np.float32)
    with pytest.raises(NonFiniteOutputError, match=r"^predict: sequence 1 of the batch: frame 3 is the first "
                       r"non-finite frame \(NaN; 2 of its 3 predicted frames are non-finite\)\. Likely cause: "
                       r"the context frames are not floats in \[0, 1\]"):
        svg_model.predict(context * 255, cond)
    assert svg_model.predict(context[:1], cond[:1]).shape == (1, 3, 64, 64, 3)  # finite: returned
    assert np.isnan(svg_model.predict(context, cond, check=False)).any()


def test_svg_evaluate_names_the_split_sequence(svg_model, rng, monkeypatch, tmp_path):
    from cvae_jax import svg_evaluation
    from cvae_jax.evaluation import EvalOptions

    class Sequences:  # two batches of two sequences
        def __init__(self, cfg, log, splits):
            self.val_frames = rng.random((4, 5, 64, 64, 3), dtype=np.float32)
            self.cond = rng.random((4, 5, 7), dtype=np.float32)

        def val_batches(self):
            return [((self.val_frames[i:i + 2], self.cond[i:i + 2]), self.val_frames[i:i + 2, 2:]) for i in (0, 2)]

    monkeypatch.setattr(svg_evaluation, "PushingData", Sequences)
    with pytest.raises(NonFiniteOutputError, match=r"^validate sequence 1 \(sample 0\): frame 3 is the first"):
        svg_evaluation.evaluate(svg_model, svg_model.config, EvalOptions(num_samples=2), tmp_path)
