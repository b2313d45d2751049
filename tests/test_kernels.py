"""The hand-written convolution gradients equal XLA's own (cvae_jax/kernels.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cvae_jax import kernels

NHWC = ("NHWC", "HWIO", "NHWC")


def xla_dense(x, k):
    return lax.conv_general_dilated(x.reshape((-1,) + x.shape[-3:]), k, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=NHWC).reshape(x.shape[:-1] + k.shape[-1:])


def xla_depthwise(x, k):
    c = x.shape[-1]
    return lax.conv_general_dilated(x.reshape((-1,) + x.shape[-3:]), k[:, :, None, :], (1, 1),
                                    ((1, 1), (1, 1)), dimension_numbers=NHWC,
                                    feature_group_count=c).reshape(x.shape)


def xla_valid(x, k):
    y = lax.conv_general_dilated(x.reshape((-1,) + x.shape[-3:]), k, (1, 1), "VALID", dimension_numbers=NHWC)
    return y.reshape(x.shape[:-3] + y.shape[1:])


def value_and_grads(conv, x, k, probe):
    return jax.value_and_grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k)) * probe), argnums=(0, 1))(x, k)


CASES = {"dense": (lambda x, k: kernels.conv3x3(x, k, "gemm"), xla_dense, (5, 7, 4), (3, 3, 4, 6)),
         "dense_narrowing": (lambda x, k: kernels.conv3x3(x, k, "gemm"), xla_dense, (5, 7, 6), (3, 3, 6, 4)),  # g shifted
         "dense_conv_grad": (lambda x, k: kernels.conv3x3(x, k, "conv"), xla_dense, (5, 7, 4), (3, 3, 4, 6)),
         "dense_taps": (kernels.conv3x3_taps, xla_dense, (5, 7, 20), (3, 3, 20, 2)),  # 9 * 2 <= 20
         "depthwise": (kernels.depthwise3x3, xla_depthwise, (6, 5, 4), (3, 3, 4)),
         "valid": (kernels.conv_valid, xla_valid, (9, 11, 3), (7, 5, 3, 4))}  # non-square kernel


@pytest.mark.parametrize("lead", [(2,), (3, 2)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_xla(rng, case, lead):
    """Values and both gradients against XLA's dense / grouped convolution."""
    ours, xla, image, kernel = CASES[case]
    x = jnp.asarray(rng.normal(size=lead + image), jnp.float32)
    k = jnp.asarray(rng.normal(size=kernel), jnp.float32)
    want = xla(x, k)
    probe = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    np.testing.assert_allclose(ours(x, k), want, rtol=1e-5, atol=1e-5)
    (v0, (dx0, dk0)), (v1, (dx1, dk1)) = (value_and_grads(f, x, k, probe) for f in (xla, ours))
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    # atol as for dk: near-zero sums of O(1) terms keep ~5e-5 of rounding (AMD EPYC's kernels)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dk1, dk0, rtol=1e-4, atol=1e-4)


def test_kernel_orientation_is_not_symmetric(rng):
    """A flipped kernel must give a different result, so the tests above can catch a flip."""
    x = jnp.asarray(rng.normal(size=(1, 5, 5, 2)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 2, 2)), jnp.float32)
    assert not np.allclose(kernels.conv3x3(x, k), kernels.conv3x3(x, jnp.flip(k, (0, 1))), atol=1e-3)


def test_conv_filter_grad_inside_cond_matches_xla(rng):
    """The convolution filter gradient is for programs whose gradients sit in a `lax.cond`
    branch (the training step's): same values there as XLA's gradient at the top level."""
    x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    grad = lambda conv: jax.grad(lambda k: jnp.sum(jnp.sin(conv(x, k))))
    in_cond = jax.jit(lambda p: lax.cond(p, grad(lambda x, k: kernels.conv3x3(x, k, "conv")), jnp.zeros_like, k))
    np.testing.assert_allclose(in_cond(True), grad(xla_dense)(k), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("images,convs,dots", [(2, 2, 9), (8, 3, 0)])
def test_auto_filter_grad_is_a_convolution_from_eight_images(rng, images, convs, dots):
    """`filter_grad="auto"` (what the layers use): nine GEMMs for a per-step call of a few
    images, one convolution for a batched call; both equal XLA's gradient."""
    x = jnp.asarray(rng.normal(size=(images, 6, 5, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    grad = lambda conv: jax.grad(lambda k: jnp.sum(jnp.sin(conv(x, k))))
    ours = grad(lambda x, k: kernels.conv3x3(x, k, "auto"))
    text = str(jax.make_jaxpr(ours)(k))
    assert (text.count("conv_general_dilated["), text.count("dot_general[")) == (convs, dots)
    np.testing.assert_allclose(ours(k), grad(xla_dense)(k), rtol=1e-4, atol=1e-5)


LAYERS = {"taps": (20, 2, 3, 1), "dense": (4, 6, 3, 1), "valid": (3, 4, 7, 0), "strided": (4, 6, 4, 1)}


@pytest.mark.parametrize("impl", ["custom", "xla", "auto"])
@pytest.mark.parametrize("layer", sorted(LAYERS) + ["depthwise"])
def test_conv_impl_switch_picks_kernels_and_keeps_values(rng, layer, impl):
    """`--conv_impl`: layers traced under "xla" are one XLA convolution each, under
    "custom" (and "auto" on this CPU) the hand-written kernel, with the same values and
    gradients. Strided convolutions have no kernel of their own."""
    from flax import nnx

    from cvae_jax.layers import Conv, DepthwiseConv3x3
    if layer == "depthwise":
        module, image = DepthwiseConv3x3(4, rngs=nnx.Rngs(0)), (6, 5, 4)
    else:
        cin, cout, size, pad = LAYERS[layer]
        module = Conv(cin, cout, size, stride=2 if layer == "strided" else 1, padding=pad, rngs=nnx.Rngs(0))
        image = (9, 11, cin)
    graphdef, params = nnx.split(module)
    x = jnp.asarray(rng.normal(size=(2,) + image), jnp.float32)

    def loss(params, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x)))

    def traced(impl):
        with kernels.conv_impl(impl):
            forward = str(jax.make_jaxpr(lambda x: nnx.merge(graphdef, params)(x))(x))
            return jax.value_and_grad(loss, argnums=(0, 1))(params, x), forward
    (v, (dp, dx)), forward = traced(impl)
    (v_ref, (dp_ref, dx_ref)), xla_forward = traced("xla")
    assert xla_forward.count("conv_general_dilated[") == 1 and "custom_vjp_call" not in xla_forward
    assert (forward == xla_forward) == (impl == "xla" or layer == "strided")
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), dp, dp_ref)


def test_conv_impl_rejects_unknown_names():
    with pytest.raises(ValueError, match="--conv_impl must be one of"):
        with kernels.conv_impl("cudnn"):
            pass
