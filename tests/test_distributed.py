"""Multi-process training (`jax.distributed`): two local CPU processes of one device each
train the same model as one process over two devices, and only process 0 writes files.

Both runs are `python train.py` subprocesses on a toy lab4 config; the three processes
start together so their compilations share the cores instead of queueing. Process 1
always compiles (JAX writes the persistent cache from process 0 only, and on CPU the cache
key differs per process); both runs compile with the suite's XLA flags (conftest.py),
so the comparison holds.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from test_training import leaves, records, restored, subprocess_env

TIMEOUT = 300  # seconds for all runs; a hung rendezvous fails the test instead of the session

# One epoch of two steps on a toy model (8 frames = 4 clips of 2 = 2 batches); batch 2 =
# one clip per device; teacher forcing drawn per frame, so the step keys matter.
FLAGS = ["--preset", "lab4", "--frame_H", "8", "--frame_W", "16", "--F_dim", "8", "--L_dim", "8",
         "--N_dim", "4", "--D_out_dim", "16", "--train_vi_len", "2", "--val_vi_len", "8",
         "--scan_unroll", "1", "--batch_size", "2", "--steps_per_epoch", "2",
         "--synthetic_train_videos", "1", "--num_epoch", "1", "--tf_mode", "frame", "--tfr", "0.5",
         "--no-tf_fast_path"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(workdir, name: str, save_root: str, devices: int, launch=()):
    """`python train.py` into workdir/<save_root>/ (a run folder named by its start time),
    output into workdir/<name>.out and .err."""
    cfg_flags = FLAGS + ["--cache_dir", str(workdir / "cache"), "--save_root", str(workdir / save_root)]
    env = subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out, err = open(workdir / f"{name}.out", "w"), open(workdir / f"{name}.err", "w")
    with out, err:
        return subprocess.Popen([sys.executable, "train.py", *cfg_flags, *launch], cwd=ROOT, env=env,
                                stdout=out, stderr=err, text=True)


def finish(workdir, procs: dict) -> None:
    """Wait for every process; the first to fail (or, at the deadline, every one still
    running) is reported with its stderr, since a failed peer leaves the others waiting."""
    deadline = time.monotonic() + TIMEOUT
    err = lambda name: f"{name} stderr:\n" + (workdir / f"{name}.err").read_text()[-4000:]
    try:
        while any(proc.poll() is None for proc in procs.values()):
            failed = [name for name, proc in procs.items() if proc.poll() not in (None, 0)]
            assert not failed, f"{failed[0]} failed:\n" + err(failed[0])
            if time.monotonic() > deadline:
                running = [name for name, proc in procs.items() if proc.poll() is None]
                pytest.fail(f"{', '.join(running)} still running after {TIMEOUT} s\n"
                            + "\n".join(err(name) for name in procs))
            time.sleep(0.5)
        for name, proc in procs.items():
            assert proc.returncode == 0, f"{name} failed:\n" + err(name)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(run folder of the two-process run, run folder of the one-process two-device run)."""
    workdir = tmp_path_factory.mktemp("distributed")
    from cvae_jax.cli import config_from_args, train_parser
    from cvae_jax.data.dance import load_dance
    cfg = config_from_args(train_parser().parse_args(FLAGS + ["--cache_dir", str(workdir / "cache")]))
    load_dance(cfg, log=lambda line: None)  # write the dataset once, before three processes want it
    coordinator = f"localhost:{free_port()}"
    procs = {f"proc{i}": start(workdir, f"proc{i}", "two", 1, ["--coordinator", coordinator,
                                                               "--num_processes", "2", "--process_id", str(i)])
             for i in range(2)}
    procs["single"] = start(workdir, "single", "one", 2)
    finish(workdir, procs)
    # one run folder: both processes named it by process 0's start time
    (multi,), (single,) = (workdir / "two").iterdir(), (workdir / "one").iterdir()
    return workdir, multi, single


def test_two_processes_match_one_process_over_two_devices(runs):
    _, multi, single = runs
    got, got_meta = restored(multi)
    want, want_meta = restored(single)
    assert int(got.step) == int(want.step) == 2
    assert got_meta["key"] == want_meta["key"] and got_meta["epoch"] == want_meta["epoch"] == 1
    # the launch flags are not part of the saved config
    assert dict(got_meta["config"], save_root=None) == dict(want_meta["config"], save_root=None)
    # the same SPMD program over the same two devices: equal up to the collectives' rounding
    for a, b in zip(leaves(got), leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    got_record, want_record = records(multi)[0], records(single)[0]
    for key in ("loss", "mse", "kl", "grad_norm", "param_norm", "val_psnr"):
        assert got_record[key] == pytest.approx(want_record[key], rel=1e-5), key
    assert got_record["grad_norm"] > 0  # it did train


def test_only_process_zero_writes_and_logs(runs):
    workdir, multi, single = runs
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
    assert len(records(multi)) == 1  # one record for the one epoch, not one per process
    out0, out1 = (workdir / "proc0.out").read_text(), (workdir / "proc1.out").read_text()
    assert f"run folder: {multi}" in out0 and "epoch 0:" in out0
    assert [line for line in out1.splitlines() if line.strip() and not line.startswith("[Gloo]")] == [], out1
    assert "epoch 0" not in (workdir / "proc1.err").read_text()  # no progress bar either


def test_launch_flags_are_not_part_of_the_config():
    from cvae_jax.cli import config_from_args, train_parser
    argv = FLAGS + ["--coordinator", "10.0.0.1:1234", "--num_processes", "4", "--process_id", "3",
                    "--local_device_ids", "3"]
    args = train_parser().parse_args(argv)
    assert (args.coordinator, args.num_processes, args.process_id, args.local_device_ids) == (
        "10.0.0.1:1234", 4, 3, [3])
    assert config_from_args(args) == config_from_args(train_parser().parse_args(FLAGS))


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_processes=2, process_id=0), "--coordinator"),
    (dict(num_processes=2, coordinator="localhost:1"), "--process_id"),
    (dict(coordinator="localhost:1"), "--num_processes"),
    (dict(num_processes=2, process_id=2, coordinator="localhost:1"), "0..1"),
    (dict(cluster="pbs"), "--distributed"),
])
def test_initialize_rejects_incomplete_launch_flags(kwargs, message):
    from cvae_jax import distributed
    with pytest.raises(ValueError, match=message):
        distributed.initialize(**kwargs)


def test_one_process_is_a_no_op():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from cvae_jax import distributed
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False
    assert distributed.is_main() and not distributed.preemption_requested(0)
    assert distributed.from_main([20261122, 84607]) == [20261122, 84607]
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    batch = np.arange(12.0).reshape(4, 3)
    assert distributed.local_rows(NamedSharding(mesh, P("data")), batch.shape) == slice(0, 4)
    out = distributed.global_array({"x": batch}, NamedSharding(mesh, P("data")))
    np.testing.assert_array_equal(distributed.to_host(out)["x"], batch)
