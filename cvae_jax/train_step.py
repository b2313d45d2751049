"""The functional training step: (state, batch, schedule values, keys) -> (state, metrics).

Schedule values (learning rate, KL beta, teacher-forcing ratio) arrive as traced scalars so
one compiled program serves the whole run. The optimizer is clip-by-global-norm then Adam's
scaling; the learning rate multiplies the update inside the step for the same reason.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cvae_jax import losses
from cvae_jax.config import Config
from cvae_jax.models import lab4
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
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8))


def build_model(cfg: Config, key) -> lab4.Lab4CVAE:
    return lab4.Lab4CVAE(cfg.F_dim, cfg.L_dim, cfg.N_dim, cfg.D_out_dim,
                         output_sigmoid=cfg.output_sigmoid, rngs=nnx.Rngs(params=key))


def init_state(cfg: Config, key) -> tuple[Any, TrainState]:
    """(graphdef, state): the graphdef is static structure, the state is all arrays."""
    graphdef, params, batch_stats = nnx.split(build_model(cfg, key), nnx.Param, nnx.BatchStat)
    opt_state = make_optimizer(cfg).init(params)
    return graphdef, TrainState(params, batch_stats, opt_state, jnp.zeros((), jnp.int32))


def _objective(graphdef, cfg: Config, params, batch_stats, frames, poses, teacher, key, beta):
    model = nnx.merge(graphdef, params, batch_stats)
    terms = lab4.training_rollout(model, frames, poses, teacher, key, remat=cfg.remat,
                                  unroll=cfg.scan_unroll)
    mse = jnp.sum(losses.mse_per_frame(terms.preds, terms.targets))
    kl = jnp.sum(losses.kl_per_frame(terms.mu, terms.logvar))
    loss = mse + beta * kl
    smooth = jnp.zeros(())
    if cfg.smooth_weight:
        smooth = losses.temporal_smoothness(terms.preds, terms.targets, frames[:, 0])
        loss = loss + cfg.smooth_weight * smooth
    metrics = {"loss": loss, "mse": mse, "kl": kl, "smooth": smooth}
    return loss, (metrics, jax.lax.stop_gradient(terms.pose_moments))


def _with_running_stats(graphdef, params, batch_stats, moments, count):
    """New BatchStat state after this step's per-frame pose BatchNorm updates."""
    model = nnx.merge(graphdef, params, batch_stats)
    bn = model.pose_encoder.bn
    bn.mean[...], bn.var[...] = bn.updated_running_stats(*moments, count=count)
    return nnx.state(model, nnx.BatchStat)


def make_train_step(graphdef, cfg: Config, *, donate: bool = True):
    """A jitted step; donation lets XLA update the state in place."""
    optimizer = make_optimizer(cfg)

    def train_step(state: TrainState, frames, poses, sched: Schedule, epoch_key, step_key):
        n_steps, batch = frames.shape[1] - 1, frames.shape[0]
        tf_key, z_key = jax.random.split(step_key)
        teacher = teacher_forcing_mask(cfg.tf_mode, sched.tfr, epoch_key, tf_key, n_steps, batch)
        grad_fn = jax.value_and_grad(_objective, argnums=2, has_aux=True)
        (_, (metrics, moments)), grads = grad_fn(
            graphdef, cfg, state.params, state.batch_stats, frames, poses, teacher, z_key, sched.beta)
        h, w = frames.shape[2:4]
        batch_stats = _with_running_stats(graphdef, state.params, state.batch_stats, moments,
                                          batch * h * w)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: -sched.lr * u, updates)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                       param_norm=optax.tree.norm(params),
                       teacher=jnp.mean(teacher))
        return TrainState(params, batch_stats, opt_state, state.step + 1), metrics

    return jax.jit(train_step, donate_argnums=(0,) if donate else ())


def make_generate(graphdef, cfg: Config):
    """Jitted `generate(params, batch_stats, first_frame, poses, key)`."""

    def gen(params, batch_stats, first_frame, poses, key):
        model = nnx.merge(graphdef, params, batch_stats)
        return lab4.generate(model, first_frame, poses, key, bn_mode=cfg.bn_mode, z_mode=cfg.z_mode)

    return jax.jit(gen)
