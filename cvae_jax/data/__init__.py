"""Datasets by model: `load(cfg)` returns the training-data object the training loop uses
(`dance.DanceData` for lab4, `pushing.PushingData` for svg)."""

from __future__ import annotations


def load(cfg, log=print, train: bool = True):
    if cfg.model == "svg":
        from cvae_jax.data.pushing import PushingData
        return PushingData(cfg, log, splits=("train", "validate") if train else ("validate",))
    from cvae_jax.data.dance import load_dance
    return load_dance(cfg, log, splits=("train", "val") if train else ("val",))
