"""Command lines of train.py and evaluate.py.

Every Config field is a flag of the same name (the reference trainers' names), so
`--tfr 0.5 --kl_anneal_type Monotonic` read as they do in the course code. A preset gives
the defaults; flags given on the command line override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from cvae_jax.config import PRESETS, Config, preset

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
    "per_save": "checkpoint every N epochs", "keep_last": "checkpoints kept besides the best",
}


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
        kwargs = dict(default=argparse.SUPPRESS, help=FLAG_HELP.get(field.name))
        if typ is bool:
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(typ) is tuple:
            parser.add_argument(f"--{field.name}", type=int, nargs="+", **kwargs)
        else:
            parser.add_argument(f"--{field.name}", type=typ, **kwargs)


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", description="Train a cvae-jax model. With no --DR, trains the CPU preset "
        "on the built-in synthetic dance dataset.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="defaults to start from: cpu (small, minutes on a laptop) or lab4 (reference dims)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder from its latest checkpoint "
                   "(its saved config is used; only --num_epoch may change, which stretches cosine LR "
                   "and per-step KL schedules)")
    add_config_flags(p)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(Config)}}
    if "lr_milestones" in overrides:
        overrides["lr_milestones"] = tuple(overrides["lr_milestones"])
    return preset(args.preset).replace(**overrides).validated()


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description="Roll out every video of a split "
                                "from its first frame and poses and score PSNR per frame.")
    p.add_argument("--run", required=True, help="run folder made by train.py")
    p.add_argument("--DR", help="dataset root (default: the one the run trained on)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--num_samples", type=int, default=1, help="z samples per video")
    p.add_argument("--z_mode", choices=("sample", "mean"), help="draw z ~ N(0, I) or use its mean")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint to restore")
    p.add_argument("--save_frames", metavar="OUT.npz", help="save predictions as npz array 'pred' "
                   "(videos, frames, H, W, 3), float32 in [0, 1]")
    p.add_argument("--out", help="output folder (default: <run>/eval_<split>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the z draws")
    return p


def enable_compilation_cache() -> None:
    """Persist compiled programs so a second run skips the minute of XLA compilation."""
    import jax

    from cvae_jax.data.dance_folder import default_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(default_cache_dir().parent / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
