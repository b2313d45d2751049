"""End-to-end training at toy sizes: bit-exact resume, data parallelism over two host
devices in one process and over two processes (`jax.distributed`), the notebook API on a
finished run, the non-finite-loss guard, the config and CLI layers, and `python train.py`.

Every run here uses the same toy config so the (slow) XLA compilations are shared through
the session's compilation cache (see conftest.py); the first run pays for them. The
runs over two devices compile their own programs (in the two-process run each process
compiles: on CPU the cache key differs per process), all with the suite's XLA flags.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CACHE_ROOT, ROOT
from cvae_jax import checkpointing
from cvae_jax.cli import config_from_args, train_parser
from cvae_jax.config import Config, preset
from cvae_jax.distributed import Preempted
from cvae_jax.errors import ConfigError
from cvae_jax.train_step import Schedule, init_state, make_train_step
from cvae_jax.training import SELF_SIGNAL_ENV, train_and_evaluate

QUIET = lambda line: None  # noqa: E731
PARALLEL_TIMEOUT = 900  # seconds a test waits for its runs; a hung rendezvous fails the test, not the session


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("training")


def tiny_config(workdir, **changes) -> Config:
    """Toy dims and data, with schedules that change between epochs (lr milestone, KL
    ramp, adaptive teacher forcing drawn per frame) so a resume that lost any of them
    would diverge. 16 frames per synthetic video = 4 clips = 2 batches per epoch.
    Compile time: no teacher-forced fast path, half the compile (test_svg_training resumes
    through both paths); a rolled loop (conftest.py)."""
    cfg = preset("lab4").replace(
        frame_H=8, frame_W=16, F_dim=8, L_dim=8, N_dim=4, D_out_dim=16,
        train_vi_len=4, val_vi_len=16, batch_size=2, steps_per_epoch=2, synthetic_train_videos=1,
        cache_dir=str(workdir / "cache"), save_root=str(workdir / "runs"), num_epoch=2,
        lr_milestones=(1,), kl_anneal_type="Monotonic", kl_anneal_cycle=1,
        tf_mode="frame", tfr=0.5, tfr_adaptive=True, tfr_d_step=0.3,
        tf_fast_path=False, scan_unroll=1)
    return cfg.replace(**changes).validated()


def restored(run_dir, step=None):
    """(state, meta) of a run's checkpoint `step` (default: the latest)."""
    cfg = checkpointing.load_config(run_dir)
    last, _ = checkpointing.managers(run_dir, cfg.keep_last)
    return checkpointing.restore(last, checkpointing.abstract_state(cfg)[1], step)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


DP_SCRIPT = """
import json, sys
import jax
from cvae_jax.config import Config
from cvae_jax.distributed import Preempted
from cvae_jax.errors import ConfigError
from cvae_jax.train_step import Schedule, init_state, make_train_step
from cvae_jax.training import SELF_SIGNAL_ENV, train_and_evaluate
assert jax.device_count() == 2, jax.devices()
run = train_and_evaluate(Config.from_json(json.loads(sys.argv[1])), log=lambda line: None)
print("DEVICES", jax.device_count())
"""


