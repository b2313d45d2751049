"""The course's Kaggle submission (Lab4): every test frame as one CSV row of integers.

The format of the course Tester's `submission.csv` (2024 and 2026): header
`id,0,1,...,D-1` with D = 3*H*W (6144 at 32x64); row r holds test video r // T, frame
r % T (T frames per video, 630 in the course; frame 0 is the given first frame), its id
column is r; column j is channel j // (H*W), pixel row (j % (H*W)) // W, pixel column
j % W (PyTorch's (C, H, W) flattening); values are rint(255 x) of frames x in [0, 1]
(`metrics.course_uint8`: clipped to [0, 1] first, which the Tester does not do).

The file is written in one pass of NumPy (no Python loop over rows: about a second for the
course's 3150 x 6144 values, see `encode_csv`), to a temporary name next to it, then
renamed, so a failed write never leaves half a file.
"""

from __future__ import annotations

import os
import pathlib
import secrets

import numpy as np

from cvae_jax import inference, media
from cvae_jax.errors import ConfigError
from cvae_jax.metrics import course_uint8


def check_finite(frames, video: str = "0") -> None:
    """Raise `errors.NonFiniteOutputError` naming the first frame of `frames` (T, H, W, C)
    with a NaN or inf; `video` names the video in the message."""
    inference.check_finite(np.asarray(frames)[None], [f"test video {video}"],
                           explain=lambda v: "no submission written")


def submission_rows(frames) -> np.ndarray:
    """Videos (V, T, H, W, C) in [0, 1] (or uint8) -> uint8 rows (V*T, C*H*W) in the
    submission's order: row v*T + t is video v's frame t, flattened in (C, H, W) order."""
    x = np.asarray(frames)
    if x.ndim != 5:
        raise ValueError(f"expected videos shaped (V, T, H, W, C), got {x.shape}")
    v, t, h, w, c = x.shape
    return np.ascontiguousarray(course_uint8(x).transpose(0, 1, 4, 2, 3)).reshape(v * t, c * h * w)


def _entry_tables(end: str) -> tuple[np.ndarray, np.ndarray]:
    """For each value 0..255: its decimal digits and `end` as 4 bytes packed in a uint32,
    and a uint32 whose 4 bytes say which of those bytes are kept (1) or padding (0)."""
    chars = np.zeros((256, 4), np.uint8)
    keep = np.zeros((256, 4), np.uint8)
    for value in range(256):
        text = f"{value}{end}".encode()
        chars[value, :len(text)] = np.frombuffer(text, np.uint8)
        keep[value, :len(text)] = 1
    return chars.view(np.uint32)[:, 0].copy(), keep.view(np.uint32)[:, 0].copy()


_MID, _MID_KEEP = _entry_tables(",")
_LAST, _LAST_KEEP = _entry_tables("\n")


def encode_csv(rows: np.ndarray) -> bytes:
    """The CSV text of uint8 `rows` (N, D) with an id column 0..N-1 first and the header
    `id,0,...,D-1`, as bytes (ASCII, '\\n' line ends, no index).

    Every entry is at most 4 bytes ("255,"), so each row is laid out as fixed 4-byte
    slots (the id in the first few) filled from a lookup table of the 256 values, plus a
    mask of which bytes are real; one boolean selection packs the whole file.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.dtype != np.uint8:
        raise ValueError(f"expected uint8 rows (N, D), got {rows.dtype} {rows.shape}")
    n, d = rows.shape
    header = ",".join(["id", *map(str, range(d))]).encode() + b"\n"
    if n == 0 or d == 0:
        return header
    width = len(str(n - 1))                 # digits of the largest id
    id_slots = (width + 1 + 3) // 4         # its digits and the comma, in 4-byte slots
    chars = np.zeros((n, id_slots + d), np.uint32)
    keep = np.zeros((n, id_slots + d), np.uint32)
    np.take(_MID, rows[:, :-1], out=chars[:, id_slots:-1])
    np.take(_MID_KEEP, rows[:, :-1], out=keep[:, id_slots:-1])
    np.take(_LAST, rows[:, -1], out=chars[:, -1])
    np.take(_LAST_KEEP, rows[:, -1], out=keep[:, -1])
    # the id: its digits right-aligned in `width` bytes, leading zeros dropped, then ","
    ids = np.arange(n)
    powers = 10 ** np.arange(width - 1, -1, -1)
    id_chars = np.zeros((n, 4 * id_slots), np.uint8)
    id_keep = np.zeros((n, 4 * id_slots), np.uint8)
    id_chars[:, :width] = ord("0") + (ids[:, None] // powers) % 10
    id_keep[:, :width] = (ids[:, None] >= powers) | (powers == 1)
    id_chars[:, width] = ord(",")
    id_keep[:, width] = 1
    chars[:, :id_slots] = id_chars.view(np.uint32)
    keep[:, :id_slots] = id_keep.view(np.uint32)
    return header + chars.view(np.uint8)[keep.view(np.bool_)].tobytes()  # 0/1 bytes are bools


def check_writable(path) -> pathlib.Path:
    """Raise `ConfigError` unless a file can be created at `path` (its folder exists, is
    writable, and `path` is not a folder): checked by creating and removing a file there,
    before hours of generation, not after."""
    path = pathlib.Path(path).expanduser()
    where = f"--submission {path}: cannot write the submission there"
    if path.is_dir():
        raise ConfigError(f"{where}: it is a folder (give a file name, e.g. {path / 'submission.csv'})")
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise ConfigError(f"{where}: {path.parent} {what}")
    probe = path.parent / f".{path.name}.{secrets.token_hex(4)}.probe"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as err:
        raise ConfigError(f"{where}: {err.strerror or err} in {path.parent}") from None
    probe.unlink()
    return path


def write_submission(path, videos, names=None) -> pathlib.Path:
    """Write videos (V, T, H, W, C), floats in [0, 1], as the course's submission CSV at
    `path` (module docstring). A non-finite value raises `errors.NonFiniteOutputError` naming its video
    (`names[v]`, default its index) and frame, before anything is written."""
    videos = np.asarray(videos)
    if videos.ndim != 5:
        raise ValueError(f"expected videos shaped (V, T, H, W, C), got {videos.shape}")
    for v, video in enumerate(videos):
        check_finite(video, str(names[v]) if names is not None else str(v))
    return media.write_bytes_atomic(path, encode_csv(submission_rows(videos)))
