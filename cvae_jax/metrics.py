"""Image-quality metrics for predicted frames: PSNR and SSIM.

Images are float arrays (..., H, W, C) in [0, data_range]; every leading axis (videos,
frames, ...) is a batch axis and gets its own score. All functions are jit-able and
already jitted (shape-defining arguments are static), except the course's Kaggle score
(`course_score`), which is NumPy float64 like the course's scorer.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

_IMAGE_AXES = (-3, -2, -1)


def _as_float(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


@jax.jit
def psnr(pred: jax.Array, target: jax.Array, data_range: float = 1.0) -> jax.Array:
    """PSNR of each image, (..., H, W, C) -> (...).

    The MSE is taken over one image's pixels and channels, so every (video, frame) gets
    its own score and batch means are means of PSNRs (unlike the reference's
    Generate_PSNR; see `psnr_batch_mean_compat`). Identical images (mse == 0) give +inf,
    the mathematical limit; callers averaging over frames that may be exact copies (e.g. a
    given first frame) should exclude them.
    """
    pred, target = _as_float(pred), _as_float(target)
    mse = jnp.mean((pred - target) ** 2, axis=_IMAGE_AXES)
    return 10.0 * jnp.log10(data_range**2 / mse)


@jax.jit
def psnr_per_channel(pred: jax.Array, target: jax.Array, data_range: float = 1.0) -> jax.Array:
    """SVG's `finn_psnr` averaged over channels, (..., H, W, C) -> (...): the PSNR of each
    channel image, then their mean. Higher than `psnr` whenever channel errors differ
    (a mean of logs is not the log of a mean), so the two must never be compared."""
    pred, target = _as_float(pred), _as_float(target)
    mse = jnp.mean((pred - target) ** 2, axis=(-3, -2))
    return jnp.mean(20.0 * jnp.log10(data_range) - 10.0 * jnp.log10(mse), axis=-1)


@jax.jit
def psnr_batch_mean_compat(pred: jax.Array, target: jax.Array, data_range: float = 1.0) -> jax.Array:
    """The reference's Generate_PSNR: one PSNR from the MSE over *all* elements passed.

    For a batch this is the PSNR of the mean MSE, not the mean PSNR; kept only to
    reproduce old numbers.
    """
    pred, target = _as_float(pred), _as_float(target)
    mse = jnp.mean((pred - target) ** 2)
    return 20.0 * jnp.log10(data_range) - 10.0 * jnp.log10(mse)


def gaussian_window_1d(win_size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps; their outer product is the usual 2-D SSIM window."""
    x = np.arange(win_size, dtype=np.float64) - (win_size - 1) / 2
    taps = np.exp(-(x**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _filter_valid(x: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
    """'valid' correlation along one axis as a weighted sum of shifted slices.

    XLA fuses the few slices into one loop, which on CPU is far faster than a
    depthwise (feature_group_count) convolution.
    """
    n_out = x.shape[axis] - len(taps) + 1
    out = 0.0
    for k, w in enumerate(taps):
        out = out + float(w) * jax.lax.slice_in_dim(x, k, k + n_out, axis=axis % x.ndim)
    return out


def _gaussian_filter_valid(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """Separable 2-D Gaussian over the (H, W) axes of (..., H, W, C), 'valid' region only."""
    return _filter_valid(_filter_valid(x, taps, axis=-3), taps, axis=-2)


@dataclasses.dataclass(frozen=True)
class SSIMParams:
    """The SSIM window and stabilising constants, by default Wang et al. 2004's: an 11x11
    Gaussian window with sigma 1.5, c1 = (k1 * data_range)^2 and c2 = (k2 * data_range)^2.
    Frozen, hence hashable: `ssim` takes it as a static argument."""

    win_size: int = 11
    sigma: float = 1.5
    k1: float = 0.01
    k2: float = 0.03


def ssim_map(
    pred: jax.Array, target: jax.Array, data_range: float = 1.0, params: SSIMParams = SSIMParams()
) -> jax.Array:
    """Per-pixel, per-channel SSIM over the valid region: (..., H, W, C) -> (..., H-w+1, W-w+1, C).

    Local statistics are Gaussian-weighted means with population (biased) variances,
    as in Wang et al. 2004 and skimage's `gaussian_weights=True,
    use_sample_covariance=False`.
    """
    pred, target = _as_float(pred), _as_float(target)
    if params.win_size % 2 != 1 or params.win_size > min(pred.shape[-3], pred.shape[-2]):
        raise ValueError(f"win_size must be odd and <= H and W, got {params.win_size} for {pred.shape}")
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {target.shape}")
    taps = gaussian_window_1d(params.win_size, params.sigma)
    # Moments of data centred on a per-image, per-channel offset: variances are
    # shift-invariant, and E[x^2] - E[x]^2 in float32 loses the small variances of
    # flat regions (backgrounds) to cancellation when taken about 0.
    offset = 0.5 * jnp.mean(pred + target, axis=(-3, -2), keepdims=True)
    x, y = pred - offset, target - offset
    moments = jnp.stack([x, y, x * x, y * y, x * y])
    mu_x, mu_y, e_xx, e_yy, e_xy = _gaussian_filter_valid(moments, taps)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    mu_x, mu_y = mu_x + offset, mu_y + offset
    c1 = (params.k1 * data_range) ** 2
    c2 = (params.k2 * data_range) ** 2
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


@partial(jax.jit, static_argnames=("params", "per_channel"))
def ssim(
    pred: jax.Array,
    target: jax.Array,
    data_range: float = 1.0,
    params: SSIMParams = SSIMParams(),
    per_channel: bool = False,
) -> jax.Array:
    """Mean SSIM of each image, (..., H, W, C) -> (...).

    Both definitions start from the SSIM map of each channel on its own (`params`' Gaussian
    window, 'valid' region: no padding, only pixels whose window fits):
    - per_channel=False ("whole image"): mean of the maps over all valid pixels and all
      channels; with the default params, equals skimage `structural_similarity(...,
      channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.
    - per_channel=True (SVG's `eval_seq`): mean of each channel's map, then the mean of
      those C numbers.
    Every channel has the same number of valid pixels, so the two agree up to float
    rounding; the flag exists so the reduction can be matched to either codebase.
    """
    smap = ssim_map(pred, target, data_range, params)
    if per_channel:
        return jnp.mean(jnp.mean(smap, axis=(-3, -2)), axis=-1)
    return jnp.mean(smap, axis=_IMAGE_AXES)


def ssim_svg(pred: jax.Array, target: jax.Array) -> jax.Array:
    """SVG's `finn_ssim` averaged over channels: per-channel mean SSIM, NaN -> -1."""
    value = ssim(pred, target, per_channel=True)
    return jnp.where(jnp.isnan(value), -1.0, value)


# --------------------------------------------------------------------------- the course's Kaggle score

COURSE_LAST_FRAME = 600  # demo.py scores frames 1..600 of each 630-frame test video


def course_uint8(frames) -> np.ndarray:
    """Frames in [0, 1] as the course's submission holds them: rint(255 x) after clipping
    x to [0, 1] (the course's Tester does not clip, so its out-of-range values leave
    0..255), in float32 arithmetic as the Tester's. Integer input is returned as uint8
    unchanged (it must already be 0..255). NaN becomes 0, +-inf 255 or 0 (`course_psnr`
    scores such frames NaN; a submission refuses them)."""
    x = np.asarray(frames)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"integer frames must be 0..255, got {x.min()}..{x.max()}")
        return x.astype(np.uint8)
    x = np.clip(np.nan_to_num(x.astype(np.float32), nan=0.0), np.float32(0.0), np.float32(1.0))
    return np.rint(x * np.float32(255.0)).astype(np.uint8)


def course_psnr(pred, truth, last_frame: int = COURSE_LAST_FRAME) -> np.ndarray:
    """PSNR of each frame the course's scorer (`demo.py`) keeps: (..., T, H, W, C) -> (..., n).

    Both videos are taken as the integer frames of a submission (`course_uint8`: float
    frames in [0, 1] are rounded, integer ones used as given); per frame, the MSE over all
    H*W*C values, PSNR = 10 log10(255^2 / MSE) (data range 255; +inf for identical frames,
    NaN for a float frame with a non-finite value); kept frames 1..min(last_frame, T-1) of
    each video (frame 0 is the given first frame).
    """
    p, t = course_uint8(pred), course_uint8(truth)
    if p.shape != t.shape or p.ndim < 4:
        raise ValueError(f"expected pred and truth shaped alike (..., T, H, W, C), got {p.shape} and {t.shape}")
    stop = min(last_frame, p.shape[-4] - 1) + 1
    diff = p[..., 1:stop, :, :, :].astype(np.float64) - t[..., 1:stop, :, :, :]
    mse = np.mean(diff * diff, axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(255.0**2 / mse)
    for x in (pred, truth):  # a non-finite float frame has no score
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.integer):
            finite = np.isfinite(x[..., 1:stop, :, :, :]).all(axis=(-3, -2, -1))
            psnr = np.where(finite, psnr, np.nan)
    return psnr


def course_score(pred, truth, last_frame: int = COURSE_LAST_FRAME) -> float:
    """The course's Kaggle score of predicted videos against the truth: the mean of
    `course_psnr` over every kept frame of every video (the leaderboard's public and
    private scores are this mean over their own videos)."""
    return float(np.mean(course_psnr(pred, truth, last_frame)))


# --------------------------------------------------------------------------- N samples per sequence


def best_of_n(scores: dict[str, np.ndarray], by: str) -> tuple[np.ndarray, dict, dict]:
    """Best of N and mean of N from per-sample scores {metric: (videos, samples, frames)}.

    Returns (best, {metric: (videos, frames)} of each video's best sample, {metric:
    (videos, frames)} means over the samples). A video's best sample is the one with the
    highest mean of `by` over its frames, and every metric is that one sample's (never each
    metric's own maximum), so best-of-N figures describe a video the model generated. NumPy;
    a metric may have its own number of frames (e.g. the course score's frames 1..600)."""
    best = np.argmax(np.mean(scores[by], axis=-1), axis=1)
    videos = np.arange(len(best))
    return (best, {m: s[videos, best] for m, s in scores.items()},
            {m: np.mean(s, axis=1) for m, s in scores.items()})