def subprocess_env(**extra):
    """This environment (so the XLA cache and XLA flags are shared), the repo importable, and
    train.py's own cache root pointed at the session's instead of ~/.cache. An XLA_FLAGS in
    `extra` adds to this process's flags rather than replacing them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("CVAE_JAX_CACHE", str(CACHE_ROOT))
    if "XLA_FLAGS" in extra:
        extra["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {extra['XLA_FLAGS']}".strip()
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def selected(request, *names) -> bool:
    return any(item.originalname in names for item in request.session.items)


@pytest.fixture(scope="module")
def parallel_runs(request, workdir):
    """{name: process} of the runs over two devices, started together: "dp", one process
    over two devices for one epoch, and "stop0"/"stop1", two `python train.py` processes of
    one device each joined by `jax.distributed` into run folder "multi" for two epochs,
    where process 1 gets SIGINT after its first step (`multi_run` then runs the same command
    again). Only the runs whose tests are selected; output in workdir/<name>.out and .err.
    Started when a test first needs them, after the in-process runs, so that at most three
    JAX processes of this file share the cores."""
    from cvae_jax.data.dance import load_dance
    procs = {}
    want_dp = selected(request, "test_data_parallel_matches_single_device", *MULTI_TESTS)
    want_multi = selected(request, *MULTI_TESTS)
    if want_dp or want_multi:
        load_dance(tiny_config(workdir), log=QUIET)  # write the dataset before several processes want it
    if want_dp:
        script = ["-c", DP_SCRIPT, json.dumps(tiny_config(workdir, num_epoch=1, run_name="dp").to_json())]
        procs["dp"] = start(workdir, "dp", script, devices=2)
    if want_multi:
        procs.update(start_two_processes(workdir, "stop", signal_process_1="SIGINT@1"))
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


MULTI_TESTS = ("test_two_processes_match_one_process_over_two_devices", "test_only_process_zero_writes_and_logs",
               "test_a_signal_to_one_process_stops_every_process_and_the_same_command_continues")


def start(workdir, name, argv, devices=1, **env) -> subprocess.Popen:
    env = subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **env)
    with open(workdir / f"{name}.out", "w") as out, open(workdir / f"{name}.err", "w") as err:
        return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=out, stderr=err, text=True)


def start_two_processes(workdir, prefix, signal_process_1=None) -> dict:
    """The two processes of run "multi" (<prefix>0, <prefix>1): the same train.py command
    but for --process_id; process 1 signals itself per `signal_process_1` ("SIGINT@1")."""
    flags, coordinator = cli_flags(tiny_config(workdir, run_name="multi")), f"localhost:{free_port()}"
    return {f"{prefix}{i}": start(workdir, f"{prefix}{i}", ["train.py", *flags, "--coordinator", coordinator,
                                                            "--num_processes", "2", "--process_id", str(i)],
                                  **({SELF_SIGNAL_ENV: signal_process_1} if i == 1 and signal_process_1 else {}))
            for i in range(2)}


def finish(workdir, procs: dict, names, codes=None) -> None:
    """Wait for the named processes to exit with their `codes` (default 0); the first to
    fail (or, at the deadline, every one still running) is reported with its stderr, since
    a failed peer leaves the others waiting."""
    procs = {name: procs[name] for name in names}
    codes = {name: (codes or {}).get(name, 0) for name in names}
    deadline = time.monotonic() + PARALLEL_TIMEOUT
    err = lambda name: f"{name} stderr:\n" + (workdir / f"{name}.err").read_text()[-4000:]  # noqa: E731
    while any(proc.poll() is None for proc in procs.values()):
        failed = [name for name, proc in procs.items() if proc.poll() not in (None, codes[name])]
        assert not failed, f"{failed[0]} exited {procs[failed[0]].returncode}:\n" + err(failed[0])
        if time.monotonic() > deadline:
            running = [name for name, proc in procs.items() if proc.poll() is None]
            pytest.fail(f"{', '.join(running)} still running after {PARALLEL_TIMEOUT} s\n"
                        + "\n".join(err(name) for name in procs))
        time.sleep(0.5)
    for name, proc in procs.items():
        assert proc.returncode == codes[name], f"{name} exited {proc.returncode}:\n" + err(name)


@pytest.fixture(scope="module")
def multi_run(workdir, parallel_runs):
    """Run folder "multi" once its two processes stopped on process 1's SIGINT (process 0
    by the SIGTERM JAX's preemption service sees: exit 143; process 1 exit 130) and the
    same command, run again ("proc0", "proc1"), finished it."""
    finish(workdir, parallel_runs, ["stop0", "stop1"], codes={"stop0": 143, "stop1": 130})
    parallel_runs.update(start_two_processes(workdir, "proc"))
    finish(workdir, parallel_runs, ["proc0", "proc1"])
    return workdir / "runs" / "multi"


@pytest.fixture(scope="module")
def full_run(workdir):
    """Two uninterrupted epochs; the reference for the resume and data-parallel tests."""
    return train_and_evaluate(tiny_config(workdir, run_name="full"), log=QUIET)


# --------------------------------------------------------------------------- resume


def assert_same_run(got_dir, want_dir):
    """Every parameter, BatchNorm statistic, Adam leaf and the step, the checkpoint meta
    and every epoch record (but wall time) of two runs are equal."""
    want, want_meta = restored(want_dir)
    got, got_meta = restored(got_dir)
    assert int(got.step) == int(want.step) == 4
    # epoch, adaptive teacher forcing, partial sums, base key; the configs differ by name only
    got_cfg, want_cfg = got_meta.pop("config"), want_meta.pop("config")
    assert got_meta == want_meta
    assert dict(got_cfg, run=None) == dict(want_cfg, run=None)
    for a, b in zip(leaves(got), leaves(want), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    got_records, want_records = records(got_dir), records(want_dir)
    assert [r["epoch"] for r in got_records] == [0, 1]
    for g, w in zip(got_records, want_records, strict=True):
        g.pop("seconds"), w.pop("seconds")
        assert g == w
    # the schedules did change between the epochs, so the comparison covers them
    assert want_records[0]["lr"] != want_records[1]["lr"]
    assert want_records[0]["beta"] != want_records[1]["beta"]


@pytest.mark.parametrize("signame,step", [("SIGTERM", 2), ("SIGINT", 3)])
def test_a_signal_saves_after_the_step_and_resume_is_bit_exact(workdir, full_run, monkeypatch, signame, step):
    """A real signal after global step 2 (the end of epoch 0, before its record) or 3 (mid
    epoch 1): the run saves that step with the epoch's partial sums; the resume equals the
    uninterrupted run in every leaf and record."""
    name = f"stopped_{signame}"
    monkeypatch.setenv(SELF_SIGNAL_ENV, f"{signame}@{step}")
    lines = []
    with pytest.raises(Preempted) as stopped:
        train_and_evaluate(tiny_config(workdir, run_name=name), log=lines.append)
    assert stopped.value.signum == signal.Signals[signame]
    run_dir = workdir / "runs" / name
    assert lines[-1] == (f"stopped by {signame} at epoch {(step - 1) // 2}, step {(step - 1) % 2 + 1} of it: saved "
                         f"{run_dir / 'checkpoints' / str(step)}; continue with the same command, or "
                         f"train.py --resume {run_dir}")
    assert signal.getsignal(signal.Signals[signame]) is not None  # the handlers are put back
    monkeypatch.delenv(SELF_SIGNAL_ENV)
    lines = []
    train_and_evaluate(resume=str(run_dir), log=lines.append)
    assert any(f"resuming {run_dir} at epoch {(step - 1) // 2}" in line for line in lines)
    assert_same_run(run_dir, full_run)


def test_another_config_in_the_run_folder_is_refused_naming_the_field(workdir, full_run):
    with pytest.raises(FileExistsError, match=r"--lr 0\.001 there, 0\.5 here\).*--resume"):
        train_and_evaluate(tiny_config(workdir, run_name="full", lr=0.5), log=QUIET)


def test_resume_keeps_schedule_periods(workdir, full_run, tmp_path):
    """A longer resume keeps the KL annealing's period (the first run's 2 epochs): beta in
    epoch 2 is the Monotonic schedule's over 2 epochs, not a ramp re-stretched over 3."""
    from cvae_jax import schedules
    longer = pathlib.Path(shutil.copytree(full_run, tmp_path / "longer"))
    train_and_evaluate(resume=str(longer), num_epoch=3, log=QUIET)
    got = records(longer)
    assert [r["epoch"] for r in got] == [0, 1, 2]
    kept, stretched = schedules.kl_beta("Monotonic", 2, 2, 1, 1.0), schedules.kl_beta("Monotonic", 2, 3, 1, 1.0)
    assert got[2]["beta"] == kept != stretched
    # cosine learning rates end at 0 with the first length: a longer resume is refused
    cosine = tmp_path / "cosine"
    shutil.copytree(full_run, cosine)
    cfg = checkpointing.load_config(cosine).replace(lr_schedule="cosine")
    checkpointing.save_config(cosine, cfg)
    with pytest.raises(ConfigError, match="--num_epoch cannot change on --resume .*cosine"):
        train_and_evaluate(resume=str(cosine), num_epoch=3, log=QUIET)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(workdir, full_run, tmp_path):
    run_dir = pathlib.Path(shutil.copytree(full_run, tmp_path / "damaged"))
    newest = run_dir / "checkpoints" / "4" / "state"
    for f in [p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 1000]:
        f.write_bytes(f.read_bytes()[:100])  # truncated, as by a crash or a full disk
    lines = []
    train_and_evaluate(resume=str(run_dir), log=lines.append)
    assert any("checkpoint 4 in" in line and "falling back to checkpoint 2" in line for line in lines), lines
    assert any(f"resuming {run_dir} at epoch 1, step 0 of it (checkpoint 2)" in line for line in lines)
    assert_same_run(run_dir, full_run)


