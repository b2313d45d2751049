"""Command lines of train.py and evaluate.py.

Every Config field is a flag of the same name (the reference trainers' names), so
`--tfr 0.5 --kl_anneal_type Monotonic` read as they do in the course code. A preset gives
the defaults; flags given on the command line override them.
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

from cvae_jax.config import PRESET_NAMES, Config, preset
from cvae_jax.errors import InputError

FLAG_HELP = {
    "DR": "dataset root in the reference layout; omit for the built-in synthetic dance",
    "tfr": "initial teacher-forcing ratio", "tfr_sde": "epoch at which the ratio starts to decay",
    "tfr_d_step": "teacher-forcing decay per epoch", "tfr_floor": "lowest teacher-forcing ratio",
    "tf_mode": "teacher-forcing draw: once per epoch (reference), per clip, per frame, or blend",
    "tfr_adaptive": "lower the ratio by --tfr_d_step whenever validation PSNR improves",
    "kl_anneal_type": "Cyclical, Monotonic or None", "kl_anneal_per": "anneal beta per epoch or per step",
    "bn_mode": "pose BatchNorm at generation: running averages, or per-step batch statistics (reference)",
    "output_sigmoid": "squash generator output into [0, 1] (off = reference)",
    "smooth_weight": "weight of the temporal-difference MSE term",
    "steps_per_epoch": "cap on batches per epoch (default: one pass over the clips)",
    "scan_unroll": "rollout steps per loop iteration in training (XLA CPU is faster unrolled)",
    "batched_wgrad": "lab4 training: the 1x1 layers' weight gradients as one GEMM over all "
                     "steps, not one per step (CPU kernels only; not under --remat; costs a copy "
                     "of their inputs and output gradients)",
    "conv_impl": "convolutions: custom (cvae_jax/kernels.py, fast on XLA CPU), xla, or auto (custom on CPU only)",
    "per_save": "checkpoint every N epochs", "keep_last": "checkpoints kept besides the best",
    "model": "lab4 (pose-conditioned CVAE) or svg (action-conditioned SVG on BAIR)",
    "data": "synthetic (built in), folder (--DR) or tfds (--data_dir; svg only)",
    "data_dir": "TFDS data_dir holding a prepared bair_robot_pushing_small",
    "camera": "BAIR camera read from TFDS", "prior": "svg: fixed N(0, I) prior (SVG-FP) or learned (SVG-LP)",
    "vgg_width": "svg: channels of the first VGG stage (64 = reference)",
    "last_frame_skip": "svg: decoder skips from the previous frame instead of the last context frame",
    "skip_compat": "svg: skips from frame n_past-2 as edenton/svg's loops do (for its published numbers)",
    "beta": "KL weight that annealing ramps to (the constant weight with --kl_anneal_type None)",
    "beta1": "Adam beta1", "grad_clip": "clip gradients to this global norm (0: off)",
    "val_sequences": "svg: validate on at most this many sequences",
}

# The SVG course trainer's flag names for the same settings.
ALIASES = {"tfr_sde": ["tfr_start_decay_epoch"], "tfr_d_step": ["tfr_decay_step"],
           "tfr_floor": ["tfr_lower_bound"], "steps_per_epoch": ["epoch_size"],
           "num_epoch": ["niter"], "DR": ["data_root"]}


class _Cyclical(argparse.Action):
    """--kl_anneal_cyclical / --no-kl_anneal_cyclical: the SVG trainer's switch between
    cyclical and monotonic KL annealing."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.kl_anneal_type = "Monotonic" if option_string.startswith("--no-") else "Cyclical"


def _field_type(field: dataclasses.Field):
    hint = typing.get_type_hints(Config)[field.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(Config):
        if field.name in ("preset",):
            continue
        typ = _field_type(field)
        names = [f"--{n}" for n in [field.name] + ALIASES.get(field.name, [])]
        kwargs = dict(default=argparse.SUPPRESS, help=FLAG_HELP.get(field.name), dest=field.name)
        if typ is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(typ) is tuple:
            parser.add_argument(*names, type=int, nargs="+", **kwargs)
        else:
            parser.add_argument(*names, type=typ, **kwargs)
    parser.add_argument("--kl_anneal_cyclical", "--no-kl_anneal_cyclical", action=_Cyclical, nargs=0,
                        default=argparse.SUPPRESS, help="KL annealing cyclical (else monotonic), "
                        "as the SVG trainer's flag; same as --kl_anneal_type Cyclical/Monotonic")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", description="Train a cvae-jax model. With no data flags, trains the CPU "
        "preset of --model (lab4 by default) on its built-in synthetic dataset.")
    p.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="defaults to start from: cpu (small, minutes on a laptop; per model), lab4 "
                   "(Lab4 reference), bair (the SVG course trainer), svg_lp (SVG-LP paper recipe)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder from its latest checkpoint "
                   "(its saved config is used; only --num_epoch may change, which stretches cosine LR "
                   "and per-step KL schedules)")
    add_config_flags(p)
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


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's Config: the preset, then the flags given. A value the Config rejects
    raises `errors.ConfigError` naming the flag (`input_errors_as_usage` reports it)."""
    overrides = {k: v for k, v in vars(args).items()
                 if k in {f.name for f in dataclasses.fields(Config)} and k != "preset"}
    if "lr_milestones" in overrides:
        overrides["lr_milestones"] = tuple(overrides["lr_milestones"])
    if args.preset is None:
        base = preset("cpu", overrides.get("model", "lab4"))
    else:
        base = preset(args.preset, overrides.get("model"))
    return base.replace(**overrides).validated()


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description="Score a run on a split: lab4 rolls "
                                "out every video from its first frame and poses (PSNR per frame); svg "
                                "predicts n_future frames after n_past context frames (PSNR and SSIM "
                                "per frame, both definitions, best of N samples and their mean).")
    p.add_argument("--run", required=True, help="run folder made by train.py")
    p.add_argument("--DR", "--data_root", dest="DR", help="dataset root (default: the one the run trained on)")
    p.add_argument("--data", choices=("synthetic", "folder", "tfds"), help="data source (default: the run's)")
    p.add_argument("--data_dir", help="svg: TFDS data_dir (with --data tfds)")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="val (svg: the validate folder, or TFDS test) or test")
    p.add_argument("--n_future", type=int, help="svg: frames to predict after the context "
                   "(default: the run's, 10 like the course; 28 for the paper protocol)")
    p.add_argument("--num_samples", type=int, help="z samples per sequence (default 1 for lab4; "
                   "5 for svg, scored as best of N by mean SSIM and as the mean over N)")
    p.add_argument("--z_mode", choices=("sample", "mean"), help="draw z ~ N(0, I) or use its mean")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint to restore")
    p.add_argument("--save_frames", metavar="OUT.npz", help="save predictions as npz array 'pred' "
                   "(videos, frames, H, W, 3), float32 in [0, 1]")
    p.add_argument("--out", help="output folder (default: <run>/eval_<split>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the z draws")
    return p


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

    from cvae_jax.data.dance_folder import default_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(default_cache_dir().parent / "xla"))
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
