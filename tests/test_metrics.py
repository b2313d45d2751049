"""Metrics checked against independent float64 numpy/scipy implementations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from cvae_jax.metrics import SSIMParams, psnr, psnr_batch_mean_compat, ssim, ssim_map

C1, C2 = (0.01) ** 2, (0.03) ** 2


# ---------------------------------------------------------------- independent references


def ssim_skimage_style(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """skimage's algorithm: reflect-padded scipy Gaussian filter, crop 5 px, mean per channel."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    means = []
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]
        f = lambda z: ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")  # 11 taps
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
        smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        means.append(smap[5:-5, 5:-5].mean())
    return float(np.mean(means))


def ssim_direct_loop(a: np.ndarray, b: np.ndarray) -> float:
    """SVG-style: a 2-D 11x11 Gaussian window slid over every valid position, per channel."""
    g = np.mgrid[-5:6, -5:6]
    window = np.exp(-(g[0] ** 2 + g[1] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    a, b = a.astype(np.float64), b.astype(np.float64)
    h, w, channels = a.shape
    per_channel = []
    for c in range(channels):
        values = []
        for i in range(h - 10):
            for j in range(w - 10):
                x, y = a[i : i + 11, j : j + 11, c], b[i : i + 11, j : j + 11, c]
                mx, my = (window * x).sum(), (window * y).sum()
                vx = (window * (x - mx) ** 2).sum()
                vy = (window * (y - my) ** 2).sum()
                cxy = (window * (x - mx) * (y - my)).sum()
                values.append(((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
        per_channel.append(np.mean(values))
    return float(np.mean(per_channel))


def structured_pair(h=32, w=64):
    """A smooth scene with an edge, and a shifted, blurred, brightened copy."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    scene = np.stack([0.5 + 0.4 * np.sin(6 * xx + 3 * yy), (xx > 0.5).astype(float), yy * xx], axis=-1)
    other = np.roll(ndimage.gaussian_filter(scene, (1.0, 1.0, 0)), 2, axis=1) * 0.9 + 0.05
    return scene, other


# ---------------------------------------------------------------- PSNR


def test_psnr_identical_is_inf():
    x = np.random.default_rng(0).random((2, 3, 8, 8, 3)).astype(np.float32)
    out = psnr(x, x)
    assert out.shape == (2, 3) and bool(jnp.all(jnp.isposinf(out)))


@pytest.mark.parametrize("d", [0.5, 0.1, 0.01])
def test_psnr_constant_offset(d):
    target = np.full((4, 6, 3), 0.25, np.float32)
    assert float(psnr(target + np.float32(d), target)) == pytest.approx(-20 * math.log10(d), abs=1e-3)


def test_psnr_data_range():
    target = np.zeros((4, 4, 3), np.float32)
    assert float(psnr(target + 25.5, target, data_range=255.0)) == pytest.approx(20.0, abs=1e-4)


def test_psnr_per_video_frame_matches_numpy():
    rng = np.random.default_rng(1)
    pred, target = rng.random((3, 5, 16, 24, 3)), rng.random((3, 5, 16, 24, 3))
    expected = 10 * np.log10(1.0 / ((pred - target) ** 2).mean(axis=(-3, -2, -1)))
    np.testing.assert_allclose(psnr(pred.astype(np.float32), target.astype(np.float32)), expected, atol=1e-4)


def test_psnr_batch_mean_compat_is_psnr_of_mean_mse():
    rng = np.random.default_rng(2)
    target = rng.random((2, 8, 8, 3))
    pred = target + np.array([0.01, 0.2])[:, None, None, None]  # very different frames
    compat = float(psnr_batch_mean_compat(pred.astype(np.float32), target.astype(np.float32)))
    assert compat == pytest.approx(-10 * np.log10(((pred - target) ** 2).mean()), abs=1e-3)
    per_image_mean = float(jnp.mean(psnr(pred.astype(np.float32), target.astype(np.float32))))
    assert abs(per_image_mean - compat) > 5  # the reference's batch-mean bug is real


# ---------------------------------------------------------------- SSIM


def test_ssim_random_images_match_skimage_algorithm():
    rng = np.random.default_rng(3)
    target = rng.random((2, 3, 32, 64, 3))
    pred = np.clip(target + 0.15 * rng.standard_normal(target.shape), 0, 1)
    got = np.asarray(ssim(pred.astype(np.float32), target.astype(np.float32)))
    expected = np.array([[ssim_skimage_style(pred[i, j], target[i, j]) for j in range(3)] for i in range(2)])
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_ssim_structured_images_match_direct_loop():
    a, b = structured_pair(16, 24)
    got = float(ssim(a.astype(np.float32), b.astype(np.float32)))
    assert got == pytest.approx(ssim_direct_loop(a, b), abs=1e-5)
    assert got == pytest.approx(ssim_skimage_style(a, b), abs=1e-5)
    assert 0.3 < got < 0.99


def test_ssim_flat_background_keeps_float32_precision():
    # Tiny variances about a large mean: the case where E[x^2] - E[x]^2 cancels in float32.
    rng = np.random.default_rng(6)
    a = (0.8 + 0.002 * rng.standard_normal((32, 64, 3))).astype(np.float32)
    b = (0.801 + 0.002 * rng.standard_normal((32, 64, 3))).astype(np.float32)
    assert float(ssim(a, b)) == pytest.approx(ssim_skimage_style(a, b), abs=1e-5)


def test_ssim_data_range_255():
    a, b = structured_pair()
    got = float(ssim((a * 255).astype(np.float32), (b * 255).astype(np.float32), data_range=255.0))
    assert got == pytest.approx(ssim_skimage_style(a * 255, b * 255, data_range=255.0), abs=1e-5)


def test_ssim_identical_is_one():
    a, _ = structured_pair()
    np.testing.assert_allclose(ssim(np.stack([a, a]).astype(np.float32), np.stack([a, a]).astype(np.float32)), 1.0, atol=1e-6)


def test_ssim_constant_images_analytic():
    # No variance anywhere: SSIM reduces to the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    x, y = np.full((16, 16, 3), 0.2, np.float32), np.full((16, 16, 3), 0.6, np.float32)
    expected = (2 * 0.2 * 0.6 + C1) / (0.2**2 + 0.6**2 + C1)
    assert float(ssim(x, y)) == pytest.approx(expected, abs=1e-5)


def test_ssim_per_channel_definition():
    rng = np.random.default_rng(4)
    a, b = rng.random((4, 20, 20, 3)).astype(np.float32), rng.random((4, 20, 20, 3)).astype(np.float32)
    per_channel = np.asarray(ssim(a, b, per_channel=True))
    expected = [np.mean([ssim_skimage_style(a[i, ..., c : c + 1], b[i, ..., c : c + 1]) for c in range(3)]) for i in range(4)]
    np.testing.assert_allclose(per_channel, expected, atol=1e-5)
    np.testing.assert_allclose(per_channel, ssim(a, b), atol=1e-6)  # same valid-pixel count per channel


def test_ssim_leading_axes_and_jit_vmap():
    rng = np.random.default_rng(5)
    a = jnp.asarray(rng.random((2, 4, 16, 16, 3)), jnp.float32)
    b = jnp.asarray(rng.random((2, 4, 16, 16, 3)), jnp.float32)
    direct = ssim(a, b)
    assert direct.shape == (2, 4)
    np.testing.assert_allclose(jax.jit(lambda p, t: ssim(p, t))(a, b), direct, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(ssim)(a, b), direct, atol=1e-6)
    np.testing.assert_allclose(ssim(a[1, 2], b[1, 2]), direct[1, 2], atol=1e-6)


def test_ssim_rejects_too_small_images():
    x = np.zeros((8, 16, 3), np.float32)
    with pytest.raises(ValueError, match="win_size"):
        ssim(x, x)


def test_ssim_params_are_honoured():
    # A 7x7 window fits 8 rows; with no variance, k1 shows in the luminance term alone.
    x, y = np.full((8, 16, 3), 0.2, np.float32), np.full((8, 16, 3), 0.6, np.float32)
    params = SSIMParams(win_size=7, k1=0.05)
    c1 = (0.05) ** 2
    assert ssim_map(x, y, params=params).shape == (2, 10, 3)
    assert float(ssim(x, y, params=params)) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), abs=1e-5)


def test_best_of_n_takes_every_metric_from_the_sample_best_by_mean():
    from cvae_jax.metrics import best_of_n
    # video 0: sample 1 has the best mean PSNR though sample 0 has the best frame and the best SSIM
    psnr = np.array([[[40.0, 10.0], [26.0, 25.0], [20.0, 20.0]],
                     [[10.0, 11.0], [12.0, 9.0], [30.0, 31.0]]])
    ssim = np.array([[[0.9, 0.9], [0.1, 0.2], [0.5, 0.5]],
                     [[0.3, 0.3], [0.4, 0.4], [0.2, 0.2]]])
    course = np.array([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]])  # its own number of frames
    best, chosen, mean = best_of_n({"psnr": psnr, "ssim": ssim, "course": course}, by="psnr")
    np.testing.assert_array_equal(best, [1, 2])
    np.testing.assert_array_equal(chosen["psnr"], [[26.0, 25.0], [30.0, 31.0]])
    np.testing.assert_array_equal(chosen["ssim"], [[0.1, 0.2], [0.2, 0.2]])  # not the best SSIM
    np.testing.assert_array_equal(chosen["course"], [[2.0], [6.0]])
    np.testing.assert_allclose(mean["psnr"], [[86 / 3, 55 / 3], [52 / 3, 17]])
    np.testing.assert_allclose(mean["ssim"][0], [1.5 / 3, 1.6 / 3])
    assert best_of_n({"psnr": psnr}, by="psnr")[0].tolist() == [1, 2]
