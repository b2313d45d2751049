"""Loader for the reference dance layout, on tiny fixtures written in that exact format."""

from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np
import pytest
from PIL import Image

from cvae_jax.data import dance_folder as df
from cvae_jax.data.dance_folder import (
    DatasetError,
    epoch_batches,
    load_split,
    load_test,
    steps_per_epoch,
    train_clips,
    val_videos,
)

SRC_WH = (16, 8)  # written size (W, H), larger than the loaded size so resizing runs
HW = (4, 8)


def frame_color(i: int) -> tuple[int, int, int]:
    """Uniform colour that encodes a frame's index, so order survives resizing."""
    return (i % 256, (3 * i) % 256, 200)


def pose_color(i: int) -> tuple[int, int, int]:
    return (255, (7 * i) % 256, i % 256)


def write_png(path: pathlib.Path, color=(0, 0, 0), size=SRC_WH, mode=None, array=None) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if array is not None else Image.new("RGB", size, color)
    if mode is not None and mode != img.mode:
        img = img.convert(mode)
    img.save(path)
    return path


def write_split(root: pathlib.Path, split: str, n: int, name=lambda i: f"frame{i:06d}.png"):
    for i in range(n):
        write_png(root / split / f"{split}_img" / name(i), frame_color(i))
        write_png(root / split / f"{split}_label" / name(i), pose_color(i))


def write_test(root: pathlib.Path, seqs=("0", "1"), n_poses=5):
    for s in seqs:
        write_png(root / "test/test_img" / s / "frame000000.png", frame_color(int(s)))
        for i in range(n_poses):
            write_png(root / "test/test_label" / s / f"frame{i:06d}.png", pose_color(i + 10 * int(s)))


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "DR"
    write_split(r, "train", 12)
    write_split(r, "val", 6)
    write_test(r)
    return r


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


# --------------------------------------------------------------------------- listing


def test_sort_key_is_numeric():
    names = ["frame10.png", "frame2.png", "frame000001.png", "7.png"]
    assert sorted(names, key=df.frame_sort_key) == ["frame000001.png", "frame2.png", "7.png", "frame10.png"]


def test_unpadded_names_load_in_numeric_order(tmp_path, cache):
    write_split(tmp_path, "train", 12, name=lambda i: f"frame{i}.png")
    frames, poses, names = load_split(tmp_path, "train", HW, cache_dir=cache)
    assert names[:3] == ["frame0.png", "frame1.png", "frame2.png"] and names[-1] == "frame11.png"
    assert [int(f[0, 0, 0]) for f in frames] == [frame_color(i)[0] for i in range(12)]
    assert [int(p[0, 0, 1]) for p in poses] == [pose_color(i)[1] for i in range(12)]


def test_unparsable_name_is_named(root, cache):
    bad = write_png(root / "train/train_img/frameA.png")
    write_png(root / "train/train_label/frameA.png")
    with pytest.raises(DatasetError, match="frameA.png"):
        load_split(root, "train", HW, cache_dir=cache)
    assert bad.exists()


def test_hidden_files_are_ignored_like_the_reference_glob(root, cache):
    (root / "train/train_img/._frame000001.png").write_bytes(b"macOS resource fork")
    (root / "test/test_img/.ipynb_checkpoints").mkdir()
    _, _, names = load_split(root, "train", HW, cache_dir=cache)
    assert len(names) == 12 and not any(n.startswith(".") for n in names)
    assert [s[2] for s in load_test(root, HW, cache_dir=cache)] == ["0", "1"]


# --------------------------------------------------------------------------- decoding


def test_split_shape_dtype_and_resize_matches_pil(tmp_path):
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, size=(8, 16, 3), dtype=np.uint8)  # H, W
    for split in ("train",):
        for i in range(3):
            write_png(tmp_path / f"{split}/{split}_img/frame{i:06d}.png", array=src)
            write_png(tmp_path / f"{split}/{split}_label/frame{i:06d}.png", array=255 - src)
    frames, poses, names = load_split(tmp_path, "train", HW, cache_dir=False)
    assert frames.shape == poses.shape == (3, 4, 8, 3)
    assert frames.dtype == poses.dtype == np.uint8
    expected = np.asarray(Image.fromarray(src).resize((8, 4), Image.BILINEAR))
    np.testing.assert_array_equal(frames[0], expected)
    assert names == ["frame000000.png", "frame000001.png", "frame000002.png"]


