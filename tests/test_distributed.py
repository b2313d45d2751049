"""Multi-process launch flags (`jax.distributed`) and the single-process no-ops. The
two-process training run itself is in test_training.py, beside the one-process run over two
devices it must match (one compilation fewer than a run of its own).
"""

from __future__ import annotations

import numpy as np
import pytest

FLAGS = ["--preset", "lab4", "--batch_size", "2", "--tfr", "0.5"]


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
