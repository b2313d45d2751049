"""Building blocks shared by the models (Lab4's modules/layers.py, SVG's BatchNorm), NHWC.

Convolutions are written for XLA's CPU backend: 1x1 convolutions are matmuls, the
depthwise 3x3 convolution is nine shifted multiply-adds (XLA's grouped convolution is
~30x slower on CPU), and 3x3 convolutions get hand-written gradients (cvae_jax/kernels.py).
Elsewhere (`--conv_impl auto` on GPU/TPU, or `xla`) they are XLA's own convolutions.
Parameters use PyTorch's default initialisation (kaiming-uniform a=sqrt(5) ==
U(+-1/sqrt(fan_in)) for weights and biases) so a fresh model starts where the reference
starts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cvae_jax import deferred, kernels

DEFAULT_SLOPE = 0.01  # PyTorch's LeakyReLU default, used by every reference block
FFN_SLOPE = 0.1  # hard-coded in the reference ConvFFN (its `slope` argument is ignored)


def _host_rng(key) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)))


def normal_init(key, shape, std: float, mean: float = 0.0):
    """N(mean, std) drawn like `_torch_uniform` (SVG's `init_weights`)."""
    if isinstance(key, jax.core.Tracer):
        return mean + std * jax.random.normal(key, shape, jnp.float32)
    return jnp.asarray((mean + std * _host_rng(key).standard_normal(shape)).astype(np.float32))


def _torch_uniform(key, shape, fan_in):
    """U(+-1/sqrt(fan_in)) drawn with NumPy from the JAX key's bits: deterministic per key,
    and ~0.1 s for the whole model instead of one XLA compile per parameter shape."""
    bound = 1.0 / math.sqrt(fan_in)
    if isinstance(key, jax.core.Tracer):  # traced (eval_shape, jit): for shapes only; values differ
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    return jnp.asarray(_host_rng(key).uniform(-bound, bound, shape).astype(np.float32))


class Conv(nnx.Module):
    """Dense 2-D convolution with zero padding; 1x1 stride-1 becomes a matmul, 3x3 'same'
    goes through `kernels.conv3x3` (`kernels.conv3x3_taps` when 9 x Cout <= Cin) and wider
    unpadded kernels through `kernels.conv_valid`."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1,
                 padding: int = 0, init_std: float | None = None, rngs: nnx.Rngs):
        """init_std=None: PyTorch's default init; a number: N(0, init_std), zero bias."""
        fan_in = in_ch * kernel * kernel
        shape = (kernel, kernel, in_ch, out_ch)
        self.stride, self.padding = stride, padding
        if init_std is None:
            self.kernel = nnx.Param(_torch_uniform(rngs.params(), shape, fan_in))
            self.bias = nnx.Param(_torch_uniform(rngs.params(), (out_ch,), fan_in))
        else:
            self.kernel = nnx.Param(normal_init(rngs.params(), shape, init_std))
            self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32))

    def __call__(self, x):
        k = self.kernel[...]
        if k.shape[:2] == (1, 1) and self.stride == 1:  # a matmul; see deferred.dense
            return deferred.dense(x, k, self.bias[...])
        return self._conv(x, k) + self.bias[...]

    def _conv(self, x, k):
        custom = kernels.use_custom() and self.stride == 1
        if custom and k.shape[:2] == (3, 3) and self.padding == 1:
            # much narrower outputs (Lab4's 160 -> 3, SVG's 64 -> 3) as one GEMM to the taps
            return (kernels.conv3x3_taps if 9 * k.shape[3] <= k.shape[2] else kernels.conv3x3)(x, k)
        if custom and k.shape[0] > 3 and self.padding == 0:
            return kernels.conv_valid(x, k)
        return xla_conv(x, k, self.stride, self.padding)


class DepthwiseConv3x3(nnx.Module):
    """groups=channels 3x3 conv, padding 1, as shifted multiply-adds (fast on XLA CPU)."""

    def __init__(self, ch: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_torch_uniform(rngs.params(), (3, 3, ch), 9))
        self.bias = nnx.Param(_torch_uniform(rngs.params(), (ch,), 9))

    def __call__(self, x):
        k = self.kernel[...]
        if kernels.use_custom():
            return kernels.depthwise3x3(x, k) + self.bias[...]
        return xla_conv(x, k[:, :, None, :], 1, 1, groups=k.shape[-1]) + self.bias[...]


