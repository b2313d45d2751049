"""Per-step logs (steps.jsonl, TensorBoard) across stops and resumes, and the run
comparison (`cvae_jax.report`), on toy runs (test_training's config and compiled programs)."""

from __future__ import annotations

import csv
import json
import pathlib
import shutil
import signal
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from cvae_jax import plots, report, run_logs
from cvae_jax.config import preset
from cvae_jax.distributed import Preempted
from cvae_jax.training import SELF_SIGNAL_ENV, train_and_evaluate
from conftest import ROOT, exit_and_stderr
from test_training import QUIET, tiny_config

TIMING = ("seconds", "steps_per_s")  # wall-clock fields, the only ones two runs may differ in


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("report")


@pytest.fixture(scope="module")
def full_run(workdir):
    """Two uninterrupted epochs of two steps, a line per step."""
    return train_and_evaluate(tiny_config(workdir, run_name="full", log_every=1), log=QUIET)


def steps(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def without_timing(lines):
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def tb_events(run_dir) -> list:
    """Every event of the run folder's event files, in the order they were written (the
    TFRecord framing: length, its CRC, the record, its CRC)."""
    files = []
    for path in run_dir.glob("events.out.tfevents.*"):
        data, events, pos = path.read_bytes(), [], 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])
            events.append(event)
            pos += 12 + length + 4
        files.append(events)
    return [e for events in sorted(files, key=lambda ev: ev[0].wall_time) for e in events]


def tb_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard shows them: a session start at step s
    (`purge_step`) drops the earlier events of steps >= s."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for e in tb_events(run_dir):
        if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START:
            scalars = {t: [(s, v) for s, v in pts if s < e.step] for t, pts in scalars.items()}
        for v in e.summary.value:
            if v.HasField("simple_value"):
                scalars.setdefault(v.tag, []).append((e.step, v.simple_value))
    return scalars


def test_a_line_per_logging_step_and_tensorboard_scalars(full_run):
    lines = steps(full_run)
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert [line["epoch"] for line in lines] == [0, 0, 1, 1]
    for line in lines:
        assert {"loss", "mse", "kl", "beta", "tfr", "lr", "grad_norm", "steps_per_s", "seconds"} <= set(line)
        assert line["steps_per_s"] > 0 and line["grad_norm"] > 0
    # the epoch record's means are the means of its steps' lines (one step per line)
    epochs = [json.loads(x) for x in (full_run / "metrics.jsonl").read_text().splitlines()]
    for e in epochs:
        mine = [line for line in lines if line["epoch"] == e["epoch"]]
        for key in ("loss", "mse", "kl", "grad_norm"):
            assert e[key] == pytest.approx(np.mean([line[key] for line in mine]), rel=1e-12), key
        assert mine[-1]["lr"] == e["lr"] and mine[-1]["beta"] == e["beta"]
    assert lines[0]["lr"] != lines[-1]["lr"] and lines[0]["beta"] != lines[-1]["beta"]  # schedules moved
    scalars = tb_scalars(full_run)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [line["loss"] for line in lines], rtol=1e-6)
    assert [s for s, _ in scalars["schedule/lr"]] == [1, 2, 3, 4]
    assert [s for s, _ in scalars["val/psnr"]] == [2, 4]
    np.testing.assert_allclose([v for _, v in scalars["val/psnr"]], [e["val_psnr"] for e in epochs], rtol=1e-6)
    images = [v for e in tb_events(full_run) for v in e.summary.value if v.tag == "val/video0"]
    assert len(images) == 2 and images[-1].image.height > images[-1].image.width > 0  # frames top to bottom


