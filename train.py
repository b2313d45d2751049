"""Train a cvae-jax model: `python train.py` trains the CPU preset on synthetic dance.

Multi-process: the same command in every process, plus --coordinator, --num_processes and
--process_id (README, "Scaling out").
"""

import signal
import sys

from cvae_jax.cli import (compilation_cache_summary, config_from_args, enable_compilation_cache,
                          init_distributed, input_errors_as_usage, train_parser)
from cvae_jax.distributed import Preempted, is_main
from cvae_jax.training import train_and_evaluate


def main(argv=None):
    parser = train_parser()
    args = parser.parse_args(argv)
    with input_errors_as_usage(parser.prog):
        cfg = None if args.resume else config_from_args(args)  # bad flags fail here, first
        init_distributed(args)  # before anything touches a device
        enable_compilation_cache()
        try:
            if args.resume:
                run_dir = train_and_evaluate(resume=args.resume, num_epoch=getattr(args, "num_epoch", None))
            else:
                run_dir = train_and_evaluate(cfg)
        except Preempted:  # saved and logged; the exit status of a process ended by SIGTERM
            sys.exit(128 + signal.SIGTERM)
        if is_main():
            print(compilation_cache_summary())
        return run_dir


if __name__ == "__main__":
    main()
