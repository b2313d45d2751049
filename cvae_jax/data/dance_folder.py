"""Loader for the Lab4 dance dataset in the reference folder layout.

Layout (``<DR>`` is the dataset root passed as ``--DR`` in the reference)::

    <DR>/train/train_img/frameNNNNNN.png   frames, consecutive over all train videos
    <DR>/train/train_label/<same names>    pose (skeleton) images, one per frame
    <DR>/val/val_img, <DR>/val/val_label   k videos of val_vi_len frames each
    <DR>/test/test_img/<i>/*.png           first frame of test sequence i (first file only)
    <DR>/test/test_label/<i>/*.png         every pose of test sequence i

Images are resized exactly as the reference transform does on PIL images
(``Image.resize((W, H), BILINEAR)``, antialiased when shrinking) and kept as
uint8 until a batch is formed, so the 23,410-frame train split stays small in
memory.  Decoded arrays are cached on disk because decoding 1024x512 PNGs is
by far the slowest part of starting a run.

Bad input (tests/test_bad_input.py): an image that cannot be decoded (not an image,
empty, truncated, damaged) is a `DatasetError` naming the file.  Greyscale, 16-bit,
palette and alpha images are converted to RGB (`data/images.py`; pose alpha on white),
with one warning per folder.  Frames and poses of any size are each resized to the
model's (H, W), as the reference transform does, so sizes may differ within a split.  A
frame without its pose image, or a pose without its frame, names the missing file; a
folder without .png images is named; a train split too short for one batch is refused
before a run folder is made (`data/dance.py`).

The cache entry of a folder is keyed by every file's name, size and mtime (any change
decodes again), and is written to a temporary file then renamed: a decode that fails or
is interrupted leaves no entry, nor does a failed write (a process killed mid-write can
leave a ``*.tmp.npz``, which is never read); an unreadable entry is decoded again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
import tempfile
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from cvae_jax.data.cache import default_root
from cvae_jax.data.images import read_rgb
from cvae_jax.media import to_unit_float
from cvae_jax.errors import DatasetError

__all__ = [
    "DatasetError",
    "load_split",
    "load_test",
    "train_clips",
    "epoch_batches",
    "steps_per_epoch",
    "val_videos",
    "frame_sort_key",
    "default_cache_dir",
]

SPLITS = ("train", "val")
# Bump when decoding/resizing changes so stale caches are never reused.
CACHE_FORMAT_VERSION = 2  # 2: 16-bit greyscale keeps its high byte; greyscale/RGB transparency on poses
LAYOUT_HELP = (
    "expected layout: <DR>/train/train_img/*.png, <DR>/train/train_label/*.png, "
    "<DR>/val/val_img/*.png, <DR>/val/val_label/*.png, "
    "<DR>/test/test_img/<i>/*.png, <DR>/test/test_label/<i>/*.png"
)
TEST_LAYOUT_HELP = (
    "expected layout: <DR>/test/test_img/<i>/*.png (first frame), <DR>/test/test_label/<i>/*.png "
    "(one pose per frame, numbered consecutively); the test split needs no train or val folders"
)
_MAX_LISTED = 5
_FRAME_NAME = re.compile(r"^(?:frame)?(\d+)$", re.IGNORECASE)


# --------------------------------------------------------------------------- arguments


def _check_frame_hw(frame_hw) -> tuple[int, int]:
    ok = (
        isinstance(frame_hw, (tuple, list))
        and len(frame_hw) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in frame_hw)
        and all(v > 0 for v in frame_hw)
    )
    if not ok:
        raise ValueError(f"frame_hw must be two positive ints (height, width), got {frame_hw!r}")
    return int(frame_hw[0]), int(frame_hw[1])


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_partial(partial) -> float:
    if not isinstance(partial, (int, float)) or isinstance(partial, bool) or not 0.0 < partial <= 1.0:
        raise ValueError(f"partial must be a number in (0, 1], got {partial!r}")
    return float(partial)


def _check_pair(frames: np.ndarray, poses: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be shaped (N, H, W, 3), got {frames.shape}")
    if poses.shape != frames.shape:
        raise ValueError(f"poses shape {poses.shape} differs from frames shape {frames.shape}")


# --------------------------------------------------------------------------- listing


def frame_sort_key(path: str | os.PathLike) -> int:
    """Numeric position of a frame file: ``frame000630.png`` and ``630.png`` -> 630.

    Lexicographic order would put frame10 before frame2 for unpadded names.
    """
    p = pathlib.Path(path)
    match = _FRAME_NAME.match(p.stem)
    if match is None:
        raise DatasetError(
            f"cannot read a frame number from {p}: expected names like 'frame000630.png' or '630.png'"
        )
    return int(match.group(1))


def _require_dir(path: pathlib.Path, what: str, layout: str = LAYOUT_HELP) -> pathlib.Path:
    if not path.is_dir():
        raise DatasetError(f"missing {what} folder {path} ({layout})")
    return path


def _require_root(root, layout: str = LAYOUT_HELP) -> pathlib.Path:
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder ({layout})")
    return root


def _is_hidden(p: pathlib.Path) -> bool:
    """Dotfiles (e.g. macOS ``._frame000001.png``) are skipped, as the reference's glob skips them."""
    return p.name.startswith(".")


