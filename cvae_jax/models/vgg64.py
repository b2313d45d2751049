"""SVG's VGG64 frame encoder and decoder with skip connections (models/vgg_64.py), NHWC.

`width` scales every stage (64 = the reference's 64/128/256/512 channels); the CPU preset
uses a narrower network of the same shape. Weights start as SVG's `init_weights`:
convolutions and linears N(0, 0.02) with zero bias, BatchNorm scales N(1, 0.02).

BatchNorm layers return their batch moments instead of mutating themselves (see
`layers.FrameBatchNorm`), so encoder and decoder calls return `(output, moments)` with
`moments` in the order of `batchnorms()`; the training step folds them into the running
averages, one update per call as PyTorch does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from cvae_jax.layers import Conv, FrameBatchNorm, leaky_relu, normal_init

INIT_STD = 0.02
SLOPE = 0.2

IMAGE_SIZE = 64  # frames are IMAGE_SIZE x IMAGE_SIZE RGB


def batchnorm(ch: int, rngs: nnx.Rngs, *, spatial: bool = True) -> FrameBatchNorm:
    return FrameBatchNorm(ch, spatial=spatial, scale=normal_init(rngs.params(), (ch,), INIT_STD, 1.0))


def apply_bn(bn: FrameBatchNorm, x, train: bool):
    """(y, (mean, unbiased var)); the batch moments are returned only when training."""
    y, (mean, var) = bn(x, use_running_average=not train)
    if not train:
        return y, None
    n = math.prod(x.shape[-4:-1] if bn.spatial else x.shape[-2:-1])
    return y, (mean, var * (n / max(n - 1, 1)))


class VGGLayer(nnx.Module):
    """vgg_layer: Conv 3x3 pad 1 -> BatchNorm -> LeakyReLU(0.2)."""

    def __init__(self, nin: int, nout: int, *, rngs: nnx.Rngs):
        self.conv = Conv(nin, nout, 3, padding=1, init_std=INIT_STD, rngs=rngs)
        self.bn = batchnorm(nout, rngs)

    def __call__(self, x, train: bool):
        y, m = apply_bn(self.bn, self.conv(x), train)
        return leaky_relu(y, SLOPE), [m]


def _run(layers, x, train: bool):
    moments = []
    for layer in layers:
        x, m = layer(x, train)
        moments += m
    return x, moments


def max_pool2(x):
    *lead, h, w, c = x.shape
    return jnp.max(x.reshape(*lead, h // 2, 2, w // 2, 2, c), axis=(-4, -2))


def upsample2(x):
    """Nearest-neighbour x2 (nn.UpsamplingNearest2d)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


def _stage_widths(width: int) -> tuple[int, int, int, int]:
    return width, 2 * width, 4 * width, 8 * width


class VGGEncoder(nnx.Module):
    """(..., 64, 64, 3) -> (vector (..., dim), skips [h1, h2, h3, h4], moments)."""

    def __init__(self, dim: int, width: int = 64, *, rngs: nnx.Rngs):
        w1, w2, w3, w4 = _stage_widths(width)
        self.c1 = nnx.List([VGGLayer(3, w1, rngs=rngs), VGGLayer(w1, w1, rngs=rngs)])
        self.c2 = nnx.List([VGGLayer(w1, w2, rngs=rngs), VGGLayer(w2, w2, rngs=rngs)])
        self.c3 = nnx.List([VGGLayer(w2, w3, rngs=rngs), VGGLayer(w3, w3, rngs=rngs), VGGLayer(w3, w3, rngs=rngs)])
        self.c4 = nnx.List([VGGLayer(w3, w4, rngs=rngs), VGGLayer(w4, w4, rngs=rngs), VGGLayer(w4, w4, rngs=rngs)])
        self.c5_conv = Conv(w4, dim, 4, init_std=INIT_STD, rngs=rngs)
        self.c5_bn = batchnorm(dim, rngs)

    def batchnorms(self) -> list[FrameBatchNorm]:
        return [l.bn for s in (self.c1, self.c2, self.c3, self.c4) for l in s] + [self.c5_bn]

    def __call__(self, x, train: bool):
        if x.shape[-3:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"the VGG64 encoder takes {IMAGE_SIZE}x{IMAGE_SIZE} RGB frames, got shape {x.shape}")
        h1, m1 = _run(self.c1, x, train)
        h2, m2 = _run(self.c2, max_pool2(h1), train)
        h3, m3 = _run(self.c3, max_pool2(h2), train)
        h4, m4 = _run(self.c4, max_pool2(h3), train)
        h5, m5 = apply_bn(self.c5_bn, self.c5_conv(max_pool2(h4)), train)
        vector = jnp.tanh(h5)[..., 0, 0, :]
        return vector, [h1, h2, h3, h4], m1 + m2 + m3 + m4 + [m5]