def test_inconsistent_sizes_are_all_resized(root, cache):
    write_png(root / "train/train_img/frame000003.png", frame_color(3), size=(40, 20))
    frames, _, _ = load_split(root, "train", HW, cache_dir=cache)
    assert frames.shape == (12, 4, 8, 3)
    assert tuple(frames[3, 0, 0]) == frame_color(3)


# --------------------------------------------------------------------------- cache


def test_cache_hit_then_invalidated_by_changed_file(root, cache, monkeypatch):
    first = load_split(root, "train", HW, cache_dir=cache)
    assert list(cache.glob("*.npz"))

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded although the cache is current")

    real_decode = df._decode_image
    monkeypatch.setattr(df, "_decode_image", no_decode)
    second = load_split(root, "train", HW, cache_dir=cache)
    for a, b in zip(first[:2], second[:2]):
        np.testing.assert_array_equal(a, b)
    assert first[2] == second[2]

    changed = root / "train/train_img/frame000004.png"
    write_png(changed, (9, 9, 9))
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    with pytest.raises(AssertionError, match="decoded"):
        load_split(root, "train", HW, cache_dir=cache)
    monkeypatch.setattr(df, "_decode_image", real_decode)
    third, _, _ = load_split(root, "train", HW, cache_dir=cache)
    assert tuple(third[4, 0, 0]) == (9, 9, 9)


def test_cache_keyed_by_frame_size(root, cache):
    small, _, _ = load_split(root, "train", HW, cache_dir=cache)
    big, _, _ = load_split(root, "train", (8, 16), cache_dir=cache)
    assert small.shape[1:3] == HW and big.shape[1:3] == (8, 16)


def test_cache_dir_from_env(root, tmp_path, monkeypatch):
    monkeypatch.setenv("CVAE_JAX_CACHE", str(tmp_path / "envcache"))
    assert df.default_cache_dir() == tmp_path / "envcache" / "dance"
    load_split(root, "val", HW)
    assert list((tmp_path / "envcache" / "dance").glob("*.npz"))


def test_corrupt_cache_entry_is_rebuilt(root, cache):
    load_split(root, "val", HW, cache_dir=cache)
    for f in cache.glob("*.npz"):
        f.write_bytes(b"not an npz")
    frames, _, _ = load_split(root, "val", HW, cache_dir=cache)
    assert tuple(frames[2, 0, 0]) == frame_color(2)


# --------------------------------------------------------------------------- errors


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        load_split(tmp_path / "nowhere", "train", HW, cache_dir=False)


@pytest.mark.parametrize("missing", ["train", "train/train_img", "train/train_label"])
def test_missing_layout_folder_is_named(root, missing):
    import shutil

    shutil.rmtree(root / missing)
    with pytest.raises(DatasetError) as err:
        load_split(root, "train", HW, cache_dir=False)
    assert str(root / missing) in str(err.value)
    assert "expected layout" in str(err.value)


@pytest.mark.parametrize("missing", ["test", "test/test_img", "test/test_label"])
def test_missing_test_folder_is_named(root, missing):
    import shutil

    shutil.rmtree(root / missing)
    with pytest.raises(DatasetError, match=str(root / missing)):
        load_test(root, HW, cache_dir=False)


def test_frame_without_pose(root):
    for i in (3, 7):
        (root / f"train/train_label/frame{i:06d}.png").unlink()
    with pytest.raises(DatasetError) as err:
        load_split(root, "train", HW, cache_dir=False)
    msg = str(err.value)
    assert "2 file(s)" in msg and "frame000003.png" in msg and "frame000007.png" in msg
    assert str(root / "train/train_label") in msg


def test_pose_without_frame(root):
    write_png(root / "val/val_label/frame000099.png")
    with pytest.raises(DatasetError) as err:
        load_split(root, "val", HW, cache_dir=False)
    assert "frame000099.png" in str(err.value) and "without a frame" in str(err.value)


def test_many_unmatched_are_counted_not_all_listed(root):
    for i in range(12):
        (root / f"train/train_label/frame{i:06d}.png").unlink()
    write_png(root / "train/train_label/frame000500.png")
    with pytest.raises(DatasetError, match=r"12 file\(s\): .*\.\.\."):
        load_split(root, "train", HW, cache_dir=False)