def test_lines_after_the_restored_checkpoint_are_written_once(workdir, full_run, monkeypatch):
    """Stopped at step 3, then as if killed before that checkpoint was saved (checkpoint 3
    gone, a line cut short): the same command continues from checkpoint 2 and the log
    equals the uninterrupted run's, each step once, in steps.jsonl and TensorBoard."""
    cfg = tiny_config(workdir, run_name="stopped", log_every=1)
    monkeypatch.setenv(SELF_SIGNAL_ENV, "SIGTERM@3")
    with pytest.raises(Preempted) as stopped:
        train_and_evaluate(cfg, log=QUIET)
    assert stopped.value.signum == signal.SIGTERM
    run_dir = workdir / "runs" / "stopped"
    assert [line["step"] for line in steps(run_dir)] == [1, 2, 3]  # step 3's line before its checkpoint
    shutil.rmtree(run_dir / "checkpoints" / "3")
    with (run_dir / "steps.jsonl").open("a") as f:
        f.write('{"step": 4, "epo')
    monkeypatch.delenv(SELF_SIGNAL_ENV)
    lines = []
    train_and_evaluate(cfg, log=lines.append)
    assert any("resuming" in line and "(checkpoint 2)" in line for line in lines), lines
    assert without_timing(steps(run_dir)) == without_timing(steps(full_run))
    got, want = tb_scalars(run_dir), tb_scalars(full_run)
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in got["train/loss"]], [v for _, v in want["train/loss"]], rtol=1e-6)
    assert [s for s, _ in got["val/psnr"]] == [2, 4]


def test_log_every_may_change_on_resume(workdir, full_run, tmp_path):
    """A line every 2 steps from step 2 on: each the mean of the two steps before it, also
    across the stop (the interval's sums are in the checkpoint)."""
    run_dir = pathlib.Path(shutil.copytree(full_run, tmp_path / "every2"))
    shutil.rmtree(run_dir / "checkpoints" / "4")  # continue from step 2
    train_and_evaluate(resume=str(run_dir), log_every=2, log=QUIET)
    got, want = steps(run_dir), steps(full_run)
    assert [line["step"] for line in got] == [1, 2, 4]
    assert without_timing(got[:2]) == without_timing(want[:2])
    for key in ("loss", "mse", "kl", "grad_norm"):
        assert got[2][key] == pytest.approx((want[2][key] + want[3][key]) / 2, rel=1e-12), key
    assert json.loads((run_dir / "config.json").read_text())["run"]["log_every"] == 2


def test_read_jsonl_drops_only_a_cut_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert run_logs.read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        run_logs.read_jsonl(path)


# --------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def three_runs(workdir, full_run):
    """The full run (Monotonic KL annealing) and two one-epoch runs differing from it in
    the KL schedule alone (the same compiled programs)."""
    runs = [full_run]
    for kind in ("Cyclical", "None"):
        runs.append(train_and_evaluate(tiny_config(workdir, run_name=f"kl_{kind}", kl_anneal_type=kind,
                                                   num_epoch=1, log_every=1), log=QUIET))
    return runs


@pytest.fixture
def plotted(monkeypatch):
    """{x axis: (run names, panel keys)} of each `plots.plot_runs` figure the report draws."""
    seen = {}
    original = plots.plot_runs

    def spy(runs, x, panels, *args):
        seen[x] = (list(runs), [key for key, _ in panels])
        return original(runs, x, panels, *args)
    monkeypatch.setattr(plots, "plot_runs", spy)
    return seen


