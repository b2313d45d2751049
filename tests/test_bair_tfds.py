"""BairTFDS and prepare_from_raw against the real TFDS builder, offline.

Raw records are written in the format of the BAIR tar (tf.train.Example whose per-step
keys the builder reads from its context features), prepared by the real
`bair_robot_pushing_small` builder, then read back through `tfds.data_source`.
"""

from __future__ import annotations

import re
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.tfds
tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from cvae_jax.data import bair_tfds  # noqa: E402
from cvae_jax.data.bair_tfds import BairTFDS, prepare_from_raw  # noqa: E402
from cvae_jax.data.dance_folder import DatasetError  # noqa: E402

T = 30
N_PER_SPLIT = {"train": 3, "test": 2}


def raw_sequence(rng):
    return dict(image_main=rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8),
                image_aux1=rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8),
                action=rng.normal(size=(T, 4)).astype(np.float32),
                endeffector_pos=rng.normal(size=(T, 3)).astype(np.float32))


def write_raw_records(path, seqs) -> None:
    """One .tfrecords file in the tar's format: raw uint8 image bytes, float lists per step."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    with tf.io.TFRecordWriter(str(path)) as writer:
        for s in seqs:
            feature = {}
            for i in range(T):
                for cam in ("image_main", "image_aux1"):
                    feature[f"{i}/{cam}/encoded"] = tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[s[cam][i].tobytes()]))
                feature[f"{i}/action"] = floats(s["action"][i])
                feature[f"{i}/endeffector_pos"] = floats(s["endeffector_pos"][i])
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data_dir, {split: written sequences}) after the real builder ran on raw records."""
    rng = np.random.default_rng(0)
    raw, data_dir = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("tfds")
    written = {}
    for split, n in N_PER_SPLIT.items():
        written[split] = [raw_sequence(rng) for _ in range(n)]
        # two files per split: the builder reads every file in the folder
        write_raw_records(raw / "softmotion30_44k" / split / "traj_0_to_255.tfrecords", written[split][:1])
        write_raw_records(raw / "softmotion30_44k" / split / "traj_256_to_511.tfrecords", written[split][1:])
    out = prepare_from_raw(raw / "softmotion30_44k", data_dir)  # the extract folder itself is accepted too
    assert (out / "dataset_info.json").is_file()
    return data_dir, written


@pytest.mark.parametrize("camera", ["image_aux1", "image_main"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_prepared_round_trip(prepared, split, camera):
    data_dir, written = prepared
    data = BairTFDS(data_dir, split, camera=camera)
    assert len(data) == len(data.names) == N_PER_SPLIT[split]
    matched = []
    for i in range(len(data)):  # TFDS shuffles examples when preparing: match by content
        frames, cond = data[i]
        assert frames.shape == (T, 64, 64, 3) and frames.dtype == np.uint8
        assert cond.shape == (T, 7) and cond.dtype == np.float32
        j = next(j for j, s in enumerate(written[split]) if np.array_equal(s["action"], cond[:, :4]))
        matched.append(j)
        np.testing.assert_array_equal(frames, written[split][j][camera])
        want = written[split][j]
        np.testing.assert_array_equal(cond, np.concatenate([want["action"], want["endeffector_pos"]], 1))
    assert sorted(matched) == list(range(len(data)))


def test_seq_len_prefix(prepared):
    data_dir, _ = prepared
    full, short = BairTFDS(data_dir, "test"), BairTFDS(data_dir, "test", seq_len=12)
    for a, b in zip(full[1], short[1]):
        np.testing.assert_array_equal(a[:12], b)
    with pytest.raises(IndexError):
        short[2]


def test_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        data = BairTFDS(tmp_path, "train", camera="image_main", seq_len=10)
        assert len(data) == 4
        frames, cond = data[3]
    assert frames.shape == (10, 64, 64, 3) and frames.dtype == np.uint8
    assert cond.shape == (10, 7) and cond.dtype == np.float32


def test_not_prepared_names_data_dir_without_downloading(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", no_download)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    start = time.monotonic()
    with pytest.raises(DatasetError, match=f"not prepared under {re.escape(str(tmp_path))}.*prepare_from_raw"):
        BairTFDS(tmp_path, "train")
    assert time.monotonic() - start < 30


def test_prepare_from_raw_checks_layout(tmp_path):
    (tmp_path / "softmotion30_44k" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"softmotion30_44k/train/\*\.tfrecords"):
        prepare_from_raw(tmp_path, tmp_path / "out")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--camera"):
        BairTFDS(tmp_path, "train", camera="image_side")
    with pytest.raises(ValueError, match="split"):
        BairTFDS(tmp_path, "validate")
    with pytest.raises(ValueError, match="seq_len"):
        BairTFDS(tmp_path, "train", seq_len=31)


def test_missing_tfds_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tfds\]"'):
        bair_tfds.BairTFDS(tmp_path, "train")
