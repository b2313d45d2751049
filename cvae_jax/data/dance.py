"""The Lab4 dataset for a run: the user's folder (`--DR`) or the built-in synthetic dance."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from cvae_jax.config import Config
from cvae_jax.data import dance_folder
from cvae_jax.data.synthetic_dance import SyntheticDanceSpec, ensure_synthetic


@dataclasses.dataclass(frozen=True)
class DanceData:
    root: pathlib.Path
    train_frames: np.ndarray  # uint8 (N, H, W, 3), consecutive frames
    train_poses: np.ndarray
    val_frames: np.ndarray    # float32 (videos, val_vi_len, H, W, 3) in [0, 1]
    val_poses: np.ndarray


def cache_root(cfg: Config) -> pathlib.Path:
    return pathlib.Path(cfg.cache_dir).expanduser() if cfg.cache_dir else dance_folder.default_cache_dir().parent


def synthetic_spec(cfg: Config) -> SyntheticDanceSpec:
    return SyntheticDanceSpec(seed=cfg.synthetic_seed, train_videos=cfg.synthetic_train_videos,
                              val_videos=1, test_videos=2, frames_per_video=cfg.val_vi_len)


def dataset_root(cfg: Config, log=print) -> pathlib.Path:
    """`--DR`, or the synthetic dataset generated (once) into the cache."""
    if cfg.DR is not None:
        return pathlib.Path(cfg.DR)
    spec = synthetic_spec(cfg)
    root = ensure_synthetic(cache_root(cfg), spec)
    log(f"data: built-in synthetic dance ({spec.train_videos} train videos, {spec.val_videos} val, "
        f"{spec.test_videos} test, {spec.frames_per_video} frames each) in {root}")
    return root


def load_dance(cfg: Config, log=print, splits=("train", "val")) -> DanceData:
    root = dataset_root(cfg, log)
    hw = (cfg.frame_H, cfg.frame_W)
    dance_cache = cache_root(cfg) / "dance"
    train = dance_folder.load_split(root, "train", hw, dance_cache) if "train" in splits else (None, None, None)
    val_f, val_p, _ = dance_folder.load_split(root, "val", hw, dance_cache)
    val_frames, val_poses = dance_folder.val_videos(val_f, val_p, cfg.val_vi_len, source=str(root / "val"))
    return DanceData(root, train[0], train[1], val_frames, val_poses)
