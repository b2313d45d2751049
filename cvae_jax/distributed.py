"""Multi-process training: `jax.distributed` start-up and moving data between hosts and
the global mesh.

One process runs per host (or per GPU); together their devices form the 1-D "data" mesh
of `training.data_mesh`. Every process builds the same global batch from the same
(seed, epoch) and hands JAX only the rows its own devices hold, so P processes train the
same model as one process over all the devices would. Process 0 alone writes the run
folder's files and logs; checkpoints are written by all processes together (orbax
coordinates them).

With one process every helper here reduces to the single-process code path
(`jax.device_put`, `np.asarray`), so nothing changes for the default run.
"""

from __future__ import annotations

import signal

from typing import Sequence

import jax
import numpy as np

from cvae_jax.errors import ConfigError

# `--distributed` values: "auto" lets JAX detect the cluster (Slurm, Open MPI, Cloud TPU,
# Kubernetes); the others name one detection method (mpi4py must be named to be used).
CLUSTER_METHODS = ("auto", "slurm", "ompi", "mpi4py", "k8s")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               cluster: str | None = None) -> bool:
    """Join this process to a multi-process run; returns whether it did.

    A no-op unless `cluster` is given or `num_processes` > 1. Arguments left as None are
    detected from the cluster environment by `jax.distributed.initialize`. Must run before
    any JAX computation (it fixes which devices exist). On CPU, cross-process collectives
    go through gloo.
    """
    if cluster is None and (num_processes is None or num_processes == 1):
        if coordinator is not None or process_id not in (None, 0):
            raise ConfigError("--coordinator and --process_id need --num_processes > 1 (or --distributed)")
        return False
    if cluster is not None and cluster not in CLUSTER_METHODS:
        raise ConfigError(f"--distributed must be one of {', '.join(CLUSTER_METHODS)}, got {cluster!r}")
    if cluster is None and (coordinator is None or process_id is None):
        raise ConfigError(f"--num_processes {num_processes} needs --coordinator HOST:PORT (process 0's "
                          "address) and --process_id; or --distributed auto to read them from Slurm or "
                          "Open MPI")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id {process_id} must be in 0..{num_processes - 1} "
                          f"(--num_processes {num_processes})")
    if jax.config.jax_cpu_collectives_implementation is None:  # no CPU collectives without it
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
        local_device_ids=list(local_device_ids) if local_device_ids is not None else None,
        cluster_detection_method=None if cluster in (None, "auto") else cluster)
    return True


class Preempted(Exception):
    """Training stopped on a signal after a step and saved a checkpoint: SIGTERM (a
    scheduler's preemption notice, or `kill`) to any process, or SIGINT in one process.
    Every process stopped after the same step; `signum` is the signal."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def preemption_requested(step: int) -> bool:
    """True at the step where all processes stop because one of them got SIGTERM.

    With `jax.distributed` running, JAX catches SIGTERM and agrees on a step at which every
    process stops; call this after every training step, from the same step on in every
    process. Always False in a single process (SIGTERM then ends it as usual)."""
    if jax.process_count() == 1 or not jax.config.jax_enable_preemption_service:
        return False
    from jax.experimental import multihost_utils
    return multihost_utils.reached_preemption_sync_point(step)


def is_main() -> bool:
    """True in the process that writes files and logs (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def from_main(values: Sequence[int]) -> list[int]:
    """Process 0's `values` (int32s), in every process: for host-side choices that must
    agree, such as the time stamp in a default run name."""
    if jax.process_count() == 1:
        return list(values)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(values, np.int32))).tolist()


def local_rows(sharding: jax.sharding.Sharding, shape: tuple[int, ...]) -> slice:
    """The rows (first-axis range) of a global array of `shape` that this process's devices
    hold under `sharding`: its slice of a batch, or everything for a replicated array."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
        first = index[0] if index else slice(None)
        start, stop, _ = first.indices(shape[0])
        starts.append(start)
        stops.append(stop)
    lo, hi = min(starts), max(stops)
    covered = np.zeros(hi - lo, bool)
    for start, stop in zip(starts, stops):
        covered[start - lo:stop - lo] = True
    if not covered.all():
        raise ValueError(f"this process's devices hold non-contiguous rows of {shape} under {sharding}")
    return slice(lo, hi)


def global_array(host_value, sharding: jax.sharding.Sharding):
    """A global `jax.Array` laid out by `sharding` from `host_value` (an array or a pytree
    of arrays), which every process holds in full, e.g. the global batch each process
    builds from the same seed. Each process contributes only the rows its devices hold."""
    if jax.process_count() == 1:
        return jax.device_put(host_value, sharding)

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.make_array_from_process_local_data(sharding, x, x.shape)
        return jax.make_array_from_process_local_data(sharding, x[local_rows(sharding, x.shape)], x.shape)

    return jax.tree.map(put, host_value)


def to_host(value):
    """numpy copy of a global array (or pytree of them), the same in every process: read
    from a local copy when replicated, gathered from all processes when sharded."""
    def get(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, value)
