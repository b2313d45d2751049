"""`python -m cvae_jax train|evaluate [flags]`: the train and evaluate commands."""

import sys

from cvae_jax.cli import evaluate_main, train_main

COMMANDS = {"train": train_main, "evaluate": evaluate_main}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m cvae_jax {{{','.join(COMMANDS)}}} [flags]  (--help after the command "
              "lists its flags)", file=sys.stderr)
        sys.exit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    return COMMANDS[argv[0]](argv[1:], prog=f"python -m cvae_jax {argv[0]}")


if __name__ == "__main__":
    main()