@pytest.mark.parametrize("content", [b"garbage, not a png", None])
def test_corrupt_png_is_named(root, content):
    bad = root / "train/train_img/frame000005.png"
    data = bad.read_bytes()
    bad.write_bytes(content if content is not None else data[: len(data) // 2])  # or truncated
    with pytest.raises(DatasetError, match="frame000005.png"):
        load_split(root, "train", HW, cache_dir=False)


def test_empty_folder(root):
    for p in (root / "val/val_img").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match=f"{root / 'val/val_img'}.*no .png"):
        load_split(root, "val", HW, cache_dir=False)


@pytest.mark.parametrize("frame_hw", [(0, 8), (4,), (4.0, 8), "48", (True, 8), None])
def test_frame_hw_validated(root, frame_hw):
    with pytest.raises(ValueError, match="frame_hw"):
        load_split(root, "train", frame_hw, cache_dir=False)


def test_split_validated(root):
    with pytest.raises(ValueError, match="split"):
        load_split(root, "test", HW, cache_dir=False)


# --------------------------------------------------------------------------- conversion


def test_grayscale_palette_and_rgba_converted_with_one_warning_per_folder(root, cache):
    gray = write_png(root / "train/train_img/frame000001.png", (80, 80, 80), mode="L")
    Image.new("RGB", SRC_WH, (10, 20, 30)).quantize(4).save(root / "train/train_img/frame000002.png")
    rgba = np.zeros((8, 16, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)  # fully transparent frame: colour kept, alpha dropped
    write_png(root / "train/train_img/frame000003.png", array=rgba)
    pose = np.zeros((8, 16, 4), np.uint8)
    pose[:, :8] = (255, 0, 0, 255)  # left half opaque red, right half transparent black
    write_png(root / "train/train_label/frame000003.png", array=pose)
    with pytest.warns(UserWarning) as record:
        frames, poses, _ = load_split(root, "train", HW, cache_dir=cache)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "converted 3 of 12 frame" in messages[0] and str(gray) in messages[0]
    assert "converted 1 of 12 pose" in messages[1] and "white" in messages[1]
    assert tuple(frames[1, 0, 0]) == (80, 80, 80)
    assert tuple(frames[2, 0, 0]) == (10, 20, 30)
    assert tuple(frames[3, 0, 0]) == (10, 20, 30)
    assert tuple(poses[3, 0, 0]) == (255, 0, 0) and tuple(poses[3, 0, -1]) == (255, 255, 255)
    with pytest.warns(UserWarning) as again:  # still reported on a cache hit
        load_split(root, "train", HW, cache_dir=cache)
    assert [str(w.message) for w in again] == messages


def test_rgb_only_dataset_warns_nothing(root, cache):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_split(root, "train", HW, cache_dir=cache)


# --------------------------------------------------------------------------- clips and batches


def test_train_clips_matches_reference_counts():
    assert train_clips(23410, 16) == 1463
    assert train_clips(100, 16, partial=0.5) == 3
    assert steps_per_epoch(23410, 16, 2) == 731


def test_too_few_frames_for_a_clip_or_a_batch():
    with pytest.raises(DatasetError, match=r"15 frames.*clip_len=16"):
        train_clips(15, 16)
    with pytest.raises(DatasetError, match="batch_size=4"):
        steps_per_epoch(48, 16, 4)
    with pytest.raises(ValueError, match="partial"):
        train_clips(100, 16, partial=1.5)
    with pytest.raises(ValueError, match="clip_len"):
        train_clips(100, 0)


def indexed_frames(n: int) -> tuple[np.ndarray, np.ndarray]:
    frames = np.zeros((n, 2, 3, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(n)  # frame index readable back after batching
    return frames, 255 - frames


def clip_starts(batch: np.ndarray, clip_len: int) -> list[int]:
    idx = np.rint(batch[:, :, 0, 0, 0] * 255).astype(int)
    assert all(list(row) == list(range(row[0], row[0] + clip_len)) for row in idx)
    return [int(row[0]) for row in idx]


def epoch_order(frames, poses, seed, epoch, clip_len=3, batch=2, partial=1.0):
    starts = []
    for f, p in epoch_batches(frames, poses, clip_len, batch, seed, epoch, partial):
        assert f.dtype == p.dtype == np.float32 and f.shape == (batch, clip_len, 2, 3, 3)
        assert 0.0 <= f.min() and f.max() <= 1.0
        np.testing.assert_allclose(p, 1.0 - f, atol=1e-6)
        starts += clip_starts(f, clip_len)
    return starts


def test_epoch_batches_deterministic_shuffled_and_drop_last():
    frames, poses = indexed_frames(22)  # 7 clips of 3 frames (1 frame left over), 3 batches of 2
    a = epoch_order(frames, poses, seed=1, epoch=0)
    assert a == epoch_order(frames, poses, seed=1, epoch=0)
    assert a != epoch_order(frames, poses, seed=1, epoch=1)
    assert a != epoch_order(frames, poses, seed=2, epoch=0)
    assert len(a) == 6 and len(set(a)) == 6
    assert set(a) <= {0, 3, 6, 9, 12, 15, 18}
    per_epoch = [set(epoch_order(frames, poses, seed=1, epoch=e)) for e in range(30)]
    assert set().union(*per_epoch) == {0, 3, 6, 9, 12, 15, 18}  # every clip shows up


def test_epoch_batches_every_clip_once_when_batches_divide():
    frames, poses = indexed_frames(24)
    starts = epoch_order(frames, poses, seed=0, epoch=3, clip_len=3, batch=4)
    assert sorted(starts) == list(range(0, 24, 3))


def test_epoch_batches_partial_uses_leading_frames():
    frames, poses = indexed_frames(24)
    starts = epoch_order(frames, poses, seed=0, epoch=0, clip_len=3, batch=2, partial=0.5)
    assert sorted(starts) == [0, 3, 6, 9]


def test_epoch_batches_validates_arguments():
    frames, poses = indexed_frames(24)
    with pytest.raises(ValueError, match="poses shape"):
        epoch_batches(frames, poses[:-1], 3, 2, 0, 0)
    with pytest.raises(ValueError, match="epoch"):
        epoch_batches(frames, poses, 3, 2, 0, -1)
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(frames, poses, 3, 0, 0, 0)


def test_val_videos_split_in_order(root, cache):
    frames, poses, _ = load_split(root, "val", HW, cache_dir=cache)
    vf, vp = val_videos(frames, poses, 3)
    assert vf.shape == vp.shape == (2, 3, 4, 8, 3) and vf.dtype == np.float32
    assert np.rint(vf[1, 0, 0, 0, 0] * 255) == frame_color(3)[0]
    assert np.rint(vp[0, 2, 0, 0, 1] * 255) == pose_color(2)[1]


def test_val_not_whole_videos(root, cache):
    frames, poses, _ = load_split(root, "val", HW, cache_dir=cache)
    with pytest.raises(DatasetError, match=r"6 frames.*val_vi_len=4"):
        val_videos(frames, poses, 4)


# --------------------------------------------------------------------------- test split


def test_load_test_sequences_in_numeric_order(tmp_path, cache):
    write_test(tmp_path, seqs=("0", "1", "2", "10"), n_poses=4)
    # only the first file of test_img/<i> counts
    write_png(tmp_path / "test/test_img/2/frame000005.png", (1, 2, 3))
    seqs = load_test(tmp_path, HW, cache_dir=cache)
    assert [s[2] for s in seqs] == ["0", "1", "2", "10"]
    first, poses, name = seqs[3]
    assert first.shape == (4, 8, 3) and first.dtype == np.uint8
    assert poses.shape == (4, 4, 8, 3)
    assert tuple(first[0, 0]) == frame_color(10)
    assert tuple(seqs[2][0][0, 0]) == frame_color(2)
    assert [tuple(p[0, 0]) for p in poses] == [pose_color(i + 100) for i in range(4)]


def test_load_test_mismatched_sequences(tmp_path):
    write_test(tmp_path, seqs=("0", "1"))
    write_png(tmp_path / "test/test_label/2/frame000000.png")
    with pytest.raises(DatasetError, match=r"only in test_label: \['2'\]"):
        load_test(tmp_path, HW, cache_dir=False)


def test_load_test_bad_sequence_folder_name(tmp_path):
    write_test(tmp_path, seqs=("0",))
    write_png(tmp_path / "test/test_img/seq_a/frame000000.png")
    with pytest.raises(DatasetError, match="seq_a"):
        load_test(tmp_path, HW, cache_dir=False)


def test_load_test_empty_sequence(tmp_path):
    write_test(tmp_path, seqs=("0",))
    (tmp_path / "test/test_img/1").mkdir()
    write_png(tmp_path / "test/test_label/1/frame000000.png")
    with pytest.raises(DatasetError, match=str(tmp_path / "test/test_img/1")):
        load_test(tmp_path, HW, cache_dir=False)
