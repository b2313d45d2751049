"""Synthetic BAIR-like pushing data: processed layout, determinism, actions, and physically sensible content."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from cvae_jax.data import synthetic_pushing as sp
from cvae_jax.data.synthetic_pushing import SyntheticPushingSpec, ensure_synthetic, generate, render_sequence

SPEC = SyntheticPushingSpec(seed=5, train_sequences=5, validate_sequences=2, test_sequences=1, per_folder=2)
FOLDERS = {"train": {"traj_0_to_1": 2, "traj_2_to_3": 2, "traj_4_to_4": 1},
           "validate": {"traj_0_to_1": 2}, "test": {"traj_0_to_0": 1}}
SEQUENCE_FILES = {f"{t}.png" for t in range(30)} | {"actions.csv", "endeffector_positions.csv"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "bair", SPEC)


def sequences(root: pathlib.Path):
    """(split, global index, folder) of every sequence the layout should hold."""
    for split, n in SPEC.counts().items():
        for i in range(n):
            first = i // SPEC.per_folder * SPEC.per_folder
            last = min(first + SPEC.per_folder, n) - 1
            yield split, i, root / split / f"traj_{first}_to_{last}" / str(i - first)


def read_csv(path: pathlib.Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", ndmin=2)


def tree_bytes(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def to_pixel_index(xy) -> np.ndarray:
    """Documented mapping, in pixel-index coordinates (pixel i is centred on i + 0.5)."""
    return 32 + 24 * np.asarray(xy) - 0.5


# --------------------------------------------------------------------------- layout


def test_layout_is_the_processed_bair_layout(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == sorted([*FOLDERS, sp.COMPLETE_MARKER])
    for split, folders in FOLDERS.items():
        assert sorted(p.name for p in (dataset / split).iterdir()) == sorted(folders)
        for folder, n in folders.items():
            assert sorted(p.name for p in (dataset / split / folder).iterdir()) == [str(k) for k in range(n)]
    for _, _, d in sequences(dataset):
        assert {p.name for p in d.iterdir()} == SEQUENCE_FILES
        with Image.open(d / "29.png") as im:
            assert im.format == "PNG" and im.size == (64, 64) and im.mode == "RGB"
        lines = (d / "actions.csv").read_text().splitlines()
        assert len(lines) == 30 and all(len(line.split(",")) == 4 for line in lines)  # no header
        assert read_csv(d / "actions.csv").shape == (30, 4)
        assert read_csv(d / "endeffector_positions.csv").shape == (30, 3)
    marker = json.loads((dataset / sp.COMPLETE_MARKER).read_text())
    assert marker == {"spec": dataclasses.asdict(SPEC), "generator_version": sp.GENERATOR_VERSION}


def test_files_hold_render_sequence_output(dataset):
    for split, i, d in sequences(dataset):
        frames, actions, positions = render_sequence(SPEC.seed, split, i, SPEC.seq_len)
        assert frames.dtype == np.uint8 and frames.shape == (30, 64, 64, 3)
        assert actions.dtype == positions.dtype == np.float32
        for t in (0, 13, 29):
            assert np.array_equal(np.asarray(Image.open(d / f"{t}.png")), frames[t])
        # the CSV text round-trips the returned arrays
        np.testing.assert_allclose(read_csv(d / "actions.csv").astype(np.float32), actions, rtol=0, atol=1e-6)
        np.testing.assert_allclose(read_csv(d / "endeffector_positions.csv").astype(np.float32), positions,
                                   rtol=0, atol=1e-6)


def test_generate_refuses_existing_layout(dataset):
    with pytest.raises(FileExistsError, match="train"):
        generate(dataset, SPEC)


# --------------------------------------------------------------------------- determinism


def test_render_sequence_is_deterministic():
    a, b = render_sequence(3, "train", 7), render_sequence(3, "train", 7)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    for args in ((4, "train", 7), (3, "validate", 7), (3, "train", 8)):
        other = render_sequence(*args)
        assert other[0].tobytes() != a[0].tobytes() and other[1].tobytes() != a[1].tobytes()
    short = render_sequence(3, "train", 7, seq_len=10)  # a prefix, whatever the spec's seq_len
    for x, y in zip(short, a):
        assert x.shape[0] == 10 and x.tobytes() == y[:10].tobytes()
    with pytest.raises(ValueError, match="split"):
        render_sequence(3, "val", 7)


def test_same_spec_same_bytes_and_sequences_independent_of_count(dataset, tmp_path):
    assert tree_bytes(generate(tmp_path / "again", SPEC)) == tree_bytes(dataset)
    fewer = generate(tmp_path / "fewer", dataclasses.replace(SPEC, train_sequences=2, validate_sequences=0,
                                                             test_sequences=0))
    one = "train/traj_0_to_1/1"
    assert tree_bytes(fewer / one) == tree_bytes(dataset / one)


def test_parallel_generation_matches_serial(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "_CHUNK", 2)  # several tasks even for this tiny spec
    assert tree_bytes(generate(tmp_path / "parallel", SPEC, workers=2)) == tree_bytes(dataset)


# --------------------------------------------------------------------------- actions and motion


def test_positions_follow_actions_in_the_csv_files(dataset):
    for _, _, d in sequences(dataset):
        a, p = read_csv(d / "actions.csv"), read_csv(d / "endeffector_positions.csv")
        expected = np.clip(p[:-1] + a[:-1, :3], [-1, -1, 0], [1, 1, 1])
        np.testing.assert_allclose(p[1:], expected, rtol=0, atol=2e-6)
        assert np.all(np.abs(p[:, :2]) <= 1) and np.all((p[:, 2] >= 0) & (p[:, 2] <= 1))
        assert np.all((a[:, 3] >= 0) & (a[:, 3] <= 1))


def test_motion_is_smooth_and_about_four_pixels_per_frame():
    scenes = [sp._scene(1, "train", i) for i in range(24)]
    step = np.concatenate([np.diff(s.positions[:, :2], axis=0) for s in scenes]) * 24  # pixels
    speed = np.hypot(step[:, 0], step[:, 1])
    assert 3.8 < speed.mean() < 5.5 and speed.max() < 9.5
    jerk = np.concatenate([np.diff(s.actions[:, :2], axis=0) for s in scenes]) * 24
    # smooth, not white noise (independent actions would give ~1.4x the speed; this is ~0.4x)
    assert np.hypot(jerk[:, 0], jerk[:, 1]).mean() < 0.5 * speed.mean()
    z = np.concatenate([s.positions[:, 2] for s in scenes])
    assert (z < sp.PUSH_HEIGHT).mean() > 0.2 and (z > 0.6).mean() > 0.05


def test_gripper_is_drawn_where_the_positions_say(dataset):
    """Frame minus the same frame without the gripper head: a compact blob around p_t (plus its shadow)."""
    checked = 0
    for split, i, d in sequences(dataset):
        scene = sp._scene(SPEC.seed, split, i)
        without_head = sp._frames(scene, parts=("arm",)).astype(np.int16)
        p = read_csv(d / "endeffector_positions.csv")
        for t in (0, 10, 20, 29):
            frame = np.asarray(Image.open(d / f"{t}.png")).astype(np.int16)
            diff = np.abs(frame - without_head[t]).sum(axis=2) > 40
            rows, cols = np.nonzero(diff)
            centre = to_pixel_index(p[t, :2])
            dist = np.hypot(cols - centre[0], rows - centre[1])
            assert diff.sum() >= 20
            assert np.mean(dist < 9 + 7 * p[t, 2]) > 0.95  # head plus its offset shadow
            assert np.hypot(cols.mean() - centre[0], rows.mean() - centre[1]) < 3.5
            assert diff[int(centre[1]) - 1:int(centre[1]) + 2, int(centre[0]) - 1:int(centre[0]) + 2].any()
            checked += 1
    assert checked == 32


# --------------------------------------------------------------------------- pushing


def gripper_path(scene, t: int, n: int = 41):
    """Dense points between p_t and p_{t+1} where the gripper is low enough to push."""
    s = np.linspace(0, 1, n)[:, None]
    q = scene.positions[t] + s * (scene.positions[t + 1] - scene.positions[t])
    return q[q[:, 2] < sp.PUSH_HEIGHT]


def test_objects_move_only_when_pushed():
    pushed = untouched = 0
    for i in range(160):
        scene = sp._scene(2, "train", i)
        objects, radii = scene.objects, scene.radii
        moves = np.hypot(*np.moveaxis(np.diff(objects, axis=0), -1, 0))  # (T-1, n)
        ever_near = np.zeros(len(radii), dtype=bool)
        for t in range(len(moves)):
            low = gripper_path(scene, t)
            for k, r in enumerate(radii):
                near = len(low) and np.min(np.hypot(*(low[:, :2] - objects[t, k]).T)
                                           - [sp.footprint(z) for z in low[:, 2]]) < r + 0.01
                ever_near[k] |= bool(near)
                if moves[t, k] > 1e-9:  # pushed by the gripper, or by a moving neighbour within reach
                    touching = [j for j in range(len(radii)) if j != k and moves[t, j] > 1e-9 and
                                np.hypot(*(objects[t + 1, j] - objects[t + 1, k])) <= r + radii[j] + moves[t, j]]
                    assert near or touching, (i, t, k)
        pushed += moves.sum(axis=0).max() * 24 > 2.0
        if not ever_near.any():  # the gripper never reached any object: nothing may move at all
            assert np.array_equal(objects[-1], objects[0])
            untouched += 1
    assert pushed >= 0.5 * 160 and untouched >= 1  # fast grippers leave few scenes alone


def test_rendered_objects_follow_their_tracks():
    """Without the robot, frames change exactly when an object moves, and where it moves."""
    seen = set()
    for i in range(16):
        scene = sp._scene(2, "validate", i)
        frames = sp._frames(scene, parts=()).astype(np.int16)
        moved = np.hypot(*np.moveaxis(scene.objects[-1] - scene.objects[0], -1, 0)) * 24
        if moved.max() == 0:
            assert np.all(frames == frames[0])
            seen.add("static")
        elif moved.max() > 4 and np.sum(moved > 0) == 1:
            k = int(np.argmax(moved))
            rows, cols = np.nonzero(np.abs(frames[-1] - frames[0]).sum(axis=2) > 60)
            ends = to_pixel_index(scene.objects[[0, -1], k])
            dist = np.min([np.hypot(cols - x, rows - y) for x, y in ends], axis=0)
            assert len(rows) > 20 and np.all(dist < scene.radii[k] * 24 + 2.5)
            seen.add("moved")
    assert seen == {"static", "moved"}


# --------------------------------------------------------------------------- cache and spec


TINY = dataclasses.replace(SPEC, train_sequences=1, validate_sequences=1, test_sequences=0, seq_len=3)


def test_ensure_synthetic_generates_once(tmp_path, monkeypatch):
    path = ensure_synthetic(tmp_path, TINY)
    assert path.name == f"synthetic_pushing_{TINY.digest()}" and (path / sp.COMPLETE_MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp folders left
    files = {p.name for p in (path / "train/traj_0_to_0/0").iterdir()}
    assert files == {"0.png", "1.png", "2.png", "actions.csv", "endeffector_positions.csv"}

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(sp, "generate", fail)
    assert ensure_synthetic(tmp_path, TINY) == path


def test_ensure_synthetic_replaces_incomplete(tmp_path):
    path = ensure_synthetic(tmp_path, TINY)
    (path / sp.COMPLETE_MARKER).unlink()
    (path / "train/traj_0_to_0/0/1.png").unlink()
    (path / "stale.txt").write_text("left over")
    assert ensure_synthetic(tmp_path, TINY) == path
    assert (path / sp.COMPLETE_MARKER).is_file() and (path / "train/traj_0_to_0/0/1.png").is_file()
    assert not (path / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_ensure_synthetic_interrupted_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sp, "_write_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, TINY)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field, value", [("seq_len", 0), ("per_folder", 0), ("train_sequences", 0),
                                          ("validate_sequences", -1), ("test_sequences", -1), ("seed", -1),
                                          ("seq_len", 2.5), ("per_folder", True), ("train_sequences", "8")])
def test_spec_validation(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticPushingSpec(**{field: value})


def test_spec_defaults_and_digest():
    spec = SyntheticPushingSpec(validate_sequences=0, test_sequences=0)  # empty held-out splits are allowed
    assert spec.counts() == {"train": 512, "validate": 0, "test": 0} and spec.seq_len == 30
    assert len(SPEC.digest()) == 16 and int(SPEC.digest(), 16) >= 0
    assert SPEC.digest() == SyntheticPushingSpec(**dataclasses.asdict(SPEC)).digest()
    assert SPEC.digest() != dataclasses.replace(SPEC, seed=6).digest()
    assert SPEC.digest() != dataclasses.replace(SPEC, per_folder=3).digest()
    with pytest.raises(TypeError):
        generate("/nonexistent/never", {"seed": 0})
