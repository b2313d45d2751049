"""The model-family boundary: `--model` names a module that implements `ModelFamily`.

The training step, training loop, checkpointing, CLI and evaluation dispatcher talk to a
model only through this interface, so they name no model. A model is four pieces: its
module here (this interface), a data source, an evaluation module (scoring and the
notebook object a restored run becomes), and a config section with presets in
`cvae_jax.config` (whose `MODEL_SECTIONS` is the registry `MODELS` comes from).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from cvae_jax.config import MODELS
from cvae_jax.errors import ConfigError

__all__ = ["MODELS", "ModelFamily", "TrainingData", "family"]


class TrainingData(Protocol):
    """What the training loop asks of a model's data (`ModelFamily.load_data`)."""

    baseline_name: str        # the trivial predictor validation is compared with
    first_scored_frame: int   # index of the first frame `val_batches` scores

    def steps_in_epoch(self, epoch: int) -> int: ...

    def epoch_batches(self, epoch: int): ...   # the model's batch tuples, (seed, epoch)-determined

    def val_batches(self): ...                 # [(model inputs, frames to score)]

    def baseline_psnr(self): ...               # (sequences, scored frames)

    def gif_panels(self, video: int, pred) -> list: ...

    def course_score(self, preds) -> float | None: ...  # the course's leaderboard formula, if any


class ModelFamily(Protocol):
    """One model: build it, train it, predict with it, load its data, evaluate a run."""

    DEFAULT_NUM_SAMPLES: int  # z samples per sequence when evaluate.py is not told
    EVAL_OPTIONS: tuple[str, ...]  # `evaluation.EvalOptions` fields only this model takes

    def build(self, cfg, key) -> Any:
        """The nnx module with fresh parameters."""

    def teacher_steps(self, cfg, batch) -> int:
        """Rollout steps a teacher-forcing mask covers for this batch."""

    def objective(self, model, batch, teacher, key, beta, cfg) -> tuple[Any, dict, Any]:
        """(loss, metrics, BatchNorm moments); teacher None: every step teacher-forced."""

    def fold_batch_stats(self, model, moments, batch) -> None:
        """Fold the step's BatchNorm moments into the running averages."""

    def predict_batch(self, model, batch, key, cfg, **options) -> Any:
        """The frames a model is scored on, from a validation batch."""

    def load_data(self, cfg, log=print, train: bool = True) -> TrainingData:
        """The run's data (its validation split alone when train is False)."""

    def check_eval_options(self, cfg, options) -> None:
        """Refuse options this model cannot honour (`errors.InputError`), before anything
        is loaded or written."""

    def evaluate(self, restored, cfg, options, out, log=print) -> dict:
        """Score a restored run on a split (`evaluation.EvalOptions`); returns "mean_psnr" and more."""

    def restored(self, cfg, graphdef, params, batch_stats, meta, path) -> Any:
        """The notebook object of a restored run (`inference.Restored` and the model's methods)."""


def family(name: str) -> ModelFamily:
    if name not in MODELS:
        raise ConfigError(f"--model must be one of {list(MODELS)}, got {name!r}")
    return importlib.import_module(f"cvae_jax.models.{name}")
