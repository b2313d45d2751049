"""The train and evaluate commands (`train.py`, `cvae-jax-train`, `python -m cvae_jax train`).

Every config field is a flag of the same name (the reference trainers' names), so
`--tfr 0.5 --kl_anneal_type Monotonic` read as they do in the course code, grouped by the
config's sections in `--help`. A preset gives the defaults; flags given on the command line
override them; a flag of another model is a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import traceback
import types
import typing

from cvae_jax import models
from cvae_jax.config import (COMMON_SECTIONS, FLAGS, MODEL_SECTIONS, MODELS, PRESET_NAMES, PRESETS,
                             RESUME_FLAGS, Config, check_resume_changes, flag_name, preset, shown)
from cvae_jax.errors import InputError

DEFAULT_MODEL = Config().model


class _Cyclical(argparse.Action):
    """--kl_anneal_cyclical / --no-kl_anneal_cyclical: the SVG trainer's switch between
    cyclical and monotonic KL annealing."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.kl_anneal_type = "Monotonic" if option_string.startswith("--no-") else "Cyclical"


def _value_type(field: dataclasses.Field, section: type):
    hint = typing.get_type_hints(section)[field.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _help(field: dataclasses.Field, default) -> str:
    """The field's one line and its default (from the preset in force); the choices are
    the flag's metavar."""
    return f"{field.metadata['help']} (default: {shown(default)})".replace("%", "%%")


def _first_line(obj) -> str:
    return obj.__doc__.split(";")[0].split(".")[0].strip()


def _preset_for(model: str, name: str | None) -> Config:
    """The defaults `--model model --preset name` would start from (cpu where the model
    has no preset of that name), for the help text."""
    return preset(name if name in PRESETS[model] else "cpu", model)


def _add_section(parser, title: str, section: type, base: Config | None, visible: bool) -> None:
    group = parser.add_argument_group(title)
    for f in section.options():
        flag = flag_name(f)
        typ = _value_type(f, section)
        names = [f"--{n}" for n in (flag, *f.metadata["aliases"])]
        default = base.flat()[flag] if base is not None else f.default
        kwargs = dict(default=argparse.SUPPRESS, dest=flag,
                      help=_help(f, default) if visible else argparse.SUPPRESS)
        if typ is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(typ) is tuple:
            group.add_argument(*names, type=int, nargs="+", metavar="EPOCH", **kwargs)
        else:
            metavar = "{" + ",".join(c for c in f.metadata["choices"] if c) + "}" if f.metadata["choices"] else None
            group.add_argument(*names, type=typ, metavar=metavar, **kwargs)
        if flag == "kl_anneal_type":
            group.add_argument("--kl_anneal_cyclical", "--no-kl_anneal_cyclical", action=_Cyclical, nargs=0,
                               default=argparse.SUPPRESS, help="the SVG trainer's switch: --kl_anneal_type "
                               "Cyclical, or Monotonic with --no-" if visible else argparse.SUPPRESS)


def add_config_flags(parser: argparse.ArgumentParser, model: str | None = None,
                     preset_name: str | None = None) -> None:
    """Every config field as a flag, grouped by section. Help defaults come from the preset
    that `--model model --preset preset_name` selects; with a model given, the other
    models' flags are accepted (to be refused by name) but not listed."""
    shown = model or DEFAULT_MODEL
    base = _preset_for(shown, preset_name)
    for attr, section in COMMON_SECTIONS.items():
        if attr == "execution":
            continue
        _add_section(parser, section.title, section, base, True)
    for name, section in MODEL_SECTIONS.items():
        visible = model is None or model == name
        title = f"{section.title} (--model {name})"
        _add_section(parser, title, section, _preset_for(name, preset_name) if visible else None, visible)
    _add_section(parser, COMMON_SECTIONS["execution"].title, COMMON_SECTIONS["execution"], base, True)


def _selection(argv) -> tuple[str | None, str | None]:
    """--model and --preset as given (for the help text's defaults), before the full parse."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    pre.add_argument("--preset")
    known, _ = pre.parse_known_args(argv)
    return (known.model if known.model in MODELS else None,
            known.preset if known.preset in PRESET_NAMES else None)


def train_parser(argv=None, prog: str = "train.py") -> argparse.ArgumentParser:
    """The train command's parser; `argv` (default sys.argv) picks the help's model and preset."""
    model, preset_name = _selection(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog=prog, usage="%(prog)s [--model {" + ",".join(MODELS) + "}] [--preset P] [--resume RUN_DIR] [FLAG ...]",
        description="Train a cvae-jax model. With no data flags, trains the cpu preset of "
        f"--model ({DEFAULT_MODEL} by default) on its built-in synthetic dataset. Defaults shown are those of "
        f"--model {model or DEFAULT_MODEL} --preset {preset_name or 'cpu'}; --model M --help lists only M's flags.")
    common = p.add_argument_group("common")
    common.add_argument("--model", choices=MODELS, metavar="{" + ",".join(MODELS) + "}", default=argparse.SUPPRESS,
                        help="; ".join(f"{m}: {_first_line(s)}" for m, s in MODEL_SECTIONS.items())
                        + f" (default: {DEFAULT_MODEL})")
    common.add_argument("--preset", choices=PRESET_NAMES, metavar="{" + ",".join(PRESET_NAMES) + "}", default=None,
                        help="defaults to start from, per model: " + "; ".join(
                            f"{m}: {', '.join(p)}" for m, p in PRESETS.items()) + "; README, 'Presets' (default: cpu)")
    common.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder from its latest checkpoint "
                        "with its saved config; only " + ", ".join("--" + f for f in RESUME_FLAGS) +
                        " may be given with it (default: start a new run)")
    add_config_flags(p, model, preset_name)
    add_launch_flags(p)
    return p


def add_launch_flags(parser: argparse.ArgumentParser) -> None:
    """Multi-process flags: how this process joins the run, not part of its config."""
    from cvae_jax.distributed import CLUSTER_METHODS
    g = parser.add_argument_group(
        "multi-process training", "launch parameters (not saved with the run): start the same "
        "command once per host or GPU, each with its --process_id; see README, 'Scaling out'")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 and a free port "
                   "on it; every process passes the same one")
    g.add_argument("--num_processes", type=int, metavar="N", help="processes in the run (default 1)")
    g.add_argument("--process_id", type=int, metavar="I", help="this process, 0..N-1; 0 writes the "
                   "run folder's files and logs")
    g.add_argument("--local_device_ids", type=int, nargs="+", metavar="ID",
                   help="GPUs this process uses (e.g. one per process: --local_device_ids I); "
                   "default: all it sees")
    g.add_argument("--distributed", choices=CLUSTER_METHODS, metavar="|".join(CLUSTER_METHODS),
                   help="read the flags above (those not given) from the cluster: auto detects "
                   "Slurm, Open MPI, Cloud TPU or Kubernetes; mpi4py must be named")


def init_distributed(args: argparse.Namespace) -> bool:
    """Apply the launch flags (`jax.distributed.initialize`) before any JAX computation;
    returns whether this process joined a multi-process run."""
    from cvae_jax import distributed
    return distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                  args.local_device_ids, args.distributed)


def given_flags(args: argparse.Namespace) -> dict:
    """{flag: value} of the config flags given on the command line."""
    return {k: tuple(v) if k == "lr_milestones" else v for k, v in vars(args).items() if k in FLAGS}


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's Config: the preset, then the flags given. A value the Config rejects, or
    a flag of another model, raises `errors.ConfigError` naming the flag
    (`input_errors_as_usage` reports it)."""
    model = getattr(args, "model", None)
    base = preset("cpu", model or DEFAULT_MODEL) if args.preset is None else preset(args.preset, model)
    return base.replace(**given_flags(args)).validated()


def evaluate_parser(prog: str = "evaluate.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Score a run on a split under its model's protocol, "
                                "which is printed with the scores (README, 'Evaluation').")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder made by train.py (required)")
    p.add_argument("--DR", "--data_root", dest="DR", help="dataset root (default: the one the run trained on)")
    p.add_argument("--data", choices=("synthetic", "folder", "tfds"), help="data source (default: the run's)")
    p.add_argument("--data_dir", help="TFDS data_dir, with --data tfds (default: the run's)")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="val (lab4: also scored by the course's Kaggle formula; svg: the validate folder, "
                   "or TFDS test) or test (lab4: the test folders "
                   "<DR>/test/test_img/<i>, test_label/<i>, generated and not scored; --DR may hold only "
                   "them) (default: val)")
    p.add_argument("--n_future", type=int, help="frames to predict after the context, for models that "
                   "have --n_future (default: the run's; the SVG paper's protocol: 28)")
    p.add_argument("--num_samples", type=int, help="z samples per sequence, scored where N > 1 as best of N "
                   "(each sequence's sample with the highest mean PSNR over its frames for lab4, SSIM for svg) and "
                   "as their mean; refused with z_mode mean and with lab4's --split test (default: the model's: "
                   + ", ".join(f"{m} {models.family(m).DEFAULT_NUM_SAMPLES}" for m in MODELS) + "; 1 with z_mode mean)")
    p.add_argument("--z_mode", choices=("sample", "mean"), help="draw z from the prior or use its mean, "
                   "which makes every sample the same (default: the run's)")
    p.add_argument("--which", choices=("best", "latest"), default="best",
                   help="checkpoint to restore (default: best)")
    p.add_argument("--save_frames", metavar="OUT.npz", help="save predictions (with N > 1 samples: each "
                   "sequence's best) as npz array 'pred' (videos, frames, H, W, 3), float32 in [0, 1] "
                   "(default: not saved)")
    owners = " or ".join(m for m in MODELS if "submission" in models.family(m).EVAL_OPTIONS)
    p.add_argument("--submission", metavar="OUT.csv", help=f"with --split test (--model {owners}): also write "
                   "the course's Kaggle submission.csv: header id,0,...,3HW-1; row r = test video r // T "
                   "(numeric folder order), frame r %% T (T frames per video, frame 0 the given first frame); "
                   "columns in (C, H, W) order; values rint(255 x) after clipping x to [0, 1] (the course "
                   "template does not clip); one z sample per video (default: not written)")
    p.add_argument("--out", help="output folder (default: <run>/eval_<split>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the z draws (default: 0)")
    return p


