"""BairFolder on tiny fixtures written in the course layout by `write_sequence`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cvae_jax.data.bair_folder import BairFolder, write_sequence
from cvae_jax.data.dance_folder import DatasetError

T = 30


def make_seq(seed: int, t: int = T):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t, 64, 64, 3), dtype=np.uint8)
    return frames, rng.normal(size=(t, 4)).astype(np.float32), rng.normal(size=(t, 3)).astype(np.float32)


@pytest.fixture
def root(tmp_path):
    """train: traj_10_to_19/{0,1} and traj_2_to_9/{0}, written out of order."""
    for seed, rel in enumerate(["traj_10_to_19/1", "traj_2_to_9/0", "traj_10_to_19/0"]):
        write_sequence(tmp_path / "train" / rel, *make_seq(seed))
    (tmp_path / "train" / ".DS_Store").write_text("")
    (tmp_path / "train" / "traj_2_to_9" / ".hidden").mkdir()
    return tmp_path


@pytest.fixture
def seq(tmp_path):
    """A single validate sequence, the one each error test breaks."""
    return write_sequence(tmp_path / "validate" / "traj_0_to_255" / "0", *make_seq(7))


def test_shapes_dtypes_and_round_trip(root):
    data = BairFolder(root, "train")
    assert len(data) == 3
    assert data.names == ["traj_2_to_9/0", "traj_10_to_19/0", "traj_10_to_19/1"]
    for name, seed in zip(data.names, [1, 2, 0]):
        frames, cond = data[data.names.index(name)]
        want_frames, actions, positions = make_seq(seed)
        assert frames.shape == (T, 64, 64, 3) and frames.dtype == np.uint8
        assert cond.shape == (T, 7) and cond.dtype == np.float32
        np.testing.assert_array_equal(frames, want_frames)
        np.testing.assert_allclose(cond, np.concatenate([actions, positions], 1), atol=1e-5)


def test_seq_len_prefix_and_load_all(root):
    frames, cond = BairFolder(root, "train", seq_len=12).load_all(progress=list)
    assert frames.shape == (3, 12, 64, 64, 3) and frames.dtype == np.uint8
    assert cond.shape == (3, 12, 7) and cond.dtype == np.float32
    want_frames, actions, positions = make_seq(1)
    np.testing.assert_array_equal(frames[0], want_frames[:12])
    np.testing.assert_allclose(cond[0], np.concatenate([actions, positions], 1)[:12], atol=1e-5)


def test_val_alias_and_mode_conversion(seq, tmp_path):
    Image.fromarray(np.full((64, 64), 77, np.uint8)).save(seq / "3.png")  # grayscale
    Image.new("RGBA", (64, 64), (1, 2, 3, 4)).save(seq / "4.png")
    frames, _ = BairFolder(tmp_path, "val")[0]
    assert (frames[3] == 77).all() and (frames[4] == [1, 2, 3]).all()


def test_bad_arguments(root):
    with pytest.raises(ValueError, match="split"):
        BairFolder(root, "training")
    with pytest.raises(ValueError, match="seq_len"):
        BairFolder(root, "train", seq_len=0)


def test_missing_root_split_and_empty(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        BairFolder(tmp_path / "nowhere", "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="test"):
        BairFolder(tmp_path, "test")
    (tmp_path / "train" / "traj_0_to_255").mkdir()
    with pytest.raises(DatasetError, match="no sequences"):
        BairFolder(tmp_path, "train")


@pytest.mark.parametrize("name", ["actions.csv", "endeffector_positions.csv"])
def test_missing_csv(seq, tmp_path, name):
    (seq / name).unlink()
    with pytest.raises(DatasetError, match=f"{name} is missing"):
        BairFolder(tmp_path, "validate")[0]


def test_missing_frames_are_listed(seq, tmp_path):
    (seq / "7.png").unlink()
    (seq / "12.png").unlink()
    with pytest.raises(DatasetError, match=r"missing 7\.png, 12\.png"):
        BairFolder(tmp_path, "validate")[0]


def test_wrong_image_size(seq, tmp_path):
    Image.new("RGB", (32, 64)).save(seq / "5.png")
    with pytest.raises(DatasetError, match=r"5\.png is 32x64 .*expected 64x64"):
        BairFolder(tmp_path, "validate")[0]


def rewrite(path, edit):
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines.pop(), r"actions\.csv has 29 rows, expected 30 \(one per frame\)"),
    (lambda lines: lines.append("0,0,0,0"), r"actions\.csv has 31 rows, expected 30"),
    (lambda lines: lines.__setitem__(4, "1,2,3"), r"actions\.csv: row 5 has 3 values, expected 4"),
    (lambda lines: lines.__setitem__(1, "1,2,abc,4"), r"actions\.csv: row 2, column 3: 'abc' is not a number"),
    (lambda lines: lines.__setitem__(0, "1,nan,3,4"), r"actions\.csv: row 1, column 2 is 'nan'; .*finite"),
    (lambda lines: lines.__setitem__(9, "1,2,3,inf"), r"actions\.csv: row 10, column 4 is 'inf'"),
])
def test_bad_actions_csv(seq, tmp_path, edit, message):
    rewrite(seq / "actions.csv", edit)
    with pytest.raises(DatasetError, match=message):
        BairFolder(tmp_path, "validate")[0]


def test_bad_positions_csv(seq, tmp_path):
    rewrite(seq / "endeffector_positions.csv", lambda lines: lines.__setitem__(2, "1,2,3,4"))
    with pytest.raises(DatasetError, match=r"endeffector_positions\.csv: row 3 has 4 values, expected 3"):
        BairFolder(tmp_path, "validate")[0]


def test_index_past_end_stops_iteration(seq, tmp_path):
    assert len(list(BairFolder(tmp_path, "validate"))) == 1
