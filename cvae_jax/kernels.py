"""Convolutions with hand-written gradients, for XLA's CPU backend.

Why: in a training step of these models most time goes to the convolutions' gradients,
and XLA CPU's own choices there are slow. Its filter gradient of a dense 3x3 convolution
runs at about half the forward's FLOP rate (it transposes both operands into a
convolution over the batch); nine GEMMs over shifted windows (of the input or of the
output gradient, whichever is narrower) do the same sum at the forward's rate; for a
wide kernel on a narrow input (Lab4's 7x7 pose convolution, 3 channels) XLA's filter
gradient is slower still, and one GEMM of the im2col patches replaces it. For the
depthwise convolution written as nine shifted multiply-adds, autodiff keeps the nine
shifted copies of the input alive for the backward pass; here the backward is another
fused shifted multiply-add and nine reductions.

With XLA's Eigen convolutions (every CPU program compiles with them, `XLA_CPU_OPTIONS`)
the dense filter gradient of a batched call is instead one convolution in XLA's canonical
layout (`filter_grad="conv"`), faster than the GEMMs on SVG's layers. XLA rewrites its
own filter gradient to that layout only at the top level of a program; inside a
`lax.cond` branch, where the training step computes its gradients, it runs the
uncanonical convolution far slower. Measurements: benchmarks/NOTES.md, "CPU design
choices" ("Filter gradients", "Wide unpadded kernels", "Depthwise convolutions").

Every function computes exactly what `lax.conv_general_dilated` would (tests compare
values and gradients); only the order of floating-point sums differs.
"""

from __future__ import annotations

import contextlib
import contextvars
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")

# XLA CPU hands dots, convolutions and reductions to YNNPACK by default (its help text says
# the default list is empty; the compiled HLO says otherwise). Eigen's convolutions run
# VGG64's and Lab4's layers faster, so every program compiled for CPU (`train_step.jit`)
# keeps YNNPACK for dots and reductions only (it still takes a convolution it can fuse
# with a max-pool before it); REDUCE stays with YNNPACK because the SVG step is much
# slower without it. The option wants the enum names in full.
#
# And LLVM optimisation level 1 instead of XLA's 2: most of a compile is LLVM optimising
# thousands of small generated kernels, and level 2 made no step faster, only the compile
# longer. Level 0 gave NaN gradients in SVG steps, so not 0. Measurements:
# benchmarks/NOTES.md, "Eigen convolutions" and "LLVM optimisation level 1".
XLA_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                   "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
                   "xla_backend_optimization_level": 1}


# Which convolutions the layers trace: "custom" (the functions below), "xla" (plain
# `lax.conv_general_dilated`, autodiff's gradients: cuDNN's on GPU) or "auto" (custom on
# CPU only: they were written against XLA CPU's weaknesses). A context variable read at
# trace time, set by `train_step.jit` from `--conv_impl`, so layers need no config.
CONV_IMPLS = ("auto", "custom", "xla")
_conv_impl = contextvars.ContextVar("conv_impl", default="auto")


@contextlib.contextmanager
def conv_impl(name: str):
    """Trace the layers' convolutions with implementation `name` (one of CONV_IMPLS)."""
    if name not in CONV_IMPLS:
        raise ValueError(f"--conv_impl must be one of {list(CONV_IMPLS)}, got {name!r}")
    token = _conv_impl.set(name)
    try:
        yield
    finally:
        _conv_impl.reset(token)


def use_custom() -> bool:
    """Whether the convolution being traced takes this file's kernels."""
    name = _conv_impl.get()
    return jax.default_backend() == "cpu" if name == "auto" else name == "custom"


def _as_images(x):
    return x.reshape((-1,) + x.shape[-3:])


def _dense(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)


def _shifted(x):
    """The nine 3x3 'same' windows of x (N, H, W, C) as views of its zero-padded copy."""
    h, w = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [[xp[:, i:i + h, j:j + w, :] for j in range(3)] for i in range(3)]


def _reflected(windows):
    """The grid of windows point-reflected through its centre: entry (i, j) is the window
    shifted by (1 - i, 1 - j), which is what the filter gradient pairs with an unshifted
    operand when it shifts the output gradient instead of the input."""
    return [row[::-1] for row in windows[::-1]]


def _filter_grad(x, g):
    """dK[i, j] = sum over pixels p of x[p + (i, j) - 1] outer g[p]: nine GEMMs contracting
    over every pixel. The shifted windows are copies, so they are taken of whichever of x
    and g has fewer channels (the same sum is x[q] outer g[q + 1 - (i, j)]), which pays on
    layers narrowing to 3 channels (benchmarks/NOTES.md, "Filter gradients")."""
    contract = (((0,), (0,)), ((), ()))
    flat = lambda a: a.reshape(-1, a.shape[-1])
    if x.shape[-1] <= g.shape[-1]:
        return jnp.stack([jnp.stack([lax.dot_general(flat(w), flat(g), contract) for w in row])
                          for row in _shifted(x)])
    return jnp.stack([jnp.stack([lax.dot_general(flat(x), flat(w), contract) for w in row])
                      for row in _reflected(_shifted(g))])


def _filter_grad_conv(x, g):
    """dK[i, j, c, d] = sum over (n, h, w) of xpad[n, h + i, w + j, c] g[n, h, w, d]: a
    convolution of x seen as Cin images of N channels, (Cin, H, W, N), with g seen as an
    (H, W, N, Cout) kernel, giving (Cin, 3, 3, Cout)."""
    return _dense(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3)).transpose(1, 2, 0, 3)


