"""Train a cvae-jax model: `python train.py` trains the CPU preset on synthetic dance.

The same command as `cvae-jax-train` and `python -m cvae_jax train` (cvae_jax/cli.py).
"""

from cvae_jax.cli import train_main


def main(argv=None):
    return train_main(argv, prog="train.py")


if __name__ == "__main__":
    main()
