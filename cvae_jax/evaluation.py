"""Evaluate a run: restore it, apply the data overrides, hand it to its model's evaluation.

The protocols (what is scored, how samples are chosen) are the model's own: see
`lab4_evaluation` and `svg_evaluation`. Every result has "out" and "mean_psnr". Options
of one model alone (`ModelFamily.EVAL_OPTIONS`, e.g. a Kaggle submission) given for
another are usage errors, and each model checks its options (`check_eval_options`)
before anything is written.
"""

from __future__ import annotations

import dataclasses
import pathlib

from cvae_jax import models
from cvae_jax.config import MODELS
from cvae_jax.checkpointing import load_checkpoint
from cvae_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    split: str = "val"               # val (scored) or test (generated only where there is no truth)
    num_samples: int = 1             # z samples per sequence
    z_mode: str | None = None        # sample or mean; None: the run's
    which: str = "best"              # checkpoint restored
    seed: int = 0                    # of the z draws
    save_frames: str | None = None   # npz of the predictions
    submission: str | None = None    # a model's submission file (`ModelFamily.EVAL_OPTIONS`)


def _check_model_options(model: str, opts: EvalOptions) -> None:
    """A model-specific option given for a model that does not take it: usage error."""
    for f in dataclasses.fields(EvalOptions):
        owners = [m for m in MODELS if f.name in models.family(m).EVAL_OPTIONS]
        if owners and model not in owners and getattr(opts, f.name) != f.default:
            raise ConfigError(f"--{f.name} applies to --model {' or '.join(owners)}, not {model}")


def _num_samples(given: int | None, z_mode: str | None, run_z_mode: str, default: int) -> int:
    """Samples per sequence: as given, else the model's default; 1 when z is the prior's
    mean, where every sample is the same video (asking for more is a usage error)."""
    mode = z_mode or run_z_mode
    if given is not None and given < 1:
        raise ConfigError(f"--num_samples must be at least 1, got {given}")
    if mode != "mean":
        return default if given is None else given
    if given is not None and given > 1:
        whose = "--z_mode mean" if z_mode else "z_mode mean (the run's; --z_mode not given)"
        raise ConfigError(f"--num_samples {given} with {whose}: z is the prior's mean, so all {given} samples "
                          f"would be the same video; give --z_mode sample to draw {given}, or --num_samples 1")
    return 1


def evaluate(run, DR=None, split="val", num_samples=None, z_mode=None, which="best",
             save_frames=None, out=None, seed=0, log=print, data=None, data_dir=None,
             n_future=None, submission=None) -> dict:
    """Score `run` on `split`. DR / data / data_dir override where the run's data came
    from, n_future (svg) the prediction horizon, submission (lab4, --split test) the course's
    Kaggle CSV to write; a flag of the other model is an error.
    num_samples defaults to the model's (`ModelFamily.DEFAULT_NUM_SAMPLES`), or 1 with z_mode
    mean (more is refused: every sample would be the same)."""
    model = load_checkpoint(run, which=which)
    fam = models.family(model.config.model)
    num_samples = _num_samples(num_samples, z_mode, model.config.z_mode, fam.DEFAULT_NUM_SAMPLES)
    changes = {k: v for k, v in (("DR", None if DR is None else str(DR)), ("data", data),
                                 ("data_dir", data_dir), ("n_future", n_future)) if v is not None}
    if changes.get("data") == "tfds":
        changes["DR"] = None  # the run's folder root, if any, does not apply to TFDS
    cfg = model.config.replace(**changes).validated()
    opts = EvalOptions(split, num_samples, z_mode, which, seed, save_frames, submission)
    _check_model_options(cfg.model, opts)
    fam.check_eval_options(cfg, opts)
    out = pathlib.Path(out) if out else pathlib.Path(run) / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    return fam.evaluate(model, cfg, opts, out, log)