def _filter_grad_auto(x, g):
    """The convolution for batches of 8 or more images, the GEMMs for fewer: on Lab4's
    per-step calls of 2 images the convolution's N-channel input is too thin, while on
    SVG's 12-16-image calls it wins (benchmarks/NOTES.md, "Filter gradients")."""
    return (_filter_grad_conv if x.shape[0] >= 8 else _filter_grad)(x, g)


FILTER_GRADS = {"gemm": _filter_grad, "conv": _filter_grad_conv, "auto": _filter_grad_auto}


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x, kernel, filter_grad: str = "auto"):
    """Dense 3x3 convolution, stride 1, zero padding 1: x (..., H, W, Cin), kernel
    (3, 3, Cin, Cout) -> (..., H, W, Cout). filter_grad: a key of FILTER_GRADS; "auto"
    (the layers' choice) gives SVG's training calls (12-16 images) the convolution."""
    return _dense(_as_images(x), kernel).reshape(x.shape[:-1] + kernel.shape[-1:])


def _conv3x3_fwd(x, kernel, filter_grad):
    return conv3x3(x, kernel, filter_grad), (x, kernel)


def _conv3x3_bwd(filter_grad, res, g):
    x, kernel = res
    xi, gi = _as_images(x), _as_images(g)
    dx = _dense(gi, jnp.flip(kernel, (0, 1)).swapaxes(2, 3)).reshape(x.shape)
    dk = FILTER_GRADS[filter_grad](xi, gi)
    return dx, dk


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def conv3x3_taps(x, kernel):
    """Dense 3x3 'same' convolution for outputs much narrower than the input (Lab4's
    posterior narrows 160 -> 3 channels): one GEMM gives each pixel's nine tap outputs,
    x @ K as (Cin, 9 * Cout), and nine shifted adds of that narrow map sum them. XLA CPU's
    convolution and nine-GEMM filter gradient both run such a layer slowly, as the GEMM's
    free dimension is only Cout; here every GEMM has 9 * Cout or Cin there
    (benchmarks/NOTES.md, "Narrow-output convolution").
    Plain jnp: autodiff's backward is shifted copies of the (narrow) output gradient and
    two GEMMs."""
    cin, cout = kernel.shape[2:]
    h, w = x.shape[-3:-1]
    taps = (x @ kernel.transpose(2, 0, 1, 3).reshape(cin, 9 * cout)).reshape(x.shape[:-1] + (9, cout))
    pad = [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0), (0, 0)]
    tp = jnp.pad(taps, pad)
    out = None
    for i in range(3):
        for j in range(3):
            term = tp[..., i:i + h, j:j + w, 3 * i + j, :]
            out = term if out is None else out + term
    return out


def _valid(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=_NHWC)


@jax.custom_vjp
def conv_valid(x, kernel):
    """Dense convolution, stride 1, no padding: x (..., H, W, Cin), kernel (kh, kw, Cin,
    Cout) -> (..., H - kh + 1, W - kw + 1, Cout). For wide kernels on narrow inputs (Lab4's
    7x7 pose convolution on 3 channels), where XLA CPU's filter gradient is very slow
    (benchmarks/NOTES.md, "Wide unpadded kernels")."""
    kh, kw, _, cout = kernel.shape
    out = (x.shape[-3] - kh + 1, x.shape[-2] - kw + 1, cout)
    return _valid(_as_images(x), kernel).reshape(x.shape[:-3] + out)


def _conv_valid_fwd(x, kernel):
    return conv_valid(x, kernel), (x, kernel)


def _conv_valid_bwd(res, g):
    """dK as one GEMM of the im2col patches (kh * kw * Cin wide, a row per output pixel:
    cheap for narrow inputs, or tiny outputs such as SVG's 4x4 convolution of a 4x4 map,
    whose patches are the input itself) with the output gradient; dx as XLA's full
    convolution with the flipped kernel (dead code, removed by XLA, when the input is data)."""
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    xi, gi = _as_images(x), _as_images(g)
    h, w = gi.shape[1:3]
    gp = jnp.pad(gi, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    dx = _valid(gp, jnp.flip(kernel, (0, 1)).swapaxes(2, 3)).reshape(x.shape)
    patches = jnp.concatenate([xi[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], -1)
    dk = lax.dot_general(patches.reshape(-1, kh * kw * cin), gi.reshape(-1, cout), (((0,), (0,)), ((), ())))
    return dx, dk.reshape(kernel.shape)


conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


def _depthwise(x, kernel):
    out = None
    for i, row in enumerate(_shifted(x)):
        for j, win in enumerate(row):
            term = win * kernel[i, j]
            out = term if out is None else out + term
    return out


@jax.custom_vjp
def depthwise3x3(x, kernel):
    """Depthwise (groups = channels) 3x3 convolution, stride 1, zero padding 1:
    x (..., H, W, C), kernel (3, 3, C)."""
    return _depthwise(_as_images(x), kernel).reshape(x.shape)


def _depthwise_fwd(x, kernel):
    return depthwise3x3(x, kernel), (x, kernel)


def _depthwise_bwd(res, g):
    """dK[i, j] = sum over p of x[p + (i, j) - 1] * g[p] = sum over q of x[q] * g[q + 1 - (i, j)]:
    the windows are of g, the same ones dx uses, not of x, whose windows XLA would otherwise
    share with the forward pass and keep in memory between the passes."""
    x, kernel = res
    xi, gi = _as_images(x), _as_images(g)
    dx = _depthwise(gi, jnp.flip(kernel, (0, 1))).reshape(x.shape)
    dk = jnp.stack([jnp.stack([jnp.sum(xi * w, axis=(0, 1, 2)) for w in row])
                    for row in _reflected(_shifted(gi))])
    return dx, dk


depthwise3x3.defvjp(_depthwise_fwd, _depthwise_bwd)