def test_a_non_finite_step_is_not_applied(workdir, full_run):
    """Placed as the training loop places them (the loop's compiled step, from the cache)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from cvae_jax import distributed
    from cvae_jax.training import data_mesh
    cfg = tiny_config(workdir)
    mesh = data_mesh()
    graphdef, state = init_state(cfg, jax.random.key(0))
    state = distributed.global_array(state, NamedSharding(mesh, P()))
    step = make_train_step(graphdef, cfg)
    frames = np.full((2, 4, 8, 16, 3), np.nan, np.float32)
    batch = distributed.global_array((frames, frames), NamedSharding(mesh, P("data")))
    sched = Schedule(*(jnp.float32(v) for v in (1e-3, 1.0, 1.0)))
    before = [np.array(x) for x in jax.tree.leaves(state)]
    after, m = step(jax.tree.map(jnp.copy, state), batch, sched, jax.random.key(1), jax.random.key(2))
    assert not np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree.leaves(after), before, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


def assert_trained_alike(got_dir, want_dir, step: int, lr: float, epoch: int = 0):
    """Run `got_dir` over two devices at checkpoint `step` against `want_dir` over one:
    the same training up to summation order, and the same epoch record.

    Adam divides each gradient element by its own magnitude, so an element whose gradient
    is rounding noise (e.g. the conv bias in front of the pose BatchNorm, whose exact
    gradient is 0) moves by +-lr whatever the summation order. So: nearly every element
    agrees to summation-order precision, and none strays beyond Adam's step bound."""
    got, _ = restored(got_dir, step=step)
    want, _ = restored(want_dir, step=step)
    assert int(got.step) == int(want.step) == step
    close = total = 0
    for a, b in zip(leaves((got.params, got.batch_stats)), leaves((want.params, want.batch_stats)),
                    strict=True):
        close += int(np.isclose(a, b, rtol=1e-4, atol=1e-5).sum())
        total += a.size
        assert np.abs(a - b).max() <= 2 * step * lr * 1.01
    assert close >= 0.999 * total, f"{total - close} of {total} elements differ"
    got_record, want_record = records(got_dir)[epoch], records(want_dir)[epoch]
    for key in ("loss", "mse", "kl", "grad_norm"):
        assert got_record[key] == pytest.approx(want_record[key], rel=1e-4), key
    assert got_record["val_psnr"] == pytest.approx(want_record["val_psnr"], abs=0.01)


