"""Synthetic dance generator: determinism, reference layout, and footage-like content."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from cvae_jax.data import synthetic_dance as sd
from cvae_jax.data.dance_folder import load_split, load_test, val_videos
from cvae_jax.data.synthetic_dance import SyntheticDanceSpec, ensure_synthetic, generate

SPEC = SyntheticDanceSpec(seed=3, train_videos=2, val_videos=2, test_videos=2, frames_per_video=20)
HW = (32, 64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "DR", SPEC)


@pytest.fixture(scope="module")
def train(dataset):
    return load_split(dataset, "train", HW, cache_dir=False)


def tree_bytes(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rgb(path: pathlib.Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


# --------------------------------------------------------------------------- layout


def test_layout_names_and_sizes(dataset):
    train_names = sorted(p.name for p in (dataset / "train/train_img").iterdir())
    assert train_names == [f"frame{i:06d}.png" for i in range(40)]
    assert sorted(p.name for p in (dataset / "train/train_label").iterdir()) == train_names
    val_names = sorted(p.name for p in (dataset / "val/val_img").iterdir())
    assert val_names == [f"frame{i:06d}.png" for i in range(40)]
    for i in ("0", "1"):
        assert [p.name for p in (dataset / "test/test_img" / i).iterdir()] == ["frame000000.png"]
        assert len(list((dataset / "test/test_label" / i).iterdir())) == 20
    with Image.open(dataset / "train/train_img/frame000000.png") as im:
        assert im.size == (128, 64) and im.mode == "RGB"
    marker = json.loads((dataset / sd.COMPLETE_MARKER).read_text())
    assert marker["spec"] == dataclasses.asdict(SPEC)


def test_loadable_by_the_reference_loader(dataset, train):
    frames, poses, names = train
    assert frames.shape == poses.shape == (40, 32, 64, 3)
    vf, vp, _ = load_split(dataset, "val", HW, cache_dir=False)
    videos, labels = val_videos(vf, vp, SPEC.frames_per_video)
    assert videos.shape == labels.shape == (2, 20, 32, 64, 3)
    seqs = load_test(dataset, HW, cache_dir=False)
    assert [s[2] for s in seqs] == ["0", "1"]
    assert seqs[0][0].shape == (32, 64, 3) and seqs[0][1].shape == (20, 32, 64, 3)


def test_generate_refuses_existing_layout(dataset):
    with pytest.raises(FileExistsError, match="train"):
        generate(dataset, SPEC)


def test_spec_validation():
    with pytest.raises(ValueError, match="frames_per_video"):
        SyntheticDanceSpec(frames_per_video=0)
    with pytest.raises(ValueError, match="seed"):
        SyntheticDanceSpec(seed=-1)
    with pytest.raises(ValueError, match="width"):
        SyntheticDanceSpec(width=12.5)


# --------------------------------------------------------------------------- determinism


def test_same_spec_same_bytes(dataset, tmp_path):
    again = generate(tmp_path / "again", SPEC)
    assert tree_bytes(again) == tree_bytes(dataset)


def test_other_seed_other_data(dataset, tmp_path):
    other = generate(tmp_path / "other", dataclasses.replace(SPEC, seed=4, train_videos=1, val_videos=0,
                                                             test_videos=0))
    a = (dataset / "train/train_img/frame000000.png").read_bytes()
    assert (other / "train/train_img/frame000000.png").read_bytes() != a


def test_video_independent_of_how_many_videos_are_made(dataset, tmp_path):
    """Per-video seeds: video 0 does not depend on the spec's other videos or on worker order."""
    fewer = generate(tmp_path / "fewer", dataclasses.replace(SPEC, train_videos=1, val_videos=0, test_videos=0))
    for i in (0, 19):
        name = f"train/train_img/frame{i:06d}.png"
        assert (fewer / name).read_bytes() == (dataset / name).read_bytes()


