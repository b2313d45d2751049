"""The Lab4 dataset for a run: the user's folder (`--DR`) or the built-in synthetic dance.

`DanceData` implements the training-data interface the training loop uses for every model:
`steps_in_epoch`, `epoch_batches`, `val_batches` ((model inputs, frames to score) pairs),
`baseline_psnr`, `baseline_name`, `first_scored_frame` and `gif_panels`.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from cvae_jax import metrics
from cvae_jax.config import Config
from cvae_jax.data import dance_folder
from cvae_jax.data.cache import cache_root
from cvae_jax.data.synthetic_dance import SyntheticDanceSpec, ensure_synthetic


@dataclasses.dataclass(frozen=True)
class DanceData:
    root: pathlib.Path
    train_frames: np.ndarray  # uint8 (N, H, W, 3), consecutive frames
    train_poses: np.ndarray
    val_frames: np.ndarray    # float32 (videos, val_vi_len, H, W, 3) in [0, 1]
    val_poses: np.ndarray
    cfg: Config | None = None

    baseline_name = "copy-first-frame"
    first_scored_frame = 1

    def _partial(self, epoch: int) -> float:
        """The reference keeps `fast_partial` through epoch fast_train_epoch + 1."""
        c = self.cfg
        return c.fast_partial if c.fast_train and epoch <= c.fast_train_epoch + 1 else c.partial

    def steps_in_epoch(self, epoch: int) -> int:
        c = self.cfg
        full = dance_folder.steps_per_epoch(len(self.train_frames), c.train_vi_len, c.batch_size,
                                            self._partial(epoch))
        return min(full, c.steps_per_epoch) if c.steps_per_epoch else full

    def epoch_batches(self, epoch: int):
        c = self.cfg
        return dance_folder.epoch_batches(self.train_frames, self.train_poses, c.train_vi_len,
                                          c.batch_size, c.seed, epoch, self._partial(epoch), c.augment)

    def val_batches(self):
        """One video per batch: ((first frame, poses), frames 1..T-1)."""
        return [((self.val_frames[i:i + 1, 0], self.val_poses[i:i + 1]), self.val_frames[i:i + 1, 1:])
                for i in range(len(self.val_frames))]

    def baseline_psnr(self) -> np.ndarray:
        """The baseline every model must beat: repeat the given first frame."""
        first = np.broadcast_to(self.val_frames[:, :1], self.val_frames[:, 1:].shape)
        return np.asarray(metrics.psnr(first, self.val_frames[:, 1:]))

    def course_score(self, preds) -> float:
        """The course's Kaggle score (`metrics.course_score`) of the predicted frames 1..T-1
        of every validation video, so validation tracks the leaderboard's number."""
        return metrics.course_score(np.concatenate([self.val_frames[:, :1], preds], axis=1), self.val_frames)

    def gif_panels(self, video: int, pred) -> list[np.ndarray]:
        """prediction (with the given first frame) | ground truth | pose."""
        full = np.concatenate([self.val_frames[video, :1], pred], axis=0)
        return [full, self.val_frames[video], self.val_poses[video]]


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


def check_train_length(cfg: Config, n_frames: int, folder: pathlib.Path) -> None:
    """Every epoch has a full batch, at each share of the clips it uses (`--partial`, and
    `--fast_partial` with --fast_train); refused here, before training makes a run folder."""
    shares = {cfg.partial} | ({cfg.fast_partial} if cfg.fast_train else set())
    for share in sorted(shares):
        try:
            dance_folder.steps_per_epoch(n_frames, cfg.train_vi_len, cfg.batch_size, share)
        except dance_folder.DatasetError as err:
            raise dance_folder.DatasetError(f"train split {folder}: {err}") from None


def load_dance(cfg: Config, log=print, splits=("train", "val")) -> DanceData:
    root = dataset_root(cfg, log)
    hw = (cfg.frame_H, cfg.frame_W)
    dance_cache = cache_root(cfg) / "dance"
    train = dance_folder.load_split(root, "train", hw, dance_cache) if "train" in splits else (None, None, None)
    if train[0] is not None:
        check_train_length(cfg, len(train[0]), root / "train" / "train_img")
    val_f, val_p, _ = dance_folder.load_split(root, "val", hw, dance_cache)
    val_frames, val_poses = dance_folder.val_videos(val_f, val_p, cfg.val_vi_len, source=str(root / "val"))
    return DanceData(root, train[0], train[1], val_frames, val_poses, cfg)
