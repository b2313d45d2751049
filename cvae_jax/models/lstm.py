"""SVG's recurrent modules (models/lstm.py): the frame predictor and the Gaussian LSTMs.

The reference keeps the hidden state inside the module and resets it per batch; here it
is an explicit value (`init_state`) carried by the rollout's scan, so a step is a pure
function. Cells are PyTorch `LSTMCell`s (gate order i, f, g, o; default init
U(+-1/sqrt(hidden))); the linear layers use SVG's N(0, 0.02) init.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cvae_jax.layers import _torch_uniform, normal_init
from cvae_jax.models.vgg64 import INIT_STD, apply_bn, batchnorm


class Linear(nnx.Module):
    def __init__(self, nin: int, nout: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(normal_init(rngs.params(), (nin, nout), INIT_STD))
        self.bias = nnx.Param(jnp.zeros((nout,), jnp.float32))

    def __call__(self, x):
        return x @ self.kernel[...] + self.bias[...]


class LSTMCell(nnx.Module):
    def __init__(self, nin: int, hidden: int, *, rngs: nnx.Rngs):
        shape = {"w_ih": (nin, 4 * hidden), "w_hh": (hidden, 4 * hidden), "b_ih": (4 * hidden,),
                 "b_hh": (4 * hidden,)}
        for name, s in shape.items():
            # fan_in = hidden gives torch's bound 1/sqrt(hidden) for every tensor
            setattr(self, name, nnx.Param(_torch_uniform(rngs.params(), s, hidden)))

    def __call__(self, x, state):
        h, c = state
        gates = x @ self.w_ih[...] + self.b_ih[...] + h @ self.w_hh[...] + self.b_hh[...]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, (h, c)


class _Stack(nnx.Module):
    """Linear embedding followed by stacked cells; the shared front of both LSTMs."""

    def __init__(self, nin: int, hidden: int, n_layers: int, *, rngs: nnx.Rngs):
        self.hidden = hidden
        self.embed = Linear(nin, hidden, rngs=rngs)
        self.cells = nnx.List([LSTMCell(hidden, hidden, rngs=rngs) for _ in range(n_layers)])

    def init_state(self, batch: int):
        zeros = jnp.zeros((batch, self.hidden), self.embed.kernel.dtype)  # the compute precision
        return tuple((zeros, zeros) for _ in self.cells)

    def run(self, x, state):
        h = self.embed(x)
        new_state = []
        for cell, s in zip(self.cells, state):
            h, s = cell(h, s)
            new_state.append(s)
        return h, tuple(new_state)


class LSTM(_Stack):
    """The frame predictor: cells -> Linear -> BatchNorm1d -> tanh."""

    def __init__(self, nin: int, nout: int, hidden: int, n_layers: int, *, rngs: nnx.Rngs):
        super().__init__(nin, hidden, n_layers, rngs=rngs)
        self.output = Linear(hidden, nout, rngs=rngs)
        self.bn = batchnorm(nout, rngs, spatial=False)

    def batchnorms(self):
        return [self.bn]

    def __call__(self, x, state, train: bool):
        h, state = self.run(x, state)
        y, m = apply_bn(self.bn, self.output(h), train)
        return jnp.tanh(y), state, [m]


class GaussianLSTM(_Stack):
    """q(z_t | ...) or p(z_t | ...): cells -> (mu, logvar) heads."""

    def __init__(self, nin: int, nout: int, hidden: int, n_layers: int, *, rngs: nnx.Rngs):
        super().__init__(nin, hidden, n_layers, rngs=rngs)
        self.mu_net = Linear(hidden, nout, rngs=rngs)
        self.logvar_net = Linear(hidden, nout, rngs=rngs)

    def __call__(self, x, state):
        h, state = self.run(x, state)
        return self.mu_net(h), self.logvar_net(h), state