def test_report_names_runs_by_their_differing_fields(three_runs, tmp_path, plotted):
    out = tmp_path / "out"
    assert report.main([*map(str, three_runs), "--out", str(out)]) is None  # a console script exits 0
    names = ["num_epoch=2, kl_anneal_type=Monotonic", "num_epoch=1, kl_anneal_type=Cyclical",
             "num_epoch=1, kl_anneal_type=None"]
    assert plotted["step"][0] == plotted["epoch"][0] == names  # legends by field
    for name in ("curves_step.png", "curves_epoch.png", "val_psnr_per_frame.png", "summary.csv", "summary.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["run"] for r in rows] == names
    assert [r["kl_anneal_type"] for r in rows] == ["Monotonic", "Cyclical", "None"]
    assert [r["steps"] for r in rows] == ["4", "2", "2"] and [r["epochs"] for r in rows] == ["2/2", "1/1", "1/1"]
    epochs = [json.loads(x) for x in (three_runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert float(rows[0]["final_val_psnr"]) == pytest.approx(epochs[-1]["val_psnr"], abs=1e-4)
    assert float(rows[0]["best_val_psnr"]) == pytest.approx(max(e["val_psnr"] for e in epochs), abs=1e-4)
    assert float(rows[0]["final_course_score"]) == pytest.approx(epochs[-1]["val_course_score"], abs=1e-4)
    assert float(rows[0]["training_seconds"]) > 0
    md = (out / "summary.md").read_text()
    assert all(f"| {name} |" in md for name in names) and "`num_epoch`, `kl_anneal_type`" in md


def test_report_on_identical_configs_names_runs_by_folder(tmp_path):
    """Runs made before steps.jsonl existed (the version-1 fixture) report from their
    epoch records."""
    runs = [shutil.copytree(ROOT / "tests" / "fixtures" / "run_v1", tmp_path / name) for name in ("a", "b")]
    written = report.report(runs, tmp_path / "out", log=QUIET)
    assert {p.name for p in written} == {"curves_step.png", "curves_epoch.png", "summary.csv", "summary.md"}
    assert [r["run"] for r in csv.DictReader((tmp_path / "out" / "summary.csv").open())] == ["a", "b"]


def _fake_run(path, cfg, records):
    """A run folder holding a config and epoch records (what the report reads)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg.to_json()))
    run_logs.write_jsonl(path / "metrics.jsonl", records)
    return path


def test_report_on_svg_runs_plots_ssim(tmp_path, plotted):
    record = {"epoch": 0, "loss": 1.0, "mse": 0.5, "kl": 5.0, "beta": 0.1, "tfr": 1.0, "lr": 0.002,
              "steps": 10, "seconds": 3.0, "val_psnr": 20.0, "val_ssim": 0.7}
    runs = [_fake_run(tmp_path / f"s{i}", preset("cpu", "svg").replace(prior=prior), [record])
            for i, prior in enumerate(("fixed", "learned"))]
    report.report(runs, tmp_path / "out", log=QUIET)
    assert "val_ssim" in plotted["epoch"][1] and "val_course_score" not in plotted["epoch"][1]
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["run"] for r in rows] == ["prior=fixed", "prior=learned"] and rows[0]["final_val_ssim"] == "0.7000"


@pytest.mark.parametrize("case,message", [
    ("mixed", "error: cannot compare runs of different models ({a} is lab4, {b} is svg)"),
    ("missing", "error: {tmp}/nowhere: no such run folder"),
    ("no_config", "error: {tmp}/empty/config.json not found: is {tmp}/empty a cvae-jax run folder"),
    ("no_records", "error: {b} has no training records yet"),
    ("twice", "error: {a} is given twice"),
    ("cut_csv", "error: {b}/val_psnr_per_frame.csv, line 3: not a video,frame,psnr row"),
])
def test_report_refuses_in_one_line(tmp_path, capsys, case, message):
    a = _fake_run(tmp_path / "a", preset("cpu"), [{"epoch": 0, "loss": 1.0, "steps": 2, "seconds": 1.0}])
    b = tmp_path / "b"
    if case == "mixed":
        _fake_run(b, preset("cpu", "svg"), [{"epoch": 0, "loss": 1.0, "steps": 2, "seconds": 1.0}])
    elif case == "no_records":
        _fake_run(b, preset("cpu"), [])
    elif case == "cut_csv":
        _fake_run(b, preset("cpu").replace(lr=0.1), [{"epoch": 0, "loss": 1.0, "steps": 2, "seconds": 1.0}])
        (b / "val_psnr_per_frame.csv").write_text("video,frame,psnr\n0,1,20.5\n0,2")
    (tmp_path / "empty").mkdir()
    second = {"missing": tmp_path / "nowhere", "no_config": tmp_path / "empty", "twice": a}.get(case, b)
    code, err = exit_and_stderr(report.main, [str(a), str(second), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert message.format(a=a, b=b, tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()  # nothing written
