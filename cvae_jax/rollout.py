"""The rollout engine: one `lax.scan` over time, shared by every model.

A model supplies a `step(state, prev_frame, teacher, inputs_t, key_t) ->
(state, pred, aux)`. The engine feeds it the previous-frame input
`teacher * true_prev + (1 - teacher) * prev_pred`, so hard teacher forcing (0/1 masks) and
blending (fractional weights) are the same program, and generation is the mask 0. Keys are
split per step from one key, so a rollout is a pure function of its inputs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from cvae_jax import deferred

Step = Callable[[Any, jax.Array, jax.Array, Any, jax.Array], tuple[Any, jax.Array, Any]]


def rollout(step: Step, first_frame, per_step, key, *, true_prev=None, teacher=None,
            state=None, remat: bool = False, unroll: int = 1, batched_wgrad: bool = False):
    """Roll `step` over the leading (time) axis of `per_step`.

    first_frame: (B, H, W, C), the given frame that seeds the prediction chain.
    per_step: pytree with a leading time axis T (model-specific conditioning).
    true_prev: (T, B, H, W, C) ground-truth previous frames, or None when generating.
    teacher: (T, B) weights in [0, 1] for the ground truth, or None (all zeros).
    unroll: steps per loop iteration. XLA's CPU backend runs the backward pass of
    convolutions inside a while loop ~8x slower than straight-line code, so training
    unrolls short clips; generation (forward only) keeps the compact loop.
    remat, batched_wgrad: execution options, see `scan_steps`.
    Returns (final state, predictions (T, B, H, W, C), stacked aux).
    """
    n_steps = jax.tree_util.tree_leaves(per_step)[0].shape[0]
    batch = first_frame.shape[0]
    if teacher is None:
        teacher = jnp.zeros((n_steps, batch), first_frame.dtype)
    keys = jax.random.split(key, n_steps)

    def body(carry, xs):
        state, prev_pred = carry
        inputs_t, key_t, weight, prev_true = xs
        if prev_true is None:
            prev = prev_pred
        else:
            w = weight.reshape(weight.shape + (1,) * (prev_pred.ndim - 1)).astype(prev_pred.dtype)
            prev = w * prev_true + (1 - w) * prev_pred
        state, pred, aux = step(state, prev, weight, inputs_t, key_t)
        return (state, pred), (pred, aux)

    (state, _), (preds, aux) = scan_steps(
        body, (state, first_frame), (per_step, keys, teacher, true_prev),
        remat=remat, unroll=unroll, batched_wgrad=batched_wgrad)
    return state, preds, aux


def scan_steps(body, init, xs, *, remat: bool = False, unroll: int = 1,
               batched_wgrad: bool = False):
    """`lax.scan(body, init, xs)` under the training execution options, decided here once.

    remat checkpoints the body and forces unroll=1 (in straight-line code XLA merges the
    recomputation with the forward pass again: no memory saved at unroll 16); it also
    turns off `batched_wgrad`, whose per-step stacks would defeat the memory bound.
    batched_wgrad: `deferred.scan`, the 1x1 weight gradients as one GEMM over all steps.
    """
    if remat:
        return jax.lax.scan(jax.checkpoint(body), init, xs, unroll=1)
    scan = deferred.scan if batched_wgrad else jax.lax.scan
    return scan(body, init, xs, unroll=unroll)


def teacher_forcing_mask(mode: str, ratio, epoch_key, step_key, n_steps: int, batch: int):
    """(T, B) teacher weights for one batch; `ratio` is traced, `mode` is static.

    epoch: one Bernoulli(ratio) draw per epoch for everything (the Lab4 reference);
    batch: one per batch (the SVG course template); clip: one per clip; frame: one per
    (frame, clip); blend: the ratio itself.
    """
    ratio = jnp.asarray(ratio, jnp.float32)
    if mode == "epoch":
        hit = jax.random.uniform(epoch_key) < ratio
        return jnp.broadcast_to(hit, (n_steps, batch)).astype(jnp.float32)
    if mode == "batch":
        hit = jax.random.uniform(step_key) < ratio
        return jnp.broadcast_to(hit, (n_steps, batch)).astype(jnp.float32)
    if mode == "clip":
        hit = jax.random.uniform(step_key, (batch,)) < ratio
        return jnp.broadcast_to(hit, (n_steps, batch)).astype(jnp.float32)
    if mode == "frame":
        return (jax.random.uniform(step_key, (n_steps, batch)) < ratio).astype(jnp.float32)
    if mode == "blend":
        return jnp.full((n_steps, batch), ratio, jnp.float32)
    raise ValueError(f"--tf_mode must be one of epoch, batch, clip, frame, blend; got {mode!r}")


def time_major(x):
    """(B, T, ...) -> (T, B, ...), the layout `lax.scan` iterates over."""
    return jnp.swapaxes(x, 0, 1)
