"""The project-wide cache root: decoded frames, generated synthetic data, compiled programs.

`$CVAE_JAX_CACHE` if set, else `~/.cache/cvae_jax`; a run's `--cache_dir` replaces it for
that run's data. Every model's data source and the CLI's compilation cache share it.
"""

from __future__ import annotations

import os
import pathlib

CACHE_ENV_VAR = "CVAE_JAX_CACHE"


def default_root() -> pathlib.Path:
    base = os.environ.get(CACHE_ENV_VAR)
    return pathlib.Path(base).expanduser() if base else pathlib.Path.home() / ".cache" / "cvae_jax"


def cache_root(cfg) -> pathlib.Path:
    """The run's data cache: `--cache_dir`, else the default root."""
    return pathlib.Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_root()
