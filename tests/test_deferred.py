"""`deferred.scan`: the 1x1 layers' weight gradients summed over the steps as one GEMM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cvae_jax import deferred, kernels
from cvae_jax.layers import Conv

T, B, H, W = 5, 2, 3, 4


class Toy(nnx.Module):
    """A step with a 1x1 layer used twice, one also used outside the scan, and a 3x3 layer
    (which keeps its per-step gradients)."""

    def __init__(self, rngs):
        self.a = Conv(3, 6, 1, rngs=rngs)
        self.b = Conv(6, 3, 1, rngs=rngs)
        self.c = Conv(3, 3, 3, padding=1, rngs=rngs)

    def step(self, carry, x):
        h = jnp.tanh(self.a(carry + x))
        y = self.b(h) + self.c(carry) + self.b(jnp.tanh(self.a(x)))
        return jnp.tanh(y), y


def loss(scan, params, graphdef, init, xs):
    model = nnx.merge(graphdef, params)
    _, ys = scan(model.step, model.b(model.a(init)), xs, unroll=2)
    return jnp.sum(ys ** 2)


@pytest.fixture
def toy(rng):
    graphdef, params = nnx.split(Toy(nnx.Rngs(0)))
    init = jnp.asarray(rng.normal(size=(B, H, W, 3)), jnp.float32)
    xs = jnp.asarray(rng.normal(size=(T, B, H, W, 3)), jnp.float32)
    return graphdef, params, init, xs


def top_level_dots(fn, *args) -> int:
    """dot_generals outside any loop in fn's jaxpr."""
    return sum(e.primitive.name == "dot_general" for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns)


def test_gradients_equal_the_plain_scan_and_leave_the_loop(toy):
    graphdef, params, init, xs = toy
    with kernels.conv_impl("custom"):
        grad = lambda scan: jax.value_and_grad(lambda p, i, x: loss(scan, p, graphdef, i, x), argnums=(0, 1, 2))
        (l1, g1), (l0, g0) = grad(deferred.scan)(params, init, xs), grad(jax.lax.scan)(params, init, xs)
        # four 1x1 calls per step, each with one kernel GEMM after the loop
        assert top_level_dots(grad(deferred.scan), params, init, xs) - \
            top_level_dots(grad(jax.lax.scan), params, init, xs) == 4
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_plain_scan_with_xla_convolutions(toy):
    graphdef, params, init, xs = toy
    with kernels.conv_impl("xla"):
        grad = lambda scan: jax.grad(lambda p: loss(scan, p, graphdef, init, xs))
        assert top_level_dots(grad(deferred.scan), params) == top_level_dots(grad(jax.lax.scan), params)


def test_forward_values_are_unchanged(toy):
    graphdef, params, init, xs = toy
    with kernels.conv_impl("custom"):
        np.testing.assert_array_equal(loss(deferred.scan, params, graphdef, init, xs),
                                      loss(jax.lax.scan, params, graphdef, init, xs))


def test_a_step_that_traces_differently_is_an_error(toy):
    graphdef, params, init, xs = toy
    calls = []

    def fickle(carry, x):  # a different layer call on the second trace
        model = nnx.merge(graphdef, params)
        calls.append(1)
        layer = model.a if len(calls) == 1 else nnx.merge(graphdef, jax.tree.map(lambda v: v + 1, params)).a
        return carry, layer(x)

    with kernels.conv_impl("custom"), pytest.raises(RuntimeError, match="different layer calls"):
        deferred.scan(fickle, init, xs)