def _list_pngs(folder: pathlib.Path) -> list[pathlib.Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() == ".png" and not _is_hidden(p) and p.is_file()]
    if not files:
        raise DatasetError(f"folder {folder} contains no .png images")
    return sorted(files, key=lambda p: (frame_sort_key(p), p.name))


def _list_sequence_dirs(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    dirs = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() == ".png" and not _is_hidden(p):
            raise DatasetError(f"image {p} lies directly in {folder}, not in a test sequence folder "
                               f"<i>/ ({TEST_LAYOUT_HELP})")
        if not p.is_dir() or _is_hidden(p):
            continue
        if not p.name.isdigit():
            raise DatasetError(f"test sequence folder {p} is not named by an integer (expected <i>/)")
        dirs[p.name] = p
    if not dirs:
        raise DatasetError(f"folder {folder} contains no test sequence folders <i>/ ({TEST_LAYOUT_HELP})")
    return dirs


def _require_consecutive(paths: Sequence[pathlib.Path], folder: pathlib.Path) -> None:
    """A test sequence's poses are one per frame: a gap in their numbers is a missing pose."""
    numbers = sorted({frame_sort_key(p) for p in paths})
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        shown = ", ".join(map(str, missing[:_MAX_LISTED])) + (", ..." if len(missing) > _MAX_LISTED else "")
        raise DatasetError(f"test poses in {folder} skip {len(missing)} frame number(s): {shown} "
                           f"(each test sequence needs one pose per frame, numbered consecutively)")


def _first(names) -> str:
    return min(names, key=lambda n: (frame_sort_key(n), n))


def _describe_unmatched(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names, key=lambda n: (frame_sort_key(n), n))[:_MAX_LISTED])
    more = "" if len(names) <= _MAX_LISTED else ", ..."
    return f"{len(names)} file(s): {shown}{more}"


def _match_pairs(img_dir: pathlib.Path, label_dir: pathlib.Path):
    """Pair frames with poses by file name, as the reference does (same name in *_label)."""
    imgs = _list_pngs(img_dir)
    labels = _list_pngs(label_dir)
    img_names = {p.name for p in imgs}
    label_names = {p.name for p in labels}
    no_pose = img_names - label_names
    if no_pose:
        first = _first(no_pose)
        raise DatasetError(
            f"pose image {label_dir / first} is missing for frame {img_dir / first} "
            f"(frames in {img_dir} without a pose image in {label_dir}: {_describe_unmatched(list(no_pose))})"
        )
    no_frame = label_names - img_names
    if no_frame:
        first = _first(no_frame)
        raise DatasetError(
            f"frame {img_dir / first} is missing for pose image {label_dir / first} "
            f"(pose images in {label_dir} without a frame in {img_dir}: {_describe_unmatched(list(no_frame))})"
        )
    return imgs, [label_dir / p.name for p in imgs]


# --------------------------------------------------------------------------- decoding


def _decode_image(path: pathlib.Path, frame_hw: tuple[int, int], kind: str) -> tuple[np.ndarray, str]:
    """Decoded, resized uint8 (H, W, 3) image and its original PIL mode.

    Pose images with transparency are composited on white: their background is white in
    the reference, so a transparent pixel means "no skeleton here". Frames just drop alpha:
    a camera frame has no meaningful transparency and compositing would invent a background.
    """
    h, w = frame_hw
    rgb, mode = read_rgb(path, alpha_on_white=kind == "pose")
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).copy(), mode


