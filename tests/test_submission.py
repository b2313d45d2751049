"""The course path's test split: `evaluate.py --split test --submission OUT.csv` writes the
course's Kaggle CSV (format checked value by value, against independent code reading it
back with the csv module) and the Tester's GIFs; the course's score (`metrics.course_score`)
against the leaderboard's formula computed from CSVs; the errors (one line, exit 2, raised
before the rollout, nothing half-written).

Fixtures: the version-1 run folder (tests/fixtures/run_v1, 8x16 frames) and a test split
written here in the reference layout, with folders 2 and 10 (numeric order puts 2 first).
"""

from __future__ import annotations

import csv
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, exit_and_stderr
from cvae_jax import cli, evaluation, metrics, submission
from cvae_jax.checkpointing import load_checkpoint
from cvae_jax.data import dance_folder
from cvae_jax.errors import ConfigError, NonFiniteOutputError
from cvae_jax.evaluation import EvalOptions, _check_model_options
from cvae_jax.lab4_evaluation import Lab4Model

FIXTURE_V1 = ROOT / "tests" / "fixtures" / "run_v1"
H, W = 8, 16          # the run's frame size
T = 16                # poses per test video (as the run's val videos: one compiled program)
NAMES = ("10", "2")   # written in this order; read in numeric order 2, 10


def run_main(argv, capsys) -> tuple[int, str]:
    return exit_and_stderr(cli.evaluate_main, argv, capsys)


@pytest.fixture
def run_v1(tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(FIXTURE_V1, tmp_path / "run_v1"))


def write_png(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_test_split(root: pathlib.Path, names=NAMES, n_poses=T, seed=0) -> pathlib.Path:
    """<root>/test only, as the course's test download: random first frames (video 10's
    twice the model's size, so the loader resizes it) and random poses."""
    rng = np.random.default_rng(seed)
    for name in names:
        size = (2 * H, 2 * W) if name == "10" else (H, W)
        write_png(root / "test/test_img" / name / "frame000000.png", rng.integers(0, 256, (*size, 3), np.uint8))
        for i in range(n_poses):
            write_png(root / "test/test_label" / name / f"frame{i:06d}.png", rng.integers(0, 256, (H, W, 3), np.uint8))
    return root


@pytest.fixture
def test_root(tmp_path) -> pathlib.Path:
    return write_test_split(tmp_path / "DR")


def read_csv(path) -> tuple[list[str], list[list[int]]]:
    """The file as the csv module reads it: header, rows of ints."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [[int(v) for v in row] for row in rows[1:]]


def leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def fake_generate(monkeypatch, nan_at=None):
    """Lab4Model.samples (what evaluate.py generates with) without the model (no compile):
    the first frame, then the poses, once per key; `nan_at=(video index, frame)` puts a
    NaN into that video's frame."""
    calls = []

    def samples(self, first, poses, keys, z_mode=None, check=True):
        calls.append(len(poses))
        out = np.repeat(np.concatenate([first[None], poses[1:]]).astype(np.float32)[None], len(keys), axis=0)
        if nan_at is not None and len(calls) == nan_at[0] + 1:
            out[:, nan_at[1], 0, 0, 0] = np.nan
        return out

    monkeypatch.setattr(Lab4Model, "samples", samples)
    restore_once(monkeypatch)
    return calls


def full_disk_at(path):
    """os.replace, failing for `path` alone (the dataset cache renames its files too)."""
    real_replace = os.replace

    def replace(src, dst):
        if pathlib.Path(dst) == path:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)
    return replace


_RESTORED = []


def restore_once(monkeypatch):
    """evaluate.py's restore of run_v1, done once for the module (3-4 s each): for tests
    that fail before generating, or generate with `fake_generate`."""
    if not _RESTORED:
        _RESTORED.append(load_checkpoint(FIXTURE_V1))
    monkeypatch.setattr(evaluation, "load_checkpoint", lambda run, which="best": _RESTORED[0])


def no_rollout(monkeypatch):
    def generate(*args, **kwargs):
        raise AssertionError("the error must come before the rollout")
    monkeypatch.setattr(Lab4Model, "generate", generate)
    monkeypatch.setattr(Lab4Model, "samples", generate)
    restore_once(monkeypatch)


# --------------------------------------------------------------------------- the CSV writer


def test_rows_are_frames_flattened_in_c_h_w_order_clipped_and_rounded():
    rng = np.random.default_rng(0)
    videos = rng.uniform(-0.5, 1.5, (2, 3, 2, 3, 3)).astype(np.float32)  # (V, T, H, W, C)
    rows = submission.submission_rows(videos)
    assert rows.shape == (6, 18) and rows.dtype == np.uint8
    for r in range(6):
        v, t = divmod(r, 3)
        for j in range(18):
            c, y, x = j // 6, (j % 6) // 3, j % 3
            value = min(max(float(videos[v, t, y, x, c]), 0.0), 1.0)
            assert rows[r, j] == int(np.rint(np.float32(value) * np.float32(255))), (r, j)
    assert rows.min() == 0 and rows.max() == 255  # out-of-range values are clipped, not wrapped