def train_main(argv=None, prog: str = "cvae-jax-train"):
    """The train command; returns the run folder. SIGTERM: checkpoint, then exit 143."""
    from cvae_jax.distributed import Preempted, is_main
    from cvae_jax.training import train_and_evaluate
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = train_parser(argv, prog)
    args = parser.parse_args(argv)
    with input_errors_as_usage(parser.prog):
        given = given_flags(args)
        if args.resume:
            chosen = [k for k in ("model", "preset") if getattr(args, k, None) is not None]
            check_resume_changes(chosen + list(given), args.resume)
        cfg = None if args.resume else config_from_args(args)  # bad flags fail here, first
        init_distributed(args)  # before anything touches a device
        enable_compilation_cache()
        try:
            run_dir = (train_and_evaluate(resume=args.resume, **given) if args.resume
                       else train_and_evaluate(cfg))
        except Preempted as stopped:  # saved and logged; the exit status of a process ended by the signal
            sys.exit(128 + stopped.signum)
        if is_main():
            print(compilation_cache_summary())
        return run_dir


def evaluate_main(argv=None, prog: str = "cvae-jax-evaluate"):
    """The evaluate command; returns the evaluation's result dict."""
    from cvae_jax.evaluation import evaluate
    parser = evaluate_parser(prog)
    args = parser.parse_args(argv)
    enable_compilation_cache()
    with input_errors_as_usage(parser.prog):
        return evaluate(args.run, DR=args.DR, split=args.split, num_samples=args.num_samples,
                        z_mode=args.z_mode, which=args.which, save_frames=args.save_frames,
                        out=args.out, seed=args.seed, data=args.data, data_dir=args.data_dir,
                        n_future=args.n_future, submission=args.submission)