def test_data_parallel_matches_single_device(workdir, full_run, parallel_runs):
    """Batch split over two host devices: the same training up to summation order."""
    finish(workdir, parallel_runs, ["dp"])
    assert "DEVICES 2" in (workdir / "dp.out").read_text()
    assert_trained_alike(workdir / "runs" / "dp", full_run, step=2, lr=tiny_config(workdir).lr)


def test_two_processes_match_one_process_over_two_devices(workdir, parallel_runs, multi_run):
    """`jax.distributed`: two processes of one device each train as one process over two."""
    finish(workdir, parallel_runs, ["dp"])
    single = workdir / "runs" / "dp"
    got, got_meta = restored(multi_run, step=2)
    want, want_meta = restored(single)
    assert int(got.step) == int(want.step) == 2
    assert got_meta["key"] == want_meta["key"]
    # the launch flags are not part of the saved config, which differs by name and epochs only
    strip = lambda c: dict(c, run=None, optim=dict(c["optim"], num_epoch=None))  # noqa: E731
    assert strip(got_meta["config"]) == strip(want_meta["config"])
    # the same SPMD program over the same two devices: equal up to the collectives' rounding
    for a, b in zip(leaves(got), leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    got_record, want_record = records(multi_run)[0], records(single)[0]
    for key in ("loss", "mse", "kl", "grad_norm", "param_norm", "val_psnr"):
        assert got_record[key] == pytest.approx(want_record[key], rel=1e-5), key
    assert got_record["grad_norm"] > 0  # it did train


def test_a_signal_to_one_process_stops_every_process_and_the_same_command_continues(workdir, full_run,
                                                                                     multi_run):
    """SIGINT to process 1 after its first step: JAX's preemption service picks a step at
    which both processes save one checkpoint together and exit (process 0 logs the line
    saying how to continue); the same command continues the run, which then trains as
    the uninterrupted run on one device did, up to summation order, epoch records too."""
    out0, out1 = (workdir / "stop0.out").read_text(), (workdir / "stop1.out").read_text()
    stopped = re.search(r"stopped by SIGTERM at epoch (\d), step (\d) of it: saved (\S+); continue with the "
                        r"same command, or train.py --resume (\S+)", out0)
    assert stopped, out0
    step = 2 * int(stopped.group(1)) + int(stopped.group(2))
    assert 1 <= step < 4 and stopped.group(3) == str(multi_run / "checkpoints" / str(step))
    assert stopped.group(4) == str(multi_run)
    assert "stopped by" not in out1 and "Traceback" not in (workdir / "stop1.err").read_text()
    assert f"{multi_run} holds this run: continuing it" in (workdir / "proc0.out").read_text()
    assert [r["epoch"] for r in records(multi_run)] == [0, 1]
    assert_trained_alike(multi_run, full_run, step=4, lr=tiny_config(workdir).lr, epoch=1)


def test_only_process_zero_writes_and_logs(workdir, parallel_runs, multi_run):
    finish(workdir, parallel_runs, ["dp"])
    single = workdir / "runs" / "dp"
    # the same files; one TensorBoard event file per start of the run (its name holds the
    # time and host): process 0's alone
    names = lambda run: sorted(re.sub(r"^events\.out\.tfevents\..*", "events", p.name)  # noqa: E731
                               for p in run.iterdir())
    assert names(single).count("events") == 1 and names(multi_run).count("events") == 2
    assert sorted(set(names(multi_run))) == names(single)
    assert len(records(multi_run)) == 2  # one record per epoch, not one per process
    out0 = (workdir / "proc0.out").read_text()
    assert f"run folder: {multi_run}" in out0 and "epoch 1:" in out0
    for name in ("stop1", "proc1"):
        out = (workdir / f"{name}.out").read_text()
        assert [line for line in out.splitlines() if line.strip() and not line.startswith("[Gloo]")] == [], out
        assert "epoch 0" not in (workdir / f"{name}.err").read_text()  # no progress bar either


# --------------------------------------------------------------------------- notebook API


@pytest.fixture(scope="module")
def generator(full_run):
    from cvae_jax import load_checkpoint
    return load_checkpoint(full_run, which="latest")


@pytest.fixture(scope="module")
def val_clip(full_run):
    from cvae_jax.data.dance import load_dance
    data = load_dance(checkpointing.load_config(full_run), log=QUIET, splits=("val",))
    return data.val_frames[0], data.val_poses[0]  # (T, H, W, 3) each


def test_load_checkpoint_restores_the_run(generator, full_run):
    want, _ = restored(full_run)
    for a, b in zip(leaves(generator.params), leaves(want.params), strict=True):
        assert np.array_equal(a, b)
    assert generator.config == checkpointing.load_config(full_run)


def test_generate_unbatched_and_batched(generator, val_clip):
    frames, poses = val_clip
    t = len(poses)
    out = generator.generate(frames[0], poses, jax.random.key(1))
    assert out.shape == (t, 8, 16, 3)
    np.testing.assert_array_equal(out[0], frames[0])
    batched = generator.generate(np.stack([frames[0]] * 2), np.stack([poses] * 2), jax.random.key(1))
    assert batched.shape == (2, t, 8, 16, 3)
    np.testing.assert_array_equal(batched[:, 0], np.stack([frames[0]] * 2))
    assert np.isfinite(batched).all()


def test_generate_randomness_follows_the_key(generator, val_clip):
    frames, poses = val_clip
    a = generator.generate(frames[0], poses, jax.random.key(1))
    np.testing.assert_array_equal(a, generator.generate(frames[0], poses, jax.random.key(1)))
    assert not np.allclose(a[1:], generator.generate(frames[0], poses, jax.random.key(2))[1:])
    m1 = generator.generate(frames[0], poses, jax.random.key(1), z_mode="mean")
    np.testing.assert_array_equal(m1, generator.generate(frames[0], poses, jax.random.key(2), z_mode="mean"))


@pytest.mark.parametrize("first_shape,poses_shape", [
    ((8, 16, 3), (5, 8, 17, 3)),        # wrong frame size
    ((8, 16), (5, 8, 16, 3)),           # missing channel axis
    ((2, 8, 16, 3), (3, 5, 8, 16, 3)),  # batch sizes disagree
    ((8, 16, 3), (5, 8, 16, 1)),        # grey poses
])
def test_generate_rejects_wrong_shapes(generator, first_shape, poses_shape):
    with pytest.raises(ValueError, match=r"expected first_frame \(8, 16, 3\)"):
        generator.generate(np.zeros(first_shape), np.zeros(poses_shape))


def test_load_checkpoint_errors(tmp_path, full_run):
    from cvae_jax import load_checkpoint
    with pytest.raises(ValueError, match="which"):
        load_checkpoint(full_run, which="newest")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path)


