"""Train a cvae-jax model: `python train.py` trains the CPU preset on synthetic dance."""

from cvae_jax.cli import enable_compilation_cache, config_from_args, train_parser
from cvae_jax.training import train_and_evaluate


def main(argv=None):
    args = train_parser().parse_args(argv)
    enable_compilation_cache()
    if args.resume:
        return train_and_evaluate(resume=args.resume, num_epoch=getattr(args, "num_epoch", None))
    return train_and_evaluate(config_from_args(args))


if __name__ == "__main__":
    main()
