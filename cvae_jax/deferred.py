"""Weight gradients of a scanned step's 1x1 convolutions, summed over the steps as one GEMM.

Why: a Lab4 training rollout runs its decoder (and, free-running, its frame encoder) on 2
frames per step, and autodiff computes each step's weight gradients on their own: per
1x1 layer, 15 GEMMs contracting over 4,096 pixels. XLA CPU runs such thin GEMMs well below
its rate for one GEMM over the 61,440 pixels of all steps. Autodiff cannot batch them, as
the sum over steps happens inside the backward loop.

So `scan` gives each 1x1 layer call in the step a per-step *tag*: a zero input that the
call ignores, and whose cotangent the call's backward sets to its (input, output
gradient) pair. The scan's transpose stacks those over the steps; the tags' own backward,
outside the loop, turns each stack into the kernel's and bias's gradients with one GEMM
and one sum. Exact: the sum over steps of x_t^T g_t is X^T G of the stacked rows (only
the order of the float sums differs).

It makes the Lab4 step a few percent faster; deferring the 3x3 and depthwise convolutions'
filter gradients the same way did not, so their per-step gradients stay (measurements:
benchmarks/NOTES.md, "Deferred 1x1 weight gradients"). The stacks copy each 1x1 call's
input and output gradient once per step, so `--remat`, which bounds memory by the clip,
does not defer.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from cvae_jax import kernels

_pass = contextvars.ContextVar("deferred_pass", default=None)


@dataclasses.dataclass(frozen=True)
class _Call:
    kernel: Any  # (1, 1, Cin, Cout) and (Cout,), the traced arrays the step closes over
    bias: Any
    x: jax.ShapeDtypeStruct
    y: jax.ShapeDtypeStruct


class _Pass:
    """One trace of the step: records its calls (no tags yet), or hands out their tags."""

    def __init__(self, calls: list[_Call] | None = None, tags: list | None = None):
        self.calls, self.tags, self.used = ([] if calls is None else calls), tags, 0


@contextlib.contextmanager
def _tracing(p: _Pass):
    token = _pass.set(p)
    try:
        yield
    finally:
        _pass.reset(token)


def _affine(x, kernel, bias):
    return x @ kernel[0, 0] + bias


def _different_calls() -> RuntimeError:
    return RuntimeError("deferred.scan: the step's second trace made different layer calls")


def dense(x, kernel, bias):
    """A 1x1 stride-1 convolution, x @ kernel[0, 0] + bias: every `Conv` of that shape
    comes here, so that inside a deferring `scan` it is recorded, then tagged."""
    p = _pass.get()
    if p is None or p.tags is None:
        y = _affine(x, kernel, bias)
        if p is not None:
            p.calls.append(_Call(kernel, bias, jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 jax.ShapeDtypeStruct(y.shape, y.dtype)))
        return y
    call = p.calls[p.used] if p.used < len(p.calls) else None
    if call is None or call.kernel is not kernel or call.bias is not bias or call.x.shape != x.shape:
        raise _different_calls()
    tag = p.tags[p.used]
    p.used += 1
    return _tagged(x, lax.stop_gradient(kernel), lax.stop_gradient(bias), tag)


def scan(f: Callable, init, xs, *, unroll: int = 1):
    """`lax.scan(f, init, xs, unroll=unroll)` whose 1x1 layer calls (`Conv` routes them to
    `dense`) get their weight gradients as one GEMM over all steps. A plain scan off CPU
    kernels (`--conv_impl xla`): the GEMM rates above are XLA CPU's."""
    if not kernels.use_custom():
        return lax.scan(f, init, xs, unroll=unroll)
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    record = _Pass()
    with _tracing(record):  # a shape-only trace of one step, to learn its 1x1 calls
        jax.eval_shape(f, init, jax.tree.map(lambda a: a[0], xs))
    if not record.calls:
        return lax.scan(f, init, xs, unroll=unroll)
    tags = [_tags(n, c.x, c.y, c.kernel, c.bias) for c in record.calls]

    def body(carry, xt):
        x, tags_t = xt
        p = _Pass(record.calls, tags_t)
        with _tracing(p):
            out = f(carry, x)
        if p.used != len(tags_t):
            raise _different_calls()
        return out

    return lax.scan(body, init, (xs, tags), unroll=unroll)


@jax.custom_vjp
def _tagged(x, kernel, bias, tag):
    return _affine(x, kernel, bias)


def _tagged_fwd(x, kernel, bias, tag):
    return _tagged(x, kernel, bias, tag), (x, kernel)


def _tagged_bwd(res, g):
    """The input's gradient now; the weights' later, from the (x, g) stacks of all steps."""
    x, kernel = res
    return g @ kernel[0, 0].T, None, None, (x, g)


_tagged.defvjp(_tagged_fwd, _tagged_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _tags(n, x, y, kernel, bias):
    """Zero stand-ins for the call's input and output at each of the n steps."""
    return jnp.zeros((n,) + x.shape, x.dtype), jnp.zeros((n,) + y.shape, y.dtype)


def _tags_fwd(n, x, y, kernel, bias):
    return _tags(n, x, y, kernel, bias), (kernel, bias)


def _tags_bwd(n, x, y, res, stacks):
    kernel, bias = res
    xs, gs = (a.reshape(-1, a.shape[-1]) for a in stacks)
    dk = lax.dot_general(xs, gs, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    db = jnp.sum(gs, axis=0, dtype=jnp.float32)
    return dk.reshape(kernel.shape).astype(kernel.dtype), db.astype(bias.dtype)


_tags.defvjp(_tags_fwd, _tags_bwd)