def train_script() -> None:
    """`cvae-jax-train`: a console script exits with its function's value, so nothing is
    returned (a run folder would be printed and exit 1)."""
    train_main()


def evaluate_script() -> None:
    """`cvae-jax-evaluate`, as `train_script`."""
    evaluate_main()


MIN_CACHED_COMPILE_S = 1.0  # quicker compiles are not worth a disk entry
_CACHE_EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": "requests",
                 "/jax/compilation_cache/cache_hits": "hits"}
_cache_counts = {"requests": 0, "hits": 0}
_listening = False  # jax.monitoring keeps every listener registered; one is enough


def _count_cache_event(event: str, **_) -> None:
    if event in _CACHE_EVENTS:
        _cache_counts[_CACHE_EVENTS[event]] += 1


def enable_compilation_cache() -> None:
    """Persist compiled programs so a second run skips the minute of XLA compilation.
    Each call starts the counts of `compilation_cache_summary` afresh (one per run)."""
    global _listening
    import jax

    from cvae_jax.data.cache import default_root
    jax.config.update("jax_compilation_cache_dir", str(default_root() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_S)
    _cache_counts.update(requests=0, hits=0)
    if not _listening:
        jax.monitoring.register_event_listener(_count_cache_event)
        _listening = True


def compilation_cache_summary() -> str:
    """One line for the end of a run: how many compiled programs came from the disk cache."""
    import jax
    return (f"compiled programs: {_cache_counts['hits']} of {_cache_counts['requests']} loaded from "
            f"the cache in {jax.config.jax_compilation_cache_dir} (programs compiling in under "
            f"{MIN_CACHED_COMPILE_S:g} s are not cached)")


@contextlib.contextmanager
def input_errors_as_usage(prog: str):
    """An `errors.InputError` (a bad dataset, run folder or flag value) ends the program
    as argparse ends it for a bad flag: `prog: error: message`, exit status 2, no
    traceback unless CVAE_JAX_TRACEBACK=1. Every other exception propagates unchanged."""
    try:
        yield
    except InputError as e:
        if os.environ.get("CVAE_JAX_TRACEBACK") == "1":
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