def _decode_all(paths: Sequence[pathlib.Path], frame_hw, kind: str, desc: str):
    """Decode on a thread pool: Pillow releases the GIL while inflating and resizing,
    and threads work from any caller (scripts on stdin, notebooks), unlike processes."""
    decode = functools.partial(_decode_image, frame_hw=frame_hw, kind=kind)
    workers = max(1, min(8, os.cpu_count() or 1))
    progress = _progress(len(paths), desc)
    results = []
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for item in pool.map(decode, paths):
                results.append(item)
                progress.update(1)
    finally:
        progress.close()
    arrays = np.stack([a for a, _ in results]) if results else np.zeros((0, *frame_hw, 3), np.uint8)
    return arrays, [m for _, m in results]


class _NoProgress:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str):
    """tqdm bar only for loads long enough to be worth watching."""
    if total < 500:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is cosmetic
        return _NoProgress()
    return tqdm(total=total, desc=desc, unit="img", leave=False)


@dataclasses.dataclass(frozen=True)
class _Conversion:
    """What was converted to RGB in one folder, so it is reported even on a cache hit."""

    count: int
    total: int
    example: str
    example_mode: str

    def warn(self, folder: pathlib.Path, kind: str) -> None:
        if self.count:
            alpha = "composited on white" if kind == "pose" else "alpha dropped"
            warnings.warn(
                f"{folder}: converted {self.count} of {self.total} {kind} image(s) to RGB "
                f"(e.g. {self.example} was mode {self.example_mode!r}; RGBA {alpha})",
                stacklevel=4,
            )


def _conversion_of(paths: Sequence[pathlib.Path], modes: Sequence[str]) -> _Conversion:
    converted = [(p, m) for p, m in zip(paths, modes) if m != "RGB"]
    if not converted:
        return _Conversion(0, len(paths), "", "")
    path, mode = converted[0]
    return _Conversion(len(converted), len(paths), str(path), mode)


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> pathlib.Path:
    """``dance/`` under the project-wide cache root (``data.cache.default_root``)."""
    return default_root() / "dance"


