"""Videos and tables on disk: GIFs of predictions and per-frame metric CSVs.

Frames are (T, H, W, 3) floats in [0, 1] (NHWC, time first), as the model produces them.
"""

from __future__ import annotations

import csv
import os
import secrets
from pathlib import Path

import imageio.v3 as iio
import numpy as np


def to_uint8(frames) -> np.ndarray:
    """Floats in [0, 1] -> uint8, clipping first and rounding to nearest.

    The reference's ToPILImage cast wraps out-of-range values (1.02 -> 5), which paints
    bright pixels black; clipping shows them as saturated instead. NaN becomes 0.
    """
    x = np.nan_to_num(np.asarray(frames, dtype=np.float64), nan=0.0)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_unit_float(frames: np.ndarray) -> np.ndarray:
    """uint8 frames -> float32 in [0, 1] (the inverse of `to_uint8` on its grid)."""
    return frames.astype(np.float32) * np.float32(1.0 / 255.0)


def upscale_nearest(frames: np.ndarray, scale: int) -> np.ndarray:
    """Blow each pixel up to scale x scale so 32x64 frames are visible, without blurring."""
    return np.repeat(np.repeat(frames, scale, axis=-3), scale, axis=-2)


def write_gif(frames, path, duration_ms: int = 40, scale: int = 4) -> Path:
    """Save a (T, H, W, 3) float video as a looping GIF, each frame shown once.

    The reference also repeated the first frame (base image plus the whole list as
    append_images); that is not reproduced. GIF has a 256-colour palette per frame, and
    Pillow merges consecutive identical frames into one longer frame.
    """
    video = to_uint8(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got {video.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, upscale_nearest(video, scale), extension=".gif", duration=duration_ms, loop=0)
    return path


def side_by_side(*videos) -> np.ndarray:
    """Concatenate videos along width with a 1-px white separator, for GT | prediction | ...

    Each argument is (T, H, W, C) or a single frame (H, W, C), which is repeated over
    time (e.g. the conditioning frame next to a rollout). Float inputs use white = 1.0,
    integer ones white = 255.
    """
    if not videos:
        raise ValueError("side_by_side needs at least one video")
    arrays = [np.asarray(v) for v in videos]
    n_frames = {a.shape[0] for a in arrays if a.ndim == 4}
    if len(n_frames) > 1:
        raise ValueError(f"videos differ in length: {sorted(n_frames)}")
    t = n_frames.pop() if n_frames else 1
    arrays = [np.broadcast_to(a, (t, *a.shape)) if a.ndim == 3 else a for a in arrays]
    dtype = np.result_type(*arrays)
    white = 255 if np.issubdtype(dtype, np.integer) else 1.0
    _, h, _, c = arrays[0].shape
    separator = np.full((t, h, 1, c), white, dtype=dtype)
    pieces = [arrays[0]]
    for a in arrays[1:]:
        pieces += [separator, a]
    return np.concatenate(pieces, axis=2)


def frame_strip(video, count: int = 8, scale: int = 2) -> np.ndarray:
    """`count` evenly spaced frames of a (T, H, W, 3) float video, top to bottom with a
    1-px white line between, as uint8 (a GIF's content as one still, for TensorBoard)."""
    video = to_uint8(video)
    picked = video[np.unique(np.linspace(0, len(video) - 1, min(count, len(video))).round().astype(int))]
    rows = []
    for frame in picked:
        rows += [frame, np.full((1, *frame.shape[1:]), 255, np.uint8)]
    return upscale_nearest(np.concatenate(rows[:-1]), scale)


def write_psnr_csv(path, psnr, first_frame_index: int = 1) -> Path:
    """Per-frame PSNR as `video,frame,psnr` rows, one per (video, frame).

    `psnr` is (videos, frames) or (frames,); `frame` is the index in the original video,
    so `first_frame_index=1` when frame 0 was the given conditioning frame. Values are
    written with repr, so they (and inf) read back exactly with float().
    """
    return write_per_frame_csv(path, {"psnr": psnr}, first_frame_index)


def write_per_frame_csv(path, columns: dict, first_frame_index: int = 1) -> Path:
    """`write_psnr_csv` with any named columns, each (videos, frames) or (frames,):
    `video,frame,<name>...` rows, one per (video, frame)."""
    tables = {name: np.atleast_2d(np.asarray(v, dtype=np.float64)) for name, v in columns.items()}
    shapes = {t.shape for t in tables.values()}
    if len(shapes) != 1:
        raise ValueError(f"columns differ in shape: { {n: t.shape for n, t in tables.items()} }")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "frame", *tables])
        for video in range(shapes.pop()[0]):
            for j, row in enumerate(zip(*(t[video] for t in tables.values()))):
                writer.writerow([video, first_frame_index + j, *(repr(float(x)) for x in row)])
    return path


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write `data` to a temporary file next to `path`, then rename it to `path`: readers
    see the old file or the whole new one, and a failure leaves no temporary file."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask applies
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
