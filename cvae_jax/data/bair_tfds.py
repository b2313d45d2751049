"""BAIR robot-pushing sequences from TFDS `bair_robot_pushing_small` (random access).

Reading goes through `tfds.data_source` over array_record files, so it needs
tensorflow-datasets but not TensorFlow. Nothing here ever downloads: the dataset is a
single 30 GiB tar that an unattended download would stall on for minutes, so it must be
prepared beforehand, either by `tfds build bair_robot_pushing_small
--file_format=array_record` or, from a tar fetched and extracted by hand, with
`prepare_from_raw` (needs TensorFlow).
"""

from __future__ import annotations

import os
import pathlib
from unittest import mock

import numpy as np

from cvae_jax.errors import DatasetError

__all__ = ["BairTFDS", "prepare_from_raw", "NAME", "SPLITS", "CAMERAS"]

NAME = "bair_robot_pushing_small"
SPLITS = ("train", "test")
CAMERAS = ("image_aux1", "image_main")
MAX_SEQ_LEN = 30
_RAW_SUBDIR = "softmotion30_44k"  # what the tar extracts to; the builder joins it onto the download path


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise ImportError('reading BAIR through TFDS needs tensorflow-datasets: pip install -e ".[tfds]"') from exc
    return tfds


def _resolve_data_dir(data_dir) -> pathlib.Path:
    """The folder tfds will use: data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return pathlib.Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _is_prepared(data_dir: pathlib.Path) -> bool:
    return any((data_dir / NAME).glob("*/dataset_info.json"))


def _how_to_prepare(data_dir: pathlib.Path) -> str:
    return (f"either `tfds build {NAME} --data_dir={data_dir} --file_format=array_record` "
            f"(downloads the 30 GiB tar), or download "
            f"http://rail.eecs.berkeley.edu/datasets/bair_robot_pushing_dataset_v0.tar yourself, extract it "
            f"to RAW and run `python -c \"from cvae_jax.data.bair_tfds import prepare_from_raw; "
            f"prepare_from_raw('RAW', '{data_dir}')\"` (needs pip install -e \".[tfds]\")")


class BairTFDS:
    """Random access to prepared `bair_robot_pushing_small` sequences as (frames, cond) pairs.

    frames: uint8 (seq_len, 64, 64, 3) from `camera`; cond: float32 (seq_len, 7), the
    per-frame concat of action (4) and endeffector_pos (3), matching BairFolder.
    """

    def __init__(self, data_dir, split: str, camera: str = "image_aux1", seq_len: int = MAX_SEQ_LEN):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} for {NAME}, got {split!r}")
        if camera not in CAMERAS:
            raise ValueError(f"--camera must be one of {CAMERAS}, got {camera!r}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or not 1 <= seq_len <= MAX_SEQ_LEN:
            raise ValueError(f"seq_len must be an int in 1..{MAX_SEQ_LEN}, got {seq_len!r}")
        self.data_dir, self.split, self.camera, self.seq_len = _resolve_data_dir(data_dir), split, camera, int(seq_len)
        tfds = _tfds()
        try:  # download=False: tfds never fetches anything, whatever state data_dir is in
            self._source = tfds.data_source(NAME, split=split, data_dir=os.fspath(self.data_dir), download=False)
        except Exception as exc:
            # tfds reports a missing dataset as an unsupported file format; say what is wrong.
            if not _is_prepared(self.data_dir):
                raise DatasetError(f"{NAME} is not prepared under {self.data_dir} (no "
                                   f"{self.data_dir / NAME}/<version>/dataset_info.json). Prepare it with "
                                   f"{_how_to_prepare(self.data_dir)}") from exc
            raise
        self.names = [f"{NAME}/{split}/{i}" for i in range(len(self._source))]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} sequences")
        ex = self._source[int(i) % len(self)]
        # Real data gives each Sequence feature as a list of per-step arrays, mocked data as
        # one stacked array; np.asarray handles both.
        frames = np.asarray(ex[self.camera], np.uint8)[: self.seq_len]
        cond = np.concatenate([np.asarray(ex["action"], np.float32), np.asarray(ex["endeffector_pos"], np.float32)],
                              axis=-1)[: self.seq_len]
        if frames.shape != (self.seq_len, 64, 64, 3) or cond.shape != (self.seq_len, 7):
            raise DatasetError(f"{self.names[i]}: got frames {frames.shape} and cond {cond.shape}, expected "
                               f"({self.seq_len}, 64, 64, 3) and ({self.seq_len}, 7)")
        return frames, cond


def prepare_from_raw(raw_dir, data_dir) -> pathlib.Path:
    """Run the real TFDS builder on a hand-extracted tar; returns the prepared folder.

    raw_dir holds `softmotion30_44k/{train,test}/*.tfrecords` (or is that
    softmotion30_44k folder). The builder asks its download manager for the tar and
    joins `softmotion30_44k/<split>` onto the answer, so the download manager is made to
    answer raw_dir; the output is array_record, the format `tfds.data_source` reads.
    """
    tfds = _tfds()
    raw_dir, data_dir = pathlib.Path(raw_dir).expanduser(), _resolve_data_dir(data_dir)
    if raw_dir.name == _RAW_SUBDIR and not (raw_dir / _RAW_SUBDIR).is_dir():
        raw_dir = raw_dir.parent
    for split in SPLITS:
        folder = raw_dir / _RAW_SUBDIR / split
        if not folder.is_dir() or not any(folder.glob("*.tfrecords")):
            raise DatasetError(f"no {folder}/*.tfrecords: raw_dir must be where "
                               f"bair_robot_pushing_dataset_v0.tar was extracted (it holds "
                               f"{_RAW_SUBDIR}/train and {_RAW_SUBDIR}/test)")
    builder = tfds.builder(NAME, data_dir=os.fspath(data_dir))
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", lambda self, url: os.fspath(raw_dir)):
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return pathlib.Path(builder.data_dir)
