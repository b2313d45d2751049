"""Evaluate a run: `python evaluate.py --run runs/<name>` scores it on the validation split.

The same command as `cvae-jax-evaluate` and `python -m cvae_jax evaluate` (cvae_jax/cli.py).
"""

from cvae_jax.cli import evaluate_main


def main(argv=None):
    return evaluate_main(argv, prog="evaluate.py")


if __name__ == "__main__":
    main()
