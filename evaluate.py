"""Evaluate a run: `python evaluate.py --run runs/<name>` scores it on the validation split."""

from cvae_jax.cli import enable_compilation_cache, evaluate_parser, input_errors_as_usage
from cvae_jax.evaluation import evaluate


def main(argv=None):
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    enable_compilation_cache()
    with input_errors_as_usage(parser.prog):
        return evaluate(args.run, DR=args.DR, split=args.split, num_samples=args.num_samples,
                        z_mode=args.z_mode, which=args.which, save_frames=args.save_frames,
                        out=args.out, seed=args.seed, data=args.data, data_dir=args.data_dir,
                        n_future=args.n_future)


if __name__ == "__main__":
    main()