# --------------------------------------------------------------------------- non-finite loss


def test_non_finite_loss_names_the_checkpoint_folder(workdir, full_run):
    cfg = tiny_config(workdir, num_epoch=1, run_name="diverge", lr=1e30)
    run_dir = workdir / "runs" / "diverge"
    with pytest.raises(FloatingPointError, match=re.escape(str(run_dir / "checkpoints"))):
        train_and_evaluate(cfg, log=QUIET)


# --------------------------------------------------------------------------- config and CLI


@pytest.mark.parametrize("cfg", [preset("lab4"), preset("cpu"),
                                 preset("cpu").replace(lr_milestones=(3, 6), DR="/data", run_name="x")])
def test_config_json_round_trip(cfg):
    assert Config.from_json(cfg.to_json()) == cfg
    assert Config.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg  # tuples come back as lists


@pytest.mark.parametrize("change,flag", [
    (dict(tf_mode="sometimes"), "--tf_mode"), (dict(N_dim=6), "--N_dim"), (dict(partial=0.0), "--partial"),
    (dict(partial=1.5), "--partial"), (dict(tfr=1.5), "--tfr"), (dict(train_vi_len=1), "--train_vi_len"),
    (dict(lr=0.0), "--lr"), (dict(batch_size=0), "--batch_size"), (dict(z_mode="mode"), "--z_mode"),
    (dict(kl_anneal_type="cosine"), "--kl_anneal_type"), (dict(D_out_dim=100), "--D_out_dim"),
])
def test_validated_rejects_bad_values_naming_the_flag(change, flag):
    with pytest.raises(ValueError, match=re.escape(flag)):
        preset("lab4").replace(**change).validated()