def xla_conv(x, k, stride: int, padding: int, groups: int = 1):
    """`lax.conv_general_dilated` on (..., H, W, C) inputs with any leading dims."""
    y = jax.lax.conv_general_dilated(
        x.reshape((-1,) + x.shape[-3:]), k, (stride, stride), [(padding, padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    return y.reshape(x.shape[:-3] + y.shape[1:])


def leaky_relu(x, slope=DEFAULT_SLOPE):
    return jnp.where(x >= 0, x, slope * x)


class ResidualBlock(nnx.Module):
    """act(conv2(act(conv1 x))) + skip(x); no activation after the add (reference)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv1 = Conv(in_ch, out_ch, 3, stride=stride, padding=1, rngs=rngs)
        self.conv2 = Conv(out_ch, out_ch, 3, stride=stride, padding=1, rngs=rngs)
        self.skip = Conv(in_ch, out_ch, 1, stride=stride, rngs=rngs) if in_ch != out_ch else None

    def __call__(self, x):
        y = leaky_relu(self.conv2(leaky_relu(self.conv1(x))))
        return y + (self.skip(x) if self.skip is not None else x)


class DepthConv(nnx.Module):
    """conv2(depthwise(lrelu(conv1 x))) + adaptor(x)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv1 = Conv(in_ch, in_ch, 1, stride=stride, rngs=rngs)
        self.depth_conv = DepthwiseConv3x3(in_ch, rngs=rngs)
        self.conv2 = Conv(in_ch, out_ch, 1, rngs=rngs)
        if stride != 1:
            self.adaptor = Conv(in_ch, out_ch, 2, stride=2, rngs=rngs)
        elif in_ch != out_ch:
            self.adaptor = Conv(in_ch, out_ch, 1, rngs=rngs)
        else:
            self.adaptor = None

    def __call__(self, x):
        y = self.conv2(self.depth_conv(leaky_relu(self.conv1(x))))
        return y + (self.adaptor(x) if self.adaptor is not None else x)


class ConvFFN(nnx.Module):
    """Gated 1x1 FFN: x + conv_out(value * lrelu_0.1(gate)), value = first half."""

    def __init__(self, ch: int, *, rngs: nnx.Rngs):
        self.conv = Conv(ch, 4 * ch, 1, rngs=rngs)
        self.conv_out = Conv(2 * ch, ch, 1, rngs=rngs)

    def __call__(self, x):
        value, gate = jnp.split(self.conv(x), 2, axis=-1)
        return x + self.conv_out(value * leaky_relu(gate, FFN_SLOPE))


class DepthConvBlock(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        self.depth = DepthConv(in_ch, out_ch, rngs=rngs)
        self.ffn = ConvFFN(out_ch, rngs=rngs)

    def __call__(self, x):
        return self.ffn(self.depth(x))


class FrameBatchNorm(nnx.Module):
    """BatchNorm2d (or, with spatial=False, BatchNorm1d) with statistics per time step.

    Inputs are (..., B, H, W, C) (or (..., B, C)); statistics reduce over (B, H, W) and keep
    any leading (time) axes, so encoding all T frames of a clip at once normalises exactly
    as the reference's T separate calls do. The module never mutates itself: `__call__`
    returns the batch moments and the caller folds them into the running averages, which
    keeps the training step a pure function.
    """

    def __init__(self, ch: int, eps: float = 1e-5, momentum: float = 0.1, *, spatial: bool = True,
                 scale=None):
        self.eps, self.momentum, self.spatial = eps, momentum, spatial
        self.scale = nnx.Param(jnp.ones((ch,), jnp.float32) if scale is None else scale)
        self.bias = nnx.Param(jnp.zeros((ch,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((ch,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((ch,), jnp.float32))

    def __call__(self, x, use_running_average: bool):
        """Statistics and normalisation in float32 whatever x's precision (bf16 sums drift)."""
        xf = x.astype(jnp.float32)
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = (-4, -3, -2) if self.spatial else (-2,)
            mean = jnp.mean(xf, axes, keepdims=True)
            var = jnp.mean(jnp.square(xf - mean), axes, keepdims=True)
        scale, bias = self.scale[...].astype(jnp.float32), self.bias[...].astype(jnp.float32)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(x.dtype), (mean, var)

    def updated_running_stats(self, mean, var, count: int | None):
        """Running averages after one PyTorch-style update per leading (time) index.

        count: elements behind each batch variance, to make it unbiased as torch does;
        None when `var` is already unbiased."""
        m = self.momentum
        mean = mean.reshape(-1, mean.shape[-1])
        var = var.reshape(-1, var.shape[-1])
        if count is not None:
            var = var * (count / max(count - 1, 1))
        run_mean, run_var = self.mean[...], self.var[...]
        for t in range(mean.shape[0]):
            run_mean = (1 - m) * run_mean + m * mean[t]
            run_var = (1 - m) * run_var + m * var[t]
        return run_mean, run_var


def reparameterize(mu, logvar, key):
    """z = mu + exp(logvar / 2) * eps with an explicit key (no hidden RNG state)."""
    return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)


def count_params(module: nnx.Module) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(module, nnx.Param)))
