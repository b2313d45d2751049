"""Bad input on the two folder loaders, case by case: the Lab4 dance layout
(`data/dance_folder.py`, through `data/dance.py`) and the processed BAIR folders
(`data/bair_folder.py`, through `data/pushing.py`).

Each case ends in one line naming the file and what was expected (`train.py: error: ...`,
exit 2), or is handled and documented in the loader's docstring; nothing half-written is
left in the decode cache or a run folder. Fixtures are small PNGs written here with PIL;
nothing is compiled (the command-line cases stop while loading the data).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image

from conftest import exit_and_stderr
from cvae_jax import cli
from cvae_jax.config import preset
from cvae_jax.data import dance_folder, pushing
from cvae_jax.data.bair_folder import BairFolder, write_sequence
from cvae_jax.data.dance_folder import load_split
from cvae_jax.errors import DatasetError

SRC_WH = (16, 8)  # dance source size (W, H); loaded at HW, so every frame is resized
HW = (4, 8)
T = 30  # BAIR frames per sequence


# --------------------------------------------------------------------------- helpers


def frame_color(i: int) -> tuple[int, int, int]:
    return (i % 256, (3 * i) % 256, 200)


def pose_color(i: int) -> tuple[int, int, int]:
    return (255, (7 * i) % 256, i % 256)


def write_png(path: pathlib.Path, color=(0, 0, 0), size=SRC_WH, mode="RGB") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def write_dance(root: pathlib.Path, n_train: int = 12, n_val: int = 6) -> pathlib.Path:
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            write_png(root / split / f"{split}_img" / f"frame{i:06d}.png", frame_color(i))
            write_png(root / split / f"{split}_label" / f"frame{i:06d}.png", pose_color(i))
    return root


def make_seq(seed: int):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8),
            rng.normal(size=(T, 4)), rng.normal(size=(T, 3)))


def write_bair(root: pathlib.Path, train=("traj_0_to_255/0",), validate=("traj_256_to_511/0",)) -> pathlib.Path:
    for split, names in (("train", train), ("validate", validate)):
        for seed, name in enumerate(names):
            write_sequence(root / split / name, *make_seq(seed))
    return root


def idat_middle(data: bytes) -> int:
    start = data.index(b"IDAT") + 4
    return start + int.from_bytes(data[start - 8:start - 4], "big") // 2


PNG_DAMAGE = {
    "not an image": lambda data: b"garbage, not a png",
    "empty": lambda data: b"",
    "truncated": lambda data: data[: idat_middle(data)],  # cut off in the middle of the pixel data
    "damaged data": lambda data: data[:60] + bytes(b ^ 0xFF for b in data[60:90]) + data[90:],
}

PNG_REASON = {
    "not an image": "not an image file Pillow can identify",
    "empty": "the file is empty",
    "truncated": "image file is truncated",
    "damaged data": None,  # Pillow's own words; depends on where the damage lands
}


def damage(path: pathlib.Path, how: str) -> pathlib.Path:
    path.write_bytes(PNG_DAMAGE[how](path.read_bytes()))
    return path


def assert_unreadable_message(message: str, path: pathlib.Path, how: str) -> None:
    assert "\n" not in message
    assert message.startswith(f"cannot read image {path}: ")
    assert message.endswith("; expected a complete PNG image")
    if PNG_REASON[how] is not None:
        assert PNG_REASON[how] in message


def cache_files(cache: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def assert_cache_complete(cache: pathlib.Path) -> None:
    """Every file in the cache is a whole entry, never a temporary or half-written one."""
    for f in cache_files(cache):
        assert f.suffixes == [".npz"], f
        with np.load(f, allow_pickle=False) as z:
            assert z["images"].ndim == 4 and str(z["meta"])


def run_train(argv, capsys) -> tuple[int, str]:
    return exit_and_stderr(cli.train_main, argv, capsys)


def dance_argv(root, tmp_path, *extra) -> list[str]:
    return ["--DR", str(root), "--save_root", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "cache"),
            "--frame_H", str(HW[0]), "--frame_W", str(HW[1]), "--train_vi_len", "3", "--val_vi_len", "3",
            "--batch_size", "2", *extra]


def assert_usage_error(code: int, err: str, tmp_path: pathlib.Path, message: str) -> None:
    assert code == 2
    assert err == f"cvae-jax-train: error: {message}\n"
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a run folder was left behind"


# =========================================================================== dance (Lab4 layout)


@pytest.fixture
def dance(tmp_path) -> pathlib.Path:
    return write_dance(tmp_path / "DR")


@pytest.fixture
def cache(tmp_path) -> pathlib.Path:
    return tmp_path / "cache"


# --------------------------------------------------------------------------- corrupt PNG


@pytest.mark.parametrize("how", list(PNG_DAMAGE))
@pytest.mark.parametrize("kind", ["img", "label"])
def test_dance_corrupt_png_mid_split_is_named_and_caches_nothing_partial(dance, cache, how, kind):
    bad = damage(dance / f"train/train_{kind}/frame000006.png", how)
    with pytest.raises(DatasetError) as err:
        load_split(dance, "train", HW, cache_dir=cache)
    assert_unreadable_message(str(err.value), bad, how)
    # a bad frame stops before any entry; a bad pose after the frames' entry, which is whole
    assert len(cache_files(cache)) == (0 if kind == "img" else 1)
    assert_cache_complete(cache)


def test_dance_corrupt_png_is_not_hidden_by_the_cache_and_a_fixed_file_is_decoded(dance, cache):
    good, _, _ = load_split(dance, "train", HW, cache_dir=cache)
    path = dance / "train/train_img/frame000006.png"
    original = path.read_bytes()
    damage(path, "truncated")
    with pytest.raises(DatasetError, match="frame000006.png"):
        load_split(dance, "train", HW, cache_dir=cache)
    path.write_bytes(original)
    again, _, _ = load_split(dance, "train", HW, cache_dir=cache)
    np.testing.assert_array_equal(again, good)
    assert_cache_complete(cache)


def test_dance_cli_corrupt_png_is_one_usage_line(dance, tmp_path, capsys, keep_cache_config):
    bad = damage(dance / "train/train_img/frame000006.png", "truncated")
    code, err = run_train(dance_argv(dance, tmp_path), capsys)
    assert_usage_error(code, err, tmp_path,
                       f"cannot read image {bad}: image file is truncated; expected a complete PNG image")
    assert cache_files(tmp_path / "cache" / "dance") == []


# --------------------------------------------------------------------------- the decode cache


def test_dance_failed_cache_write_leaves_no_file_and_training_data_is_right(dance, cache, monkeypatch):
    real_savez = np.savez

    def disk_full(f, **arrays):
        f.write(b"PK\x03\x04 half an entry")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dance_folder.np, "savez", disk_full)
    with pytest.warns(UserWarning, match="could not write dataset cache .*No space left"):
        frames, _, _ = load_split(dance, "val", HW, cache_dir=cache)
    assert tuple(frames[2, 0, 0]) == frame_color(2)
    assert cache_files(cache) == []
    monkeypatch.setattr(dance_folder.np, "savez", real_savez)
    again, _, _ = load_split(dance, "val", HW, cache_dir=cache)
    np.testing.assert_array_equal(again, frames)
    assert len(cache_files(cache)) == 2
    assert_cache_complete(cache)


def test_dance_interrupted_cache_write_leaves_no_file(dance, cache, monkeypatch):
    def interrupted(f, **arrays):
        f.write(b"PK\x03\x04 half an entry")
        raise KeyboardInterrupt

    monkeypatch.setattr(dance_folder.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_split(dance, "val", HW, cache_dir=cache)
    assert cache_files(cache) == []


@pytest.mark.parametrize("how", ["truncated", "empty", "flipped bytes", "not an npz"])
def test_dance_broken_cache_entry_is_rebuilt(dance, cache, monkeypatch, how):
    good, _, _ = load_split(dance, "val", HW, cache_dir=cache)
    for f in cache_files(cache):
        data = f.read_bytes()
        f.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "not an npz": b"not an npz",
                       "flipped bytes": data[:300] + bytes(b ^ 0xFF for b in data[300:320]) + data[320:]}[how])
    again, _, _ = load_split(dance, "val", HW, cache_dir=cache)
    np.testing.assert_array_equal(again, good)
    assert_cache_complete(cache)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded although the rebuilt cache is current")

    monkeypatch.setattr(dance_folder, "_decode_image", no_decode)
    np.testing.assert_array_equal(load_split(dance, "val", HW, cache_dir=cache)[0], good)


# --------------------------------------------------------------------------- modes


def test_dance_greyscale_16_bit_alpha_and_palette_are_converted(dance, cache):
    img, label = dance / "train/train_img", dance / "train/train_label"
    write_png(img / "frame000001.png", 80, mode="L")
    write_png(img / "frame000002.png", (80, 120), mode="LA")  # alpha dropped
    write_png(img / "frame000003.png", (10, 20, 30, 0), mode="RGBA")  # transparent: colour kept
    Image.fromarray(np.full(SRC_WH[::-1], 257 * 100, np.uint16)).save(img / "frame000004.png")  # 16-bit
    write_png(img / "frame000005.png", 1, mode="1")
    Image.new("RGB", SRC_WH, (10, 20, 30)).quantize(4).save(img / "frame000006.png")
    write_png(label / "frame000003.png", (0, 0, 0, 0), mode="RGBA")  # transparent pose: white
    write_png(label / "frame000004.png", (0, 0), mode="LA")
    Image.new("L", SRC_WH, 0).save(label / "frame000005.png", transparency=0)  # greyscale with tRNS
    with pytest.warns(UserWarning) as record:
        frames, poses, _ = load_split(dance, "train", HW, cache_dir=cache)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert messages[0].startswith(f"{img}: converted 6 of 12 frame image(s) to RGB")
    assert messages[1].startswith(f"{label}: converted 3 of 12 pose image(s) to RGB")
    assert [tuple(frames[i, 0, 0]) for i in range(1, 7)] == [
        (80, 80, 80), (80, 80, 80), (10, 20, 30), (100, 100, 100), (255, 255, 255), (10, 20, 30)]
    assert tuple(poses[3, 0, 0]) == tuple(poses[4, 0, 0]) == tuple(poses[5, 0, 0]) == (255, 255, 255)


# --------------------------------------------------------------------------- sizes


def test_dance_frames_of_different_sizes_are_each_resized(dance, cache):
    write_png(dance / "train/train_img/frame000003.png", frame_color(3), size=(40, 20))
    write_png(dance / "train/train_img/frame000004.png", frame_color(4), size=(7, 13))  # other aspect
    write_png(dance / "train/train_label/frame000005.png", pose_color(5), size=(3, 2))  # smaller
    frames, poses, _ = load_split(dance, "train", HW, cache_dir=cache)
    assert frames.shape == poses.shape == (12, *HW, 3)
    assert tuple(frames[3, 0, 0]) == frame_color(3) and tuple(frames[4, 0, 0]) == frame_color(4)
    assert tuple(poses[5, 0, 0]) == pose_color(5)


# --------------------------------------------------------------------------- a missing pose


def test_dance_frame_without_its_pose_names_the_expected_file(dance):
    img, label = dance / "train/train_img", dance / "train/train_label"
    (label / "frame000004.png").unlink()
    with pytest.raises(DatasetError) as err:
        load_split(dance, "train", HW, cache_dir=False)
    assert str(err.value) == (
        f"pose image {label / 'frame000004.png'} is missing for frame {img / 'frame000004.png'} "
        f"(frames in {img} without a pose image in {label}: 1 file(s): frame000004.png)")


def test_dance_pose_without_its_frame_names_the_expected_file(dance):
    img, label = dance / "val/val_img", dance / "val/val_label"
    (img / "frame000002.png").unlink()
    with pytest.raises(DatasetError) as err:
        load_split(dance, "val", HW, cache_dir=False)
    assert str(err.value) == (
        f"frame {img / 'frame000002.png'} is missing for pose image {label / 'frame000002.png'} "
        f"(pose images in {label} without a frame in {img}: 1 file(s): frame000002.png)")


# --------------------------------------------------------------------------- empty split


@pytest.mark.parametrize("folder", ["train/train_img", "train/train_label", "val/val_img"])
def test_dance_empty_folder_is_named(dance, folder):
    for p in (dance / folder).iterdir():
        p.unlink()
    (dance / folder / "notes.txt").write_text("not a frame")
    split = folder.split("/")[0]
    with pytest.raises(DatasetError) as err:
        load_split(dance, split, HW, cache_dir=False)
    assert str(err.value) == f"folder {dance / folder} contains no .png images"


def test_dance_cli_train_split_too_small_for_a_batch_leaves_no_run_folder(tmp_path, capsys, keep_cache_config):
    root = write_dance(tmp_path / "DR", n_train=5)  # one clip of 3 frames: no batch of 2
    code, err = run_train(dance_argv(root, tmp_path), capsys)
    assert_usage_error(code, err, tmp_path,
                       f"train split {root / 'train/train_img'}: too few training frames: 1 clip(s) of "
                       "clip_len=3 from 5 frames (partial=1.0) make no full batch of batch_size=2")


def test_dance_cli_fast_partial_too_small_leaves_no_run_folder(tmp_path, capsys, keep_cache_config):
    root = write_dance(tmp_path / "DR", n_train=12)  # 4 clips; a tenth of them makes no clip
    code, err = run_train(dance_argv(root, tmp_path, "--fast_train", "--fast_partial", "0.1"), capsys)
    assert_usage_error(code, err, tmp_path,
                       f"train split {root / 'train/train_img'}: too few training frames: 12 frames "
                       "(partial=0.1 -> 1 used) make no clip of clip_len=3")


# =========================================================================== BAIR (processed folders)


@pytest.fixture
def bair(tmp_path) -> pathlib.Path:
    return write_bair(tmp_path / "bair")


@pytest.fixture
def seq(bair) -> pathlib.Path:
    """The train sequence each case breaks."""
    return bair / "train/traj_0_to_255/0"


def bair_argv(root, tmp_path) -> list[str]:
    return ["--model", "svg", "--DR", str(root), "--save_root", str(tmp_path / "runs"),
            "--cache_dir", str(tmp_path / "cache")]


# --------------------------------------------------------------------------- corrupt PNG


@pytest.mark.parametrize("how", list(PNG_DAMAGE))
def test_bair_corrupt_png_mid_sequence_is_named(bair, seq, how):
    bad = damage(seq / "13.png", how)
    data = BairFolder(bair, "train")  # listing only: construction does not read frames
    with pytest.raises(DatasetError) as err:
        data[0]
    assert_unreadable_message(str(err.value), bad, how)


def test_bair_cli_corrupt_png_is_one_usage_line(bair, seq, tmp_path, capsys, keep_cache_config):
    bad = damage(seq / "13.png", "not an image")
    code, err = run_train(bair_argv(bair, tmp_path), capsys)
    assert_usage_error(code, err, tmp_path, f"cannot read image {bad}: not an image file Pillow can identify "
                                            "(another format, or a damaged header); expected a complete PNG image")


def test_bair_lazy_train_split_names_the_file_when_first_drawn(bair, seq, monkeypatch):
    """A train split too big for memory is read per batch: a bad file surfaces when drawn."""
    monkeypatch.setattr(pushing, "IN_MEMORY_BYTES", 0)
    bad = damage(seq / "13.png", "truncated")
    cfg = preset("cpu", "svg").replace(DR=str(bair)).validated()
    data = pushing.PushingData(cfg, log=lambda line: None)
    with pytest.raises(DatasetError) as err:
        next(iter(data.epoch_batches(0)))
    assert_unreadable_message(str(err.value), bad, "truncated")


# --------------------------------------------------------------------------- modes


def test_bair_greyscale_16_bit_alpha_and_palette_are_converted(bair, seq):
    write_png(seq / "1.png", 80, size=(64, 64), mode="L")
    write_png(seq / "2.png", (80, 0), size=(64, 64), mode="LA")
    write_png(seq / "3.png", (1, 2, 3, 4), size=(64, 64), mode="RGBA")
    Image.fromarray(np.full((64, 64), 257 * 100, np.uint16)).save(seq / "4.png")
    write_png(seq / "5.png", 1, size=(64, 64), mode="1")
    Image.new("RGB", (64, 64), (10, 20, 30)).quantize(4).save(seq / "6.png")
    frames, _ = BairFolder(bair, "train")[0]
    assert frames.shape == (T, 64, 64, 3) and frames.dtype == np.uint8
    for t, rgb in {1: 80, 2: 80, 3: (1, 2, 3), 4: 100, 5: 255, 6: (10, 20, 30)}.items():
        assert (frames[t] == rgb).all(), t


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("size", [(32, 64), (128, 128), (64, 63)])
def test_bair_frame_not_64x64_is_named(bair, seq, size):
    write_png(seq / "17.png", size=size)
    with pytest.raises(DatasetError) as err:
        BairFolder(bair, "train")[0]
    assert str(err.value) == f"{seq / '17.png'} is {size[0]}x{size[1]} (WxH), expected 64x64"


# --------------------------------------------------------------------------- missing frame or CSV


def test_bair_missing_frame_names_the_file(bair, seq):
    (seq / "9.png").unlink()
    with pytest.raises(DatasetError) as err:
        BairFolder(bair, "train")[0]
    assert str(err.value) == (f"frame {seq / '9.png'} not found: sequence folder {seq} is missing 9.png "
                              f"(expected frames 0.png..29.png)")


@pytest.mark.parametrize("name, shape", [("actions.csv", "30 rows x 4"), ("endeffector_positions.csv", "30 rows x 3")])
def test_bair_missing_csv_names_the_file(bair, seq, name, shape):
    (seq / name).unlink()
    with pytest.raises(DatasetError) as err:
        BairFolder(bair, "train")[0]
    assert str(err.value) == f"{seq / name} is missing (expected {shape} comma-separated numbers)"


# --------------------------------------------------------------------------- CSV rows


def rewrite_csv(path: pathlib.Path, row: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[row] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name, row, text, message", [
    ("actions.csv", 4, "1,2,3", "row 5 has 3 values, expected 4"),
    ("actions.csv", 4, "1,2,3,4,", "row 5 has 5 values, expected 4"),
    ("actions.csv", 7, "1;2;3;4", "row 8 has 1 value, expected 4"),
    ("actions.csv", 1, "1,2,abc,4", "row 2, column 3: 'abc' is not a number"),
    ("actions.csv", 1, "1,2,,4", "row 2, column 3: '' is not a number"),
    ("actions.csv", 0, "a,b,c,d", "row 1, column 1: 'a' is not a number"),
    ("endeffector_positions.csv", 29, "0.1,0.2", "row 30 has 2 values, expected 3"),
    ("endeffector_positions.csv", 3, "0.1,nan,0.2", "row 4, column 2 is 'nan'; values must be finite"),
])
def test_bair_bad_csv_row_is_named(bair, seq, name, row, text, message):
    rewrite_csv(seq / name, row, text)
    with pytest.raises(DatasetError) as err:
        BairFolder(bair, "train")[0]
    assert str(err.value) == f"{seq / name}: {message}"


@pytest.mark.parametrize("content, message", [
    (b"", "has 0 rows, expected 30 (one per frame)"),
    (b"1,2,3,4\n" * 29, "has 29 rows, expected 30 (one per frame)"),
    (b"\xff\xfe1,2,3,4\n" * 30, "is not UTF-8 text (expected 30 rows x 4 comma-separated numbers)"),
])
def test_bair_short_or_unreadable_csv_is_named(bair, seq, content, message):
    (seq / "actions.csv").write_bytes(content)
    with pytest.raises(DatasetError) as err:
        BairFolder(bair, "train")[0]
    assert str(err.value) == f"{seq / 'actions.csv'} {message}"


# --------------------------------------------------------------------------- empty split


def test_bair_empty_split_is_named(tmp_path):
    root = write_bair(tmp_path / "bair")
    (root / "test/traj_0_to_255").mkdir(parents=True)  # a trajectory folder without sequences
    with pytest.raises(DatasetError) as err:
        BairFolder(root, "test")
    assert str(err.value) == (f"no sequences in {root / 'test'}: expected folders <traj>/<k>/ holding "
                              "0.png..29.png, actions.csv and endeffector_positions.csv")


def test_bair_empty_sequence_folder_is_named(bair):
    empty = bair / "train/traj_0_to_255/1"
    empty.mkdir()
    data = BairFolder(bair, "train")
    with pytest.raises(DatasetError) as err:
        data[data.names.index("traj_0_to_255/1")]
    assert str(err.value) == (f"frame {empty / '0.png'} not found: sequence folder {empty} is missing 0.png, "
                              f"1.png, 2.png, 3.png, 4.png, 5.png, 6.png, 7.png, 8.png, 9.png, ... (20 more) "
                              f"(expected frames 0.png..29.png)")


def test_bair_cli_empty_validate_split_leaves_no_run_folder(tmp_path, capsys, keep_cache_config):
    root = write_bair(tmp_path / "bair", validate=())
    (root / "validate").mkdir()
    code, err = run_train(bair_argv(root, tmp_path), capsys)
    assert_usage_error(code, err, tmp_path,
                       f"no sequences in {root / 'validate'}: expected folders <traj>/<k>/ holding "
                       "0.png..29.png, actions.csv and endeffector_positions.csv")