def test_csv_text_is_what_the_csv_module_writes():
    rng = np.random.default_rng(1)
    for n, d in [(1, 1), (12, 7), (105, 3)]:  # ids of 1, 2 and 3 digits
        rows = rng.integers(0, 256, (n, d)).astype(np.uint8)
        rows[0, 0], rows[-1, -1] = 0, 255
        expected = [["id", *map(str, range(d))]] + [[str(i), *map(str, row)] for i, row in enumerate(rows.tolist())]
        text = submission.encode_csv(rows).decode("ascii")
        assert list(csv.reader(text.splitlines())) == expected
        assert text.endswith("\n") and "\r" not in text and text.count("\n") == n + 1


def test_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "submission.csv"
    out.write_text("the previous submission")
    videos = np.zeros((1, 2, 2, 2, 3), np.float32)

    monkeypatch.setattr(submission.os, "replace", full_disk_at(out))
    with pytest.raises(OSError, match="No space left"):
        submission.write_submission(out, videos)
    assert out.read_text() == "the previous submission" and leftovers(tmp_path) == []
    monkeypatch.undo()
    (tmp_path / "submission.csv").unlink()
    videos[0, 1, 0, 1, 2] = np.inf
    with pytest.raises(NonFiniteOutputError, match=r"test video 7: frame 1 is the first non-finite frame \(infinite; "
                                                  r"1 of its .* no submission written"):
        submission.write_submission(out, videos, names=["7"])
    assert list(tmp_path.iterdir()) == []
    videos[0, 1, 0, 1, 2] = 1.0
    submission.write_submission(out, videos)
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]
    assert read_csv(out)[1][1] == [1] + [0] * 9 + [255] + [0] * 2  # (c, y, x) = (2, 0, 1): column 9


# --------------------------------------------------------------------------- the course's score


def leaderboard_score(submission_csv, truth_csv, frames_per_video=630):
    """demo.py's formula, from the two CSVs only: per kept row (r % T != 0 and r % T < 601),
    PSNR of the integer values with data range 255; the mean over kept rows."""
    _, pred = read_csv(submission_csv)
    _, truth = read_csv(truth_csv)
    scores = []
    for p, t in zip(pred, truth):
        r = p[0]
        assert r == t[0]
        if r % frames_per_video != 0 and r % frames_per_video < 601:
            mse = np.mean((np.array(p[1:], np.float64) - np.array(t[1:], np.float64)) ** 2)
            scores.append(10 * np.log10(255.0**2 / mse))
    return float(np.mean(scores)), len(scores)


