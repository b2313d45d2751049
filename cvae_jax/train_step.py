"""The functional training step: (state, batch, schedule values, keys) -> (state, metrics).

Schedule values (learning rate, KL beta, teacher-forcing ratio) arrive as traced scalars so
one compiled program serves the whole run. The optimizer is clip-by-global-norm then Adam's
scaling; the learning rate multiplies the update inside the step for the same reason.
Everything model-specific (the objective, which BatchNorm statistics to fold) comes from
the model family named by `cfg.model` (see `cvae_jax.models`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cvae_jax import kernels, models
from cvae_jax.config import Config
from cvae_jax.rollout import teacher_forcing_mask


class TrainState(NamedTuple):
    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array


class Schedule(NamedTuple):
    """Per-step schedule values, computed on the host, traced in the step."""
    lr: jax.Array
    beta: jax.Array
    tfr: jax.Array


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """Adam's scaling (beta1 = --beta1), after clipping when --grad_clip > 0; AdamW adds the
    decoupled decay to the update, which the step scales by the (scheduled) learning rate,
    as PyTorch's AdamW does."""
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.scale_by_adam(b1=cfg.beta1, b2=0.999, eps=1e-8))
    if cfg.optim.optimizer == "AdamW":
        parts.append(optax.add_decayed_weights(0.01 if cfg.weight_decay is None else cfg.weight_decay))
    return optax.chain(*parts) if len(parts) > 1 else parts[0]


def build_model(cfg: Config, key):
    return models.family(cfg.model).build(cfg, key)


def init_state(cfg: Config, key) -> tuple[Any, TrainState]:
    """(graphdef, state): the graphdef is static structure, the state is all arrays."""
    graphdef, params, batch_stats = nnx.split(build_model(cfg, key), nnx.Param, nnx.BatchStat)
    opt_state = make_optimizer(cfg).init(params)
    return graphdef, TrainState(params, batch_stats, opt_state, jnp.zeros((), jnp.int32))


def compute_dtype(cfg: Config):
    return jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32


def cast_floats(tree, dtype):
    """Floating leaves to `dtype`; the cast's gradient casts back, so float32 parameters
    get float32 gradients from a bfloat16 forward pass."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def at_precision(graphdef, params, batch_stats, inputs, cfg: Config):
    """(model, inputs) at the compute precision; BatchNorm running averages stay float32."""
    dtype = compute_dtype(cfg)
    return nnx.merge(graphdef, cast_floats(params, dtype), batch_stats), cast_floats(inputs, dtype)


def jit(fun, cfg: Config, **kwargs):
    """`jax.jit` tracing `fun` with `--conv_impl`'s convolutions, compiled with
    `kernels.XLA_CPU_OPTIONS` (Eigen convolutions, LLVM level 1) when compiling for CPU."""
    if jax.default_backend() == "cpu":
        kwargs["compiler_options"] = kernels.XLA_CPU_OPTIONS

    @functools.wraps(fun)
    def traced(*args):
        with kernels.conv_impl(cfg.conv_impl):
            return fun(*args)
    return jax.jit(traced, **kwargs)


def make_train_step(graphdef, cfg: Config, *, donate: bool = True):
    """A jitted `step(state, batch, sched, epoch_key, step_key)`; donation lets XLA update
    the state in place. `batch` is the model family's tuple of arrays."""
    optimizer = make_optimizer(cfg)
    fam = models.family(cfg.model)

    def objective(params, batch_stats, batch, teacher, key, beta):
        model, batch = at_precision(graphdef, params, batch_stats, batch, cfg)
        loss, metrics, moments = fam.objective(model, batch, teacher, key, beta, cfg)
        return loss, (metrics, jax.lax.stop_gradient(cast_floats(moments, jnp.float32)))

    def train_step(state: TrainState, batch, sched: Schedule, epoch_key, step_key):
        batch_size = batch[0].shape[0]
        tf_key, z_key = jax.random.split(step_key)
        teacher = teacher_forcing_mask(cfg.tf_mode, sched.tfr, epoch_key, tf_key,
                                       fam.teacher_steps(cfg, batch), batch_size)
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        args = (state.params, state.batch_stats, batch)
        if cfg.tf_fast_path:
            # Both branches are whole gradient computations: differentiating through a cond
            # would carry both branches' residuals (benchmarks/NOTES.md, "Teacher-forced fast path").
            (_, (metrics, moments)), grads = jax.lax.cond(
                jnp.all(teacher >= 1),
                lambda: grad_fn(*args, None, z_key, sched.beta),
                lambda: grad_fn(*args, teacher, z_key, sched.beta))
        else:
            (_, (metrics, moments)), grads = grad_fn(*args, teacher, z_key, sched.beta)
        # a copy of the pytree nodes: folding writes through the merged model's Variables
        before = jax.tree.map(lambda x: x, (state.params, state.batch_stats, state.opt_state))
        model = nnx.merge(graphdef, state.params, state.batch_stats)
        fam.fold_batch_stats(model, moments, batch)
        batch_stats = nnx.state(model, nnx.BatchStat)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: -sched.lr * u, updates)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        # a non-finite step is not applied, so the loop may read its loss a step late
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), (params, batch_stats, opt_state), before)
        metrics = dict(metrics, grad_norm=grad_norm, param_norm=optax.tree.norm(new[0]),
                       teacher=jnp.mean(teacher))
        return TrainState(*new, state.step + ok.astype(state.step.dtype)), metrics

    return jit(train_step, cfg, donate_argnums=(0,) if donate else ())


def make_model_fn(graphdef, cfg: Config, fn):
    """Jitted `f(params, batch_stats, inputs, key)` -> `fn(model, inputs, key)` in float32,
    with the model and inputs at the compute precision: every inference entry point."""

    def call(params, batch_stats, inputs, key):
        model, inputs = at_precision(graphdef, params, batch_stats, inputs, cfg)
        return fn(model, inputs, key).astype(jnp.float32)

    return jit(call, cfg)


def make_predict(graphdef, cfg: Config, **options):
    """Jitted `predict(params, batch_stats, batch, key)` -> the frames a model is scored on
    (the family's `predict_batch`). `options` (e.g. n_future, z_mode) are static."""
    fam = models.family(cfg.model)
    return make_model_fn(graphdef, cfg, lambda model, batch, key: fam.predict_batch(model, batch, key, cfg, **options))
