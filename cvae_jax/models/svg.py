"""SVG (Denton & Fergus 2018) conditioned on BAIR actions: SVG-FP and SVG-LP, NHWC.

One rollout step predicting frame t from frame t-1 (the engine hands in x_{t-1}: ground
truth for context frames and teacher-forced steps, the previous prediction otherwise):

    h_{t-1}, skips = encoder(x_{t-1})
    mu, logvar     = posterior(encoder(x_t))          q(z_t | x_{1:t}), LSTM state carried
    z_t            ~ q while training and over the context; at prediction time from the
                     prior: N(0, I) (SVG-FP) or the prior LSTM on h_{t-1} (SVG-LP)
    g_t            = predictor([h_{t-1}, z_t, c_t])   c_t = [action_t (4), position_t (3)]
    x_t            = decoder(g_t, skips of the last context frame, or of x_{t-1} with
                     --last_frame_skip)

Condition scheme: the 7-d condition of the frame being predicted is concatenated to the
predictor input (g + z + 7 inputs), as the course solutions do; position_t tells the
decoder where the arm is in frame t, action_t what it is about to do.

Skips: SVG's own loops refresh the skip only while `i < n_past`, so with n_past = 2 the
skips come from frame 0, not from the last context frame 1. We take them from the last
context frame; `skip_compat=True` reproduces SVG's choice for its published numbers.

Losses follow edenton/svg: MSE and KL are summed over every step t = 1..T-1, context
steps included. BatchNorm uses each call's batch statistics while training (the target
frames are encoded in one batched call whose statistics are still per time step) and the
running averages at prediction time.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cvae_jax import losses
from cvae_jax.layers import reparameterize
from cvae_jax.models.lstm import LSTM, GaussianLSTM
from cvae_jax.models.vgg64 import VGGDecoder, VGGEncoder
from cvae_jax.rollout import rollout, scan_steps, time_major

COND_DIM = 7  # action (4) + end-effector position (3)


class SVG(nnx.Module):
    def __init__(self, g_dim: int = 128, z_dim: int = 64, rnn_size: int = 256, *,
                 width: int = 64, predictor_layers: int = 2, posterior_layers: int = 1,
                 prior_layers: int = 1, learned_prior: bool = False, cond_dim: int = COND_DIM,
                 rngs: nnx.Rngs):
        self.z_dim = z_dim
        self.encoder = VGGEncoder(g_dim, width, rngs=rngs)
        self.decoder = VGGDecoder(g_dim, width, rngs=rngs)
        self.frame_predictor = LSTM(g_dim + z_dim + cond_dim, g_dim, rnn_size, predictor_layers, rngs=rngs)
        self.posterior = GaussianLSTM(g_dim, z_dim, rnn_size, posterior_layers, rngs=rngs)
        self.prior = GaussianLSTM(g_dim, z_dim, rnn_size, prior_layers, rngs=rngs) if learned_prior else None


def build(cfg, key) -> SVG:
    return SVG(cfg.g_dim, cfg.z_dim, cfg.rnn_size, width=cfg.vgg_width,
               predictor_layers=cfg.predictor_rnn_layers, posterior_layers=cfg.posterior_rnn_layers,
               prior_layers=cfg.prior_rnn_layers, learned_prior=cfg.prior == "learned",
               rngs=nnx.Rngs(params=key))


class StepInputs(NamedTuple):
    """What step t needs besides the previous frame (time-major when stacked)."""
    h_target: jax.Array       # (B, g) encoding of x_t (zeros where unknown)
    cond: jax.Array           # (B, 7) condition of frame t
    use_posterior: jax.Array  # () bool: z from q (training, context) or from the prior
    take_skip: jax.Array      # () bool: refresh the skips from x_{t-1}


class StepAux(NamedTuple):
    mu: jax.Array
    logvar: jax.Array
    prior_mu: jax.Array
    prior_logvar: jax.Array
    moments: tuple            # (encoder, predictor, decoder) BatchNorm batch moments


def _latent_and_predict(model: SVG, states, h_prev, x: StepInputs, key, train: bool, z_mode: str):
    """The recurrent half of a step: posterior and prior LSTMs, z, frame predictor -> g."""
    pred_s, post_s, prior_s = states
    mu, logvar, post_s = model.posterior(x.h_target, post_s)
    if model.prior is None:
        prior_mu = prior_logvar = jnp.zeros_like(mu)
    else:
        prior_mu, prior_logvar, prior_s = model.prior(h_prev, prior_s)
    k_post, k_prior = jax.random.split(key)
    if z_mode == "mean":
        z_prior = prior_mu
    else:
        z_prior = reparameterize(prior_mu, prior_logvar, k_prior)
    z = jnp.where(x.use_posterior, reparameterize(mu, logvar, k_post), z_prior)
    g, pred_s, pred_m = model.frame_predictor(jnp.concatenate([h_prev, z, x.cond], -1), pred_s, train)
    return (pred_s, post_s, prior_s), g, (mu, logvar, prior_mu, prior_logvar), pred_m


def _step_fn(model: SVG, train: bool, z_mode: str = "sample"):
    def step(carry, prev_frame, weight, x: StepInputs, key):
        *states, skips = carry
        h_prev, new_skips, enc_m = model.encoder(prev_frame, train)
        skips = jax.tree.map(lambda n, o: jnp.where(x.take_skip, n, o), new_skips, skips)
        states, g, moments, pred_m = _latent_and_predict(model, states, h_prev, x, key, train, z_mode)
        frame, dec_m = model.decoder(g, skips, train)
        return (*states, skips), frame, StepAux(*moments, (enc_m, pred_m, dec_m))
    return step


def _initial_carry(model: SVG, first_frame):
    b = first_frame.shape[0]
    skip_shapes = jax.eval_shape(lambda f: model.encoder(f, False)[1], first_frame)
    skips = [jnp.zeros(s.shape, s.dtype) for s in skip_shapes]
    prior_s = model.prior.init_state(b) if model.prior is not None else ()
    return (model.frame_predictor.init_state(b), model.posterior.init_state(b), prior_s, skips)


def _take_skip(n_steps: int, n_past: int, last_frame_skip: bool, skip_compat: bool) -> np.ndarray:
    """Step t (1-based) encodes x_{t-1}; the last context frame n_past-1 is seen at t = n_past."""
    t = np.arange(1, n_steps + 1)
    last = n_past - 1 if skip_compat else n_past
    return np.logical_or(last_frame_skip, t <= last)


def _skip_source(take_skip: np.ndarray) -> np.ndarray:
    """The frame whose skips step t decodes with: the latest x_{s-1}, s <= t, that took them
    (-1: none yet, zero skips, as the rollout's initial carry)."""
    return np.maximum.accumulate(np.where(take_skip, np.arange(len(take_skip)), -1))


class Terms(NamedTuple):
    preds: jax.Array    # (T-1, B, 64, 64, 3) predictions of frames 1..T-1
    targets: jax.Array
    aux: StepAux        # per step, time-major
    target_moments: list


def training_rollout(model: SVG, frames, cond, teacher, key, *, n_past: int,
                     last_frame_skip=False, skip_compat=False, remat=False, unroll=1) -> Terms:
    """Posterior rollout: frames (B, T, 64, 64, 3), cond (B, T, 7), teacher (T-1, B).

    Context steps (t <= n_past) always see ground truth, whatever the teacher mask says.
    """
    frames, cond = time_major(frames), time_major(cond)
    n_steps = frames.shape[0] - 1
    h_target, _, target_m = model.encoder(frames[1:], True)
    teacher = teacher.at[:n_past].set(1.0)
    inputs = StepInputs(h_target, cond[1:], jnp.ones((n_steps,), bool),
                        _take_skip(n_steps, n_past, last_frame_skip, skip_compat))
    _, preds, aux = rollout(_step_fn(model, True), frames[0], inputs, key, true_prev=frames[:-1],
                            teacher=teacher, state=_initial_carry(model, frames[0]), remat=remat,
                            unroll=unroll)
    return Terms(preds, frames[1:], aux, target_m)


def teacher_forced_rollout(model: SVG, frames, cond, key, *, n_past: int, last_frame_skip=False,
                           skip_compat=False, remat=False, unroll=1) -> Terms:
    """`training_rollout` with every step teacher-forced: only the LSTMs stay sequential.

    Each frame is encoded once and all steps are decoded in one call (BatchNorm statistics
    stay per time step, see `layers.FrameBatchNorm`); the scan carries the LSTM states
    alone. Keys follow the rollout engine's per-step split, so the result equals
    `training_rollout(..., teacher=1)` up to float rounding.
    """
    frames, cond = time_major(frames), time_major(cond)
    n_steps = frames.shape[0] - 1
    h, skips, enc_m = model.encoder(frames, True)
    source = _skip_source(_take_skip(n_steps, n_past, last_frame_skip, skip_compat))
    known = jnp.asarray(source >= 0).reshape((-1,) + (1,) * (skips[0].ndim - 1))
    step_skips = [jnp.where(known, s[np.maximum(source, 0)], 0) for s in skips]
    inputs = StepInputs(h[1:], cond[1:], jnp.ones((n_steps,), bool), None)

    def step(states, xs):
        h_prev, x, key_t = xs
        states, g, moments, pred_m = _latent_and_predict(model, states, h_prev, x, key_t, True, "sample")
        return states, (g, moments, pred_m)

    states = _initial_carry(model, frames[0])[:3]
    _, (g, moments, pred_m) = scan_steps(step, states, (h[:-1], inputs, jax.random.split(key, n_steps)),
                                         remat=remat, unroll=unroll)
    preds, dec_m = model.decoder(g, step_skips, True)
    prev_m = [(m[:-1], v[:-1]) for m, v in enc_m]
    target_m = [(m[1:], v[1:]) for m, v in enc_m]
    return Terms(preds, frames[1:], StepAux(*moments, (prev_m, pred_m, dec_m)), target_m)


def predict(model: SVG, context, cond, key, *, n_future: int, last_frame_skip=False,
            skip_compat=False, z_mode="sample"):
    """context (B, n_past, 64, 64, 3), cond (B, >= n_past + n_future, 7) ->
    (B, n_future, 64, 64, 3) predicted frames n_past..n_past+n_future-1.

    Over the context, z comes from the posterior (SVG's generation loop does the same, which
    warms up the LSTM states); after it, from the prior (N(0, I) or the learned one).
    """
    b, n_past = context.shape[:2]
    if n_past < 1:
        raise ValueError("predict needs at least one context frame")
    n_steps = n_past + n_future - 1
    if cond.shape[1] < n_steps + 1:
        raise ValueError(f"cond covers {cond.shape[1]} frames, need n_past + n_future = {n_steps + 1}")
    ctx, cond = time_major(context), time_major(cond)[:n_steps + 1]
    h_ctx, _, _ = model.encoder(ctx[1:], False)
    h_target = jnp.zeros((n_steps, b, h_ctx.shape[-1]), h_ctx.dtype).at[:n_past - 1].set(h_ctx)
    true_prev = jnp.zeros((n_steps,) + ctx.shape[1:], ctx.dtype).at[:n_past].set(ctx)
    teacher = (jnp.arange(n_steps) < n_past).astype(ctx.dtype)[:, None] * jnp.ones((1, b), ctx.dtype)
    inputs = StepInputs(h_target, cond[1:], jnp.arange(1, n_steps + 1) < n_past,
                        _take_skip(n_steps, n_past, last_frame_skip, skip_compat))
    _, preds, _ = rollout(_step_fn(model, False, z_mode), ctx[0], inputs, key, true_prev=true_prev,
                          teacher=teacher, state=_initial_carry(model, ctx[0]))
    return time_major(preds[n_past - 1:])


# ----------------------------------------------------------------------- the family interface


def teacher_steps(cfg, batch) -> int:
    return batch[0].shape[1] - 1


def objective(model: SVG, batch, teacher, key, beta, cfg):
    """(loss, metrics, BatchNorm moments): sum over steps of MSE + beta * KL (edenton/svg).
    teacher: (T-1, B) weights, or None when every step is teacher-forced (a faster program)."""
    frames, cond = batch
    kw = dict(n_past=cfg.n_past, last_frame_skip=cfg.last_frame_skip, skip_compat=cfg.skip_compat,
              remat=cfg.remat, unroll=cfg.scan_unroll)
    if teacher is None:  # the caller knows every step is teacher-forced
        terms = teacher_forced_rollout(model, frames, cond, key, **kw)
    else:
        terms = training_rollout(model, frames, cond, teacher, key, **kw)
    a = terms.aux
    mse = jnp.sum(losses.mse_per_frame(terms.preds, terms.targets))
    if model.prior is None:
        kl = jnp.sum(losses.kl_per_frame(a.mu, a.logvar))
    else:
        kl = jnp.sum(losses.kl_gaussians_per_frame(a.mu, a.logvar, a.prior_mu, a.prior_logvar))
    loss = mse + beta * kl
    return loss, {"loss": loss, "mse": mse, "kl": kl}, (terms.target_moments, a.moments)


def fold_batch_stats(model: SVG, moments, batch) -> None:
    """One running-average update per BatchNorm call, in call order (target, then prev)."""
    target_m, (enc_m, pred_m, dec_m) = moments

    def interleave(a, b):
        return tuple(jnp.stack([x, y], 1) for x, y in zip(a, b))

    groups = [(model.encoder.batchnorms(), [interleave(t, e) for t, e in zip(target_m, enc_m)]),
              (model.frame_predictor.batchnorms(), pred_m), (model.decoder.batchnorms(), dec_m)]
    for bns, ms in groups:
        for bn, (mean, var) in zip(bns, ms):
            bn.mean[...], bn.var[...] = bn.updated_running_stats(mean, var, count=None)


def predict_batch(model: SVG, batch, key, cfg, n_future: int | None = None, z_mode=None):
    """The frames scored in validation: batch = (frames (B, >= n_past), cond)."""
    frames, cond = batch
    return predict(model, frames[:, :cfg.n_past], cond, key,
                   n_future=n_future or cfg.n_future, last_frame_skip=cfg.last_frame_skip,
                   skip_compat=cfg.skip_compat, z_mode=z_mode or cfg.z_mode)



DEFAULT_NUM_SAMPLES = 5  # best of 5, as SVG's evaluation
EVAL_OPTIONS = ()


def load_data(cfg, log=print, train: bool = True):
    from cvae_jax.data.pushing import PushingData
    return PushingData(cfg, log, splits=("train", "validate") if train else ("validate",))


def check_eval_options(cfg, options) -> None:
    pass  # every option SVG takes is checked where it is used


def evaluate(restored, cfg, options, out, log=print) -> dict:
    from cvae_jax import svg_evaluation
    return svg_evaluation.evaluate(restored, cfg, options, out, log)


def restored(cfg, graphdef, params, batch_stats, meta, path):
    from cvae_jax.svg_evaluation import SVGModel
    return SVGModel(cfg, graphdef, params, batch_stats, meta, path)