class VGGDecoder(nnx.Module):
    """(vector (..., dim), skips) -> (frames (..., 64, 64, 3) in [0, 1], moments).

    upc1 is ConvTranspose2d(dim, 8w, 4) applied to a 1x1 map, i.e. a linear map to a
    4x4 map: stored as `upc1_kernel` (dim, 4, 4, 8w) = torch weight.permute(0, 2, 3, 1).
    The final ConvTranspose2d(w, 3, 3, stride 1, pad 1) is the same as a padded 3x3
    convolution with the kernel flipped, so it is stored as that convolution.
    """

    def __init__(self, dim: int, width: int = 64, *, rngs: nnx.Rngs):
        w1, w2, w3, w4 = _stage_widths(width)
        self.upc1_kernel = nnx.Param(normal_init(rngs.params(), (dim, 4, 4, w4), INIT_STD))
        self.upc1_bias = nnx.Param(jnp.zeros((w4,), jnp.float32))
        self.upc1_bn = batchnorm(w4, rngs)
        self.upc2 = nnx.List([VGGLayer(2 * w4, w4, rngs=rngs), VGGLayer(w4, w4, rngs=rngs), VGGLayer(w4, w3, rngs=rngs)])
        self.upc3 = nnx.List([VGGLayer(2 * w3, w3, rngs=rngs), VGGLayer(w3, w3, rngs=rngs), VGGLayer(w3, w2, rngs=rngs)])
        self.upc4 = nnx.List([VGGLayer(2 * w2, w2, rngs=rngs), VGGLayer(w2, w1, rngs=rngs)])
        self.upc5 = nnx.List([VGGLayer(2 * w1, w1, rngs=rngs)])
        self.out_conv = Conv(w1, 3, 3, padding=1, init_std=INIT_STD, rngs=rngs)

    def batchnorms(self) -> list[FrameBatchNorm]:
        return [self.upc1_bn] + [l.bn for s in (self.upc2, self.upc3, self.upc4, self.upc5) for l in s]

    def __call__(self, vector, skips, train: bool):
        h1, h2, h3, h4 = skips
        d1 = jnp.einsum("...i,ihwo->...hwo", vector, self.upc1_kernel[...]) + self.upc1_bias[...]
        d1, m1 = apply_bn(self.upc1_bn, d1, train)
        d1 = leaky_relu(d1, SLOPE)
        d2, m2 = _run(self.upc2, jnp.concatenate([upsample2(d1), h4], axis=-1), train)
        d3, m3 = _run(self.upc3, jnp.concatenate([upsample2(d2), h3], axis=-1), train)
        d4, m4 = _run(self.upc4, jnp.concatenate([upsample2(d3), h2], axis=-1), train)
        d5, m5 = _run(self.upc5, jnp.concatenate([upsample2(d4), h1], axis=-1), train)
        return jax.nn.sigmoid(self.out_conv(d5)), [m1] + m2 + m3 + m4 + m5
