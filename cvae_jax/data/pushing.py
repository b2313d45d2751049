"""The SVG dataset for a run: BAIR robot pushing from TFDS (`--data tfds`), the course's
processed folder (`--data folder --DR`), or the built-in synthetic pushing set (default).

`PushingData` implements the training-data interface (see `data/dance.py`). Training
batches follow the course loader: every sample is a random sequence (drawn from
(seed, epoch), so a resumed run replays them), its first n_past + n_future frames. Small
datasets are decoded into memory once; large ones (the real 43k-sequence train split) are
read per batch.

A broken file (see `data/bair_folder.py`) in the validation split or a small train split
is therefore found before training makes a run folder; in a train split read per batch,
when its sequence is first drawn: the run stops with the same one-line error naming the
file, its folder keeping the checkpoints saved so far (fix the file, then resume).
"""

from __future__ import annotations

import pathlib

import numpy as np

from cvae_jax import metrics
from cvae_jax.media import to_unit_float
from cvae_jax.config import Config
from cvae_jax.data.bair_folder import BairFolder
from cvae_jax.data.cache import cache_root
from cvae_jax.data.synthetic_pushing import SyntheticPushingSpec, ensure_synthetic

IN_MEMORY_BYTES = 2 << 30
VAL_CHUNK = 16  # validation sequences per prediction call (one compiled shape)


class _InMemory:
    def __init__(self, source, n_frames: int):
        self.frames, self.cond = _Lazy(source, n_frames).take(range(len(source)))
        self.names = source.names

    def __len__(self):
        return len(self.frames)

    def take(self, idx):
        return self.frames[idx], self.cond[idx]


class _Lazy:
    def __init__(self, source, n_frames: int):
        self.source, self.n_frames, self.names = source, n_frames, source.names

    def __len__(self):
        return len(self.source)

    def take(self, idx):
        items = [self.source[int(i)] for i in idx]
        return (np.stack([f[:self.n_frames] for f, _ in items]),
                np.stack([c[:self.n_frames] for _, c in items]))


def _resident(source, n_frames: int):
    small = len(source) * n_frames * 64 * 64 * 3 <= IN_MEMORY_BYTES
    return _InMemory(source, n_frames) if small else _Lazy(source, n_frames)


def synthetic_spec(cfg: Config) -> SyntheticPushingSpec:
    return SyntheticPushingSpec(seed=cfg.synthetic_seed, train_sequences=cfg.synthetic_sequences)


def sources(cfg: Config, splits=("train", "validate"), log=print) -> dict:
    """{split: random-access source} for the configured data; `validate` means BAIR's
    test split under TFDS (the TFDS build has no validation split)."""
    if cfg.data_source == "tfds":
        from cvae_jax.data.bair_tfds import BairTFDS
        log(f"data: TFDS bair_robot_pushing_small ({cfg.camera}) from {cfg.data_dir or 'the TFDS default dir'}")
        tfds_split = {"train": "train", "validate": "test", "test": "test"}
        return {s: BairTFDS(cfg.data_dir, tfds_split[s], camera=cfg.camera, seq_len=cfg.n_eval) for s in splits}
    if cfg.data_source == "folder":
        root = pathlib.Path(cfg.DR)
        log(f"data: processed BAIR folder {root}")
    else:
        spec = synthetic_spec(cfg)
        root = ensure_synthetic(cache_root(cfg), spec)
        log(f"data: built-in synthetic pushing ({spec.train_sequences} train, {spec.validate_sequences} "
            f"validate, {spec.test_sequences} test sequences of {spec.seq_len} frames) in {root}")
    return {s: BairFolder(root, s, seq_len=cfg.n_eval) for s in splits}


class PushingData:
    baseline_name = "repeat-last-context-frame"

    def __init__(self, cfg: Config, log=print, splits=("train", "validate")):
        """The last of `splits` is the one validated/evaluated on."""
        self.cfg = cfg
        src = sources(cfg, splits, log)
        self.train = _resident(src["train"], cfg.n_past + cfg.n_future) if "train" in src else None
        val = src[splits[-1]]
        n_val = min(len(val), cfg.val_sequences or len(val))
        items = [val[i] for i in range(n_val)]
        self.val_frames = to_unit_float(np.stack([f[:cfg.n_eval] for f, _ in items]))
        self.val_cond = np.stack([c[:cfg.n_eval] for _, c in items]).astype(np.float32)
        self.val_names = val.names[:n_val]

    @property
    def first_scored_frame(self) -> int:
        return self.cfg.n_past

    def steps_in_epoch(self, epoch: int) -> int:
        return self.cfg.steps_per_epoch or max(len(self.train) // self.cfg.batch_size, 1)

    def epoch_batches(self, epoch: int):
        rng = np.random.default_rng([self.cfg.seed, epoch])
        for _ in range(self.steps_in_epoch(epoch)):
            frames, cond = self.train.take(rng.integers(0, len(self.train), self.cfg.batch_size))
            yield to_unit_float(frames), cond.astype(np.float32)

    def scored(self, frames, n_future: int | None = None):
        p = self.cfg.n_past
        return frames[:, p:p + (n_future or self.cfg.n_future)]

    def val_batches(self, n_future: int | None = None):
        """((frames, cond), frames to score) in chunks of VAL_CHUNK; the last chunk is
        padded with copies of its first sequence (their predictions are dropped)."""
        out = []
        for start in range(0, len(self.val_frames), VAL_CHUNK):
            frames, cond = self.val_frames[start:start + VAL_CHUNK], self.val_cond[start:start + VAL_CHUNK]
            truth = self.scored(frames, n_future)
            pad = min(VAL_CHUNK, len(self.val_frames)) - len(frames)
            if pad:
                frames = np.concatenate([frames, np.repeat(frames[:1], pad, 0)])
                cond = np.concatenate([cond, np.repeat(cond[:1], pad, 0)])
            out.append(((frames, cond), truth))
        return out

    def baseline_psnr(self, n_future: int | None = None) -> np.ndarray:
        truth = self.scored(self.val_frames, n_future)
        last = np.broadcast_to(self.val_frames[:, self.cfg.n_past - 1:self.cfg.n_past], truth.shape)
        return np.asarray(metrics.psnr(last, truth))

    def course_score(self, preds) -> None:
        """No course leaderboard scores BAIR predictions."""
        return None

    def gif_panels(self, video: int, pred) -> list[np.ndarray]:
        """ground truth | prediction (context frames, then the predicted ones)."""
        p = self.cfg.n_past
        truth = self.val_frames[video, :p + len(pred)]
        return [truth, np.concatenate([truth[:p], pred], axis=0)]
