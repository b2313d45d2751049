"""BAIR robot-pushing sequences in the course's processed folder layout.

Layout (what the Lab5 template reads and SVG's converter writes)::

    <root>/{train,validate,test}/<traj_a_to_b>/<k>/0.png ... 29.png   64x64 RGB
                                              /<k>/actions.csv               30 rows x 4
                                              /<k>/endeffector_positions.csv 30 rows x 3

Construction only lists the sequence folders (the train split has ~43k of them);
images and CSVs are read, and checked, when a sequence is indexed, so a broken file
is reported by name the first time it is used.

Bad input (tests/test_bad_input.py), each a one-line `DatasetError` naming the file: an
image that cannot be decoded; a frame that is not 64x64; a missing frame file or CSV; a
CSV that is not UTF-8 text, has a row count other than the number of frames, a row of
other than 4 (actions) or 3 (positions) values, or a value that is not a finite number;
a split without sequences. Greyscale, 16-bit, palette and alpha frames are converted
to RGB (alpha dropped; `data/images.py`), silently.
"""

from __future__ import annotations

import math
import os
import pathlib
import re

import numpy as np
from PIL import Image

from cvae_jax.data.images import read_rgb
from cvae_jax.errors import DatasetError

__all__ = ["BairFolder", "write_sequence", "SPLITS", "FRAME_HW", "COND_DIM"]

SPLITS = ("train", "validate", "test")
_ALIASES = {"val": "validate"}
FRAME_HW = (64, 64)
ACTION_DIM, POSITION_DIM = 4, 3
COND_DIM = ACTION_DIM + POSITION_DIM
ACTIONS_CSV, POSITIONS_CSV = "actions.csv", "endeffector_positions.csv"
_FRAME_FILE = re.compile(r"^(\d+)\.png$")
_MAX_LISTED = 10


def _natural_key(name: str) -> tuple:
    """'traj_10_to_20' after 'traj_2_to_9': numbers compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def _subdirs(folder: pathlib.Path) -> list[str]:
    with os.scandir(folder) as it:
        names = [e.name for e in it if not e.name.startswith(".") and e.is_dir()]
    return sorted(names, key=_natural_key)


def _listing(items: list[str]) -> str:
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def _read_csv(path: pathlib.Path, n_rows: int, n_cols: int) -> np.ndarray:
    """Parse a header-less comma-separated float table, naming the file in every error."""
    expected = f"expected {n_rows} rows x {n_cols} comma-separated numbers"
    if not path.is_file():
        raise DatasetError(f"{path} is missing ({expected})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not UTF-8 text ({expected})") from None
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err} ({expected})") from err
    rows = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(rows) != n_rows:
        raise DatasetError(f"{path} has {len(rows)} rows, expected {n_rows} (one per frame)")
    out = np.empty((n_rows, n_cols), np.float32)
    for r, (line_no, line) in enumerate(rows):
        parts = line.split(",")
        if len(parts) != n_cols:
            values = "value" if len(parts) == 1 else "values"
            raise DatasetError(f"{path}: row {line_no} has {len(parts)} {values}, expected {n_cols}")
        for c, cell in enumerate(parts):
            try:
                value = float(cell)
            except ValueError:
                raise DatasetError(f"{path}: row {line_no}, column {c + 1}: {cell.strip()!r} is not a number") from None
            if not math.isfinite(value):
                raise DatasetError(f"{path}: row {line_no}, column {c + 1} is {cell.strip()!r}; values must be finite")
            out[r, c] = value
    return out


def _read_frame(path: pathlib.Path) -> np.ndarray:
    rgb, _ = read_rgb(path)
    if rgb.size != (FRAME_HW[1], FRAME_HW[0]):
        raise DatasetError(f"{path} is {rgb.size[0]}x{rgb.size[1]} (WxH), expected {FRAME_HW[1]}x{FRAME_HW[0]}")
    return np.asarray(rgb, dtype=np.uint8)


class BairFolder:
    """Random access to `<root>/<split>/<traj>/<k>` sequences as (frames, cond) pairs.

    frames: uint8 (seq_len, 64, 64, 3); cond: float32 (seq_len, 7), the per-frame
    concat of actions (4) and end-effector position (3), as the course template does.
    """

    def __init__(self, root, split: str, seq_len: int = 30):
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        split = _ALIASES.get(split, split)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} (or 'val'), got {split!r}")
        self.root, self.split, self.seq_len = pathlib.Path(root), split, int(seq_len)
        if not self.root.is_dir():
            raise DatasetError(f"BAIR data root {self.root} does not exist or is not a folder")
        split_dir = self.root / split
        if not split_dir.is_dir():
            present = _listing(_subdirs(self.root)) or "nothing"
            raise DatasetError(f"split folder {split_dir} does not exist (found in {self.root}: {present}); "
                               f"expected {self.root}/{{{','.join(SPLITS)}}}/<traj>/<k>/")
        self.names = [f"{traj}/{k}" for traj in _subdirs(split_dir) for k in _subdirs(split_dir / traj)]
        if not self.names:
            raise DatasetError(f"no sequences in {split_dir}: expected folders <traj>/<k>/ holding "
                               f"0.png..{self.seq_len - 1}.png, {ACTIONS_CSV} and {POSITIONS_CSV}")
        self._split_dir = split_dir

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        folder = self._split_dir / self.names[i]  # IndexError past the end keeps iteration working
        frame_ids = {int(m.group(1)) for n in os.listdir(folder) if (m := _FRAME_FILE.match(n))}
        missing = [f"{t}.png" for t in range(self.seq_len) if t not in frame_ids]
        if missing:
            raise DatasetError(f"frame {folder / missing[0]} not found: sequence folder {folder} is missing "
                               f"{_listing(missing)} (expected frames 0.png..{self.seq_len - 1}.png)")
        n_rows = len(frame_ids)
        actions = _read_csv(folder / ACTIONS_CSV, n_rows, ACTION_DIM)
        positions = _read_csv(folder / POSITIONS_CSV, n_rows, POSITION_DIM)
        frames = np.stack([_read_frame(folder / f"{t}.png") for t in range(self.seq_len)])
        cond = np.concatenate([actions, positions], axis=1)[: self.seq_len]
        return frames, cond

    def load_all(self, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """Every sequence stacked, for small sets; `progress` wraps the index range (e.g. tqdm)."""
        n = len(self)
        frames = np.empty((n, self.seq_len, *FRAME_HW, 3), np.uint8)
        cond = np.empty((n, self.seq_len, COND_DIM), np.float32)
        for i in progress(range(n)) if progress is not None else range(n):
            frames[i], cond[i] = self[i]
        return frames, cond


def write_sequence(folder, frames, actions, positions) -> pathlib.Path:
    """Write one sequence in the layout above (fixtures, converters)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(np.asarray(frames, np.uint8)):
        Image.fromarray(frame).save(folder / f"{t}.png")
    np.savetxt(folder / ACTIONS_CSV, np.asarray(actions, np.float64).reshape(-1, ACTION_DIM), fmt="%.6f", delimiter=",")
    np.savetxt(folder / POSITIONS_CSV, np.asarray(positions, np.float64).reshape(-1, POSITION_DIM), fmt="%.6f",
               delimiter=",")
    return folder