def test_parallel_generation_matches_serial(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(sd, "_PARALLEL_MIN_FRAMES", 0)
    parallel = generate(tmp_path / "parallel", SPEC, workers=2)
    assert tree_bytes(parallel) == tree_bytes(dataset)


# --------------------------------------------------------------------------- content


def test_pose_images_are_white_with_coloured_lines(dataset):
    for name in ("frame000000.png", "frame000033.png"):
        pose = rgb(dataset / "train/train_label" / name)
        white = (pose.min(axis=2) >= 250).mean()
        assert 0.85 < white < 0.995
        saturation = pose.max(axis=2) - pose.min(axis=2)
        assert (saturation > 60).sum() >= 20  # coloured limbs, not grey
        assert pose.max(axis=2).min() >= 128  # bright colours on white, nothing dark


def test_frames_look_like_the_studio(train):
    frames = train[0].astype(np.float32)
    grey = frames.mean(axis=3)
    assert 140 < np.median(grey) < 175  # light grey studio
    top, middle = np.median(grey[:, :4]), np.median(grey[:, 12:16])
    assert top > middle  # ceiling lights above a darker wall
    dancer = grey < 70
    assert 0.01 < dancer.mean() < 0.15  # a small dark figure
    assert np.all(dancer.any(axis=(1, 2)))


def test_frames_change_over_time(train):
    frames = train[0].astype(np.int16)
    diffs = np.abs(np.diff(frames[:20], axis=0)).mean(axis=(1, 2, 3))
    assert (diffs > 0.3).mean() > 0.5
    assert np.abs(frames[19] - frames[0]).max() > 60


def test_pose_matches_the_rendered_dancer(dataset):
    """Every drawn skeleton pixel lies on or next to the dancer in the same frame."""
    spec = SPEC
    look, _ = sd._video_poses(spec, "train", 0)
    studio = Image.fromarray(sd._studio(spec.width * 2, spec.height * 2, look.studio)).reduce(2)
    background = np.asarray(studio).astype(np.int16)
    for i in (0, 10, 19):
        frame = rgb(dataset / f"train/train_img/frame{i:06d}.png")
        pose = rgb(dataset / f"train/train_label/frame{i:06d}.png")
        dancer = np.abs(frame - background).sum(axis=2) > 30
        skeleton = pose.min(axis=2) < 200
        near = np.zeros_like(dancer)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                near |= np.roll(np.roll(dancer, dy, 0), dx, 1)
        assert skeleton.sum() > 30
        assert (skeleton & near).sum() / skeleton.sum() > 0.95


def test_videos_differ(dataset):
    first = rgb(dataset / "train/train_img/frame000000.png")
    second = rgb(dataset / "train/train_img/frame000020.png")
    assert np.abs(first - second).mean() > 1.0
    looks = [sd._video_poses(SPEC, "train", i)[0] for i in range(4)]
    assert len({look.shirt for look in looks}) == 4
    assert len({round(look.height, 4) for look in looks}) == 4


def test_dancer_travels_across_each_video():
    spec = SyntheticDanceSpec(seed=11, frames_per_video=630)
    for i in range(3):
        _, poses = sd._video_poses(spec, "train", i)
        neck_x = np.array([p.joints[sd.NECK, 0] for p in poses]) / spec.width
        assert np.ptp(neck_x) > 0.2
        joints = np.stack([p.joints for p in poses])
        assert np.abs(np.diff(joints, axis=0)).max() < 0.06 * spec.width  # smooth, no jumps


# --------------------------------------------------------------------------- cache


def test_ensure_synthetic_generates_once(tmp_path, monkeypatch):
    spec = dataclasses.replace(SPEC, train_videos=1, val_videos=1, test_videos=1, frames_per_video=4)
    path = ensure_synthetic(tmp_path, spec)
    assert path.name == f"synthetic_dance_{spec.digest()}" and (path / sd.COMPLETE_MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp folders left

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(sd, "generate", fail)
    assert ensure_synthetic(tmp_path, spec) == path


def test_ensure_synthetic_replaces_incomplete(tmp_path):
    spec = dataclasses.replace(SPEC, train_videos=1, val_videos=1, test_videos=1, frames_per_video=4)
    path = ensure_synthetic(tmp_path, spec)
    (path / sd.COMPLETE_MARKER).unlink()
    (path / "train/train_img/frame000001.png").unlink()
    assert ensure_synthetic(tmp_path, spec) == path
    assert (path / sd.COMPLETE_MARKER).is_file()
    assert (path / "train/train_img/frame000001.png").is_file()


def test_ensure_synthetic_interrupted_leaves_nothing_complete(tmp_path, monkeypatch):
    spec = dataclasses.replace(SPEC, train_videos=1, val_videos=0, test_videos=0, frames_per_video=4)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sd, "_write_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, spec)
    assert list(tmp_path.iterdir()) == []


def test_digest_depends_on_spec():
    assert SPEC.digest() != dataclasses.replace(SPEC, seed=SPEC.seed + 1).digest()
    assert SPEC.digest() == SyntheticDanceSpec(**dataclasses.asdict(SPEC)).digest()