def test_course_score_is_the_leaderboards_formula_on_the_csvs(tmp_path):
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 256, (2, 630, 2, 3, 3)).astype(np.uint8)  # course-length videos, tiny frames
    pred = np.clip(truth / 255.0 + rng.normal(0, 0.1, truth.shape), -0.2, 1.2).astype(np.float32)
    # the truth CSV written by plain csv code, not by the writer under test
    with open(tmp_path / "gt.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", *range(18)])
        for r in range(2 * 630):
            writer.writerow([r, *truth[r // 630, r % 630].transpose(2, 0, 1).ravel().tolist()])
    submission.write_submission(tmp_path / "submission.csv", pred)
    expected, kept = leaderboard_score(tmp_path / "submission.csv", tmp_path / "gt.csv")
    assert kept == 2 * 600
    assert metrics.course_score(pred, truth) == pytest.approx(expected, rel=1e-12)
    assert metrics.course_score(pred, truth / np.float32(255)) == pytest.approx(expected, rel=1e-12)
    assert metrics.course_psnr(pred, truth).shape == (2, 600)
    # frames 601..629 do not count; frame 0 neither
    spoiled = pred.copy()
    spoiled[:, 601:], spoiled[:, 0] = 1 - spoiled[:, 601:], 0.5
    assert metrics.course_score(spoiled, truth) == metrics.course_score(pred, truth)
    # short videos: frames 1..T-1
    assert metrics.course_psnr(pred[:, :10], truth[:, :10]).shape == (2, 9)
    nan = pred.copy()
    nan[1, 5, 0, 0, 0] = np.nan
    assert np.isnan(metrics.course_psnr(nan, truth)[1, 4]) and np.isfinite(metrics.course_psnr(nan, truth)[0]).all()


# --------------------------------------------------------------------------- evaluate.py --split test


def test_the_test_split_writes_the_course_submission_and_gifs(run_v1, test_root, tmp_path, capsys,
                                                              keep_cache_config):
    out, csv_path, npz = tmp_path / "eval", tmp_path / "submission.csv", tmp_path / "pred.npz"
    assert not (test_root / "train").exists() and not (test_root / "val").exists()
    res = cli.evaluate_main(["--run", str(run_v1), "--DR", str(test_root), "--split", "test", "--out", str(out),
                             "--submission", str(csv_path), "--save_frames", str(npz)])
    log = capsys.readouterr().out
    assert res["submission"] == csv_path and res["mean_psnr"] is None and res["course_score"] is None
    assert (f"wrote the submission {csv_path}: 32 rows (2 test videos in numeric folder order x 16 frames, "
            f"frame 0 the given one) x 384 columns ((C, H, W) = (3, 8, 16)), values rint(255 clip(x, 0, 1)); "
            f"the course's Kaggle expects 630 frames of 32x64 per video") in log
    header, rows = read_csv(csv_path)
    assert csv_path.read_bytes().startswith(b"id,0,1,2,") and header == ["id", *map(str, range(3 * H * W))]
    assert len(rows) == 2 * T and [row[0] for row in rows] == list(range(2 * T))
    assert all(len(row) == 1 + 3 * H * W for row in rows)
    pred = np.load(npz)["pred"]  # (videos, T, H, W, 3), the frames written
    loaded = dance_folder.load_test(test_root, (H, W), cache_dir=False)  # numeric order: 2, then 10
    assert [name for _, _, name in loaded] == ["2", "10"]
    for r, row in enumerate(rows):
        v, t = divmod(r, T)
        expected = np.rint(np.clip(pred[v, t], 0, 1).transpose(2, 0, 1).ravel() * np.float32(255))
        np.testing.assert_array_equal(row[1:], expected.astype(int), err_msg=f"row {r}")
        if t == 0:  # the given first frame, resized as the loader resizes it
            np.testing.assert_array_equal(row[1:], loaded[v][0].transpose(2, 0, 1).ravel())
    assert leftovers(tmp_path) == []
    for name in ("pred_seq0.gif", "pred_seq1.gif", "test2.gif", "test10.gif"):
        assert (out / name).is_file(), name
    with Image.open(out / "pred_seq1.gif") as gif:  # the prediction alone, native size, every frame
        assert gif.size == (W, H) and gif.n_frames == T
        gif.seek(0)
        np.testing.assert_array_equal(np.asarray(gif.convert("RGB")), loaded[1][0])


def test_validation_prints_the_course_score(run_v1, tmp_path, capsys, keep_cache_config):
    npz = tmp_path / "pred.npz"
    res = cli.evaluate_main(["--run", str(run_v1), "--out", str(tmp_path / "eval"), "--save_frames", str(npz)])
    log = capsys.readouterr().out
    from cvae_jax.lab4_evaluation import _sequences
    (_, _, _, truth), = _sequences(load_checkpoint(run_v1).config, "val", lambda *a: None)
    assert res["course_score"] == metrics.course_score(np.load(npz)["pred"][0], truth)
    assert (f"course score {res['course_score']:.3f} dB | the Kaggle leaderboard's formula (demo.py): PSNR per "
            "frame on the integer frames rint(255 clip(x, 0, 1)), data range 255, frames 1..15 of each video") in log
    assert not list((tmp_path / "eval").glob("pred_seq*.gif"))  # the course's GIFs are the test split's


# --------------------------------------------------------------------------- errors


def test_submission_needs_the_test_split_and_a_lab4_run(run_v1, tmp_path, capsys, monkeypatch):
    no_rollout(monkeypatch)
    code, err = run_main(["--run", str(run_v1), "--submission", str(tmp_path / "s.csv")], capsys)
    assert code == 2 and err == ("cvae-jax-evaluate: error: --submission writes the test split's predictions "
                                 "(the course's Kaggle file); give --split test, not --split val\n")
    with pytest.raises(ConfigError, match=r"^--submission applies to --model lab4, not svg$"):
        _check_model_options("svg", EvalOptions(submission="s.csv"))
    _check_model_options("svg", EvalOptions())
    assert list(tmp_path.iterdir()) == [run_v1]


def test_an_output_that_cannot_be_written_is_refused_before_the_rollout(run_v1, test_root, tmp_path, capsys,
                                                                        monkeypatch):
    no_rollout(monkeypatch)
    base = ["--run", str(run_v1), "--DR", str(test_root), "--split", "test", "--out", str(tmp_path / "eval")]
    (tmp_path / "a_file").write_text("")
    prefix = "cvae-jax-evaluate: error: --submission"
    cases = {tmp_path / "nowhere/s.csv": f"{tmp_path / 'nowhere/s.csv'}: cannot write the submission there: "
                                         f"{tmp_path / 'nowhere'} does not exist",
             tmp_path / "a_file/s.csv": f"{tmp_path / 'a_file/s.csv'}: cannot write the submission there: "
                                        f"{tmp_path / 'a_file'} is not a folder",
             tmp_path: f"{tmp_path}: cannot write the submission there: it is a folder (give a file name, "
                       f"e.g. {tmp_path / 'submission.csv'})"}
    for path, message in cases.items():
        code, err = run_main([*base, "--submission", str(path)], capsys)
        assert code == 2 and err == f"{prefix} {message}\n", err
    # a read-only folder (simulated: root may write anywhere)
    real_open = os.open

    def read_only(path, flags, mode=0o777):
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(submission.os, "open", read_only)
    code, err = run_main([*base, "--submission", str(tmp_path / "ro/s.csv")], capsys)
    assert code == 2 and err == (f"{prefix} {tmp_path / 'ro/s.csv'}: cannot write the submission there: "
                                 f"Permission denied in {tmp_path / 'ro'}\n")
    assert list((tmp_path / "ro").iterdir()) == [] and not (tmp_path / "eval").exists()


def test_a_wrong_layout_or_missing_poses_is_one_line_before_the_rollout(run_v1, tmp_path, capsys, monkeypatch):
    no_rollout(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()

    def evaluate(root):
        code, err = run_main(["--run", str(run_v1), "--DR", str(root), "--split", "test",
                              "--out", str(tmp_path / "eval"), "--submission", str(out / "s.csv")], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("cvae-jax-evaluate: error: ")
        assert list(out.iterdir()) == [] and not list((tmp_path / "eval").glob("*.gif"))
        return err[len("cvae-jax-evaluate: error: "):-1]

    layout = dance_folder.TEST_LAYOUT_HELP
    flat = tmp_path / "flat"  # the test download unpacked one level off
    write_test_split(flat)
    shutil.move(str(flat / "test"), str(flat / "data"))
    assert evaluate(flat) == f"missing test split folder {flat / 'test'} ({layout})"
    gap = write_test_split(tmp_path / "gap")
    for i in (3, 4, 9):
        (gap / f"test/test_label/10/frame{i:06d}.png").unlink()
    assert evaluate(gap) == (f"test poses in {gap / 'test/test_label/10'} skip 3 frame number(s): 3, 4, 9 "
                             f"(each test sequence needs one pose per frame, numbered consecutively)")
    absent = write_test_split(tmp_path / "absent")
    shutil.rmtree(absent / "test/test_label/2")
    assert evaluate(absent) == (f"test sequences differ between {absent / 'test/test_img'} and "
                                f"{absent / 'test/test_label'}: only in test_img: ['2'], only in test_label: none")
    short = write_test_split(tmp_path / "short")
    (short / f"test/test_label/2/frame{T - 1:06d}.png").unlink()
    assert evaluate(short) == (f"test sequences differ in their number of poses (2: {T - 1}, 10: {T}); a "
                               f"submission has the same number of frames (one per pose) for every sequence")


def test_non_finite_predictions_write_nothing(run_v1, test_root, tmp_path, capsys, monkeypatch):
    calls = fake_generate(monkeypatch, nan_at=(1, 3))
    out, csv_path = tmp_path / "eval", tmp_path / "submission.csv"
    csv_path.write_text("the previous submission")
    code, err = run_main(["--run", str(run_v1), "--DR", str(test_root), "--split", "test", "--out", str(out),
                          "--submission", str(csv_path)], capsys)
    assert code == 2 and err.startswith("cvae-jax-evaluate: error: test video 10: frame 3 is the first "
                                        f"non-finite frame (NaN; 1 of its {T} frames are non-finite). ")
    assert err.count("\n") == 1
    assert calls == [T, T] and csv_path.read_text() == "the previous submission"
    assert leftovers(tmp_path) == [] and not list(out.glob("*.gif"))


def test_a_failed_write_is_one_line_and_leaves_nothing(run_v1, test_root, tmp_path, capsys, monkeypatch):
    fake_generate(monkeypatch)

    csv_path = tmp_path / "submission.csv"
    monkeypatch.setattr(submission.os, "replace", full_disk_at(csv_path))
    code, err = run_main(["--run", str(run_v1), "--DR", str(test_root), "--split", "test",
                          "--out", str(tmp_path / "eval"), "--submission", str(csv_path)], capsys)
    assert code == 2 and err == (f"cvae-jax-evaluate: error: --submission {csv_path}: cannot write the "
                                 "submission there: No space left on device\n")
    assert not csv_path.exists() and leftovers(tmp_path) == []