def test_from_json_rejects_unknown_fields():
    data = dict(preset("lab4").to_json(), learning_rate=0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        Config.from_json(data)


def parse(*argv) -> Config:
    return config_from_args(train_parser(list(argv)).parse_args(list(argv)))


def test_cli_applies_preset_then_overrides():
    cfg = parse("--preset", "cpu", "--tfr", "0.5", "--no-output_sigmoid", "--lr_milestones", "3", "6")
    want = preset("cpu").replace(tfr=0.5, output_sigmoid=False, lr_milestones=(3, 6))
    assert cfg == want
    assert preset("cpu").output_sigmoid and preset("cpu").tfr == 1.0  # the flags changed something
    assert parse() == preset("cpu")  # the default preset
    assert parse("--preset", "lab4") == preset("lab4")
    assert parse("--preset", "lab4", "--output_sigmoid", "--DR", "/x").output_sigmoid


def test_cli_rejects_bad_values_naming_the_flag():
    with pytest.raises(ValueError, match="--tf_mode"):
        parse("--tf_mode", "sometimes")


def cli_flags(cfg: Config) -> list[str]:
    """Command-line flags that rebuild `cfg` from the lab4 preset."""
    base, argv = preset("lab4").flat(), ["--preset", "lab4"]
    for flag, value in cfg.flat().items():
        if value == base[flag]:
            continue
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, tuple):
            argv += [f"--{flag}", *map(str, value)]
        else:
            argv += [f"--{flag}", str(value)]
    return argv