def _resolve_cache_dir(cache_dir) -> pathlib.Path | None:
    if cache_dir is False:
        return None
    return pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _cache_key(folder: pathlib.Path, paths: Sequence[pathlib.Path], frame_hw, kind: str) -> str:
    """Hash of everything that determines the decoded arrays; any file change gives a new key."""
    listing = []
    for p in paths:
        st = p.stat()
        listing.append((p.name, st.st_size, st.st_mtime_ns))
    blob = json.dumps(
        {
            "version": CACHE_FORMAT_VERSION,
            "folder": str(folder.resolve()),
            "frame_hw": list(frame_hw),
            "kind": kind,
            "files": listing,
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read_cache(path: pathlib.Path, n: int, frame_hw) -> tuple[np.ndarray, _Conversion] | None:
    """The entry, or None (rebuild it) when it is unreadable: truncated, damaged, or not ours."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = z["images"]
            conversion = _Conversion(**json.loads(str(z["meta"])))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    if arrays.shape != (n, *frame_hw, 3) or arrays.dtype != np.uint8:
        return None
    return arrays, conversion


def _write_cache(path: pathlib.Path, arrays: np.ndarray, conversion: _Conversion) -> None:
    """Atomic write so a concurrent or interrupted run never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=arrays, meta=np.array(json.dumps(dataclasses.asdict(conversion))))
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _load_images(folder: pathlib.Path, paths: Sequence[pathlib.Path], frame_hw, kind: str, cache_dir) -> np.ndarray:
    """Decoded images of ``paths`` (all inside ``folder``), from the cache when it is current."""
    cache_root = _resolve_cache_dir(cache_dir)
    cache_file = None
    if cache_root is not None:
        cache_file = cache_root / f"{_cache_key(folder, paths, frame_hw, kind)}.npz"
        if cache_file.is_file():
            hit = _read_cache(cache_file, len(paths), frame_hw)
            if hit is not None:
                arrays, conversion = hit
                conversion.warn(folder, kind)
                return arrays
    arrays, modes = _decode_all(paths, frame_hw, kind, desc=f"decoding {folder.name}")
    conversion = _conversion_of(paths, modes)
    conversion.warn(folder, kind)
    if cache_file is not None:
        try:
            _write_cache(cache_file, arrays, conversion)
        except OSError as err:  # a read-only cache must not stop training
            warnings.warn(f"could not write dataset cache {cache_file}: {err}", stacklevel=3)
    return arrays


# --------------------------------------------------------------------------- public loaders


def load_split(root, split: str, frame_hw: tuple[int, int], cache_dir=None):
    """Frames, poses (uint8 (N, H, W, 3)) and file names of the train or val split.

    ``cache_dir=None`` uses :func:`default_cache_dir`; ``cache_dir=False`` disables caching.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    frame_hw = _check_frame_hw(frame_hw)
    root = _require_root(root)
    split_dir = _require_dir(root / split, f"{split} split")
    img_dir = _require_dir(split_dir / f"{split}_img", f"{split} frames")
    label_dir = _require_dir(split_dir / f"{split}_label", f"{split} poses")
    imgs, labels = _match_pairs(img_dir, label_dir)
    frames = _load_images(img_dir, imgs, frame_hw, "frame", cache_dir)
    poses = _load_images(label_dir, labels, frame_hw, "pose", cache_dir)
    return frames, poses, [p.name for p in imgs]


def load_test(root, frame_hw: tuple[int, int], cache_dir=None):
    """Per test sequence, in numeric folder order (2 before 10): (first frame (H, W, 3),
    poses (T, H, W, 3), name). Needs only ``<DR>/test``; a sequence whose pose numbers
    have a gap (a missing pose) is refused."""
    frame_hw = _check_frame_hw(frame_hw)
    root = _require_root(root, TEST_LAYOUT_HELP)
    test_dir = _require_dir(root / "test", "test split", TEST_LAYOUT_HELP)
    img_root = _require_dir(test_dir / "test_img", "test first-frame", TEST_LAYOUT_HELP)
    label_root = _require_dir(test_dir / "test_label", "test poses", TEST_LAYOUT_HELP)
    img_seqs = _list_sequence_dirs(img_root)
    label_seqs = _list_sequence_dirs(label_root)
    if img_seqs.keys() != label_seqs.keys():
        only_img = sorted(img_seqs.keys() - label_seqs.keys(), key=int)
        only_label = sorted(label_seqs.keys() - img_seqs.keys(), key=int)
        raise DatasetError(
            f"test sequences differ between {img_root} and {label_root}: "
            f"only in test_img: {only_img or 'none'}, only in test_label: {only_label or 'none'}"
        )
    sequences, listed = [], []
    for name in sorted(img_seqs, key=int):  # every folder is checked before any is decoded
        first = _list_pngs(img_seqs[name])[:1]  # the reference uses only file [0]
        poses = _list_pngs(label_seqs[name])
        _require_consecutive(poses, label_seqs[name])
        listed.append((name, first, poses))
    for name, first, poses in listed:
        first_frame = _load_images(img_seqs[name], first, frame_hw, "frame", cache_dir)[0]
        pose_arr = _load_images(label_seqs[name], poses, frame_hw, "pose", cache_dir)
        sequences.append((first_frame, pose_arr, name))
    return sequences


# --------------------------------------------------------------------------- clips and batches


def train_clips(n_frames: int, clip_len: int, partial: float = 1.0) -> int:
    """Number of training clips: consecutive non-overlapping chunks, as ``Dataset_Dance``.

    Clips deliberately ignore source-video boundaries, like the reference.
    """
    if not isinstance(n_frames, (int, np.integer)) or isinstance(n_frames, bool) or n_frames < 0:
        raise ValueError(f"n_frames must be a non-negative int, got {n_frames!r}")
    clip_len = _check_positive_int("clip_len", clip_len)
    partial = _check_partial(partial)
    used = int(n_frames * partial)
    n = used // clip_len
    if n == 0:
        raise DatasetError(
            f"too few training frames: {n_frames} frames (partial={partial} -> {used} used) "
            f"make no clip of clip_len={clip_len}"
        )
    return n


def steps_per_epoch(n_frames: int, clip_len: int, batch_size: int, partial: float = 1.0) -> int:
    """Full batches per epoch (drop_last, as the reference train loader)."""
    batch_size = _check_positive_int("batch_size", batch_size)
    n_clips = train_clips(n_frames, clip_len, partial)
    steps = n_clips // batch_size
    if steps == 0:
        raise DatasetError(
            f"too few training frames: {n_clips} clip(s) of clip_len={clip_len} from {n_frames} frames "
            f"(partial={partial}) make no full batch of batch_size={batch_size}"
        )
    return steps


def epoch_batches(
    frames: np.ndarray,
    poses: np.ndarray,
    clip_len: int,
    batch_size: int,
    seed: int,
    epoch: int,
    partial: float = 1.0,
    augment: str = "none",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled full batches of clips, float32 in [0, 1], shaped (B, clip_len, H, W, 3).

    The order (and each clip's augmentation, see `augment_clips`) depends only on
    (seed, epoch), so a resumed run replays the same epoch.
    """
    frames = np.asarray(frames)
    poses = np.asarray(poses)
    _check_pair(frames, poses)
    for name, value in (("seed", seed), ("epoch", epoch)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    steps = steps_per_epoch(len(frames), clip_len, batch_size, partial)
    n_clips = train_clips(len(frames), clip_len, partial)
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n_clips)
    offsets = np.arange(clip_len)
    draws = augment_draws(augment, np.random.default_rng([int(seed), int(epoch), 1]), len(order),
                          frames.shape[1:3])
    return _batches(frames, poses, order, offsets, clip_len, batch_size, steps, draws)


AUGMENTS = ("none", "flip", "flip_shift")


def augment_draws(augment: str, rng: np.random.Generator, n: int, hw) -> np.ndarray | None:
    """Per clip (flip, dy, dx): a left-right flip with probability 1/2 and, with flip_shift,
    a shift of up to 1/16 of the height and width, drawn for the epoch's n clips at once."""
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if augment == "none":
        return None
    flip = rng.random(n) < 0.5
    dy, dx = (rng.integers(-(size // 16), size // 16 + 1, n) if augment == "flip_shift"
              else np.zeros(n, np.int64) for size in hw)
    return np.stack([flip.astype(np.int64), dy, dx], axis=1)


def augment_clip(clip: np.ndarray, flip: int, dy: int, dx: int) -> np.ndarray:
    """One clip (T, H, W, C) flipped and shifted; the border row or column is repeated into
    the uncovered edge, so the frame keeps its size and no black band appears."""
    if flip:
        clip = clip[:, :, ::-1]
    if dy or dx:
        h, w = clip.shape[1:3]
        pad = ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0))
        clip = np.pad(clip, pad, mode="edge")
        top, left = max(-dy, 0), max(-dx, 0)
        clip = clip[:, top:top + h, left:left + w]
    return clip


def _batches(frames, poses, order, offsets, clip_len, batch_size, steps, draws=None):
    for step in range(steps):
        pick = slice(step * batch_size, (step + 1) * batch_size)
        idx = order[pick][:, None] * clip_len + offsets[None, :]
        f, p = frames[idx], poses[idx]
        if draws is not None:  # frame and pose together, so the pose still matches the dancer
            f = np.stack([augment_clip(c, *d) for c, d in zip(f, draws[pick])])
            p = np.stack([augment_clip(c, *d) for c, d in zip(p, draws[pick])])
        yield to_unit_float(f), to_unit_float(p)


def val_videos(frames: np.ndarray, poses: np.ndarray, val_len: int, source: str = "val folder"):
    """Split the val folder into its k videos of ``val_len`` frames, float32 in [0, 1]."""
    frames = np.asarray(frames)
    poses = np.asarray(poses)
    _check_pair(frames, poses)
    val_len = _check_positive_int("val_len", val_len)
    n = len(frames)
    if n == 0 or n % val_len:
        raise DatasetError(
            f"{source} has {n} frames, which is not a positive multiple of val_vi_len={val_len} "
            f"(the val folder must hold k whole videos of val_vi_len frames)"
        )
    shape = (n // val_len, val_len, *frames.shape[1:])
    return to_unit_float(frames).reshape(shape), to_unit_float(poses).reshape(shape)
