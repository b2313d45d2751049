import csv
import math

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from cvae_jax.media import side_by_side, to_uint8, upscale_nearest, write_gif, write_per_frame_csv, write_psnr_csv
from cvae_jax.plots import plot_psnr_per_frame, plot_ssim_per_frame, plot_training


def _records(n):
    return [
        {
            "epoch": e,
            "loss": 0.1 / (e + 1),
            "mse": 0.08 / (e + 1),
            "kl": 5.0,
            "beta": (e % 3) / 3,
            "tfr": max(0.0, 1.0 - 0.1 * e),
            "lr": 1e-3 * 0.1 ** (e >= 2),
            "val_psnr": 20.0 + e if e % 2 == 0 else None,
        }
        for e in range(n)
    ]


def _is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 100


# ---------------------------------------------------------------- plots


def test_plot_training_writes_png(tmp_path):
    out = plot_training(_records(6), tmp_path / "curves" / "training.png")
    assert out.exists() and _is_png(out)


def test_plot_training_single_epoch_and_nans(tmp_path):
    single = _records(1)
    assert _is_png(plot_training(single, tmp_path / "one.png"))
    broken = _records(4)
    broken[1]["loss"] = math.nan
    broken[2]["tfr"] = None
    del broken[3]["val_psnr"]
    for r in broken:
        r["val_psnr"] = None
    assert _is_png(plot_training(broken, tmp_path / "nan.png"))


def test_plot_psnr_per_frame_variants(tmp_path):
    rng = np.random.default_rng(0)
    curves = 25 + rng.standard_normal((3, 20))
    baseline = 18 + rng.standard_normal((3, 20))
    baseline[:, 0] = np.inf  # a copied frame
    assert _is_png(plot_psnr_per_frame(curves, tmp_path / "multi.png", "val", baseline=baseline))
    assert _is_png(plot_psnr_per_frame(curves[0], tmp_path / "single.png", "one video"))
    with_nan = curves[0].copy()
    with_nan[3] = np.nan
    assert _is_png(plot_psnr_per_frame(with_nan, tmp_path / "nan.png", "nan", first_frame_index=0))
    assert _is_png(plot_ssim_per_frame(rng.uniform(0, 1, (3, 20)), tmp_path / "ssim.png", "val SSIM"))


# ---------------------------------------------------------------- media


def test_to_uint8_clips_instead_of_wrapping():
    x = np.array([-0.5, 0.0, 0.5, 1.0, 1.02, 3.0, np.nan])
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 255, 255, 255, 0])
    assert to_uint8(x).dtype == np.uint8


def test_write_gif_frame_count_size_and_loop(tmp_path):
    rng = np.random.default_rng(1)
    video = rng.random((7, 8, 16, 3))
    path = write_gif(video, tmp_path / "gifs" / "pred.gif", duration_ms=40, scale=4)
    frames = iio.imread(path)
    assert frames.shape == (7, 32, 64, 3)
    with Image.open(path) as im:
        assert im.n_frames == 7
        assert im.info["loop"] == 0 and im.info["duration"] == 40


def test_write_gif_scale_one_keeps_pixels_of_a_simple_video(tmp_path):
    video = np.zeros((3, 4, 5, 3))
    for t in range(3):
        video[t, :, :, t] = 1.0  # pure red, green, blue frames: exact in a GIF palette
    frames = iio.imread(write_gif(video, tmp_path / "rgb.gif", scale=1))
    np.testing.assert_array_equal(frames, to_uint8(video))


def test_write_gif_rejects_non_video(tmp_path):
    with pytest.raises(ValueError):
        write_gif(np.zeros((4, 4, 3)), tmp_path / "x.gif")


def test_upscale_nearest():
    frame = np.arange(6).reshape(1, 2, 3, 1)
    up = upscale_nearest(frame, 2)
    assert up.shape == (1, 4, 6, 1)
    np.testing.assert_array_equal(up[0, :, :, 0], [[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2)


def test_side_by_side_separator_and_broadcast():
    gt = np.zeros((4, 2, 3, 3))
    pred = np.full((4, 2, 3, 3), 0.5)
    first = np.full((2, 3, 3), 0.25)
    out = side_by_side(first, gt, pred)
    assert out.shape == (4, 2, 3 + 1 + 3 + 1 + 3, 3)
    np.testing.assert_array_equal(out[:, :, 3], 1.0)
    np.testing.assert_array_equal(out[:, :, 7], 1.0)
    np.testing.assert_array_equal(out[:, :, :3], 0.25)
    np.testing.assert_array_equal(out[:, :, 8:], 0.5)


def test_side_by_side_uint8_white_and_length_mismatch():
    out = side_by_side(np.zeros((2, 2, 2, 3), np.uint8), np.zeros((2, 2, 2, 3), np.uint8))
    assert out.dtype == np.uint8 and (out[:, :, 2] == 255).all()
    with pytest.raises(ValueError, match="length"):
        side_by_side(np.zeros((2, 2, 2, 3)), np.zeros((3, 2, 2, 3)))


def test_write_psnr_csv_round_trip(tmp_path):
    psnr = np.array([[30.123456789012345, 28.5, np.inf], [25.0, 24.75, 23.0]])
    path = write_psnr_csv(tmp_path / "psnr.csv", psnr, first_frame_index=1)
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["video", "frame", "psnr"]
    assert len(rows) == 1 + 6
    assert [(int(v), int(fr)) for v, fr, _ in rows[1:]] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    values = np.array([float(p) for _, _, p in rows[1:]]).reshape(2, 3)
    np.testing.assert_array_equal(values, psnr)


def test_write_psnr_csv_single_video(tmp_path):
    path = write_psnr_csv(tmp_path / "one.csv", np.array([20.0, 21.0]), first_frame_index=0)
    assert path.read_text().splitlines() == ["video,frame,psnr", "0,0,20.0", "0,1,21.0"]


def test_write_per_frame_csv_columns_side_by_side(tmp_path):
    path = write_per_frame_csv(tmp_path / "m.csv", {"psnr": [[20.0, 21.0]], "ssim": [[0.5, -0.25]]})
    assert path.read_text().splitlines() == ["video,frame,psnr,ssim", "0,1,20.0,0.5", "0,2,21.0,-0.25"]
    with pytest.raises(ValueError, match="columns differ in shape"):
        write_per_frame_csv(tmp_path / "bad.csv", {"psnr": np.zeros((2, 3)), "ssim": np.zeros((2, 2))})