def stopped_then_continued(workdir, run_name: str, signame: str):
    """train.py in a subprocess, signalled (a real `signame`) after global step 3, mid-epoch
    1: exit 128 + signum, one line naming the checkpoint and how to continue, no traceback;
    then the same command again, which must succeed. Returns (cfg, run folder, second run)."""
    cfg = tiny_config(workdir, run_name=run_name)
    command = [sys.executable, "train.py", *cli_flags(cfg)]
    first = subprocess.run(command, cwd=ROOT, env=subprocess_env(**{SELF_SIGNAL_ENV: f"{signame}@3"}),
                           capture_output=True, text=True, timeout=900)
    run_dir = workdir / "runs" / run_name
    assert first.returncode == 128 + signal.Signals[signame], first.stderr[-4000:]
    assert (f"stopped by {signame} at epoch 1, step 1 of it: saved {run_dir / 'checkpoints' / '3'}; "
            "continue with the same command") in first.stdout
    assert "Traceback" not in first.stderr
    again = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    return cfg, run_dir, again


def test_train_py_end_to_end(workdir, full_run):
    """train.py stopped by SIGTERM mid-epoch (exit 143, one line saying how to continue),
    then the same command again: it continues the run, loads the compiled programs from
    the persistent cache, writes every file, and ends equal to the uninterrupted run."""
    cfg = tiny_config(workdir, run_name="cli")
    assert parse(*cli_flags(cfg)) == cfg
    cfg, run_dir, proc = stopped_then_continued(workdir, "cli", "SIGTERM")
    assert f"{run_dir} holds this run: continuing it" in proc.stdout
    reused = re.search(r"compiled programs: (\d+) of (\d+) loaded from the cache", proc.stdout)
    assert reused and int(reused.group(1)) > 0, proc.stdout
    assert_same_run(run_dir, full_run)
    assert f"run folder: {run_dir}" in proc.stdout
    assert re.search(r"final validation PSNR -?\d+\.\d+ dB vs copy-first-frame baseline -?\d+\.\d+ dB",
                     proc.stdout), proc.stdout
    for name in ("config.json", "metrics.jsonl", "training.png", "val_psnr_per_frame.png",
                 "val_psnr_per_frame.csv", "val_video0.gif"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    for name in ("checkpoints", "best"):
        assert (run_dir / name).is_dir() and any((run_dir / name).iterdir()), name
    assert checkpointing.load_config(run_dir) == cfg


def test_train_py_stopped_by_ctrl_c_continues_bit_exact(workdir, full_run):
    """Ctrl-C (a real SIGINT to the train.py process) mid-epoch: the step finishes, the
    checkpoint is saved, one line says how to continue, the exit status is 130; the same
    command again ends equal to the uninterrupted run."""
    _, run_dir, _ = stopped_then_continued(workdir, "ctrl_c", "SIGINT")
    assert_same_run(run_dir, full_run)


def test_cache_counts_are_per_run_and_counted_once(tmp_path, monkeypatch, keep_cache_config):
    """A notebook running train.main twice: the second summary counts its own events, once each."""
    from cvae_jax import cli
    monkeypatch.setenv("CVAE_JAX_CACHE", str(tmp_path / "data"))
    cli.enable_compilation_cache()
    jax.monitoring.record_event("/jax/compilation_cache/cache_hits")
    cli.enable_compilation_cache()
    jax.monitoring.record_event("/jax/compilation_cache/compile_requests_use_cache")
    jax.monitoring.record_event("/jax/compilation_cache/cache_hits")
    assert "compiled programs: 1 of 1 loaded" in cli.compilation_cache_summary()


def _entry_point(name: str):
    """train.py or evaluate.py as a module, for calling its main() in this process."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{name}_entry", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv,message", [(["--precision", "fp16"], "--precision must be one of"),
                                          (["--conv_impl", "cudnn"], "--conv_impl must be one of"),
                                          (["--batch_size", "0"], "--batch_size must be positive")])
def test_bad_config_flag_is_a_usage_error(capsys, argv, message):
    """A value the Config rejects stops train.py before any work, as argparse's own errors
    do: the flag and what it expects, exit status 2, no traceback."""
    with pytest.raises(SystemExit) as exit_:
        _entry_point("train").main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"train.py: error: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize("entry,argv,message", [
    ("train", ["--DR", "{tmp}/nowhere"], "dataset root {tmp}/nowhere is not a folder"),
    ("train", ["--resume", "{tmp}"], "{tmp}/config.json not found: is {tmp} a cvae-jax run folder"),
    ("train", ["--num_processes", "2"], "--num_processes 2 needs --coordinator HOST:PORT"),
    ("evaluate", ["--run", "{tmp}"], "{tmp}/config.json not found"),
])
def test_bad_input_is_a_one_line_error(capsys, tmp_path, keep_cache_config, entry, argv, message):
    """A missing dataset, a folder that is no run, launch flags that do not fit: the entry
    point says what it expected in one line, exit status 2, no traceback, and a new run
    leaves no run folder behind."""
    fill = lambda text: text.replace("{tmp}", str(tmp_path))  # noqa: E731
    with pytest.raises(SystemExit) as exit_:
        new_run = entry == "train" and "--resume" not in argv
        _entry_point(entry).main([*map(fill, argv), *(["--save_root", str(tmp_path / "runs")] if new_run else [])])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert f"{entry}.py: error: {fill(message)}" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
