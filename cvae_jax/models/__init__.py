"""The model registry: `--model` names a module that implements the family interface.

A family module provides `build(cfg, key)`, `teacher_steps(cfg, batch)`,
`objective(model, batch, teacher, key, beta, cfg) -> (loss, metrics, moments)` (teacher
None: every step teacher-forced, which a family computes without the per-step chain),
`fold_batch_stats(model, moments, batch)` and `predict_batch(model, batch, key, cfg, ...)`; the
training step, training loop, checkpointing and evaluation only talk to that interface.
"""

from __future__ import annotations

import importlib

MODELS = ("lab4", "svg")


def family(name: str):
    if name not in MODELS:
        raise ValueError(f"--model must be one of {list(MODELS)}, got {name!r}")
    return importlib.import_module(f"cvae_jax.models.{name}")
